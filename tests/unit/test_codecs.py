"""Codecs: valid messages become typed records; every bad one an InvalidRecord naming the problem."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest

from streams.codecs import MAX_MESSAGE_BYTES, decode_cdr, decode_feedback, decode_registration, decode_subscriber
from streams.core.errors import InvalidRecord
from streams.core.records import CallEvent, Registration, Subscriber
from tests.factories import cdr_payload, ms, registration_payload, start_payload


def _raw(payload: Any) -> bytes:
    return orjson.dumps(payload)


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


# --------------------------------------------------------------------------------------- CDRs


def test_end_cdr_decodes() -> None:
    event = decode_cdr(_raw(cdr_payload()))
    assert event == CallEvent(
        event="end",
        call_id="call-1",
        user="alice",
        customer="acme",
        caller="+33199000000",
        callee="0145678901",
        direction="outbound",
        start_ms=ms(datetime.fromisoformat("2026-03-02T09:00:00+00:00")),
        start_time="2026-03-02T10:00:00+01:00",
        answer_ms=ms(datetime.fromisoformat("2026-03-02T09:00:05+00:00")),
        end_ms=ms(datetime.fromisoformat("2026-03-02T09:01:06+00:00")),
        billsec=61,
        disposition="ANSWERED",
    )
    assert event.is_end
    assert event.start_ms == 1772442000000  # 2026-03-02T09:00:00Z, worked out by hand


def test_start_cdr_decodes() -> None:
    event = decode_cdr(_raw(start_payload(start_time="2026-03-02T09:00:00Z")))
    assert event.event == "start" and not event.is_end
    assert (event.start_ms, event.end_ms, event.answer_ms, event.billsec, event.disposition) == (
        1772442000000, None, None, 0, None,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"answer_time": None, "billsec": 0, "disposition": "NO ANSWER"},
        {"answer_time": None, "billsec": 0, "disposition": "BUSY"},
        {"answer_time": None, "billsec": 0, "disposition": "FAILED",
         "end_time": "2026-03-02T10:00:00+01:00"},  # zero-length failed call
        {"billsec": 0},  # answered, hung up at once
        {"billsec": 62},  # switches round billsec up: one second of slack
        {"direction": "inbound"},
        {"direction": "forwarded"},
        {"callee": "anonymous"},
        {"start_time": "2026-03-02T09:00:00Z", "answer_time": "2026-03-02T09:00:05Z",
         "end_time": "2026-03-02T09:01:06Z"},
        {"start_time": "2026-03-02T09:00:00.250+00:00", "answer_time": "2026-03-02T09:00:05.500+00:00",
         "end_time": "2026-03-02T09:01:06.750+00:00"},
        {"extra_field": "ignored"},
    ],
)
def test_valid_end_cdr_variants(overrides: dict[str, Any]) -> None:
    event = decode_cdr(_raw(cdr_payload(**overrides)))
    assert event.is_end
    assert event.billsec == overrides.get("billsec", 61)


BIG = "x" * (MAX_MESSAGE_BYTES + 1)


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        (None, ["null"]),
        (b"", ["JSON"]),
        (b"{not json", ["JSON"]),
        (b'{"event": "end", "call_id": "c\xff\xfe"}', ["UTF-8"]),
        (b"\xff\xfe{}", ["UTF-8"]),
        (b"[1, 2, 3]", ["JSON object", "list"]),
        (b'"just a string"', ["JSON object", "str"]),
        (b"null", ["JSON object"]),
        (_raw(cdr_payload(call_id=BIG)), ["bytes", str(MAX_MESSAGE_BYTES)]),
        (_raw(_without(cdr_payload(), "callee")), ["missing", "callee"]),
        (_raw(_without(cdr_payload(), "start_time")), ["missing", "start_time"]),
        (_raw(_without(cdr_payload(), "end_time")), ["missing", "end_time"]),
        (_raw(_without(cdr_payload(), "billsec")), ["missing", "billsec"]),
        (_raw(_without(cdr_payload(), "answer_time")), ["missing", "answer_time"]),
        (_raw(_without(start_payload(), "direction")), ["missing", "direction"]),
        (_raw(cdr_payload(billsec="61")), ["billsec", "integer"]),
        (_raw(cdr_payload(billsec=True)), ["billsec", "integer"]),
        (_raw(cdr_payload(billsec=-1)), ["billsec"]),
        (_raw(cdr_payload(user=42)), ["user", "string"]),
        (_raw(cdr_payload(user="")), ["user"]),
        (_raw(cdr_payload(callee=None)), ["callee"]),
        (_raw(cdr_payload(start_time=1772442000)), ["start_time"]),
        (_raw(cdr_payload(event="middle")), ["event"]),
        (_raw(cdr_payload(direction="sideways")), ["direction"]),
        (_raw(cdr_payload(disposition="ANSWERED_MAYBE")), ["disposition"]),
        (_raw(cdr_payload(start_time="2026-03-02T10:00:00.000")), ["start_time", "offset"]),
        (_raw(cdr_payload(start_time="2026-03-02T10:00:00")), ["start_time", "offset is missing",
                                                               "e.g. 2026-11-03T09:15:02+01:00"]),
        (_raw(start_payload(start_time="2026-03-02T10:00:00.000")), ["start_time", "offset"]),
        (_raw(cdr_payload(end_time="2026-03-02T10:01:06.000")), ["end_time", "offset"]),
        (_raw(cdr_payload(answer_time="2026-03-02T10:00:05.000")), ["answer_time", "offset"]),
        (_raw(cdr_payload(start_time="yesterday at ten o'clock")), ["start_time"]),
        (_raw(cdr_payload(start_time="2026-02-30T10:00:00+01:00")), ["start_time"]),
        (_raw(cdr_payload(end_time="2026-03-02T09:59:59+01:00", answer_time=None, billsec=0,
                          disposition="NO ANSWER")), ["end_time", "start_time"]),
        (_raw(cdr_payload(billsec=120)), ["billsec", "120"]),
        (_raw(cdr_payload(answer_time=None, billsec=30, disposition="NO ANSWER")), ["billsec", "answer_time"]),
        (_raw(cdr_payload(answer_time=None, billsec=0, disposition="ANSWERED")), ["ANSWERED", "answer_time"]),
        (_raw(cdr_payload(billsec=30, disposition="BUSY")), ["billsec", "BUSY"]),
        (_raw(cdr_payload(answer_time="2026-03-02T09:59:59+01:00")), ["answer_time"]),
        (_raw(cdr_payload(answer_time="2026-03-02T10:01:07+01:00", billsec=0)), ["answer_time"]),
        (_raw(cdr_payload(start_time="1970-01-01T00:00:00Z", answer_time=None, billsec=0,
                          disposition="NO ANSWER", end_time="1970-01-01T00:01:00Z")), ["start_time", "1970"]),
        (_raw(cdr_payload(start_time="2150-03-02T10:00:00+01:00", answer_time="2150-03-02T10:00:05+01:00",
                          end_time="2150-03-02T10:01:06+01:00")), ["start_time", "2150"]),
        (_raw(start_payload(start_time="1970-01-01T00:00:00Z")), ["start_time", "1970"]),
        (_raw(cdr_payload(end_time="2150-03-02T10:01:06+01:00")), ["end_time", "2150"]),
    ],
    ids=[
        "null-value", "empty-bytes", "invalid-json", "non-utf8-string", "non-utf8-bom", "json-array",
        "json-string", "json-null", "too-big", "missing-callee", "missing-start_time", "missing-end_time",
        "missing-billsec", "missing-answer_time", "start-missing-direction", "billsec-string", "billsec-bool",
        "billsec-negative", "user-number", "user-empty", "callee-null", "start_time-number", "bad-event",
        "bad-direction", "bad-disposition", "naive-start", "naive-start-short", "naive-start-on-start-event",
        "naive-end", "naive-answer", "start_time-words", "start_time-impossible-date", "end-before-start",
        "billsec-over-talk-time", "billsec-unanswered", "answered-without-answer_time", "billsec-busy",
        "answer-before-start", "answer-after-end", "year-1970", "year-2150", "start-event-1970", "end-2150",
    ],
)
def test_bad_cdrs(raw: bytes | None, needles: list[str]) -> None:
    with pytest.raises(InvalidRecord) as info:
        decode_cdr(raw)
    message = str(info.value)
    assert message
    for needle in needles:
        assert needle in message, (needle, message)


def test_message_at_the_size_limit_is_not_rejected_for_size() -> None:
    payload = cdr_payload(caller="")
    padding = MAX_MESSAGE_BYTES - len(_raw(payload))
    payload["comment"] = "x" * (padding - len(b',"comment":""'))
    raw = _raw(payload)
    assert len(raw) == MAX_MESSAGE_BYTES
    assert decode_cdr(raw).call_id == "call-1"


# ------------------------------------------------------------------------------ registrations


def test_registration_decodes() -> None:
    reg = decode_registration(_raw(registration_payload()))
    assert reg == Registration(
        user="alice",
        customer="acme",
        contact="sip:alice@192.0.2.10:5060;transport=udp",
        instance_id="<urn:uuid:00000000-0000-0000-0000-000000000001>",
        user_agent="Yealink SIP-T46S 66.86.0.15",
        source_ip="192.0.2.10",
        expires=3600,
        time_ms=1772445600000,  # 2026-03-02T10:00:00Z
        time="2026-03-02T10:00:00Z",
    )
    assert reg.binding == "<urn:uuid:00000000-0000-0000-0000-000000000001>"


@pytest.mark.parametrize("instance_id", [None, ""])
def test_registration_without_instance_is_identified_by_contact(instance_id: str | None) -> None:
    reg = decode_registration(_raw(registration_payload(instance_id=instance_id)))
    assert reg.instance_id is None
    assert reg.binding == "sip:alice@192.0.2.10:5060;transport=udp"


def test_unregister_decodes() -> None:
    assert decode_registration(_raw(registration_payload(expires=0))).expires == 0


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        (None, ["null"]),
        (b"<xml/>", ["JSON"]),
        (b"[]", ["JSON object"]),
        (b'{"user": "\xc3"}', ["UTF-8"]),
        (_raw(_without(registration_payload(), "contact")), ["missing", "contact"]),
        (_raw(_without(registration_payload(), "instance_id")), ["missing", "instance_id"]),
        (_raw(_without(registration_payload(), "expires")), ["missing", "expires"]),
        (_raw(registration_payload(expires="3600")), ["expires", "integer"]),
        (_raw(registration_payload(expires=-1)), ["expires"]),
        (_raw(registration_payload(expires=10**9)), ["expires"]),
        (_raw(registration_payload(user_agent=None)), ["user_agent"]),
        (_raw(registration_payload(instance_id=7)), ["instance_id"]),
        (_raw(registration_payload(time="2026-03-02T10:00:00.000")), ["time", "offset"]),
        (_raw(registration_payload(time="1970-01-01T00:00:00Z")), ["time", "1970"]),
        (_raw(registration_payload(time="2150-01-01T00:00:00Z")), ["time", "2150"]),
        (_raw(registration_payload(user_agent="x" * (MAX_MESSAGE_BYTES + 1))), ["bytes"]),
    ],
    ids=[
        "null-value", "not-json", "json-array", "non-utf8", "missing-contact", "missing-instance_id",
        "missing-expires", "expires-string", "expires-negative", "expires-huge", "user_agent-null",
        "instance_id-number", "naive-time", "year-1970", "year-2150", "too-big",
    ],
)
def test_bad_registrations(raw: bytes | None, needles: list[str]) -> None:
    with pytest.raises(InvalidRecord) as info:
        decode_registration(raw)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


# -------------------------------------------------------------------------------- subscribers


def _known(name: str) -> bool:
    return name in {"unlimited", "per-second"}


def test_subscriber_decodes() -> None:
    sub = decode_subscriber(b"alice", _raw({"customer": "acme", "plan": "per-second"}), _known)
    assert sub == Subscriber(user="alice", customer="acme", plan="per-second")


def test_subscriber_tombstone_reverts_to_default_plan() -> None:
    assert decode_subscriber(b"alice", None, _known) == Subscriber(user="alice", customer=None, plan=None)


@pytest.mark.parametrize(
    ("key", "raw", "needles"),
    [
        (b"alice", _raw({"customer": "acme", "plan": "gold"}), ["unknown plan", "gold", "alice"]),
        (b"alice", _raw({"customer": "acme"}), ["missing", "plan"]),
        (b"alice", _raw({"customer": "acme", "plan": 3}), ["plan"]),
        (b"alice", b"{", ["JSON"]),
        (None, _raw({"customer": "acme", "plan": "unlimited"}), ["key"]),
    ],
    ids=["unknown-plan", "missing-plan", "plan-number", "invalid-json", "no-key"],
)
def test_bad_subscribers(key: bytes | None, raw: bytes, needles: list[str]) -> None:
    with pytest.raises(InvalidRecord) as info:
        decode_subscriber(key, raw, _known)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


FEEDBACK = {
    "feedback_id": "b" * 32, "kind": "false_positive", "alert_id": "a" * 32, "user": "alice", "customer": "acme",
    "rule": "new_network", "rule_name": "new_network", "trust_networks": ["198.51.100.0/24"],
    "suppress_until": "2026-03-05T10:00:00+01:00", "by": "ana", "reason": "her home router", "time":
    "2026-03-04T10:00:00+01:00",
}


def test_a_verdict_decodes_to_what_the_fraud_engine_applies() -> None:
    fb = decode_feedback(orjson.dumps(FEEDBACK))
    assert (fb.kind, fb.user, fb.rule_name, fb.networks) == ("false_positive", "alice", "new_network",
                                                             ("198.51.100.0/24",))
    assert (fb.mute_until_ms, fb.time_ms) == (1772701200000, 1772614800000)
    assert decode_feedback(orjson.dumps({**FEEDBACK, "suppress_until": None})).mute_until_ms is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"kind": "ignore"}, "kind"),
    ({"trust_networks": ["198.51.100.7"]}, "trust_networks"),
    ({"by": ""}, "by"),
    ({"suppress_until": "2026-03-05T10:00:00"}, "suppress_until"),
])
def test_a_bad_verdict_is_refused_with_its_reason(change: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode_feedback(orjson.dumps({**FEEDBACK, **change}))
