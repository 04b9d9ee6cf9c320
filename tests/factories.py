"""Builders for the unit tests: CDRs, registrations, a small plan book and rate deck, all in memory.

The deck and plans are small on purpose so that every expected count and amount in the tests
can be worked out by hand. Times are built with the standard library, never with streams' helpers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from streams.core.plans import PlanBook, parse_plans
from streams.core.rates import RateDeck, parse_rate_deck
from streams import codecs
from streams.core.records import Alert, CallEvent, RebillLine, Registration
from streams.core.state import MemoryStore
from streams.core.fairuse import FairUseEngine, Outcome

UTC = timezone.utc

# A Monday in March 2026, well inside the month in Europe/Paris (UTC+1 then).
T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)

DECK_CSV = """\
prefix,destination,rate_per_minute
1,Etats-Unis Fixe,0.0100
331,France Fixe,0.0150
332,France Fixe,0.0150
333,France Fixe,0.0150
334,France Fixe,0.0150
335,France Fixe,0.0150
339,France Fixe,0.0150
336,France Mobile,0.0133
337,France Mobile,0.0133
338,France Special,0.1200
44,Royaume-Uni Fixe,0.0200
447,Royaume-Uni Mobile,0.0500
"""

YEALINK = "Yealink SIP-T46S 66.86.0.15"
ZOIPER = "Zoiper rv2.10.20.2"
ASTERISK = "Asterisk PBX 20.5.0"

MULTIPLIERS = {
    "distinct_numbers": 1,
    "simultaneous_calls": 1,
    "registered_devices": 1,
    "third_party_device": 2,  # not 1, so a test can tell it comes from the plan
    "pbx_or_gateway": 4,
    "autodialer": 4,
}


def deck() -> RateDeck:
    return parse_rate_deck(DECK_CSV)


def plan_spec(**overrides: Any) -> dict[str, Any]:
    """One ``[plans.X]`` table with the real limits (150/3/3/60) and 60/60 billing."""
    spec: dict[str, Any] = {
        "included": ["France Fixe", "France Mobile"],
        "billing": "60/60",
        "max_distinct_numbers": 150,
        "max_simultaneous_calls": 3,
        "max_registered_devices": 3,
        "max_calls_per_hour": 60,
        "allowed_user_agents": ["^Yealink SIP-T", "^[Ss]nom"],
        "pbx_user_agents": ["Asterisk", "FreeSWITCH", "3CX"],
        "multipliers": dict(MULTIPLIERS),
    }
    spec.update(overrides)
    return spec


def plans_data(**top: Any) -> dict[str, Any]:
    """A whole plan book as parsed TOML: ``unlimited`` (default) and ``per-second`` (billing 1/1)."""
    data: dict[str, Any] = {
        "default_plan": "unlimited",
        "timezone": "Europe/Paris",
        "plans": {"unlimited": plan_spec(), "per-second": plan_spec(billing="1/1")},
    }
    data.update(top)
    return copy.deepcopy(data)


def plan_book() -> PlanBook:
    return parse_plans(plans_data(), deck())


def engine(**kwargs: Any) -> FairUseEngine:
    return FairUseEngine(plan_book(), deck(), hash_secret=b"unit-test-secret", **kwargs)


# ------------------------------------------------------------------------------------- times


def at(seconds: float = 0, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, text
    return value


def ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


# ----------------------------------------------------------------------------------- records


def end_cdr(
    call_id: str,
    start: datetime,
    *,
    duration: int = 60,
    billsec: int | None = None,
    callee: str = "0145678901",
    direction: str = "outbound",
    user: str = "alice",
    customer: str = "acme",
    disposition: str | None = None,
) -> CallEvent:
    """A final CDR. Answered at ``start`` with ``billsec = duration`` unless told otherwise;
    ``billsec=0`` makes an unanswered call (no answer_time, ``NO ANSWER``)."""
    if billsec is None:
        billsec = duration
    answered = billsec > 0 or disposition == "ANSWERED"
    return CallEvent(
        event="end",
        call_id=call_id,
        user=user,
        customer=customer,
        caller="+33199000000",
        callee=callee,
        direction=direction,
        start_ms=ms(start),
        start_time=start.isoformat(),
        answer_ms=ms(start) if answered else None,
        end_ms=ms(start + timedelta(seconds=duration)),
        billsec=billsec,
        disposition=disposition or ("ANSWERED" if answered else "NO ANSWER"),
    )


def start_cdr(
    call_id: str,
    start: datetime,
    *,
    callee: str = "0145678901",
    direction: str = "outbound",
    user: str = "alice",
    customer: str = "acme",
) -> CallEvent:
    """A live ``start`` event (call setup)."""
    return CallEvent(
        event="start",
        call_id=call_id,
        user=user,
        customer=customer,
        caller="+33199000000",
        callee=callee,
        direction=direction,
        start_ms=ms(start),
        start_time=start.isoformat(),
    )


def registration(
    binding: str,
    time: datetime,
    *,
    expires: int = 3600,
    user_agent: str = YEALINK,
    contact: str | None = None,
    instance_id: str | None = "",
    user: str = "alice",
    customer: str = "acme",
) -> Registration:
    """A REGISTER. By default ``binding`` is the ``+sip.instance`` and the contact is derived from it;
    pass ``instance_id=None`` to make the contact the identity."""
    if instance_id == "":
        instance_id = f"<urn:uuid:{binding}>"
    return Registration(
        user=user,
        customer=customer,
        contact=contact or f"sip:{user}@{binding}.example.net:5060",
        instance_id=instance_id,
        user_agent=user_agent,
        source_ip="192.0.2.10",
        expires=expires,
        time_ms=ms(time),
        time=time.isoformat(),
    )


def national(i: int) -> str:
    """The i-th distinct French fixed number in national form (01 + 8 digits)."""
    return f"01{i:08d}"


# ----------------------------------------------------------------------------------- running


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def alerts(self) -> list[Alert]:
        return [a for o in self.outcomes for a in o.alerts]

    @property
    def lines(self) -> list[RebillLine]:
        return [line for o in self.outcomes for line in o.lines]

    @property
    def statuses(self) -> list[str]:
        return [o.status for o in self.outcomes]

    def rules(self) -> list[str]:
        return [a.rule for a in self.alerts]


def feed(
    events: Iterable[CallEvent | Registration],
    eng: FairUseEngine | None = None,
    store: MemoryStore | None = None,
) -> Run:
    """Events through an engine, in order (a fresh engine and store unless given)."""
    eng = eng or engine()
    store = store if store is not None else MemoryStore()
    run = Run()
    for ev in events:
        if isinstance(ev, CallEvent):
            run.outcomes.append(eng.on_call(store, ev))
        else:
            run.outcomes.append(eng.on_registration(store, ev))
    return run


# ----------------------------------------------------------------------------------- payloads


def cdr_payload(**overrides: Any) -> dict[str, Any]:
    """A valid ``cdrs`` end payload: answered 10:00:05, ended 10:01:06, billsec 61."""
    payload = codecs.cdr_payload("end", "call-1", "alice", "acme", "+33199000000", "0145678901", "outbound",
                                 "2026-03-02T10:00:00+01:00", "2026-03-02T10:00:05+01:00", "2026-03-02T10:01:06+01:00",
                                 61, "ANSWERED")
    payload.update(overrides)
    return payload


def start_payload(**overrides: Any) -> dict[str, Any]:
    payload = codecs.cdr_payload("start", "call-1", "alice", "acme", "+33199000000", "0145678901", "outbound",
                                 "2026-03-02T10:00:00+01:00")
    payload.update(overrides)
    return payload


def registration_payload(**overrides: Any) -> dict[str, Any]:
    payload = codecs.registration_payload("alice", "acme", "sip:alice@192.0.2.10:5060;transport=udp",
                                          "<urn:uuid:00000000-0000-0000-0000-000000000001>", YEALINK, "192.0.2.10",
                                          3600, "2026-03-02T10:00:00Z")
    payload.update(overrides)
    return payload
