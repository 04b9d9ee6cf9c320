"""The fraud engine per rule and level, with hand-computed expectations, on a MemoryStore.

The deck is the factories' small deck plus three high-cost destinations with round per-second
prices: Cuba 1.20 EUR/min (0.02 EUR/s), Somalie 1.50 EUR/min (0.025 EUR/s), Satellite Iridium
(+8816) 3.00 EUR/min. Times are in Europe/Paris, UTC+1 in March 2026 (2026-03-04 is a Wednesday).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

import pytest

from streams.core.fraud import DAY_MS, FraudEngine, FraudOutcome, network_of
from streams.core.plans import parse_plans
from streams.core.rates import parse_rate_deck
from streams.core.rating import stable_id
from streams.core.records import AccountAction, CallEvent, Feedback, FraudAlert, Registration
from streams.core.schemas import validator
from streams.core.state import FraudState, MemoryStore
from tests.factories import DECK_CSV, end_cdr, plans_data, registration, start_cdr

DECK = parse_rate_deck(DECK_CSV + "53,Cuba,1.2000\n252,Somalie,1.5000\n8816,Satellite Iridium,3.0000\n")
Event = CallEvent | Registration

# rules as in the bundled plans.toml
BUNDLED_RULES: dict[str, Any] = {
    "cost_burst": {"warning": 20, "critical": 50},
    "night_cost_burst": {"kind": "cost_burst", "hours": "22:00-06:00", "warning": 5, "critical": 15},
    "calls_per_minute": {"warning": 10, "critical": 20},
    "total_calls_per_day": {"warning": 300, "critical": 600},
    "sequential_calls": {"warning": 10, "critical": 20},
    "long_call": {"warning": 120, "critical": 180},
    "high_risk_destination": {"warning": 1, "critical": 5},
    "new_network": {"days": 30, "warning": 1, "critical": 2},
}


def make_engine(
    rules: dict[str, Any],
    *,
    high_risk: Sequence[str] = ("Cuba", "Somalie", "+8816"),
    plan_fraud: dict[str, Any] | None = None,
    **top: Any,
) -> FraudEngine:
    top = {"learning_days": 0, "customer_learning_days": 0, **top}  # no learning unless a test asks
    data = plans_data(fraud={"high_risk": list(high_risk), "rules": rules, **top})
    if plan_fraud is not None:
        data["plans"]["per-second"]["fraud"] = plan_fraud
    return FraudEngine(parse_plans(data, DECK), DECK, hash_secret=b"unit-test-secret")


def only(kind: str, warning: Any = None, critical: Any = None, **scope: Any) -> dict[str, Any]:
    """One rule named after its kind."""
    spec = {k: v for k, v in (("warning", warning), ("critical", critical)) if v is not None}
    return {kind: {**spec, **scope}}


def paris(text: str) -> datetime:
    """A local time in Paris (winter time): ``2026-03-04T10:00:00`` → +01:00."""
    return datetime.fromisoformat(text + "+01:00")


B = paris("2026-03-04T10:00:00")  # a Wednesday morning


def at(seconds: float = 0, base: datetime = B) -> datetime:
    return base + timedelta(seconds=seconds)


def cuba(i: int = 0) -> str:
    return f"+5372{i:06d}"


def france(i: int = 0) -> str:
    return f"01{i:08d}"


def reg(binding: str, time: datetime, ip: str = "192.0.2.10", *, expires: int = 3600) -> Registration:
    return dataclasses.replace(registration(binding, time, expires=expires), source_ip=ip)


def tick(time: datetime) -> Registration:
    """A REGISTER refresh of the user's desk phone: an event of the user at ``time``, nothing else."""
    return reg(f"tick-{time.isoformat()}", time)


@dataclass
class Run:
    outcomes: list[FraudOutcome] = field(default_factory=list)

    @property
    def alerts(self) -> list[FraudAlert]:
        return [a for o in self.outcomes for a in o.alerts]

    @property
    def actions(self) -> list[AccountAction]:
        return [a for o in self.outcomes for a in o.actions]

    def levels(self) -> list[tuple[str, int | str]]:
        return [(a.level, a.observed) for a in self.alerts]

    def fired(self) -> list[tuple[int, str, str]]:
        """(event index, rule name, level) of every alert."""
        return [(i, a.rule_name, a.level) for i, o in enumerate(self.outcomes) for a in o.alerts]


class Clock:
    """The live rules' clock as a worker keeps it (``Processor.advance``), for events given in
    event-time order: each user is evaluated at each instant it is due, once everything before
    that instant has been read."""

    def __init__(self, eng: FraudEngine, store: Any, plan: Any = None) -> None:
        self.eng, self.store, self.plan = eng, store, plan
        self.due: dict[str, int] = {}

    def schedule(self, user: str, outcome: FraudOutcome) -> None:
        if outcome.due >= 0 and outcome.due < self.due.get(user, outcome.due + 1):
            self.due[user] = outcome.due

    def advance(self, until: int) -> FraudOutcome:
        """Every evaluation due up to ``until``, their alerts and actions in one outcome."""
        found = FraudOutcome("ok")
        while self.due and min(self.due.values()) <= until:
            user = min(self.due, key=lambda u: (self.due[u], u))
            outcome = self.eng.on_time(self.store, user, self.due.pop(user), plan=self.plan)
            found.alerts += outcome.alerts
            found.actions += outcome.actions
            self.schedule(user, outcome)
        return found


def feed(eng: FraudEngine, events: Iterable[Event], store: Any = None, plan: str | None = None) -> Run:
    """The events in order; an event's outcome also holds what the live rules raised since the
    previous event (and the last one's, what they raised up to its instant)."""
    store = store if store is not None else MemoryStore()
    the_plan = eng.plans.resolve(plan) if plan is not None else None
    clock = Clock(eng, store, the_plan)
    run = Run()
    now = 0
    for ev in events:
        now = ev.event_ms if isinstance(ev, CallEvent) else ev.time_ms
        before = clock.advance(now - 1)
        outcome = eng.on_call(store, ev, plan=the_plan) if isinstance(ev, CallEvent) else \
            eng.on_registration(store, ev, plan=the_plan)
        clock.schedule(ev.user, outcome)
        run.outcomes.append(FraudOutcome(outcome.status, before.alerts + outcome.alerts,
                                         before.actions + outcome.actions))
    if run.outcomes:
        last = clock.advance(now)
        run.outcomes[-1].alerts += last.alerts
        run.outcomes[-1].actions += last.actions
    return run


# ------------------------------------------------------------------------- the hacked PBX (live)


def hacked_pbx_starts(count: int = 20) -> list[CallEvent]:
    """``count`` international calls set up 6 s apart from 03:00 on a Tuesday night, none ended."""
    night = paris("2026-03-03T03:00:00")
    return [start_cdr(f"pbx-{i}", at(6 * i, night), callee=cuba(i)) for i in range(count)]


def test_hacked_pbx_is_caught_from_start_events_before_any_call_ends() -> None:
    """20 simultaneous calls to Cuba within 2 minutes at 03:00: the critical alert and the action
    come from `start` events alone.

    Calls start at 6 s × k; at t s (6k ≤ t < 6k + 6) the k + 1 open calls have run
    (k + 1)t − 3k(k + 1) s in all, worth 0.02 EUR each: 4.32 EUR at 48 s (k = 8), 5.04 at 52 s, the
    first whole second past 5; 15.04 at 92 s (k = 15); 20.16 at 107 s (k = 17). Each alert comes at
    that second, before the next set-up.
    """
    events = hacked_pbx_starts()
    assert all(ev.event == "start" for ev in events)
    run = feed(make_engine(BUNDLED_RULES), events)
    assert run.fired() == [
        (0, "high_risk_destination", "warning"),  # the first call to Cuba
        (4, "high_risk_destination", "critical"),  # the 5th within 60 minutes
        (9, "night_cost_burst", "warning"),  # 5.04 EUR >= 5 at 03:00:52, before the 10th set-up
        (9, "calls_per_minute", "warning"),  # 10 set-ups within 60 s (0 s … 54 s)
        (16, "night_cost_burst", "critical"),  # 15.04 EUR >= 15 at 03:01:32
        (18, "cost_burst", "warning"),  # 20.16 EUR >= 20 at 03:01:47
    ]
    assert [a.observed for a in run.alerts] == [1, 5, "5.04", 10, "15.04", "20.16"]
    assert [a.time[11:19] for a in run.alerts] == ["03:00:00", "03:00:24", "03:00:52", "03:00:54", "03:01:32",
                                                   "03:01:47"]
    critical = run.outcomes[4].alerts[0]
    assert (critical.time, critical.window) == ("2026-03-03T03:00:24+01:00", "2026-03-03T03:00:00+01:00")
    assert critical.evidence["call_ids"] == [f"pbx-{i}" for i in range(5)]
    assert critical.evidence["destinations"] == ["Cuba"]
    action = run.outcomes[4].actions[0]
    assert action.payload() == {
        "action_id": stable_id("action", critical.alert_id, "restrict_to_emergency"),
        "action": "restrict_to_emergency",
        "user": "alice",
        "customer": "acme",
        "plan": "unlimited",
        "rule": "high_risk_destination",
        "rule_name": "high_risk_destination",
        "alert_id": critical.alert_id,
        "reason": "fraud rule high_risk_destination (high_risk_destination) critical: 5 calls to high-risk "
        "destinations within 60 minutes (critical at 5)",
        "time": "2026-03-03T03:00:24+01:00",
    }
    assert [(a.rule_name, a.action) for a in run.actions] == [
        ("high_risk_destination", "restrict_to_emergency"),
        ("night_cost_burst", "restrict_to_emergency"),
    ]


def test_cost_of_calls_in_progress_rises_with_every_later_event() -> None:
    """Only cost_burst (20/50). After the 20 set-ups (22.80 EUR at 03:01:54) the open calls add
    0.40 EUR a second: 50.00 EUR at 03:03:02 (Σ(182 − 6i) = 2500 s), critical at that instant, with
    no event of the user then (the REGISTER refreshes at 03:03:00 and 03:03:06 only carry time on),
    still before any `end`. Ends in the same hour add nothing."""
    night = paris("2026-03-03T03:00:00")
    ends = [end_cdr(f"pbx-{i}", at(6 * i, night), duration=600 - 6 * i, callee=cuba(i)) for i in range(20)]
    events: list[Event] = [*hacked_pbx_starts(), tick(at(180, night)), tick(at(186, night)), *ends]
    run = feed(make_engine(only("cost_burst", 20, 50)), events)
    assert run.fired() == [(18, "cost_burst", "warning"), (21, "cost_burst", "critical")]
    assert run.levels() == [("warning", "20.16"), ("critical", "50.00")]
    critical = run.alerts[1]
    assert critical.time == "2026-03-03T03:03:02+01:00"
    assert critical.evidence["amount"] == "50.00"
    assert critical.evidence["window_start"] == "2026-03-03T02:03:02+01:00"
    assert critical.evidence["calls_total"] == 20
    assert critical.evidence["calls"][0] == {
        "call_id": "pbx-0", "destination": "Cuba", "seconds": 182, "amount": "3.64", "in_progress": True,
    }
    assert [a.action for a in run.actions] == ["restrict_to_emergency"]


# --------------------------------------------------------------------------------- cost_burst


def cuba_call(call_id: str, start: datetime, seconds: int, **kw: Any) -> CallEvent:
    return end_cdr(call_id, start, duration=seconds, callee=kw.pop("callee", cuba(int(call_id[-1]))), **kw)


@pytest.mark.parametrize(
    ("rules", "events", "expected"),
    [
        # 500 s × 0.02 = 10.00: a threshold is reached when observed >= it
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 500)], [("warning", "10.00")]),
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 499)], []),  # 9.98
        # a critical supersedes the warning of the same window
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 1000)], [("critical", "20.00")]),
        # answered time only; inbound and forwarded legs are not looked at by default
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 1000, billsec=0)], []),
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 1000, direction="inbound")], []),
        (only("cost_burst", 10, 20), [cuba_call("c0", B, 1000, direction="forwarded")], []),
        # covered calls count too: 60 s of France Fixe at 0.015 EUR/min
        (only("cost_burst", "0.01", 1), [end_cdr("c0", B, duration=60, callee=france())], [("warning", "0.01")]),
        (only("cost_burst", "0.016", 1), [end_cdr("c0", B, duration=60, callee=france())], []),
        # sliding: at 11:00 the window (10:00, 11:00] holds all of c0's 600 s: 12.00 + 6.00
        (only("cost_burst", 15, 30), [cuba_call("c0", B, 600), cuba_call("c1", at(3300), 300)], [("warning", "18.00")]),
        # at 11:05 only c0's 10:05–10:10 is inside: 6.00 + 6.00
        (only("cost_burst", 15, 30), [cuba_call("c0", B, 600), cuba_call("c1", at(3600), 300)], []),
        # a call in progress is valued from its start to the event time of any later event
        (only("cost_burst", 10, 20), [start_cdr("c0", B, callee=cuba()), tick(at(500))], [("warning", "10.00")]),
        (only("cost_burst", 10, 20), [start_cdr("c0", B, callee=cuba()), tick(at(499))], []),
        # ... and from nothing before its start (an older event values it at 0)
        (only("cost_burst", 10, 20), [start_cdr("c0", B, callee=cuba()), tick(at(-60))], []),
        # destination scope: names and prefixes
        (only("cost_burst", 10, 20, destinations=["Somalie"]), [cuba_call("c0", B, 1000)], []),
        (only("cost_burst", 10, 20, destinations=["Somalie"]),
         [end_cdr("c0", B, duration=400, callee="+252612345678")], [("warning", "10.00")]),
        (only("cost_burst", 10, 20, destinations=["+53"]), [cuba_call("c0", B, 500)], [("warning", "10.00")]),
        (only("cost_burst", 10, 20, destinations=["+5373"]), [cuba_call("c0", B, 500)], []),
        (only("cost_burst", 10, 20, destinations=["+537"]), [cuba_call("c0", B, 500)], [("warning", "10.00")]),
        # one alert per level per clock hour: 10.00 in 10:00, 20.00 in 10:00, 10.00 again in 11:00
        (only("cost_burst", 10, 20),
         [cuba_call("c0", B, 500), cuba_call("c1", at(1200), 500), cuba_call("c2", at(5400), 500)],
         [("warning", "10.00"), ("critical", "20.00"), ("warning", "10.00")]),
    ],
    ids=[
        "at-warning", "below-warning", "critical-only", "unanswered", "inbound", "forwarded",
        "covered-france", "covered-france-below", "sliding-inside", "sliding-partly-out", "live-at-threshold",
        "live-below", "live-before-start", "scope-name-out", "scope-name-in", "scope-prefix", "scope-longer-prefix-out",
        "scope-prefix-3", "hour-buckets",
    ],
)
def test_cost_burst(rules: dict[str, Any], events: list[Event], expected: list[tuple[str, str]]) -> None:
    assert feed(make_engine(rules), events).levels() == expected


def test_forwarded_legs_count_when_configured() -> None:
    eng = make_engine(only("cost_burst", 10, 20), directions=["outbound", "forwarded"])
    assert feed(eng, [cuba_call("c0", B, 500, direction="forwarded")]).levels() == [("warning", "10.00")]


def test_an_open_call_stops_counting_after_the_maximum_call_duration() -> None:
    events = [start_cdr("c0", B, callee=cuba()), tick(at(3000))]
    # 0.02 EUR a second: 15.00 at 750 s, 30.00 at 1500 s
    assert feed(make_engine(only("cost_burst", 15, 30)), events).levels() == [("warning", "15.00"), ("critical", "30.00")]
    capped = FraudEngine(make_engine(only("cost_burst", 15, 30)).plans, DECK, max_call_duration_s=600)
    assert feed(capped, events).levels() == []  # 600 s → 12.00


NIGHT = {"hours": "22:00-06:00"}
WEEKEND = {"weekdays": ["sat", "sun"]}


@pytest.mark.parametrize(
    ("scope", "start", "fires"),
    [
        (NIGHT, "2026-03-04T21:59:59", False),
        (NIGHT, "2026-03-04T22:00:00", True),
        (NIGHT, "2026-03-05T00:00:00", True),
        (NIGHT, "2026-03-05T05:59:59", True),
        (NIGHT, "2026-03-05T06:00:00", False),
        (NIGHT, "2026-03-05T12:00:00", False),
        ({"hours": ["09:00-12:00", "14:00-17:00"]}, "2026-03-04T12:00:00", False),
        ({"hours": ["09:00-12:00", "14:00-17:00"]}, "2026-03-04T14:00:00", True),
        (WEEKEND, "2026-03-06T23:59:59", False),  # Friday
        (WEEKEND, "2026-03-07T00:00:00", True),  # Saturday
        (WEEKEND, "2026-03-08T23:59:59", True),  # Sunday
        (WEEKEND, "2026-03-09T00:00:00", False),  # Monday
        ({**WEEKEND, **NIGHT}, "2026-03-07T02:00:00", True),  # Saturday 02:00
        ({**WEEKEND, **NIGHT}, "2026-03-07T12:00:00", False),
        ({**WEEKEND, **NIGHT}, "2026-03-06T23:00:00", False),  # Friday night before midnight
    ],
)
def test_cost_burst_time_scope_is_tested_on_the_call_start_in_the_plan_timezone(
    scope: dict[str, Any], start: str, fires: bool
) -> None:
    events = [cuba_call("c0", paris(start), 500)]  # 10.00 EUR, running across the scope edge
    expected = [("warning", "10.00")] if fires else []
    assert feed(make_engine(only("cost_burst", 10, 20, **scope)), events).levels() == expected


def test_time_scope_follows_the_plan_timezone_across_dst() -> None:
    """2026-03-29 02:00 CET → 03:00 CEST: 01:30Z is 03:30 local, inside 22:00–04:00; 02:30Z is 04:30, outside."""
    eng = make_engine(only("cost_burst", 10, 20, hours="22:00-04:00"))
    inside = datetime.fromisoformat("2026-03-29T01:30:00+00:00")
    outside = datetime.fromisoformat("2026-03-29T02:30:00+00:00")
    assert feed(eng, [cuba_call("c0", inside, 500)]).levels() == [("warning", "10.00")]
    assert feed(eng, [cuba_call("c0", outside, 500)]).levels() == []
    run = feed(eng, [cuba_call("c0", inside, 500)])
    assert run.alerts[0].window == "2026-03-29T03:00:00+02:00"


# ---------------------------------------------------------------------------- calls_per_minute


def starts(offsets: Sequence[float], *, callee: Any = france, direction: str = "outbound") -> list[CallEvent]:
    return [
        start_cdr(f"s{i}-{off}", at(off), callee=callee(i), direction=direction)
        for i, off in enumerate(offsets)
    ]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (starts([0, 30, 59]), [("warning", 3)]),
        (starts([0, 30, 60]), []),  # 60 s windows are half-open: 0 and 60 are not in one
        (starts([0, 10, 20, 30, 40]), [("warning", 3), ("critical", 5)]),
        (starts([40, 30, 20, 10, 0]), [("warning", 3), ("critical", 5)]),  # arrival order does not matter
        (starts([0, 0, 0, 0, 0]), [("warning", 3), ("critical", 5)]),
        (starts([0, 10, 20, 30, 40, 50, 59]), [("warning", 3), ("critical", 5)]),  # one of each per hour
        (starts([0, 10, 20], direction="inbound"), []),
        (starts([0, 10, 20], callee=lambda i: "112"), []),  # emergency calls are never counted
        (starts([0, 10, 20], callee=lambda i: "anonymous"), [("warning", 3)]),  # attempts count
        ([*starts([0, 10]), end_cdr("x", at(20), duration=30, billsec=0, callee=france(9))], [("warning", 3)]),
    ],
    ids=["3-in-59s", "3-in-60s", "5", "reversed", "same-instant", "7", "inbound", "emergency", "non-numbers",
         "unanswered-end-only"],
)
def test_calls_per_minute(events: list[Event], expected: list[tuple[str, int]]) -> None:
    assert feed(make_engine(only("calls_per_minute", 3, 5)), events).levels() == expected


def test_calls_per_minute_window_is_the_hour_of_the_call_reaching_the_threshold() -> None:
    run = feed(make_engine(only("calls_per_minute", 3, 5)), starts([-20, -10, 0]))
    alert = run.alerts[0]
    assert (alert.window, alert.time) == ("2026-03-04T10:00:00+01:00", "2026-03-04T10:00:00+01:00")
    assert alert.evidence == {
        "window_start": "2026-03-04T09:59:40+01:00", "window_seconds": 60, "call_ids": ["s0--20", "s1--10", "s2-0"],
    }
    assert alert.alert_id == stable_id("fraud", "alice", "calls_per_minute", "warning", "2026-03-04T10:00:00+01:00")
    assert (alert.unit, alert.threshold) == ("calls", 3)
    # the same burst an hour later is another window
    later = feed(make_engine(only("calls_per_minute", 3, 5)), [*starts([0, 10, 20]), *starts([3600, 3610, 3620])])
    assert [a.window for a in later.alerts] == ["2026-03-04T10:00:00+01:00", "2026-03-04T11:00:00+01:00"]


# ------------------------------------------------------------------------- total_calls_per_day


def day_calls(*local: str, **kw: Any) -> list[CallEvent]:
    return [start_cdr(f"d{i}", paris(t), callee=france(i), **kw) for i, t in enumerate(local)]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (day_calls("2026-03-04T00:00:00", "2026-03-04T12:00:00", "2026-03-04T23:59:59"),
         [("warning", 3, "2026-03-04")]),
        (day_calls("2026-03-04T08:00:00", "2026-03-04T09:00:00", "2026-03-04T10:00:00", "2026-03-04T11:00:00"),
         [("warning", 3, "2026-03-04"), ("critical", 4, "2026-03-04")]),
        # two a day either side of midnight
        (day_calls("2026-03-04T23:59:58", "2026-03-04T23:59:59", "2026-03-05T00:00:00", "2026-03-05T00:00:01"), []),
        # the local day, not the UTC one: 23:30Z on the 4th is 00:30 on the 5th in Paris
        ([*day_calls("2026-03-05T00:10:00", "2026-03-05T00:20:00"),
          start_cdr("utc", datetime.fromisoformat("2026-03-04T23:30:00+00:00"), callee=france(7))],
         [("warning", 3, "2026-03-05")]),
        (day_calls("2026-03-04T08:00:00", "2026-03-04T09:00:00", "2026-03-04T10:00:00", direction="inbound"), []),
        # a late call (end only) counts on its own day
        ([*day_calls("2026-03-04T08:00:00", "2026-03-04T09:00:00"),
          end_cdr("late", paris("2026-03-04T07:00:00"), duration=30, callee=france(8))],
         [("warning", 3, "2026-03-04")]),
    ],
    ids=["3", "4", "midnight", "local-day", "inbound", "late-end-only"],
)
def test_total_calls_per_day(events: list[Event], expected: list[tuple[str, int, str]]) -> None:
    run = feed(make_engine(only("total_calls_per_day", 3, 4)), events)
    assert [(a.level, a.observed, a.window) for a in run.alerts] == expected


# ---------------------------------------------------------------------------- sequential_calls


def dialled(*callees: str, gap: int = 60, direction: str = "outbound") -> list[CallEvent]:
    return [start_cdr(f"q{i}", at(i * gap), callee=c, direction=direction) for i, c in enumerate(callees)]


A, B2 = "+33612345678", "+33698765432"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (dialled(A, A, A), [("warning", 3, "q0")]),
        (dialled(A, A, A, A, A), [("warning", 3, "q0"), ("critical", 4, "q0")]),
        (dialled(A, A, B2, A, A), []),
        (dialled(A, A, A, B2, B2, B2), [("warning", 3, "q0"), ("warning", 3, "q3")]),  # window = the run
        (dialled(A, "0612345678", "0033612345678", "06 12 34 56 78"), [("warning", 3, "q0"), ("critical", 4, "q0")]),
        ([*dialled(A, A), start_cdr("in", at(90), callee=A, direction="inbound"), start_cdr("q2", at(120), callee=A)],
         [("warning", 3, "q0")]),  # an inbound call neither counts nor breaks the run
        (dialled(A, A, A, gap=3600), [("warning", 3, "q0")]),  # exactly an hour apart: still in a row
        (dialled(A, A, A, gap=3601), []),  # more than an hour: a new run each time
    ],
    ids=["3", "5", "broken", "two-runs", "formats", "inbound", "gap-1h", "gap-over-1h"],
)
def test_sequential_calls(events: list[Event], expected: list[tuple[str, int, str]]) -> None:
    run = feed(make_engine(only("sequential_calls", 3, 4)), events)
    assert [(a.level, a.observed, a.window) for a in run.alerts] == expected


def test_sequential_calls_with_a_destination_scope_ignore_other_calls() -> None:
    eng = make_engine(only("sequential_calls", 3, 4, destinations=["+53"]))
    events = dialled(cuba(1), france(1), cuba(1), france(2), cuba(1))
    assert [(a.level, a.observed) for a in feed(eng, events).alerts] == [("warning", 3)]


def test_state_holds_no_called_number_in_clear() -> None:
    store = MemoryStore()
    eng = make_engine({**only("sequential_calls", 3, 4), **only("cost_burst", 10, 20)})
    feed(eng, [end_cdr("c0", B, duration=60, callee="+5372123456"), *dialled(A, A)], store)
    raw = store.fraud["alice"].encode()
    assert b"5372123456" not in raw and b"612345678" not in raw
    assert store.fraud["alice"].calls["c0"][3] == "53"  # the rate-deck prefix is enough


# --------------------------------------------------------------------------------- long_call


LONG = only("long_call", 60, 120)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # live: the call is still open when a later event of the user arrives
        ([start_cdr("c0", B, callee=france()), tick(at(3600))], []),
        ([start_cdr("c0", B, callee=france()), tick(at(3601))], [("warning", 3601, True)]),
        # each level at the first second the call is longer than it, whatever comes later
        ([start_cdr("c0", B, callee=france()), start_cdr("c1", at(7260), callee=france(1))],
         [("warning", 3601, True), ("critical", 7201, True)]),
        # at its end: billsec
        ([end_cdr("c0", B, duration=3600, callee=france())], []),
        ([end_cdr("c0", B, duration=3601, callee=france())], [("warning", 3601, False)]),
        ([end_cdr("c0", B, duration=7201, callee=france())], [("critical", 7201, False)]),
        # both levels live, before the end (known from its start event, timed live, not at its end)
        ([start_cdr("c0", B, callee=france()), tick(at(3660)), end_cdr("c0", B, duration=7500, callee=france())],
         [("warning", 3601, True), ("critical", 7201, True)]),
        # live warning; the call ends before the critical
        ([start_cdr("c0", B, callee=france()), tick(at(3660)), end_cdr("c0", B, duration=4000, callee=france())],
         [("warning", 3601, True)]),
        ([end_cdr("c0", B, duration=7201, callee=france(), direction="inbound")], []),
    ],
    ids=["live-at-60min", "live-over-60min", "live-critical", "end-at-60min", "end-over", "end-critical",
         "live-then-end", "live-then-end-same-level", "inbound"],
)
def test_long_call(events: list[Event], expected: list[tuple[str, int, bool]]) -> None:
    run = feed(make_engine(LONG), events)
    assert [(a.level, a.observed, a.evidence["in_progress"]) for a in run.alerts] == expected
    assert all(a.window == "c0" and a.unit == "seconds" for a in run.alerts)


def test_long_call_threshold_is_reported_in_seconds_and_time_is_the_crossing() -> None:
    run = feed(make_engine(LONG), [start_cdr("c0", B, callee=cuba()), tick(at(9000))])
    alert = run.alerts[1]
    assert (alert.level, alert.threshold, alert.time) == ("critical", 7200, "2026-03-04T12:00:01+01:00")
    assert alert.evidence == {
        "call_id": "c0", "start_time": "2026-03-04T10:00:00+01:00", "destination": "Cuba",
        "in_progress": True, "seconds": 7201,
    }
    assert run.actions[0].reason.endswith("call c0 has lasted 7201 s (critical above 7200 s)")


def test_long_call_live_detection_stops_at_the_maximum_call_duration() -> None:
    eng = FraudEngine(make_engine(LONG).plans, DECK, max_call_duration_s=3600)
    assert feed(eng, [start_cdr("c0", B, callee=france()), tick(at(7300))]).alerts == []


def test_a_register_read_ahead_of_the_cdrs_never_makes_an_open_call_look_longer() -> None:
    """`cdrs` and `sip-registrations` are separate topics: a worker may read a REGISTER of the next
    day before a call's `end`. Timed up to the REGISTER's time, the 100-second call would look like a
    call of hours (a false critical). A registration times nothing; the clock runs only as far as
    every input has been read (the watermark), and then the end is known."""
    eng, store = make_engine(LONG), MemoryStore()
    clock = Clock(eng, store)
    call = start_cdr("c0", B, callee=france())
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    clock.schedule("alice", eng.on_call(store, call))
    assert eng.on_registration(store, tick(at(86_000))).alerts == []
    assert clock.advance(ms(at(50))).alerts == []  # the CDRs are read up to 10:00:50
    assert eng.on_call(store, end_cdr("c0", B, duration=100, callee=france())).alerts == []
    assert clock.advance(ms(at(86_000))).alerts == []  # the call lasted 100 s
    # read that far with the call still open: it really was in progress that long
    store = MemoryStore()
    clock = Clock(eng, store)
    clock.schedule("alice", eng.on_call(store, call))
    live = clock.advance(ms(at(86_000)))
    assert [(a.level, a.observed, a.time) for a in live.alerts] == [
        ("warning", 3601, "2026-03-04T11:00:01+01:00"), ("critical", 7201, "2026-03-04T12:00:01+01:00")]


def test_the_live_rules_are_the_same_whatever_the_watermark_steps() -> None:
    """The hacked PBX's night through the clock in steps of 1 s, 7 s or all at once after the
    events: the same alerts, at the same instants."""
    eng = make_engine(BUNDLED_RULES)
    events = hacked_pbx_starts()
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    night = ms(paris("2026-03-03T03:00:00"))
    results = []
    for step in (1_000, 7_000, None):
        store = MemoryStore()
        clock = Clock(eng, store)
        alerts = []
        for ev in events:  # all read before the clock moves: the watermark lags
            found = eng.on_call(store, ev)
            alerts += found.alerts
            clock.schedule(ev.user, found)
        end = night + 4 * 3600 * 1000
        for until in [*(range(night, end, step) if step else []), end]:
            alerts += clock.advance(until).alerts
        results.append(sorted((a.time, a.rule_name, a.level, a.observed) for a in alerts))
    assert results[0] == results[1] == results[2]
    assert ("2026-03-03T03:03:02+01:00", "cost_burst", "critical", "50.00") in results[0]


@pytest.mark.parametrize(
    ("scope", "callee", "start", "fires"),
    [
        ({"destinations": ["+53"]}, france(), B, False),
        ({"destinations": ["+53"]}, cuba(), B, True),
        ({"destinations": ["France Fixe"]}, france(), B, True),
        ({"hours": "22:00-06:00"}, france(), paris("2026-03-04T21:59:59"), False),  # runs into the night
        ({"hours": "22:00-06:00"}, france(), paris("2026-03-04T22:00:00"), True),
    ],
)
def test_long_call_scope(scope: dict[str, Any], callee: str, start: datetime, fires: bool) -> None:
    events = [end_cdr("c0", start, duration=7201, callee=callee)]
    run = feed(make_engine(only("long_call", 60, 120, **scope)), events)
    assert run.levels() == ([("critical", 7201)] if fires else [])


# --------------------------------------------------------------------- high_risk_destination


HIGH = only("high_risk_destination", 1, 3)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([start_cdr("c0", B, callee=france())], []),
        ([start_cdr("c0", B, callee=cuba())], [("warning", 1)]),
        ([start_cdr("c0", B, callee="+881612345678")], [("warning", 1)]),  # by prefix
        ([start_cdr("c0", B, callee="00252612345678")], [("warning", 1)]),  # by name, 00 form
        ([end_cdr("c0", B, duration=30, billsec=0, callee=cuba())], [("warning", 1)]),  # unanswered attempts count
        ([start_cdr("c0", B, callee=cuba(), direction="inbound")], []),
        (starts([0, 1800, 3599], callee=cuba), [("warning", 1), ("critical", 3)]),
        # 60-minute windows are half-open; an alert per clock hour of the call reaching the threshold
        (starts([0, 1800, 3600], callee=cuba), [("warning", 1), ("warning", 1)]),
        (starts([3600, 1800, 0], callee=cuba), [("warning", 1), ("warning", 2)]),
        (starts([0, 10, 20, 30], callee=cuba), [("warning", 1), ("critical", 3)]),
    ],
    ids=["france", "cuba", "prefix", "name-00", "unanswered", "inbound", "3-in-1h", "3-in-exactly-1h",
         "3-reversed", "4"],
)
def test_high_risk_destination(events: list[Event], expected: list[tuple[str, int]]) -> None:
    assert feed(make_engine(HIGH), events).levels() == expected


def test_high_risk_by_plan_and_rule_scope() -> None:
    uk_mobile = "+447700900123"
    eng = make_engine(HIGH, plan_fraud={"high_risk": ["Royaume-Uni Mobile"]})
    assert feed(eng, [start_cdr("c0", B, callee=uk_mobile)], plan="per-second").levels() == [("warning", 1)]
    assert feed(eng, [start_cdr("c0", B, callee=uk_mobile)], plan="unlimited").levels() == []
    assert feed(eng, [start_cdr("c0", B, callee=uk_mobile)]).levels() == []  # default plan: unlimited
    somalia_only = make_engine(only("high_risk_destination", 1, 3, destinations=["Somalie"]))
    assert feed(somalia_only, [start_cdr("c0", B, callee=cuba())]).levels() == []
    assert feed(somalia_only, [start_cdr("c0", B, callee="+252612345678")]).levels() == [("warning", 1)]
    night = make_engine(only("high_risk_destination", 1, 3, hours="22:00-06:00"))
    assert feed(night, [start_cdr("c0", B, callee=cuba())]).levels() == []


# ------------------------------------------------------------------------------ new_network


NEW = only("new_network", 1, 2)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([reg("desk", B, "192.0.2.10")], []),  # a first device is not a new network
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "192.0.2.99")], []),  # same /24
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "198.51.100.7")], [("warning", 1)]),
        # the other binding must be active: [time, time + expires)
        ([reg("desk", B, "192.0.2.10", expires=60), reg("soft", at(60), "198.51.100.7")], []),
        ([reg("desk", B, "192.0.2.10", expires=60), reg("soft", at(59), "198.51.100.7")], [("warning", 1)]),
        ([reg("desk", B, "192.0.2.10"), reg("desk", at(0), "192.0.2.10", expires=0),
          reg("soft", at(60), "198.51.100.7")], []),
        # the same device moving to another network is not "another binding"
        ([reg("desk", B, "192.0.2.10"), reg("desk", at(60), "198.51.100.7")], []),
        # two new networks in 24 hours: critical (and the first one's warning)
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "198.51.100.7"), reg("pbx", at(120), "203.0.113.5")],
         [("warning", 1), ("critical", 2)]),
        ([reg("desk", B, "192.0.2.10", expires=90000), reg("soft", at(60), "198.51.100.7"),
          reg("pbx", at(60 + 86400), "203.0.113.5")],
         [("warning", 1), ("warning", 1)]),  # 24 h apart: each is alone in its 24 h, on its own day
        # an unregister from a new network is no registration from it
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "198.51.100.7", expires=0)], []),
        # IPv6 /64
        ([reg("desk", B, "2001:db8:1:2::10"), reg("soft", at(60), "2001:db8:1:2:ffff::99")], []),
        ([reg("desk", B, "2001:db8:1:2::10"), reg("soft", at(60), "2001:db8:1:3::1")], [("warning", 1)]),
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "::ffff:192.0.2.77")], []),  # IPv4-mapped
        ([reg("desk", B, "192.0.2.10"), reg("soft", at(60), "not-an-ip")], []),
    ],
    ids=["first", "same-24", "new-24", "other-expired", "other-active", "other-unregistered", "same-binding",
         "two-networks", "24h-apart", "unregister", "same-64", "new-64", "v4-mapped", "bad-ip"],
)
def test_new_network(events: list[Event], expected: list[tuple[str, int]]) -> None:
    assert feed(make_engine(NEW), events).levels() == expected


def test_new_network_alert_and_action() -> None:
    events = [reg("desk", B, "192.0.2.10"), reg("soft", at(60), "198.51.100.7"), reg("pbx", at(120), "203.0.113.5")]
    run = feed(make_engine(NEW), events)
    warning, critical = run.alerts
    assert (warning.window, warning.time) == ("2026-03-04", "2026-03-04T10:01:00+01:00")
    assert critical.evidence == {
        "networks": ["198.51.100.0/24", "203.0.113.0/24"],
        "last_used": {"198.51.100.0/24": None, "203.0.113.0/24": None},
        "source_ip": "203.0.113.5",
        "binding": "<urn:uuid:pbx>",
        "user_agent": "Yealink SIP-T46S 66.86.0.15",
        "active_bindings": ["<urn:uuid:desk>", "<urn:uuid:soft>"],
        "days": 30,
        "first_seen": "2026-03-04T10:00:00+01:00",
        "learning_days": 0,
        # the networks of the customer's users (here the user's own) other than the new one
        "customer_networks": ["192.0.2.0/24", "198.51.100.0/24"],
    }
    assert [(a.action, a.rule) for a in run.actions] == [("restrict_to_emergency", "new_network")]


@pytest.mark.parametrize(("since", "new"), [(30 * 86400, False), (30 * 86400 + 1, True)])
def test_new_network_memory_edge(since: int, new: bool) -> None:
    """The user last registered from 198.51.100.0/24 exactly 30 days (+ 1 s) before: not new (new)."""
    events = [
        reg("soft", B, "198.51.100.7", expires=60),
        reg("desk", at(since - 60), "192.0.2.10"),
        reg("soft", at(since), "198.51.100.8"),
    ]
    run = feed(make_engine(NEW), events)
    assert run.levels() == ([("warning", 1)] if new else [])


def test_new_network_rule_days_and_time_scope() -> None:
    events = [reg("soft", B, "198.51.100.7", expires=60), reg("desk", at(86400), "192.0.2.10", expires=604800),
              reg("soft", at(86460 + 86400), "198.51.100.8")]  # last used 2 days and 1 minute before
    assert feed(make_engine(only("new_network", 1, 2, days=2)), events).levels() == [("warning", 1)]
    assert feed(make_engine(only("new_network", 1, 2, days=3)), events).levels() == []
    night = make_engine(only("new_network", 1, 2, hours="22:00-06:00"))
    at_night = [reg("desk", paris("2026-03-04T21:00:00"), "192.0.2.10", expires=7200)]
    assert feed(night, [*at_night, reg("soft", paris("2026-03-04T21:59:00"), "198.51.100.7")]).levels() == []
    assert feed(night, [*at_night, reg("soft", paris("2026-03-04T22:00:00"), "198.51.100.7")]).levels() == [
        ("warning", 1)]


@pytest.mark.parametrize(
    ("source_ip", "network"),
    [
        ("192.0.2.10", "192.0.2.0/24"),
        ("192.0.2.255", "192.0.2.0/24"),
        ("192.0.2.10:5060", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8::1]:5060", "2001:db8::/64"),
        ("::ffff:203.0.113.9", "203.0.113.0/24"),
        ("fe80::1%eth0", "fe80::/64"),
        (" 198.51.100.1 ", "198.51.100.0/24"),
        ("localhost", None),
        ("300.1.2.3", None),
        ("", None),
    ],
)
def test_network_of(source_ip: str, network: str | None) -> None:
    assert network_of(source_ip) == network


# ------------------------------------------------------------------ duplicates and idempotency


def hacked_night() -> list[Event]:
    """A night-time hacking scenario: a PBX registers from a new network next to the desk phone,
    sets up 20 calls to Cuba, a REGISTER refresh, then the calls end."""
    night = paris("2026-03-03T03:00:00")
    ends = [end_cdr(f"pbx-{i}", at(6 * i, night), duration=900, callee=cuba(i)) for i in range(20)]
    return [
        reg("desk", at(-3000, night), "192.0.2.10"),
        reg("pbx", at(-60, night), "203.0.113.50"),
        *hacked_pbx_starts(),
        tick(at(186, night)),
        *ends,
    ]


def test_registrations_read_days_ahead_of_the_cdrs_do_not_make_a_fired_window_fire_again() -> None:
    """The two topics are not read in step: a REGISTER three days ahead must not make the engine
    forget that a day's window already fired, or a later call of that day fires it again — the same
    alert id with another payload."""
    eng = make_engine(only("total_calls_per_day", 3))
    calls = day_calls("2026-03-04T08:00:00", "2026-03-04T09:00:00", "2026-03-04T10:00:00", "2026-03-04T11:00:00")
    store = MemoryStore()
    run = feed(eng, [*calls[:3], tick(paris("2026-03-07T10:00:00")), calls[3]], store)
    assert [(a.level, a.observed, a.window) for a in run.alerts] == [("warning", 3, "2026-03-04")]


def test_duplicates_change_nothing_and_emit_nothing() -> None:
    eng = make_engine(BUNDLED_RULES)
    once_store, twice_store = MemoryStore(), MemoryStore()
    once = feed(eng, hacked_night(), once_store)
    twice = feed(eng, [ev for ev in hacked_night() for _ in (0, 1)], twice_store)
    assert [a.payload() for a in twice.alerts] == [a.payload() for a in once.alerts]
    assert [a.payload() for a in twice.actions] == [a.payload() for a in once.actions]
    assert {o.status for o in twice.outcomes[1::2]} == {"duplicate"}
    assert twice_store.fraud["alice"].encode() == once_store.fraud["alice"].encode()
    # the whole stream again, afterwards: nothing
    again = feed(eng, hacked_night(), twice_store)
    assert again.alerts == [] and again.actions == []
    assert twice_store.fraud["alice"].encode() == once_store.fraud["alice"].encode()


def test_hacked_night_outputs() -> None:
    run = feed(make_engine(BUNDLED_RULES), hacked_night())
    assert [(a.rule_name, a.level) for a in run.alerts] == [
        ("new_network", "warning"),
        ("high_risk_destination", "warning"),
        ("high_risk_destination", "critical"),
        ("night_cost_burst", "warning"),  # 03:00:52, before the 10th set-up
        ("calls_per_minute", "warning"),
        ("night_cost_burst", "critical"),
        ("cost_burst", "warning"),
        ("cost_burst", "critical"),  # 03:03:02: 50.00 EUR, with no event of the user then
    ]
    first_end = next(i for i, ev in enumerate(hacked_night()) if isinstance(ev, CallEvent) and ev.is_end)
    assert all(i < first_end for i, _rule, level in run.fired() if level == "critical")
    for alert in run.alerts:
        validator("fraud-alerts")(alert.payload())
        assert alert.alert_id == stable_id("fraud", alert.user, alert.rule_name, alert.level, alert.window)
    for action in run.actions:
        validator("account-actions")(action.payload())
    assert len({a.alert_id for a in run.alerts}) == len(run.alerts)
    assert len({a.action_id for a in run.actions}) == len(run.actions) == 3


def test_normal_office_traffic_raises_nothing() -> None:
    """A day of an ordinary office line with the bundled rules: 40 calls to French numbers, a few long
    ones, two phones on the office network, REGISTER refreshes."""
    events: list[Event] = [reg("desk", at(-3600), "192.0.2.10", expires=36000), reg("dect", at(-3500), "192.0.2.11")]
    for i in range(40):
        start = at(i * 700)
        callee = france(i % 25)
        events += [start_cdr(f"n{i}", start, callee=callee), end_cdr(f"n{i}", start, duration=300, callee=callee)]
    events.append(reg("dect", at(3000), "192.0.2.11"))
    assert feed(make_engine(BUNDLED_RULES), sorted(events, key=_event_time)).alerts == []


def _event_time(ev: Event) -> datetime:
    if isinstance(ev, Registration):
        return datetime.fromisoformat(ev.time)
    start = datetime.fromisoformat(ev.start_time)
    return start + timedelta(milliseconds=(ev.end_ms or ev.start_ms) - ev.start_ms)


def test_registration_statuses() -> None:
    eng = make_engine(NEW)
    store = MemoryStore()
    first = reg("desk", B, "192.0.2.10")
    assert feed(eng, [first, first], store).outcomes[1].status == "duplicate"
    assert eng.on_registration(store, reg("desk", at(-60), "192.0.2.10")).status == "late"
    assert eng.on_registration(store, reg("desk", at(60), "192.0.2.10", expires=0)).status == "ok"
    assert eng.on_registration(store, reg("desk", at(60), "192.0.2.10", expires=0)).status == "duplicate"


def test_call_statuses() -> None:
    eng = make_engine(LONG)
    store = MemoryStore()
    assert eng.on_call(store, start_cdr("c0", B)).status == "ok"
    assert eng.on_call(store, start_cdr("c0", B)).status == "duplicate"
    assert eng.on_call(store, end_cdr("c0", B, duration=60)).status == "ok"
    assert eng.on_call(store, end_cdr("c0", B, duration=60)).status == "duplicate"
    assert eng.on_call(store, start_cdr("c0", B)).status == "duplicate"  # a start after its end
    assert eng.on_call(store, end_cdr("c1", at(-30), duration=30)).status == "ok"  # end only


# ----------------------------------------------------------------------------------- state


class EncodingStore:
    """Stores fraud states as bytes, as a table does: the engine must not rely on keeping objects
    between events."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self.memory = MemoryStore()

    def __getattr__(self, name: str) -> Any:  # the rest of the Store: the plans
        return getattr(self.memory, name)

    def get_fraud(self, user: str) -> FraudState | None:
        raw = self.raw.get(user)
        return FraudState.decode(raw) if raw is not None else None

    def put_fraud(self, user: str, state: FraudState) -> None:
        self.raw[user] = state.encode()


def test_encoded_state_gives_the_same_outputs() -> None:
    eng = make_engine(BUNDLED_RULES)
    plain = feed(eng, hacked_night())
    encoded_store = EncodingStore()
    encoded = feed(eng, hacked_night(), encoded_store)
    assert [a.payload() for a in encoded.alerts] == [a.payload() for a in plain.alerts]
    state = encoded_store.get_fraud("alice")
    assert state is not None and FraudState.decode(state.encode()) == state


def test_no_rules_no_state() -> None:
    eng = make_engine(only("cost_burst", 10, 20), plan_fraud={"rules": {"cost_burst": {"enabled": False}}})
    store = MemoryStore()
    assert eng.on_call(store, cuba_call("c0", B, 3000), plan=eng.plans.resolve("per-second")).status == "ok"
    assert store.fraud == {}
    assert feed(eng, [cuba_call("c0", B, 3000)], plan="gold").alerts  # unknown plan: the default


def test_state_is_bounded() -> None:
    """Every 10 minutes for 3 days: a call, and a REGISTER from a fresh /24 every hour. The state keeps
    the calls of the last 26 h, the windows of the last 50 h and the networks of the last 30 days."""
    eng = make_engine({**BUNDLED_RULES, "new_network": {"days": 1, "warning": 1}})
    store = MemoryStore()
    events: list[Event] = []
    for i in range(3 * 144):
        start = at(i * 600)
        events += [start_cdr(f"b{i}", start, callee=france(i)), end_cdr(f"b{i}", start, duration=60, callee=france(i))]
        if i % 6 == 0:
            events.append(reg(f"dev{i % 12}", start, f"10.{i // 256}.{i % 256}.1", expires=7200))
    feed(eng, events, store)
    state = store.fraud["alice"]
    newest = max(ms for ms in (state.newest_call_ms, state.newest_registration_ms))
    assert len(state.calls) == 26 * 6 + 1  # ended calls of the last 26 h
    assert min(r[1] for r in state.calls.values()) >= newest - 26 * 3600_000
    assert all(at_ms >= newest - 50 * 3600_000 for at_ms in state.fired.values())
    assert all(last >= state.newest_registration_ms - DAY_MS for last in state.networks.values())
    assert 20 <= len(state.networks) <= 25  # one a hour
    assert len(state.days) <= 3
    assert len(state.encode()) < 20_000


def test_stale_events_are_ignored() -> None:
    eng = make_engine(LONG)
    store = MemoryStore()
    eng.on_call(store, end_cdr("c0", B, duration=60))
    before = store.fraud["alice"].encode()
    edge = B + timedelta(seconds=60) - timedelta(days=1)
    assert eng.on_call(store, start_cdr("old", edge - timedelta(milliseconds=1))).status == "stale"
    assert store.fraud["alice"].encode() == before
    assert eng.on_call(store, start_cdr("edge", edge)).status == "ok"  # exactly 24 h before: still taken


def test_the_engine_uses_the_plan_each_user_subscribed_to() -> None:
    eng = make_engine(HIGH, plan_fraud={"high_risk": ["Royaume-Uni Mobile"]})
    store = MemoryStore()
    store.set_plan("bob", "per-second")
    events = [start_cdr("c0", B, callee="+447700900123", user="bob"), start_cdr("c1", B, callee="+447700900123")]
    outcomes = [eng.on_call(store, ev) for ev in events]
    assert [[a.user for a in o.alerts] for o in outcomes] == [["bob"], []]


def test_money_is_shown_as_decimal_strings() -> None:
    """60 s of France Fixe is worth 0.015 EUR: shown rounded down to the cent; the threshold as configured."""
    run = feed(make_engine(only("cost_burst", "0.0125", 1)), [end_cdr("c0", B, duration=60, callee=france())])
    alert = run.alerts[0]
    assert (alert.observed, alert.threshold, alert.unit) == ("0.01", "0.0125", "EUR")
    assert alert.evidence["calls"][0]["amount"] == "0.01"
    validator("fraud-alerts")(alert.payload())


# --------------------------------------------------------------------- an analyst's verdicts


def verdict(kind: str = "false_positive", *, rule_name: str = "calls_per_minute", networks: tuple[str, ...] = (),
            until: datetime | None = None, given: datetime = B) -> Feedback:
    return Feedback(feedback_id=stable_id("feedback", "a" * 32, kind), kind=kind, alert_id="a" * 32, user="alice",
                    rule_name=rule_name, networks=networks,
                    mute_until_ms=int(until.timestamp() * 1000) if until is not None else None,
                    time_ms=int(given.timestamp() * 1000))


def test_a_muted_rule_raises_nothing_for_the_user_until_the_verdict_s_instant() -> None:
    """calls_per_minute at 3 calls in 60 s; muted until 11:00: a burst at 10:30 raises nothing, the
    same burst at 11:00 (the instant itself is no longer muted) raises the warning."""
    eng, store = make_engine(only("calls_per_minute", 3)), MemoryStore()
    assert eng.on_feedback(store, verdict(until=paris("2026-03-04T11:00:00"))).status == "ok"
    muted = feed(eng, [start_cdr(f"m{i}", at(1800 + i)) for i in range(3)], store)
    assert muted.alerts == []
    loud = feed(eng, [start_cdr(f"l{i}", at(3600 + i)) for i in range(3)], store)
    assert [(a.rule_name, a.level, a.time) for a in loud.alerts] == [
        ("calls_per_minute", "warning", "2026-03-04T11:00:02+01:00")]


def test_a_muted_rule_leaves_the_user_s_other_rules_and_other_users_alone() -> None:
    eng, store = make_engine({**only("calls_per_minute", 3), **only("sequential_calls", 3)}), MemoryStore()
    eng.on_feedback(store, verdict(until=paris("2026-03-05T10:00:00")))
    run = feed(eng, [start_cdr(f"c{i}", at(i), callee=france(1)) for i in range(3)], store)
    assert [a.rule_name for a in run.alerts] == ["sequential_calls"]
    other = [dataclasses.replace(start_cdr(f"o{i}", at(i)), user="bob") for i in range(3)]
    assert [a.rule_name for a in feed(eng, other, store).alerts] == ["calls_per_minute", "sequential_calls"]


def test_a_trusted_network_is_never_new_for_the_user() -> None:
    """Without the verdict the softphone's network is new (warning); trusted, it is not, even
    after the rule's 30 days of memory have passed."""
    events = [reg("desk", B, "192.0.2.10", expires=90 * 86400), reg("soft", at(40 * 86400), "198.51.100.7")]
    assert feed(make_engine(NEW), events).levels() == [("warning", 1)]
    eng, store = make_engine(NEW), MemoryStore()
    eng.on_feedback(store, verdict(rule_name="new_network", networks=("198.51.100.0/24",)))
    assert feed(eng, events, store).levels() == []
    # another new network still counts
    assert feed(eng, [reg("pbx", at(40 * 86400 + 60), "203.0.113.5")], store).levels() == [("warning", 1)]


def test_a_verdict_applied_twice_changes_nothing_more() -> None:
    eng, store = make_engine(NEW), MemoryStore()
    given = verdict(rule_name="new_network", networks=("198.51.100.0/24",), until=paris("2026-03-05T10:00:00"))
    assert eng.on_feedback(store, given).status == "ok"
    before = store.fraud["alice"].encode()
    assert eng.on_feedback(store, given).status == "duplicate"
    assert store.fraud["alice"].encode() == before
    # an earlier end of the mute does not shorten a later one
    assert eng.on_feedback(store, verdict(rule_name="new_network", until=paris("2026-03-04T12:00:00"))).status == (
        "duplicate")
    assert eng.on_feedback(store, verdict("acknowledge")).status == "duplicate"


def test_verdicts_survive_the_state_encoding_and_are_absent_from_a_state_without_any() -> None:
    eng, store = make_engine(NEW), MemoryStore()
    feed(eng, [reg("desk", B)], store)
    assert b'"t"' not in store.fraud["alice"].encode() and b'"m"' not in store.fraud["alice"].encode()
    eng.on_feedback(store, verdict(rule_name="new_network", networks=("198.51.100.0/24",),
                                   until=paris("2026-03-05T10:00:00")))
    decoded = FraudState.decode(store.fraud["alice"].encode())
    assert decoded.trusted == {"198.51.100.0/24": int(B.timestamp() * 1000)}
    assert decoded.muted == {"new_network": int(paris("2026-03-05T10:00:00").timestamp() * 1000)}


def test_a_mute_is_forgotten_once_both_clocks_are_well_past_it() -> None:
    eng, store = make_engine(only("calls_per_minute", 3)), MemoryStore()
    eng.on_feedback(store, verdict(until=paris("2026-03-04T11:00:00")))
    feed(eng, [reg("desk", at(5 * 86400)), start_cdr("late", at(5 * 86400))], store)
    assert store.fraud["alice"].muted == {}
