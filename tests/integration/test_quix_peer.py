"""The benchmark's quix-streams peer (streams/tools/peer_quix.py) does the work of a cdrwatch worker
with the fraud rules off: on one stream with breaching users (distinct numbers, simultaneous calls
— across a month boundary in Paris time and from calls still in progress — and auto-diallers), users
just under each limit, duplicates, a month no longer open and invalid records, both raise the same
fair-use alerts (user, rule, period) and send as many records to their dead-letter topic."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.codecs import cdr_payload, encode_cdr
from streams.tools.bench import _produce, synthetic_stream
from streams.tools.bench_peer import (PEER_ALERTS, PEER_DLQ, end_offsets, fair_use_plans, start_cdrwatch, start_peer,
                                      stop, wait_committed)
from streams.tools.embedded import create_topics
from streams.topics import ALL_TOPICS
from tests.kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 4
PARIS = "+01:00"  # November and December: UTC+1


def call(user: str, n: int, start: datetime, seconds: int, callee: str, *, answered: bool = True,
         direction: str = "outbound", event: str = "end") -> tuple[bytes, bytes]:
    billsec = seconds - 5 if answered else 0
    end = start + timedelta(seconds=seconds)
    return user.encode(), encode_cdr(
        event, f"{user}-{n}", user, "cust-t", "+33140000000", callee, direction, start.isoformat(),
        (start + timedelta(seconds=5)).isoformat() if answered and event == "end" else None,
        end.isoformat() if event == "end" else None, billsec if event == "end" else 0,
        ("ANSWERED" if answered else "NO ANSWER") if event == "end" else None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def stream() -> tuple[list[tuple[bytes, bytes]], set[tuple[str, str, str]], int]:
    """The records, the alerts cdrwatch's rules must raise on them, and how many are dead letters."""
    records = list(synthetic_stream(200, 2000, seed=7).cdrs)  # ordinary users: no breach
    expected = set()
    # distinct numbers: 160 covered numbers in November (151st breaches), 140 (no breach)
    for user, count in (("dist-over", 160), ("dist-under", 140)):
        for n in range(count):
            records.append(call(user, n, at(f"2026-11-02T08:00:00{PARIS}") + timedelta(hours=3 * n), 65,
                                f"+3314{n:07d}"))
    expected.add(("dist-over", "distinct_numbers", "2026-11"))
    # simultaneous calls: 5 at once; 4 at once across midnight of 1 December in Paris; 3 (no breach)
    for n in range(5):
        records.append(call("sim-five", n, at(f"2026-11-15T10:00:00{PARIS}") + timedelta(minutes=n), 1800,
                            "+33145000001"))
    for n in range(4):
        records.append(call("sim-midnight", n, at("2026-11-30T22:50:00+00:00") + timedelta(minutes=5 * n), 3600,
                            "+33145000002"))
    for n in range(3):
        records.append(call("sim-three", n, at(f"2026-11-15T10:00:00{PARIS}") + timedelta(minutes=n), 1800,
                            "+33145000003"))
    expected |= {("sim-five", "simultaneous_calls", "2026-11"), ("sim-midnight", "simultaneous_calls", "2026-12")}
    # calls in progress (start events): 4 open calls at once, their ends coming later
    for n in range(4):
        records.append(call("sim-open", n, at(f"2026-11-20T09:00:00{PARIS}") + timedelta(minutes=n), 600,
                            "+33145000004", event="start"))
    for n in range(4):
        records.append(call("sim-open", n, at(f"2026-11-20T09:00:00{PARIS}") + timedelta(minutes=n), 600,
                            "+33145000004"))
    expected.add(("sim-open", "simultaneous_calls", "2026-11"))
    # auto-dialler: 70 outbound starts in 52 minutes; 61 starts 61 s apart (no window of 60 min
    # holds 61); 70 inbound calls in 52 minutes (not outbound)
    for user, every, count, direction in (("dial-over", 45, 70, "outbound"), ("dial-under", 61, 61, "outbound"),
                                          ("dial-inbound", 45, 70, "inbound")):
        for n in range(count):
            records.append(call(user, n, at(f"2026-11-12T09:00:00{PARIS}") + timedelta(seconds=every * n), 20,
                                f"+3314600{n:04d}", answered=False, direction=direction))
    expected.add(("dial-over", "autodialer", "2026-11"))
    # duplicates: a breaching call and ordinary ones again
    records += records[2000:2010] + records[:20]
    # a month no longer open: November, then September (October and November are open)
    records.append(call("late", 0, at(f"2026-11-05T10:00:00{PARIS}"), 65, "+33145000005"))
    records.append(call("late", 1, at("2026-10-05T10:00:00+02:00"), 65, "+33145000005"))
    records.append(call("late", 2, at("2026-09-05T10:00:00+02:00"), 65, "+33145000005"))
    dead = 1
    # invalid records
    good = cdr_payload("end", "bad-0", "bad", "cust-t", "+33140000000", "+33145000006", "outbound",
                       "2026-11-05T10:00:00+01:00", "2026-11-05T10:00:05+01:00", "2026-11-05T10:01:05+01:00", 60,
                       "ANSWERED")
    invalid: list[dict[str, Any] | bytes] = [
        b"not json", b"[1, 2]", b"{}",
        {**good, "billsec": 60, "disposition": "NO ANSWER"},
        {**good, "end_time": "2026-11-05T09:00:00+01:00"},
        {**good, "direction": "sideways"},
        {k: v for k, v in good.items() if k != "user"},
        {**good, "start_time": "yesterday"},
    ]
    for n, value in enumerate(invalid):
        records.append((b"bad", value if isinstance(value, bytes) else orjson.dumps({**value, "call_id": f"bad-{n}"})))
    dead += len(invalid)
    return records, expected, dead


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    ends = await end_offsets(bootstrap, topic, PARTITIONS)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < sum(ends.values()):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    values += [record.value for record in batch if record.value is not None]
        return values
    finally:
        await consumer.stop()


def alerts_of(payloads: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {key(a) for a in payloads}


def key(alert: dict[str, Any]) -> tuple[str, str, str]:
    return alert["user"], alert["rule"], alert["period"]


def test_the_peer_raises_the_alerts_and_dead_letters_of_cdrwatch(kafka: KafkaCluster, tmp_path: Path) -> None:
    records, expected, dead = stream()
    prefix = f"peer-{uuid.uuid4().hex[:8]}-"
    bootstrap = kafka.bootstrap
    asyncio.run(create_topics(bootstrap, [prefix + t for t in (*ALL_TOPICS, PEER_ALERTS, PEER_DLQ)], PARTITIONS))
    asyncio.run(_produce(bootstrap, prefix + "cdrs", records))
    ends = asyncio.run(end_offsets(bootstrap, prefix + "cdrs", PARTITIONS))
    assert sum(ends.values()) == len(records)

    plans = fair_use_plans(tmp_path / "plans.toml")
    worker = start_cdrwatch(kafka.url, f"{prefix}cdrwatch", prefix, tmp_path / "cdrwatch", PARTITIONS,
                            tmp_path / "cdrwatch.log", plans=plans)
    peer = start_peer(bootstrap, f"{prefix}quix", prefix, tmp_path / "quix", PARTITIONS, tmp_path / "quix.log")
    try:
        for group, proc in ((f"{prefix}cdrwatch", worker), (f"{prefix}quix", peer)):
            try:
                asyncio.run(wait_committed(bootstrap, group, prefix + "cdrs", ends, 90, proc))
            except RuntimeError as exc:
                log = tmp_path / ("cdrwatch.log" if proc is worker else "quix.log")
                pytest.fail(f"{group}: {exc}\n{log.read_text(errors='replace')[-3000:]}")
    finally:
        stop(worker)
        stop(peer)

    cdrwatch_payloads = [orjson.loads(v) for v in asyncio.run(read_all(bootstrap, prefix + "fairuse-alerts"))]
    peer_payloads = [orjson.loads(v) for v in asyncio.run(read_all(bootstrap, prefix + PEER_ALERTS))]
    assert alerts_of(cdrwatch_payloads) == expected, "cdrwatch's own alerts on the stream"
    assert alerts_of(peer_payloads) == alerts_of(cdrwatch_payloads)
    assert len(peer_payloads) == len(cdrwatch_payloads) == len(expected), "one alert per user, rule and month"
    # the same breach: instant, count and evidence
    assert sorted(peer_payloads, key=key) == sorted(cdrwatch_payloads, key=key)
    cdrwatch_dead = asyncio.run(read_all(bootstrap, prefix + "cdrs-dlq"))
    peer_dead = asyncio.run(read_all(bootstrap, prefix + PEER_DLQ))
    assert len(cdrwatch_dead) == dead
    assert sorted(peer_dead) == sorted(cdrwatch_dead), "the same records, as read"
