"""The worker's shell on its shipped path: batches of input messages through the batch handler the
batching consumer calls, outputs to in-memory channels, state through the changelog writer (its
records to an in-process producer), on the memory store."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from faust.types import Message

from streams.agents.pipeline import Pipeline
from streams.codecs import encode_cdr, registration_payload


def cdr(call_id: str, *, user: str = "alice", start: str = "2026-11-03T10:00:00+01:00",
        end: str = "2026-11-03T10:30:00+01:00", callee: str = "0145000000", billsec: int = 600,
        event: str = "end") -> bytes:
    return encode_cdr(event, call_id, user, "acme", "0140000000", callee, "outbound", start,
                      start.replace(":00+", ":05+"), end, billsec, "ANSWERED")


async def feed(pipe: Pipeline, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    """One batch of ``topic`` messages, each in its key's partition, through the handler the
    batching consumer calls."""
    partitions = pipe.settings.partitions
    messages = [
        Message(topic=pipe.settings.topic(topic), partition=(murmur2(key) & 0x7FFFFFFF) % partitions, offset=n,
                timestamp=0.0, timestamp_type=0, headers=[], key=key, value=value, checksum=None)
        for n, (key, value) in enumerate(records)
    ]
    await pipe.app.cdrwatch_batch_handler(messages)  # type: ignore[attr-defined]
    await pipe.writer.drain()  # the changelog batches handed to the producer, as the checkpoint does


def changelog(pipe: Pipeline) -> dict[tuple[str, int], int]:
    return pipe.changelog.records()  # type: ignore[attr-defined, no-any-return]


async def drain(pipe: Pipeline, topic: str) -> list[Any]:
    tap = pipe.taps[topic]  # type: ignore[attr-defined]
    out = []
    while not tap.empty():
        out.append(await tap.get())
    return out


async def test_overlapping_calls_raise_one_alert_and_rebill_lines(pipeline: Pipeline) -> None:
    messages = [(b"alice", cdr(f"c{i}", start=f"2026-11-03T10:0{i}:00+01:00")) for i in range(4)]
    await feed(pipeline, "cdrs", messages + [(b"alice", cdr("c0", start="2026-11-03T10:00:00+01:00"))])  # a duplicate
    alerts = [orjson.loads(e.value) for e in await drain(pipeline, "fairuse-alerts")]
    lines = [orjson.loads(e.value) for e in await drain(pipeline, "rebilled-calls")]
    assert [(a["user"], a["rule"], a["period"], a["observed"]) for a in alerts] == [
        ("alice", "simultaneous_calls", "2026-11", 4)
    ]
    assert sorted(line["call_id"] for line in lines) == ["c0", "c1", "c2", "c3"]
    assert pipeline.metrics.counts == {("cdrs", "ok"): 4, ("cdrs", "duplicate"): 1}
    assert pipeline.processed == 5
    # the batch's state written once per key, to the changelog partition of the user's input partition
    partition = (murmur2(b"alice") & 0x7FFFFFFF) % pipeline.settings.partitions
    app_id = pipeline.settings.app_id
    assert changelog(pipeline) == {(f"{app_id}-periods-changelog", partition): 1,
                                   (f"{app_id}-users-changelog", partition): 1,
                                   (f"{app_id}-fraud-changelog", partition): 1}


async def test_bad_message_goes_to_dlq_and_the_agent_keeps_going(pipeline: Pipeline) -> None:
    await feed(pipeline, "cdrs", [
        (b"alice", b"{not json"),
        (b"alice", cdr("ok-1")),
    ])
    dead = await drain(pipeline, "cdrs-dlq")
    assert len(dead) == 1
    assert dead[0].value == b"{not json"
    reason = dict(dead[0].headers)["cdrwatch-reason"].decode()
    assert "not valid UTF-8 JSON" in reason
    assert pipeline.metrics.counts == {("cdrs", "dlq"): 1, ("cdrs", "ok"): 1}


async def test_table_state_is_keyed_by_user_and_month(pipeline: Pipeline) -> None:
    await feed(pipeline, "cdrs", [(b"bob", cdr("b1", user="bob", start="2026-10-31T23:30:00+00:00",
                                               end="2026-10-31T23:40:00+00:00", billsec=60))])
    # 23:30 UTC on 31 October is 00:30 on 1 November in Paris
    assert set(pipeline.periods.keys()) == {b"bob|2026-11"}
    assert b"bob" in pipeline.users


async def test_registration_agent_flags_a_pbx(pipeline: Pipeline) -> None:
    reg = registration_payload("carol", "acme", "sip:carol@192.0.2.10:5060", None, "FreeSWITCH-mod_sofia/1.10.9",
                               "192.0.2.10", 3600, "2026-11-05T09:00:00+01:00")
    await feed(pipeline, "sip-registrations", [
        (b"carol", orjson.dumps(reg)),
        (b"carol", orjson.dumps(reg)),  # a retransmitted REGISTER
    ])
    alerts = [orjson.loads(e.value) for e in await drain(pipeline, "fairuse-alerts")]
    assert [(a["rule"], a["multiplier"]) for a in alerts] == [("pbx_or_gateway", 4)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (orjson.dumps({"customer": "acme", "plan": "fixe-illimite"}), b"fixe-illimite"),
        (None, None),
    ],
)
async def test_subscriber_records_set_and_clear_the_plan(pipeline: Pipeline, value: bytes | None,
                                                         expected: bytes | None) -> None:
    await feed(pipeline, "subscribers", [
        (b"dave", orjson.dumps({"customer": "acme", "plan": "pro-illimite"})),
        (b"dave", value),
    ])
    assert pipeline.subscribers.get(b"dave") == expected


async def test_subscriber_with_unknown_plan_is_rejected(pipeline: Pipeline) -> None:
    await feed(pipeline, "subscribers", [
        (b"erin", orjson.dumps({"customer": "acme", "plan": "gold"})),
    ])
    dead = await drain(pipeline, "subscribers-dlq")
    assert "unknown plan 'gold'" in dict(dead[0].headers)["cdrwatch-reason"].decode()
    assert b"erin" not in pipeline.subscribers


def verdict(**change: Any) -> bytes:
    payload = {
        "feedback_id": "b" * 32, "kind": "false_positive", "alert_id": "a" * 32, "user": "frank",
        "customer": "acme", "rule": "new_network", "rule_name": "new_network", "trust_networks": ["198.51.100.0/24"],
        "suppress_until": "2026-11-06T09:00:00+01:00", "by": "ana", "reason": "her home router",
        "time": "2026-11-05T09:00:00+01:00",
    }
    return orjson.dumps(payload | change)


async def test_an_analyst_s_verdict_lands_in_the_user_s_fraud_state(pipeline: Pipeline) -> None:
    from streams.core.state import FraudState

    await feed(pipeline, "fraud-feedback", [
        (b"frank", verdict()),
        (b"frank", verdict()),  # the same verdict again
        (b"frank", verdict(kind="ignore")),
    ])
    state = FraudState.decode(pipeline.fraud_table.get(b"frank"))
    assert list(state.trusted) == ["198.51.100.0/24"] and list(state.muted) == ["new_network"]
    assert pipeline.metrics.counts == {("fraud-feedback", "ok"): 1, ("fraud-feedback", "duplicate"): 1,
                                       ("fraud-feedback", "dlq"): 1}
    dead = await drain(pipeline, "fraud-feedback-dlq")
    assert "kind" in dict(dead[0].headers)["cdrwatch-reason"].decode()
