"""Restarts and failover on the embedded broker: local RocksDB state, changelog recovery that does
not trust Tansu's short end offsets, and a worker killed with SIGKILL in the middle of a replay."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from streams.agents.pipeline import Pipeline, build_pipeline
from streams.topics import ALL_TOPICS
from streams.processor import build_processor
from streams.settings import load_plans_and_rates
from streams.core.rating import number_hash
from streams.core.state import PeriodState
from streams.tools.embedded import create_topics, is_tansu
from streams.tools.replay import (InputMessage, _message, _wait_processed, end_offsets, produce, read_stream,
                            replay, replay_external)
from streams.settings import Settings, bundled_file
from tests.brokers import Broker
from tests.workers import start_worker, workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = bundled_file("sample")


def distinct_calls(user: str, first: int, count: int) -> list[InputMessage]:
    """``count`` covered calls of ``user`` to distinct French fixed numbers, one per 10 minutes."""
    out = []
    for n in range(first, first + count):
        day, slot = 1 + n // 60, n % 60
        hour, minute = 8 + slot // 6, (slot % 6) * 10
        start = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00+01:00"
        cdr = {
            "event": "end", "call_id": f"{user}-{n}", "user": user, "customer": "acme", "caller": "0140000000",
            "callee": f"01{n:08d}", "direction": "outbound", "start_time": start,
            "answer_time": start.replace(":00+", ":05+"), "end_time": start.replace(":00+", ":50+"),
            "billsec": 45, "disposition": "ANSWERED",
        }
        out.append(_message("cdrs", orjson.dumps(cdr), cdr, "start_time"))
    return out


async def run_worker(settings: Settings, messages: list[InputMessage]) -> tuple[Pipeline, list[dict[str, Any]]]:
    """One in-process worker: start (recovering its tables), process ``messages``, commit, stop."""
    plans, rates = load_plans_and_rates(settings)
    pipeline = build_pipeline(settings, plans, rates)
    alerts: list[dict[str, Any]] = []
    pipeline.on_output.append(lambda topic, p: alerts.append(p) if topic == "fairuse-alerts" else None)
    pipeline.app.finalize()
    await pipeline.app.start()
    try:
        await produce(settings, messages)
        await _wait_processed(pipeline, len(messages), 60, None)
        await pipeline.app.consumer.commit()
    finally:
        await pipeline.app.stop()
    return pipeline, alerts


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_a_restarted_worker_keeps_its_state(broker: Broker, tmp_path: Path, store: str) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, store=store, data_dir=tmp_path, app_id=f"restart-{tag}",
                        topic_prefix=f"restart-{tag}-", web_enabled=False, partitions=2)
    asyncio.run(create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], 2))

    first, alerts = asyncio.run(run_worker(settings, distinct_calls("dora", 0, 140)))
    assert alerts == []
    written = {  # changelog records of the first run, counted without trusting ListOffsets
        table: sum((asyncio.run(end_offsets(settings, [f"{settings.app_id}-{table}-changelog"]))).values())
        for table in ("periods", "users", "fraud")
    }
    second, alerts = asyncio.run(run_worker(settings, distinct_calls("dora", 140, 11)))
    # 151 distinct numbers across the two runs: the first 140 came back from the worker's state
    assert [(a["user"], a["rule"], a["observed"]) for a in alerts] == [("dora", "distinct_numbers", 151)]
    restored = second.restored.get("periods", 0)
    if store == "rocksdb://":
        assert restored == 0, "RocksDB resumes from its own files, not from the changelog"
    else:
        # the memory store replays the whole changelog — every record, although Tansu reports the
        # end of a multi-record batch short
        assert written["periods"] >= 1 and written["users"] >= 1
        assert second.restored == written, (second.restored, written)


def test_recovery_reads_a_changelog_to_its_real_end(broker: Broker, tmp_path: Path) -> None:
    """Tansu reports the end of a partition as its last batch's base offset + 1. Here the state that
    matters is the last record of a 20-record batch: recovery must still read it. On Apache Kafka
    the reported end is right, cdrwatch applies no workaround, and recovery reads it all the same."""
    on_tansu = asyncio.run(is_tansu({"bootstrap_servers": broker.bootstrap}))
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, store="memory://", data_dir=tmp_path, app_id=f"recover-{tag}",
                        topic_prefix=f"recover-{tag}-", web_enabled=False, partitions=2)
    asyncio.run(create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], 2))
    plans, rates = load_plans_and_rates(settings)
    engine = build_processor(settings, plans, rates).fairuse
    partition = (murmur2(b"erin") & 0x7FFFFFFF) % 2  # where the default partitioner puts key "erin"
    erin = PeriodState(numbers={number_hash(f"331{n:08d}", engine.hash_key) for n in range(150)}, customer="acme",
                       plan=plans.default_plan)
    records = [(f"filler{i}|2026-11".encode(), PeriodState(customer="acme").encode()) for i in range(19)]
    records.append((b"erin|2026-11", erin.encode()))

    async def write_changelog() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
        await producer.start()
        try:
            sent = [await producer.send(f"{settings.app_id}-periods-changelog", key=k, value=v, partition=partition)
                    for k, v in records]
            metadata = await asyncio.gather(*sent)
            assert len({m.offset for m in metadata}) == 20
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        tp = TopicPartition(f"{settings.app_id}-periods-changelog", partition)
        reported = (await consumer.end_offsets([tp]))[tp]
        await consumer.stop()
        if on_tansu:
            assert reported < 20, "Tansu no longer under-reports: this test needs a new way to provoke it"
        else:
            assert reported == 20  # Apache Kafka: ListOffsets is the real end

    asyncio.run(create_topics(broker.bootstrap, [f"{settings.app_id}-periods-changelog"], 2))
    asyncio.run(write_changelog())
    call = distinct_calls("erin", 150, 1)
    pipeline, alerts = asyncio.run(run_worker(settings, call))
    assert pipeline.restored.get("periods") == 20
    assert [(a["user"], a["rule"], a["observed"]) for a in alerts] == [("erin", "distinct_numbers", 151)]


def _worker(settings: Settings, data_dir: Path) -> subprocess.Popen[bytes]:
    return start_worker(settings, data_dir)


def test_killing_a_worker_mid_replay_loses_and_doubles_nothing(
    broker: Broker, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    messages = read_stream(SAMPLE / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        SAMPLE / "registrations.jsonl", "sip-registrations", "time")
    reference = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=120))

    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, app_id=f"failover-{tag}", topic_prefix=f"failover-{tag}-",
                        web_enabled=False, partitions=4)
    asyncio.run(create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], 4))
    for name in ("a", "b"):
        workers.append(_worker(settings, tmp_path / name))

    # Two halves by event time. The first is processed and committed by both workers; worker b is
    # killed as soon as the second half starts arriving, so it dies holding work it has not
    # committed. (Triggering on the group's lag alone raced: a fast machine processes the whole
    # sample within one commit interval, so the lag jumps from "all" to "none".)
    ordered = sorted(messages, key=lambda m: m.time_ms)
    first, second = ordered[: len(ordered) // 2], ordered[len(ordered) // 2:]
    inputs = [settings.topic(t) for t in ("cdrs", "sip-registrations")]

    async def kill_when_second_half_arrives(already: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum((await end_offsets(settings, inputs)).values()) > already:
                workers[1].send_signal(signal.SIGKILL)
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the second half never arrived")

    async def scenario() -> list[Any]:
        before = await replay_external(settings, first, timeout_s=240, quiet_s=3)
        assert workers[1].poll() is None, "worker b died before it was killed"
        killer = asyncio.create_task(kill_when_second_half_arrives(sum((await end_offsets(settings, inputs)).values())))
        after = await replay_external(settings, second, timeout_s=240, quiet_s=3)
        assert killer.done(), "the kill must happen before the replay ends"
        await killer
        return [before, after]

    halves = asyncio.run(scenario())
    assert workers[1].poll() == -signal.SIGKILL
    assert workers[0].poll() is None, "the survivor must still be running"
    # de-duplicated by id across both halves: a line emitted again after the failover must be the
    # same line (same id, same amount)
    lines: dict[str, str] = {}
    for half in halves:
        for r in half.rebills:
            assert lines.setdefault(r["line_id"], r["amount"]) == r["amount"], r
    assert {a["alert_id"] for h in halves for a in h.alerts} == {a["alert_id"] for a in reference.alerts}
    assert {a["alert_id"] for h in halves for a in h.fraud_alerts} == {a["alert_id"] for a in reference.fraud_alerts}
    assert sorted(lines.items()) == sorted((r["line_id"], r["amount"]) for r in reference.rebills)
    assert reference.rebills and reference.alerts, "the sample must exercise alerts and re-billing"
