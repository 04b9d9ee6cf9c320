"""The boundary: bytes <-> core records. Validation happens here and only here; a bad message
becomes an ``InvalidRecord`` whose text is the DLQ reason. The payload builders at the end are
the one place input payloads are written (generator, samples, importers, ingest, bench, tests)."""

from __future__ import annotations

from typing import Any, Callable

import fastjsonschema
import orjson

from .core.errors import InvalidRecord
from .core.records import CallEvent, Feedback, Registration, Subscriber
from .core.schemas import explain, validator
from .core.timeutil import instant_us

MAX_MESSAGE_BYTES = 64 * 1024
# CDRs from before this or after that are typos or clock faults, not calls.
_EARLIEST_US = instant_us("2000-01-01T00:00:00+00:00")
_LATEST_US = instant_us("2100-01-01T00:00:00+00:00")

MAX_CALL_US = 31 * 86_400 * 1_000_000  # 31 days: the schema's billsec ceiling too


def _load(raw: bytes | None, schema: str) -> dict[str, Any]:
    if raw is None:
        raise InvalidRecord("empty message (null value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidRecord(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(data).__name__}")
    try:
        validator(schema)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidRecord(explain(exc)) from None
    return data


def _time(data: dict[str, Any], field: str) -> int:
    """The instant of a timestamp field in epoch µs (exact: compared and subtracted as is)."""
    try:
        us = instant_us(data[field])
    except ValueError as exc:
        raise InvalidRecord(f"{field}: {exc}") from None
    if not _EARLIEST_US <= us < _LATEST_US:
        raise InvalidRecord(f"{field}: {data[field]} is outside 2000-2099")
    return us


def decode_cdr(raw: bytes | None) -> CallEvent:
    data = _load(raw, "cdrs")
    start = _time(data, "start_time")
    if data["event"] == "start":
        return CallEvent(data["event"], data["call_id"], data["user"], data["customer"], data["caller"],
                         data["callee"], data["direction"], start // 1000, data["start_time"])
    end = _time(data, "end_time")
    if end < start:
        raise InvalidRecord(f"end_time {data['end_time']} is before start_time {data['start_time']}")
    if end - start > MAX_CALL_US:
        days = (end - start) // (86_400 * 1_000_000)
        raise InvalidRecord(f"end_time is {days} days after start_time (a call lasts at most 31 days)")
    billsec = int(data["billsec"])  # JSON Schema's integer admits 61.0
    answer_ms = None
    if data["answer_time"] is None:
        if billsec:
            raise InvalidRecord(f"billsec {billsec} on a call with no answer_time")
        if data["disposition"] == "ANSWERED":
            raise InvalidRecord("disposition ANSWERED with a null answer_time")
    else:
        answer = _time(data, "answer_time")
        if not start <= answer <= end:
            raise InvalidRecord(
                f"answer_time {data['answer_time']} is outside [start_time, end_time]"
            )
        talk = (end - answer) / 1_000_000  # what timedelta.total_seconds() gives
        if billsec > talk + 1:  # switches round billsec up to the second
            raise InvalidRecord(f"billsec {billsec} exceeds the {talk:.0f} s between answer_time and end_time")
        answer_ms = answer // 1000
    if billsec and data["disposition"] != "ANSWERED":
        raise InvalidRecord(f"billsec {billsec} on a call with disposition {data['disposition']}")
    return CallEvent(data["event"], data["call_id"], data["user"], data["customer"], data["caller"], data["callee"],
                     data["direction"], start // 1000, data["start_time"], answer_ms, end // 1000, billsec,
                     data["disposition"])


def decode_registration(raw: bytes | None) -> Registration:
    data = _load(raw, "sip-registrations")
    time_ms = _time(data, "time") // 1000
    return Registration(
        user=data["user"],
        customer=data["customer"],
        contact=data["contact"],
        instance_id=data["instance_id"] or None,
        user_agent=data["user_agent"],
        source_ip=data["source_ip"],
        expires=int(data["expires"]),
        time_ms=time_ms,
        time=data["time"],
    )


def decode_subscriber(key: bytes | None, raw: bytes | None, known_plans: Callable[[str], bool]) -> Subscriber:
    user = decode_key(key)
    if user is None:
        raise InvalidRecord("subscriber record without a key (the key is the user)")
    if raw is None:
        return Subscriber(user=user, customer=None, plan=None)
    data = _load(raw, "subscribers")
    if not known_plans(data["plan"]):
        raise InvalidRecord(f"unknown plan {data['plan']!r} for user {user!r} (not in plans.toml)")
    return Subscriber(user=user, customer=data["customer"], plan=data["plan"])


def decode_feedback(raw: bytes | None) -> Feedback:
    data = _load(raw, "fraud-feedback")
    time_ms = _time(data, "time") // 1000
    until = data["suppress_until"]
    return Feedback(
        feedback_id=data["feedback_id"],
        kind=data["kind"],
        alert_id=data["alert_id"],
        user=data["user"],
        rule_name=data["rule_name"],
        networks=tuple(data["trust_networks"]),
        mute_until_ms=_time(data, "suppress_until") // 1000 if until is not None else None,
        time_ms=time_ms,
    )


def decode_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


# ------------------------------------------------------------------------------ payload builders


def cdr_payload(event: str, call_id: str, user: str, customer: str, caller: str, callee: str, direction: str,
                start_time: str, answer_time: str | None = None, end_time: str | None = None, billsec: int = 0,
                disposition: str | None = None) -> dict[str, Any]:
    """A ``cdrs`` payload (``schemas/cdrs.schema.json``): a ``start`` has the call's setup, an
    ``end`` the call's outcome too. Times are RFC 3339 strings, as sent."""
    payload: dict[str, Any] = {
        "event": event,
        "call_id": call_id,
        "user": user,
        "customer": customer,
        "caller": caller,
        "callee": callee,
        "direction": direction,
        "start_time": start_time,
    }
    if event == "end":
        payload["answer_time"] = answer_time
        payload["end_time"] = end_time
        payload["billsec"] = billsec
        payload["disposition"] = disposition
    return payload


def registration_payload(user: str, customer: str, contact: str, instance_id: str | None, user_agent: str,
                         source_ip: str, expires: int, time: str) -> dict[str, Any]:
    """A ``sip-registrations`` payload (``schemas/sip-registrations.schema.json``)."""
    return {
        "user": user,
        "customer": customer,
        "contact": contact,
        "instance_id": instance_id,
        "user_agent": user_agent,
        "source_ip": source_ip,
        "expires": expires,
        "time": time,
    }


def encode_cdr(event: str, call_id: str, user: str, customer: str, caller: str, callee: str, direction: str,
               start_time: str, answer_time: str | None = None, end_time: str | None = None, billsec: int = 0,
               disposition: str | None = None) -> bytes:
    """``cdr_payload`` as the bytes of a message."""
    return orjson.dumps(cdr_payload(event, call_id, user, customer, caller, callee, direction, start_time,
                                    answer_time, end_time, billsec, disposition))
