"""Bad input in volume: 10,000 malformed messages interleaved with good ones, through
the embedded broker and a real worker. Every bad one must land in its topic's DLQ with a reason,
every good one must be processed, and the counts must reconcile:
consumed = ok + late + duplicate + dlq, per topic.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import orjson
import pytest

from streams.topics import EVENT_TOPICS
from streams.codecs import MAX_MESSAGE_BYTES, decode_cdr, decode_registration, decode_subscriber
from streams.core.errors import InvalidRecord
from streams.tools.replay import InputMessage, replay, run_offline
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = pytest.mark.integration

N_BAD = 10_000
SEED = 2026
GOOD_USERS = 50
CALLS_PER_USER = 56
ABUSER = "vol-distinct"  # 160 distinct covered numbers: one alert and re-bill lines among the noise
TOPICS = EVENT_TOPICS
STATUSES = ("ok", "late", "duplicate", "dlq")


@dataclass(frozen=True)
class Bad:
    topic: str
    key: bytes | None
    value: bytes | None
    family: str
    reason: str  # a fragment the DLQ reason must contain


def user_name(u: int) -> str:
    return f"vol-u{u:02d}"


def cdr(user: str, n: int, *, day: int, minute: int, callee: str, month: int = 11) -> dict[str, Any]:
    """An answered outbound call of 60 s (Paris time), covered (French fixed number)."""
    stamp = f"2026-{month:02d}-{day:02d}T{9 + minute // 60:02d}:{minute % 60:02d}"
    return {
        "event": "end", "call_id": f"{user}-{month}-{n}", "user": user, "customer": "Société Générale",
        "caller": "+33970000001", "callee": callee, "direction": "outbound",
        "start_time": f"{stamp}:00+01:00", "answer_time": f"{stamp}:05+01:00", "end_time": f"{stamp}:59+01:00",
        "billsec": 54, "disposition": "ANSWERED",
    }


def registration(user: str, n: int) -> dict[str, Any]:
    return {
        "user": user, "customer": "acme", "contact": f"sip:{user}@192.0.2.{n % 250}:5060",
        "instance_id": f"<urn:uuid:00000000-0000-4000-8000-{n:012d}>", "user_agent": "Yealink SIP-T46S 66.86.0.15",
        "source_ip": "198.51.100.7", "expires": 3600, "time": f"2026-11-02T08:{n % 60:02d}:00+01:00",
    }


# ------------------------------------------------------------------------------- bad messages


def bad_cdr_payloads(n: int) -> list[tuple[str, Any, str]]:
    """(family, payload or raw bytes, reason fragment) for message number ``n`` (unique call_id)."""
    base = cdr("vol-bad", n, day=2 + n % 25, minute=n % 480, callee=f"01{n:08d}")
    tag = f"bad-{n}"
    base["call_id"] = tag
    raw = orjson.dumps(base)
    drop = ["event", "call_id", "user", "customer", "caller", "callee", "direction", "start_time",
            "answer_time", "end_time", "billsec", "disposition"][n % 12]
    return [
        # bad JSON
        ("bad-json", raw[: -(1 + n % 20)], "not valid UTF-8 JSON"),
        ("bad-json", raw.replace(b'"billsec":54', b'"billsec":NaN'), "not valid UTF-8 JSON"),
        ("bad-json", raw.replace(b'"billsec":54', b'"billsec":Infinity'), "not valid UTF-8 JSON"),
        ("bad-json", raw[:-1] + b",}", "not valid UTF-8 JSON"),
        ("bad-json", raw.replace(b'"', b"'"), "not valid UTF-8 JSON"),
        ("bad-json", raw + b" // " + tag.encode(), "not valid UTF-8 JSON"),
        ("bad-json", raw.replace(b'"vol-bad"', b'"vol\x01bad"'), "not valid UTF-8 JSON"),
        ("bad-json", b"{" * 600 + tag.encode(), "not valid UTF-8 JSON"),
        # JSON, but not an object
        ("not-object", b"[" + raw + b"]", "expected a JSON object"),
        ("not-object", orjson.dumps(tag), "expected a JSON object"),
        ("not-object", str(n).encode(), "expected a JSON object"),
        # missing fields
        ("missing-field", {k: v for k, v in base.items() if k != drop}, f"missing required field(s): {drop}"),
        # wrong types
        ("wrong-type", base | {"billsec": "54"}, "billsec: must be integer"),
        ("wrong-type", base | {"billsec": 54.5}, "billsec: must be integer"),
        ("wrong-type", base | {"billsec": True}, "billsec: must be integer"),
        ("wrong-type", base | {"call_id": n}, "call_id: must be string"),
        ("wrong-type", base | {"user": [tag]}, "user: must be string"),
        ("wrong-type", base | {"start_time": 1793610000 + n}, "start_time: must be string"),
        ("wrong-type", base | {"answer_time": {"at": tag}}, "answer_time: must be"),
        ("wrong-type", base | {"event": None}, "event: must be one of"),
        ("wrong-type", base | {"direction": "sideways"}, "direction: must be one of"),
        ("wrong-type", base | {"disposition": "MAYBE"}, "disposition: must be one of"),
        ("wrong-type", base | {"call_id": ""}, "call_id: must be longer than"),
        ("wrong-type", base | {"user": ""}, "user: must be longer than"),
        # impossible times
        ("impossible-time", base | {"start_time": "2026-11-02 10:00:00"}, "start_time"),
        ("impossible-time", base | {"start_time": f"yesterday, call {tag}!"}, "start_time: not an RFC 3339"),
        ("impossible-time", base | {"end_time": "2026-10-01T10:00:00+01:00"}, "before start_time"),
        ("impossible-time", base | {"answer_time": "2026-10-01T10:00:00+01:00"}, "outside [start_time, end_time]"),
        ("impossible-time", base | {"start_time": "2026-02-30T10:00:00+01:00"}, "start_time: not an RFC 3339"),
        ("impossible-time", base | {"start_time": "2026-11-02T25:00:00+01:00"}, "start_time: not an RFC 3339"),
        ("impossible-time", base | {"start_time": "1970-01-01T00:00:00+00:00", "answer_time": None,
                                   "end_time": "1970-01-01T00:00:01+00:00", "billsec": 0,
                                   "disposition": "FAILED"}, "outside 2000-2099"),
        ("impossible-time", base | {"end_time": "2150-01-01T00:00:00+00:00"}, "outside 2000-2099"),
        ("impossible-time", base | {"billsec": 5000}, "exceeds the"),
        ("impossible-time", base | {"answer_time": None}, "no answer_time"),
        ("impossible-time", base | {"disposition": "BUSY"}, "on a call with disposition BUSY"),
        ("impossible-time", base | {"answer_time": None, "billsec": 0}, "ANSWERED with a null answer_time"),
        # absurd numbers
        ("absurd-number", base | {"billsec": -1 - n}, "billsec: must be bigger than or equal to 0"),
        ("absurd-number", base | {"billsec": 10**12 + n}, "billsec: must be smaller than or equal to"),
        ("absurd-number", raw.replace(b'"billsec":54', b'"billsec":' + str(2**70 + n).encode()), "billsec"),
        ("absurd-number", raw.replace(b'"billsec":54', b'"billsec":1e308'), "billsec"),
        # huge payloads
        ("huge", base | {"padding": "x" * (MAX_MESSAGE_BYTES + n % 5000)}, f"exceeds the {MAX_MESSAGE_BYTES}-byte"),
        ("huge", base | {"callee": "0" * 129}, "callee: must be shorter than"),
        # wrong encodings (the payload holds "Société Générale")
        ("encoding", raw.decode().encode("latin-1"), "not valid UTF-8 JSON"),
        ("encoding", raw.decode().encode("utf-16"), "not valid UTF-8 JSON"),
        ("encoding", raw.decode().encode("utf-32-le"), "not valid UTF-8 JSON"),
        ("encoding", b"\xef\xbb\xbf" + raw, "not valid UTF-8 JSON"),
        ("encoding", raw.decode().encode("cp1252"), "not valid UTF-8 JSON"),
        # empty and null
        ("empty", b"", "not valid UTF-8 JSON"),
        ("empty", b"null", "expected a JSON object, got NoneType"),
        ("empty", None, "empty message (null value)"),
        ("empty", b"{}", "missing required field(s)"),
    ]


def bad_registration_payloads(n: int) -> list[tuple[str, Any, str]]:
    base = registration("vol-bad", n)
    base["contact"] = f"sip:bad-{n}@192.0.2.1"
    return [
        ("missing-field", {k: v for k, v in base.items() if k != "time"}, "missing required field(s): time"),
        ("wrong-type", base | {"expires": "3600"}, "expires: must be integer"),
        ("absurd-number", base | {"expires": -5}, "expires: must be bigger than or equal to 0"),
        ("absurd-number", base | {"expires": 10**9}, "expires: must be smaller than or equal to"),
        ("impossible-time", base | {"time": "2026-11-02T08:00:00"}, "time"),
        ("impossible-time", base | {"time": "1999-12-31T23:59:59Z"}, "outside 2000-2099"),
        ("encoding", orjson.dumps(base | {"user_agent": "Téléphone"}).decode().encode("latin-1"),
         "not valid UTF-8 JSON"),
        ("bad-json", orjson.dumps(base)[:-2], "not valid UTF-8 JSON"),
        ("empty", None, "empty message (null value)"),
    ]


def bad_subscriber_payloads(n: int) -> list[tuple[bytes | None, Any, str]]:
    key = f"vol-sub-{n}".encode()
    return [
        (key, {"customer": "acme", "plan": f"no-such-plan-{n}"}, "unknown plan"),
        (key, {"customer": "acme"}, "missing required field(s): plan"),
        (key, b"{not json " + key, "not valid UTF-8 JSON"),
        (None, {"customer": "acme", "plan": "full-illimite"}, "without a key"),
    ]


def bad_messages(rng: random.Random) -> list[Bad]:
    """N_BAD malformed messages: 90 % CDRs (each family in turn), 8 % registrations, 2 % subscribers."""
    out: list[Bad] = []
    n = 0
    while len(out) < N_BAD:
        n += 1
        roll = len(out) % 50
        if roll == 0:
            key, payload, reason = rng.choice(bad_subscriber_payloads(n))
            topic, family = "subscribers", "subscriber"
        elif roll <= 4:
            family, payload, reason = rng.choice(bad_registration_payloads(n))
            topic, key = "sip-registrations", b"vol-bad"
        else:
            choices = bad_cdr_payloads(n)
            family, payload, reason = choices[n % len(choices)]
            topic, key = "cdrs", rng.choice([b"vol-bad", None])
        value = payload if payload is None or isinstance(payload, bytes) else orjson.dumps(payload)
        if value is None and key is None:  # Kafka needs a key or a value
            key = b"vol-bad"
        out.append(Bad(topic, key, value, family, reason))
    return out


def rejected(bad: Bad) -> bool:
    decoders: dict[str, Callable[[], Any]] = {
        "cdrs": lambda: decode_cdr(bad.value),
        "sip-registrations": lambda: decode_registration(bad.value),
        "subscribers": lambda: decode_subscriber(bad.key, bad.value, lambda p: p == "full-illimite"),
    }
    try:
        decoders[bad.topic]()
    except InvalidRecord:
        return True
    return False


# ------------------------------------------------------------------------------ good messages


def good_messages(rng: random.Random) -> tuple[list[InputMessage], dict[str, int], list[InputMessage]]:
    """Good CDRs and REGISTERs in event-time order, plus the tail sent after them: late (October)
    calls, re-sent `end` events (duplicates) and calls three months old (too late: DLQ)."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    for u in range(GOOD_USERS):
        user = user_name(u)
        events.append(("sip-registrations", "2026-11-02T07:00", registration(user, u)))
        for j in range(CALLS_PER_USER):
            payload = cdr(user, j, day=2 + j // 4 + u % 3, minute=(j % 4) * 90 + u, callee=f"01{u:02d}{j:06d}")
            events.append(("cdrs", str(payload["start_time"]), payload))
    events.append(("sip-registrations", "2026-11-02T07:00", registration(ABUSER, 999)))
    for j in range(160):
        payload = cdr(ABUSER, j, day=2 + j // 8, minute=(j % 8) * 50, callee=f"06{j:08d}")
        events.append(("cdrs", str(payload["start_time"]), payload))
    events.sort(key=lambda e: e[1])
    head = [InputMessage(t, p["user"].encode(), orjson.dumps(p), 0.0) for t, _, p in events]
    ends = [m for m in head if m.topic == "cdrs"]
    duplicates = rng.sample(ends, 120)
    late = [cdr(user_name(u), 900 + u, day=15, minute=u, callee=f"05{u:08d}", month=10) for u in range(GOOD_USERS)]
    stale = [cdr(user_name(u), 800 + u, day=15, minute=u, callee=f"04{u:08d}", month=7) for u in range(10)]
    tail = duplicates + [InputMessage("cdrs", p["user"].encode(), orjson.dumps(p), 0.0) for p in late]
    rng.shuffle(tail)
    stale_msgs = [InputMessage("cdrs", p["user"].encode(), orjson.dumps(p), 0.0) for p in stale]
    expected = {"ok": len(head), "late": len(late), "duplicate": len(duplicates), "too_late": len(stale)}
    return head + tail, expected, stale_msgs


def interleave(rng: random.Random, good: list[InputMessage], bad: list[Bad]) -> list[InputMessage]:
    """Bad messages at random places among the good ones; time_ms = position, so replay() keeps it."""
    slots = sorted(rng.randrange(len(good) + 1) for _ in bad)
    out: list[InputMessage] = []
    it = iter(bad)
    g = 0
    for slot in slots:
        while g < slot:
            out.append(good[g])
            g += 1
        b = next(it)
        out.append(InputMessage(b.topic, b.key, b.value, 0.0))  # type: ignore[arg-type]
    out.extend(good[g:])
    return [InputMessage(m.topic, m.key, m.value, float(i)) for i, m in enumerate(out)]


def shown(value: bytes | None) -> str:
    """A DLQ value as ``collect()`` reports it."""
    return (value or b"").decode("utf-8", errors="replace")


async def test_ten_thousand_bad_messages_land_in_the_dlq_and_the_counts_reconcile(
    broker: Broker, settings: Settings
) -> None:
    rng = random.Random(SEED)
    bad = bad_messages(rng)
    assert len(bad) == N_BAD
    assert all(rejected(b) for b in bad), "the generator made a message the decoders accept"
    good, expected, stale = good_messages(rng)
    # a subscriber record that is fine, so that topic has good traffic too
    subscribers = [InputMessage("subscribers", user_name(0).encode(), b'{"customer":"acme","plan":"full-illimite"}',
                                -1.0)]
    stream = subscribers + interleave(rng, good, bad) + [
        InputMessage(m.topic, m.key, m.value, float(10**9 + i)) for i, m in enumerate(stale)]
    sent = Counter(m.topic for m in stream)
    assert sum(1 for b in bad if b.family == "huge" and b.value and len(b.value) > MAX_MESSAGE_BYTES) >= 150

    started = time.monotonic()
    result = await replay(settings, stream, broker_url=broker.url, timeout_s=300)
    seconds = time.monotonic() - started
    print(f"\n{len(stream)} messages ({N_BAD} malformed, {len(stale)} too late) through the embedded broker "
          f"in {seconds:.1f} s ({len(stream) / seconds:,.0f}/s); counts {sorted(result.counts.items())}")

    # every bad message is in the DLQ of its topic, with its raw bytes and a reason naming the fault
    dlq = Counter((row["topic"], row["value"]) for row in result.dlq)
    want = Counter((b.topic, shown(b.value)) for b in bad) + Counter(("cdrs", shown(m.value)) for m in stale)
    assert dlq == want
    assert all(row["reason"].strip() and row["source"] for row in result.dlq)
    reasons: dict[tuple[str, str], set[str]] = {}
    for row in result.dlq:
        reasons.setdefault((row["topic"], row["value"]), set()).add(row["reason"])
    unexplained = [
        (b.family, b.reason, sorted(reasons[(b.topic, shown(b.value))]))
        for b in bad
        if not any(b.reason in r for r in reasons[(b.topic, shown(b.value))])
    ]
    assert not unexplained, unexplained[:5]
    assert all(any(r.startswith("too late") for r in reasons[("cdrs", shown(m.value))]) for m in stale)

    # every good message was processed: ok, late or duplicate, exactly as sent
    counts = result.counts
    assert counts.get(("cdrs", "ok"), 0) + counts.get(("sip-registrations", "ok"), 0) == expected["ok"]
    assert counts.get(("cdrs", "late"), 0) == expected["late"]
    assert counts.get(("cdrs", "duplicate"), 0) == expected["duplicate"]
    assert counts.get(("subscribers", "ok"), 0) == 1

    # consumed = ok + late + duplicate + dlq, per topic; nothing else happened (no re-keying)
    for topic in TOPICS:
        consumed = sum(n for (t, _), n in counts.items() if t == topic)
        assert consumed == sent[topic], topic
        assert consumed == sum(counts.get((topic, s), 0) for s in STATUSES), (topic, counts)
    assert counts.get(("cdrs", "dlq"), 0) + counts.get(("sip-registrations", "dlq"), 0) + counts.get(
        ("subscribers", "dlq"), 0) == N_BAD + len(stale) == len(result.dlq)

    # the noise changed nothing: same counts and outputs as the engine alone on the same order
    _, offline = run_offline(settings, stream)
    assert {k: v for k, v in counts.items() if k[1] != "rekeyed"} == offline
    assert [(a["user"], a["rule"]) for a in result.alerts] == [(ABUSER, "distinct_numbers")]
    assert len(result.rebills) == 160 and all(r["user"] == ABUSER for r in result.rebills)
    assert sum(Decimal(str(r["amount"])) for r in result.rebills) > 0
