"""The processor on plain dicts: one message through decoding and both engines, as the worker, the
offline replay and the benchmark run it."""

from __future__ import annotations

import orjson
import pytest

from streams.codecs import encode_cdr
from streams.core.state import MemoryStore
from streams.processor import Outputs, Processor, Replayed, build_processor
from streams.settings import Settings, load_plans_and_rates


def processor(partitions: int = 1) -> Processor:
    settings = Settings()
    return build_processor(settings, *load_plans_and_rates(settings), partitions=partitions)


def call(n: int, user: str = "alice", minute: int = 0) -> bytes:
    start = f"2026-11-03T10:{minute:02d}:00+01:00"
    return encode_cdr("end", f"c{n}", user, "acme", "0140000000", f"01450000{n:02d}", "outbound", start,
                      start.replace(":00+", ":05+"), "2026-11-03T10:40:00+01:00", 600, "ANSWERED")


def run(proc: Processor, messages: list[Replayed], store: MemoryStore | None = None) -> Outputs:
    store = store if store is not None else MemoryStore()
    out = Outputs()
    for message in messages:
        proc.process(message.topic, message, store, out)
    return out


def test_a_bad_message_is_a_dead_letter_with_its_reason_and_its_place() -> None:
    out = run(processor(), [Replayed("cdrs", b"alice", b"{not json", 3, 41), Replayed("cdrs", b"alice", call(1))])
    (topic, key, value, headers), = out.sends
    assert (topic, key, value) == ("cdrs-dlq", b"alice", b"{not json")
    assert headers is not None
    assert dict(headers)["cdrwatch-source"] == b"cdrs/3/41"
    assert "not valid UTF-8 JSON" in dict(headers)["cdrwatch-reason"].decode()
    assert out.counts == [("cdrs", "dlq"), ("cdrs", "ok")]


def test_a_message_keyed_by_another_user_goes_back_under_its_user_s_key() -> None:
    out = run(processor(partitions=4), [Replayed("cdrs", b"bob", call(1))])
    assert out.sends == [("cdrs", b"alice", call(1), None)]
    assert out.counts == [("cdrs", "rekeyed")] and out.applied == []
    # one partition: every user is here, nothing to move
    assert run(processor(partitions=1), [Replayed("cdrs", b"bob", call(1))]).counts == [("cdrs", "ok")]


def test_both_engines_run_on_the_plan_the_user_subscribed_to() -> None:
    store = MemoryStore()
    subscribe = Replayed("subscribers", b"alice", orjson.dumps({"customer": "acme", "plan": "fixe-illimite"}))
    out = run(processor(), [subscribe] + [Replayed("cdrs", b"alice", call(n, minute=n)) for n in range(4)], store)
    assert store.plan_of("alice") == "fixe-illimite"
    assert [(a.rule, a.plan) for a in out.alerts] == [("simultaneous_calls", "fixe-illimite")]
    assert {line.call_id for line in out.lines} == {"c0", "c1", "c2", "c3"}
    assert "alice" in store.fraud  # the fraud engine saw the same calls
    assert [status for _record, status, _message in out.applied] == ["ok"] * 4


def test_a_verdict_is_ignored_when_no_plan_has_fraud_rules() -> None:
    proc = processor()
    proc.fraud = None
    verdict = orjson.dumps({
        "feedback_id": "b" * 32, "kind": "acknowledge", "alert_id": "a" * 32, "user": "alice", "customer": "acme",
        "rule": "new_network", "rule_name": "new_network", "trust_networks": [], "suppress_until": None,
        "by": "ana", "reason": "", "time": "2026-11-05T09:00:00+01:00",
    })
    assert run(proc, [Replayed("fraud-feedback", b"alice", verdict)]).counts == [("fraud-feedback", "ignored")]


def test_an_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not an input topic"):
        run(processor(), [Replayed("fairuse-alerts", b"alice", b"{}")])
