"""Property-based tests of the boundary: whatever bytes or config arrive, a decoder returns a record
or raises ``InvalidRecord`` with a reason, and a loader returns its object or raises its
``ConfigError`` with a message. Any other exception would crash a worker or the CLI.

Runs are derandomised (the same examples every run, no example database written to the checkout):
a failure here is reproducible as is. ``CDRWATCH_PROPERTY_EXAMPLES=5000`` explores further.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.codecs import MAX_MESSAGE_BYTES, decode_cdr, decode_registration, decode_subscriber
from streams.core.errors import InvalidRecord, PlansError, RateDeckError
from streams.core.plans import PlanBook, parse_plans
from streams.core.rates import RateDeck, parse_rate_deck
from streams.core.rating import rate_call
from streams.core.records import CallEvent, Registration, Subscriber
from streams.core.state import MemoryStore
from tests.factories import DECK_CSV, at, cdr_payload, deck, end_cdr, plans_data, registration_payload
from tests.factories import engine as factory_engine

PROPS = settings(
    deadline=None,
    max_examples=int(os.environ.get("CDRWATCH_PROPERTY_EXAMPLES", "100")),  # a soak run sets thousands
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST_MS = 946684800000  # 2000-01-01T00:00:00Z
LATEST_MS = 4102444800000  # 2100-01-01T00:00:00Z
KNOWN_PLANS = frozenset({"unlimited", "per-second"})


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch with integer arithmetic (independent of streams' helpers)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def reason_or_record(decode: Callable[[], Any]) -> Any:
    """The record, or None when rejected; rejection must come as InvalidRecord with a reason."""
    try:
        return decode()
    except InvalidRecord as exc:
        assert str(exc).strip(), "InvalidRecord without a reason"
        return None


def is_known_plan(plan: str) -> bool:
    return plan in KNOWN_PLANS


# ------------------------------------------------------------------------------- strategies

SURROGATES = ["\ud800", "\udfff", "\ud83d", "a\udc80b", "\ud83d\ude00"]
JUNK_STRINGS = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SURROGATES),
    st.sampled_from(["", " ", "\x00", "NaN", "Infinity", "-Infinity", "null", "true", "1e999", "0x10",
                     "٢٠٢٦-11-02T10:00:00+01:00", "2026-02-30T10:00:00Z", "2026-11-02T25:00:00Z",
                     "2026-11-02T10:00:60Z", "2026-11-02T10:00:00", "2026-11-02T10:00:00+24:00",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "\u202e0612345678"]),
    st.integers(min_value=1, max_value=200).map(lambda n: "é" * n),
)
# JSON numbers well outside 64-bit and double range are produced by the stdlib encoder below
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 5, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**63) + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1.5, 30.0, 2678400, 2678401, 10**12, 1e308, -0.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, JUNK_STRINGS)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(JUNK_STRINGS, children, max_size=4)),
    max_leaves=12,
)

CDR_FIELDS = ["event", "call_id", "user", "customer", "caller", "callee", "direction", "start_time",
              "answer_time", "end_time", "billsec", "disposition"]
REG_FIELDS = ["user", "customer", "contact", "instance_id", "user_agent", "source_ip", "expires", "time"]
SUB_FIELDS = ["customer", "plan"]


def dump_json(obj: Any, *, ascii_only: bool) -> bytes:
    """The stdlib encoder: writes NaN/Infinity tokens, integers of any size and lone surrogates."""
    text = json.dumps(obj, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def serialised(draw: st.DrawFn, obj: Any) -> bytes:
    return dump_json(obj, ascii_only=draw(st.booleans()))


@st.composite
def schema_shaped(draw: st.DrawFn, fields: list[str]) -> dict[str, Any]:
    """An object with (some of) a topic's field names and junk values: gets past the first checks."""
    keys = draw(st.lists(st.sampled_from(fields), unique=True))
    return {k: draw(JSONISH) for k in keys}


OFFSETS = [timedelta(0), timedelta(hours=1), timedelta(hours=2), timedelta(hours=-5), timedelta(hours=5, minutes=30),
           timedelta(hours=-9, minutes=-30), timedelta(hours=14), timedelta(hours=-12)]


def rfc3339(instant_ms: int, offset: timedelta, *, zulu: bool, millis: bool) -> str:
    moment = (EPOCH + timedelta(milliseconds=instant_ms)).astimezone(timezone(offset))
    text = moment.isoformat(timespec="milliseconds" if millis else "seconds")
    if zulu and offset == timedelta(0):
        text = text[:-6] + "Z"
    return text


@st.composite
def times(draw: st.DrawFn, lo_ms: int, hi_ms: int, millis: bool | None = None) -> tuple[int, str]:
    """An instant (ms) in [lo, hi] and its RFC 3339 rendering in a random offset."""
    use_millis = draw(st.booleans()) if millis is None else millis
    instant = draw(st.integers(min_value=lo_ms, max_value=hi_ms))
    if not use_millis:
        instant -= instant % 1000
        if instant < lo_ms:
            instant += 1000
    return instant, rfc3339(instant, draw(st.sampled_from(OFFSETS)), zulu=draw(st.booleans()), millis=use_millis)


NAMES = st.text(min_size=1, max_size=40)
NUMBERS_AS_SIGNALLED = st.one_of(
    st.from_regex(r"\+33[1-79]\d{8}", fullmatch=True),
    st.from_regex(r"0[1-79]\d{8}", fullmatch=True),
    st.from_regex(r"00\d{8,13}", fullmatch=True),
    st.sampled_from(["112", "15", "anonymous", "sip:bob@example.net", "+33 6 12 34 56 78"]),
    st.text(min_size=1, max_size=128),
)


@st.composite
def valid_cdrs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid ``cdrs`` payload and the record fields it must decode to."""
    start_ms, start_text = draw(times(EARLIEST_MS, LATEST_MS - 3 * 86_400_000))
    payload: dict[str, Any] = {
        "event": draw(st.sampled_from(["start", "end"])),
        "call_id": draw(st.text(min_size=1, max_size=64)),
        "user": draw(NAMES),
        "customer": draw(NAMES),
        "caller": draw(st.one_of(NUMBERS_AS_SIGNALLED, st.just(""))),
        "callee": draw(NUMBERS_AS_SIGNALLED),
        "direction": draw(st.sampled_from(["outbound", "inbound", "forwarded"])),
        "start_time": start_text,
    }
    expected = dict(payload, start_ms=start_ms, answer_ms=None, end_ms=None, billsec=0, disposition=None)
    if payload["event"] == "end":
        millis = draw(st.booleans())
        if draw(st.booleans()):  # answered
            answer_ms, answer_text = draw(times(start_ms, start_ms + 120_000, millis))
            end_ms, end_text = draw(times(answer_ms, answer_ms + 86_400_000, millis))
            talk_s = (end_ms - answer_ms) // 1000
            billsec = draw(st.integers(min_value=0, max_value=talk_s + 1))
            disposition = "ANSWERED" if billsec else draw(st.sampled_from(["ANSWERED", "NO ANSWER", "FAILED"]))
        else:
            answer_ms, answer_text, billsec = None, None, 0
            end_ms, end_text = draw(times(start_ms, start_ms + 300_000, millis))
            disposition = draw(st.sampled_from(["NO ANSWER", "BUSY", "FAILED"]))
        payload |= {"answer_time": answer_text, "end_time": end_text, "billsec": billsec, "disposition": disposition}
        expected |= {"answer_ms": answer_ms, "end_ms": end_ms, "billsec": billsec, "disposition": disposition}
    return payload, expected


@st.composite
def valid_registrations(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    time_ms, time_text = draw(times(EARLIEST_MS, LATEST_MS - 1))
    payload = {
        "user": draw(NAMES),
        "customer": draw(NAMES),
        "contact": draw(st.text(min_size=1, max_size=120)),
        "instance_id": draw(st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=80))),
        "user_agent": draw(st.text(max_size=100)),
        "source_ip": draw(st.text(min_size=2, max_size=45)),
        "expires": draw(st.integers(min_value=0, max_value=604800)),
        "time": time_text,
    }
    expected = dict(payload, instance_id=payload["instance_id"] or None, time_ms=time_ms)
    return payload, expected


def shifted_time(text: Any, delta: timedelta) -> Any:
    """The same timestamp moved by ``delta`` (kept inside datetime's range), or the input if unparsable."""
    if not isinstance(text, str):
        return text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    try:
        return (moment + delta).isoformat()
    except OverflowError:
        return text


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]) -> bytes:
    """A valid payload with one to four faults, serialised, sometimes damaged as bytes as well."""
    payload = copy.deepcopy(draw(base)[0])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        field = draw(st.sampled_from(sorted(payload) or ["x"]))
        fault = draw(st.sampled_from(["drop", "retype", "shift", "huge", "unicode", "nested", "extra", "null"]))
        if fault == "drop":
            payload.pop(field, None)
        elif fault == "retype":
            payload[field] = draw(SCALARS)
        elif fault == "shift":
            delta = timedelta(seconds=draw(st.integers(min_value=-300 * 365 * 86400, max_value=300 * 365 * 86400)))
            for key in ("start_time", "answer_time", "end_time", "time"):
                if key in payload and draw(st.booleans()):
                    payload[key] = shifted_time(payload[key], delta)
        elif fault == "huge":
            payload[field] = draw(st.sampled_from(["0", "é", "\u4e2d", "+33"])) * draw(
                st.sampled_from([129, 1000, 40_000, 70_000]))
        elif fault == "unicode":
            payload[field] = draw(JUNK_STRINGS)
        elif fault == "nested":
            payload[field] = draw(JSONISH)
        elif fault == "extra":
            payload[draw(JUNK_STRINGS)] = draw(JSONISH)
        else:
            payload[field] = None
    raw = dump_json(payload, ascii_only=draw(st.booleans()))
    damage = draw(st.sampled_from(["none", "none", "truncate", "latin-1", "utf-16", "bom", "token", "wrap", "splice"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))]
    elif damage == "latin-1":
        raw = raw.decode("utf-8", "surrogatepass").encode("latin-1", "replace") + "é".encode("latin-1")
    elif damage == "utf-16":
        raw = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif damage == "token":
        raw = raw.replace(b'"', draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"'", b"\x00"])), 1)
    elif damage == "wrap":
        raw = b"[" + raw + b"]"
    elif damage == "splice":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=8)) + raw[at:]
    return raw


def check_cdr_invariants(event: CallEvent, raw: bytes) -> None:
    """What README promises never gets past the decoder, checked on anything it accepts."""
    assert len(raw) <= MAX_MESSAGE_BYTES
    assert event.event in ("start", "end")
    assert event.direction in ("outbound", "inbound", "forwarded")
    for text in (event.call_id, event.user, event.customer, event.callee):
        assert isinstance(text, str) and text
    assert EARLIEST_MS <= event.start_ms < LATEST_MS
    if event.is_end:
        assert event.end_ms is not None and EARLIEST_MS <= event.end_ms < LATEST_MS
        assert event.end_ms >= event.start_ms
        assert event.billsec == int(event.billsec) and 0 <= event.billsec <= 2678400
        if event.answer_ms is None:
            assert event.billsec == 0 and event.disposition != "ANSWERED"
        else:
            assert event.start_ms <= event.answer_ms <= event.end_ms
            assert event.billsec <= (event.end_ms - event.answer_ms) / 1000 + 1
        if event.billsec:
            assert event.disposition == "ANSWERED"


def check_registration_invariants(reg: Registration) -> None:
    assert reg.user and reg.customer and reg.contact
    assert EARLIEST_MS <= reg.time_ms < LATEST_MS
    assert reg.expires == int(reg.expires) and 0 <= reg.expires <= 604800
    assert reg.instance_id is None or (isinstance(reg.instance_id, str) and reg.instance_id)


# ---------------------------------------------------------------------------------- decoders


@PROPS
@given(raw=st.binary(max_size=400))
@example(raw=b"")
@example(raw=b"\xff\xfe{\x00}\x00")
@example(raw=b"{" * 5000)
@example(raw=b'{"a":' * 2000 + b"1" + b"}" * 2000)
@example(raw=b"[" * 100 + b"]" * 100)
@example(raw=b"x" * (MAX_MESSAGE_BYTES + 1))
def test_decoders_on_arbitrary_bytes(raw: bytes) -> None:
    reason_or_record(lambda: decode_cdr(raw))
    reason_or_record(lambda: decode_registration(raw))
    reason_or_record(lambda: decode_subscriber(raw[:16] or None, raw, is_known_plan))


@PROPS
@given(obj=JSONISH, ascii_only=st.booleans())
def test_decoders_on_arbitrary_json(obj: Any, ascii_only: bool) -> None:
    raw = dump_json(obj, ascii_only=ascii_only)
    assert reason_or_record(lambda: decode_cdr(raw)) is None or isinstance(obj, dict)
    reason_or_record(lambda: decode_registration(raw))
    reason_or_record(lambda: decode_subscriber(b"alice", raw, is_known_plan))


@PROPS
@given(cdr=schema_shaped(CDR_FIELDS), reg=schema_shaped(REG_FIELDS), sub=schema_shaped(SUB_FIELDS),
       ascii_only=st.booleans())
def test_decoders_on_objects_with_the_topic_fields_and_junk_values(
    cdr: dict[str, Any], reg: dict[str, Any], sub: dict[str, Any], ascii_only: bool
) -> None:
    raw_cdr = dump_json(cdr, ascii_only=ascii_only)
    event = reason_or_record(lambda: decode_cdr(raw_cdr))
    if event is not None:
        check_cdr_invariants(event, raw_cdr)
    raw_reg = dump_json(reg, ascii_only=ascii_only)
    registration = reason_or_record(lambda: decode_registration(raw_reg))
    if registration is not None:
        check_registration_invariants(registration)
    reason_or_record(lambda: decode_subscriber(b"alice", dump_json(sub, ascii_only=ascii_only), is_known_plan))


@PROPS
@given(raw=mutated(valid_cdrs()))
def test_decode_cdr_on_mutated_payloads(raw: bytes) -> None:
    event = reason_or_record(lambda: decode_cdr(raw))
    if event is not None:
        check_cdr_invariants(event, raw)


@PROPS
@given(raw=mutated(valid_registrations()))
def test_decode_registration_on_mutated_payloads(raw: bytes) -> None:
    registration = reason_or_record(lambda: decode_registration(raw))
    if registration is not None:
        check_registration_invariants(registration)


@PROPS
@given(key=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40).map(str.encode)),
       value=st.one_of(st.none(), st.binary(max_size=200), JSONISH.map(lambda o: dump_json(o, ascii_only=True)),
                       st.fixed_dictionaries({"customer": JSONISH, "plan": JSONISH}).map(
                           lambda o: dump_json(o, ascii_only=False))))
def test_decode_subscriber_on_arbitrary_keys_and_values(key: bytes | None, value: bytes | None) -> None:
    sub = reason_or_record(lambda: decode_subscriber(key, value, is_known_plan))
    if sub is not None:
        assert sub.plan is None or sub.plan in KNOWN_PLANS


@PROPS
@given(case=valid_cdrs())
def test_valid_cdrs_round_trip(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    payload, expected = case
    event = decode_cdr(orjson.dumps(payload))
    assert event == CallEvent(
        event=expected["event"], call_id=expected["call_id"], user=expected["user"], customer=expected["customer"],
        caller=expected["caller"], callee=expected["callee"], direction=expected["direction"],
        start_ms=expected["start_ms"], start_time=expected["start_time"], answer_ms=expected["answer_ms"],
        end_ms=expected["end_ms"], billsec=expected["billsec"], disposition=expected["disposition"],
    )


@PROPS
@given(instant_ms=st.integers(min_value=EARLIEST_MS, max_value=LATEST_MS - 1), offset=st.sampled_from(OFFSETS))
@example(instant_ms=1084393390225, offset=timedelta(0))  # 2004-05-12T20:23:10.225Z decodes as ...224
def test_times_decode_to_the_exact_millisecond(instant_ms: int, offset: timedelta) -> None:
    """Found by the round trip under a long run: ``to_ms`` is ``int(timestamp() * 1000)``, and the
    float product truncates to the millisecond below for ~0.6 % of millisecond timestamps."""
    text = rfc3339(instant_ms, offset, zulu=False, millis=True)
    payload = cdr_payload(event="start", start_time=text)
    assert decode_cdr(orjson.dumps(payload)).start_ms == instant_ms, text


@PROPS
@given(case=valid_registrations())
def test_valid_registrations_round_trip(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    payload, expected = case
    reg = decode_registration(orjson.dumps(payload))
    assert reg == Registration(
        user=expected["user"], customer=expected["customer"], contact=expected["contact"],
        instance_id=expected["instance_id"], user_agent=expected["user_agent"], source_ip=expected["source_ip"],
        expires=expected["expires"], time_ms=expected["time_ms"], time=expected["time"],
    )


@PROPS
@given(user=st.text(min_size=1, max_size=60), customer=NAMES, plan=st.sampled_from(sorted(KNOWN_PLANS)))
def test_valid_subscribers_round_trip(user: str, customer: str, plan: str) -> None:
    raw = orjson.dumps({"customer": customer, "plan": plan})
    assert decode_subscriber(user.encode(), raw, is_known_plan) == Subscriber(user, customer, plan)
    assert decode_subscriber(user.encode(), None, is_known_plan) == Subscriber(user, None, None)


@pytest.mark.parametrize(
    ("decode", "payload", "field"),
    [
        (decode_cdr, cdr_payload(billsec=61.0), "billsec"),
        (decode_cdr, cdr_payload(billsec=0.0, answer_time=None, disposition="NO ANSWER"), "billsec"),
        (decode_registration, registration_payload(expires=3600.0), "expires"),
    ],
    ids=["cdr-billsec-61.0", "cdr-billsec-0.0", "registration-expires-3600.0"],
)
def test_numbers_written_as_integral_floats_decode_to_ints_or_are_rejected(
    decode: Callable[[bytes], Any], payload: dict[str, Any], field: str
) -> None:
    """Found by the mutation strategies: ``61.0`` is an integer for JSON Schema, so it passes
    validation, but the records declare ``int`` and a float ``billsec`` reaches the state and the
    ``rebilled-calls`` payload (``"billsec": 61.0``, ``"billed_seconds": 120.0``)."""
    record = reason_or_record(lambda: decode(orjson.dumps(payload)))
    assert record is None or type(getattr(record, field)) is int, f"{field} decoded as {getattr(record, field)!r}"


def test_a_cdr_lasting_decades_does_not_become_a_phantom_simultaneous_call() -> None:
    """Found while shifting times: an unanswered CDR whose end_time is in 2099 passes every check
    (each time is inside 2000-2099, end >= start). Either the decoder rejects an impossible duration
    (the schema already caps billsec at 31 days), or the engine must not count it as a line in use
    for the rest of the month: here it turns three ordinary concurrent calls into a breach."""
    ghost = cdr_payload(call_id="ghost", answer_time=None, billsec=0, disposition="NO ANSWER",
                        end_time="2099-12-31T10:00:00+01:00")
    event = reason_or_record(lambda: decode_cdr(orjson.dumps(ghost)))
    if event is None:
        return
    engine, store = factory_engine(), MemoryStore()
    engine.on_call(store, event)
    alerts = []
    for i in range(3):  # three calls at once, five days later: within the limit of 3
        call = end_cdr(f"c{i}", at(5 * 86400 + 10 * i), duration=600, callee=f"014567890{i}")
        alerts += [(a.rule, a.observed) for a in engine.on_call(store, call).alerts]
    assert alerts == []


# ----------------------------------------------------------------------------------- loaders


def load_or_config_error(load: Callable[[], Any], error: type[Exception]) -> Any:
    try:
        return load()
    except error as exc:
        assert str(exc).strip(), f"{error.__name__} without a message"
        return None


CSV_CELLS = st.one_of(
    st.from_regex(r"[1-9]\d{0,6}", fullmatch=True),
    st.sampled_from(["", " ", "0", "033", "+33", "3 3", "²", "٣٣", "France Fixe", "Royaume-Uni Fixe", "\x00",
                     "0.0150", "-0.01", "1e3", "NaN", "sNaN", "Infinity", "1e999999999", "1e9999999999999999999",
                     "0x10", "1,5", '"', '"quoted, cell"', "é"]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=20),
)
CSV_LINES = st.lists(CSV_CELLS, min_size=0, max_size=5).map(",".join)


@PROPS
@given(text=st.text(max_size=300))
def test_parse_rate_deck_on_arbitrary_text(text: str) -> None:
    load_or_config_error(lambda: parse_rate_deck(text), RateDeckError)
    load_or_config_error(lambda: parse_rate_deck("prefix,destination,rate_per_minute\n" + text), RateDeckError)


@PROPS
@given(lines=st.lists(CSV_LINES, max_size=12), newline=st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x0b"]),
       header=st.sampled_from(["prefix,destination,rate_per_minute", " prefix , destination , rate_per_minute",
                               "prefix;destination;rate_per_minute", "", "\ufeffprefix,destination,rate_per_minute"]))
def test_parse_rate_deck_on_csv_shaped_text(lines: list[str], newline: str, header: str) -> None:
    deck_ = load_or_config_error(lambda: parse_rate_deck(newline.join([header, *lines])), RateDeckError)
    if deck_ is not None:
        assert len(deck_) >= 1


@PROPS
@given(rows=st.dictionaries(st.from_regex(r"[1-9]\d{0,5}", fullmatch=True),
                            st.tuples(st.sampled_from(["France Fixe", "France Mobile", "Lointain", "Ile, lointaine"]),
                                      st.decimals(min_value=0, max_value=100, places=4)),
                            min_size=1, max_size=30))
def test_valid_rate_decks_load_with_every_row(rows: dict[str, tuple[str, Decimal]]) -> None:
    body = "".join(f'{p},"{d}",{r}\n' for p, (d, r) in rows.items())
    loaded = parse_rate_deck("prefix,destination,rate_per_minute\n" + body)
    assert len(loaded) == len(rows)
    for prefix, (destination, rate) in rows.items():
        found = loaded.by_prefix(prefix)
        assert found is not None and (found.destination, found.rate_per_minute) == (destination, rate)
        query = prefix + "0" * 9
        longest = loaded.lookup(query)
        assert longest is not None and query.startswith(longest.prefix) and len(longest.prefix) >= len(prefix)


@PROPS
@given(rate=st.one_of(st.decimals(allow_nan=False, allow_infinity=False).map(str),
                      st.sampled_from(["1e20", "1e30", "1e999999999", "99999999999999999999999999999"])))
@example(rate="1e30")
def test_a_rate_the_deck_accepts_can_price_a_call(rate: str) -> None:
    """Whatever rate_per_minute the loader accepts must not crash rating later (a worker would die on
    the first re-bill line of that destination)."""
    loaded = load_or_config_error(lambda: parse_rate_deck(f"prefix,destination,rate_per_minute\n33,France,{rate}\n"),
                                  RateDeckError)
    if loaded is not None:
        billing = plan_book_or_none(plans_data())
        assert billing is not None
        found = loaded.by_prefix("33")
        assert found is not None
        for multiplier in ("1", "4"):
            rate_call(3600, billing.plans["unlimited"].billing, found.rate_per_minute, Decimal(multiplier))


def plan_book_or_none(data: Any) -> PlanBook | None:
    result: PlanBook | None = load_or_config_error(lambda: parse_plans(data, deck()), PlansError)
    return result


PLAN_PATHS: list[tuple[str, ...]] = [
    ("default_plan",), ("timezone",), ("plans",), ("plans", "unlimited"),
    *[("plans", "unlimited", k) for k in ("included", "billing", "max_distinct_numbers", "max_simultaneous_calls",
                                          "max_registered_devices", "max_calls_per_hour", "allowed_user_agents",
                                          "pbx_user_agents", "multipliers", "timezone")],
    *[("plans", "per-second", "multipliers", r) for r in ("distinct_numbers", "pbx_or_gateway", "autodialer")],
]
TOML_VALUES = st.one_of(
    JSONISH,
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.sampled_from(["Europe/Paris", "UTC", "Europe/", "../../etc/passwd", "Mars/Olympus", "60/60", "0/1", "1/0",
                     "60/60\n", "[", "(?P<a>x)(?P<a>y)", "\\N{foo}", "^Yealink", "France Fixe", "Nowhere"]),
    st.lists(st.sampled_from(["France Fixe", "Nowhere", "^Yealink", "(", "[a-", "Asterisk", "*"]), max_size=4),
)


@PROPS
@given(faults=st.lists(st.tuples(st.sampled_from(PLAN_PATHS), st.sampled_from(["drop", "set", "extra"]), TOML_VALUES),
                       min_size=1, max_size=4))
def test_parse_plans_on_mutated_plan_books(faults: list[tuple[tuple[str, ...], str, Any]]) -> None:
    data: Any = plans_data()
    for path, fault, value in faults:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if fault == "drop":
            parent.pop(path[-1], None)
        elif fault == "set":
            parent[path[-1]] = value
        else:
            parent[f"extra-{len(parent)}"] = value
    book = plan_book_or_none(data)
    if book is not None:
        assert book.default_plan in book.plans


@PROPS
@given(data=JSONISH)
def test_parse_plans_on_arbitrary_objects(data: Any) -> None:
    if isinstance(data, dict):
        plan_book_or_none(data)


@PROPS
@given(multiplier=st.one_of(st.integers(min_value=0, max_value=10**6), st.floats(min_value=0, allow_infinity=True),
                            st.just(float("nan"))))
@example(multiplier=float("nan"))
@example(multiplier=float("inf"))
@example(multiplier=1e300)
def test_a_multiplier_the_plans_accept_can_price_a_call(multiplier: Any) -> None:
    """TOML has ``nan`` and ``inf``; whatever the loader accepts must be a multiplier that prices a
    call and compares with the others (``PeriodState.multiplier()`` takes their max)."""
    data = plans_data()
    data["plans"]["unlimited"]["multipliers"]["pbx_or_gateway"] = multiplier
    book = plan_book_or_none(data)
    if book is not None:
        plan = book.plans["unlimited"]
        accepted = plan.multipliers["pbx_or_gateway"]
        max(Decimal(m) for m in (str(accepted), "1", "4"))
        rate_call(3600, plan.billing, Decimal("0.0150"), accepted)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("plans", "unlimited", "pbx_user_agents"), ["a{4294967296}"]),  # OverflowError from re.compile
        (("plans", "unlimited", "allowed_user_agents"), ["(" * 1200 + ")" * 1200]),  # RecursionError
        (("plans", "unlimited", "billing"), "9" * 5000 + "/60"),  # int() digit limit: ValueError
        (("plans", "unlimited", "billing"), "60/" + "9" * 5000),
    ],
    ids=["regex-repeat-overflow", "regex-nesting-recursion", "billing-initial-5000-digits",
         "billing-increment-5000-digits"],
)
def test_plans_found_by_fuzzing_raise_plans_error(where: tuple[str, ...], value: Any) -> None:
    data = plans_data()
    parent = data
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    plan_book_or_none(data)


@pytest.mark.parametrize(
    "text",
    [
        "prefix,destination,rate_per_minute\n33," + "x" * 200_000 + ",0.01\n",  # csv field size limit: csv.Error
        "prefix,destination,rate_per_minute\n" + '33,"' + "y" * 140_000 + '",0.01\n',
    ],
    ids=["cell-over-131072-chars", "quoted-cell-over-131072-chars"],
)
def test_rate_decks_found_by_fuzzing_raise_rate_deck_error(text: str) -> None:
    load_or_config_error(lambda: parse_rate_deck(text), RateDeckError)


def test_the_factories_deck_still_loads() -> None:
    """Guards the strategies above: the baseline they mutate is valid."""
    assert isinstance(parse_rate_deck(DECK_CSV), RateDeck)
    assert isinstance(parse_plans(plans_data(), deck()), PlanBook)


# -- the timestamp fast path reads exactly what the full parser reads --------------------------

def _slow_us(text: str) -> int | None:
    from streams.core.timeutil import parse_rfc3339

    try:
        return (parse_rfc3339(text) - EPOCH) // timedelta(microseconds=1)
    except ValueError:
        return None


def _fast_us(text: str) -> int | None:
    from streams.core.timeutil import instant_us

    try:
        return instant_us(text)
    except ValueError:
        return None


_STAMP = st.builds(
    lambda moment, offset, zulu: moment.replace(tzinfo=timezone(timedelta(minutes=offset))).isoformat()
    if not zulu else moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    # hypothesis bounds datetimes with naive values; the zone is added above
    st.datetimes(min_value=datetime(1999, 12, 31), max_value=datetime(2100, 1, 2)).map(  # noqa: DTZ001
        lambda d: d.replace(microsecond=0)),
    st.integers(min_value=-23 * 60, max_value=23 * 60), st.booleans(),
)


@PROPS
@given(stamp=_STAMP, position=st.integers(min_value=0, max_value=24),
       char=st.sampled_from(list("0123456789:+-TZz .٣6")), mutate=st.booleans())
@example(stamp="2026-03-29T02:30:00+01:00", position=0, char="2", mutate=False)
@example(stamp="2026-11-03T10:59:60+01:00", position=0, char="2", mutate=False)  # leap second: refused
@example(stamp="2026-11-03T10:5٣:00+01:00", position=0, char="2", mutate=False)  # a non-ASCII digit
@example(stamp="2026-02-30T10:00:00+01:00", position=0, char="2", mutate=False)
@example(stamp="2026-11-03T10:61:00+01:00", position=0, char="2", mutate=False)
@example(stamp="2026-11-03T24:00:00Z", position=0, char="2", mutate=False)
def test_the_timestamp_fast_path_agrees_with_the_parser(stamp: str, position: int, char: str, mutate: bool) -> None:
    text = stamp[:position] + char + stamp[position + 1:] if mutate and position < len(stamp) else stamp
    for _ in range(2):  # the second read comes from the cache of hour starts
        assert _fast_us(text) == _slow_us(text), text
