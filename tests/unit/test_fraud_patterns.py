"""The pattern rules (price_cap, irsf_range, short_call_burst, destination_baseline, wangiri), with
hand-computed expectations, on a MemoryStore.

The deck is test_fraud's: the factories' small deck plus Cuba 1.20 EUR/min (0.02 EUR/s), Somalie
1.50 EUR/min, Satellite Iridium (+8816) 3.00 EUR/min; high_risk = Cuba, Somalie, +8816. Times are
in Europe/Paris, UTC+1 in March 2026 (B = 2026-03-04T10:00, a Wednesday).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Sequence

import orjson
import pytest

from streams.core.errors import ConfigError
from streams.core.fraud.patterns import country_of
from streams.core.plans import PlansError, parse_plans
from streams.core.records import CallEvent
from streams.core.schemas import validator
from streams.core.state import FraudState, MemoryStore
from tests.factories import end_cdr, ms, plans_data, start_cdr
from tests.unit.test_fraud import DECK, B, at, cuba, feed, make_engine, only, paris

D = Decimal
ALERT = validator("fraud-alerts")
ACTION = validator("account-actions")


def minutes(m: float, base: datetime = B) -> datetime:
    return base + timedelta(minutes=m)


def ring(call_id: str, user: str, caller: str, start: datetime, seconds: int = 3, *,
         billsec: int = 0) -> CallEvent:
    """An inbound call to ``user`` from ``caller``, ended after ``seconds`` (unanswered unless
    ``billsec``)."""
    end = ms(start) + seconds * 1000
    return CallEvent("end", call_id, user, "acme", caller, "0145000000", "inbound", ms(start), start.isoformat(),
                     ms(start) if billsec else None, end, billsec, "ANSWERED" if billsec else "NO ANSWER")


def checked(alerts: Sequence[Any], actions: Sequence[Any] = ()) -> None:
    for alert in alerts:
        ALERT(alert.payload())
    for action in actions:
        ACTION(action.payload())


# ---------------------------------------------------------------------------------- price_cap


def test_price_cap_fires_above_the_cap_on_the_first_event() -> None:
    """warning 1.20, critical 1.50 EUR/min: Cuba at 1.20 is not above either; Somalie at 1.50 is
    above the warning only; Iridium at 3.00 is critical (which supersedes its warning). Each from
    the call's start event; its end adds nothing."""
    eng = make_engine(only("price_cap", "1.20", "1.50"))
    run = feed(eng, [
        start_cdr("c0", at(0), callee=cuba(0)),
        start_cdr("c1", at(60), callee="+252611234567"),
        end_cdr("c1", at(60), duration=30, callee="+252611234567"),
        start_cdr("c2", at(120), callee="+881612345678"),
    ])
    assert run.fired() == [(1, "price_cap", "warning"), (3, "price_cap", "critical")]
    warning, critical = run.alerts
    assert (warning.observed, warning.threshold, warning.unit, warning.window) == ("1.50", "1.20", "EUR/min", "c1")
    assert warning.evidence == {"call_id": "c1", "destination": "Somalie", "price_per_minute": "1.50",
                                "start_time": "2026-03-04T10:01:00+01:00"}
    assert (critical.observed, critical.threshold, critical.window) == ("3.00", "1.50", "c2")
    assert critical.time == "2026-03-04T10:02:00+01:00"
    assert [a.action for a in run.actions] == ["restrict_to_emergency"]
    assert "priced 3.00 EUR/min" in run.actions[0].reason
    checked(run.alerts, run.actions)


def test_price_cap_scopes_directions_and_an_end_only_call() -> None:
    """Night hours only: a 10:00 call to Iridium is out of scope, a 23:00 one fires; an inbound call
    from Iridium is not counted; a call first seen by its end fires at its end_time."""
    eng = make_engine(only("price_cap", critical="2.00", hours="22:00-06:00"))
    night = paris("2026-03-04T23:00:00")
    run = feed(eng, [
        start_cdr("day", at(0), callee="+881612345678"),
        ring("in", "alice", "+881612345678", at(30, night), 60, billsec=60),
        end_cdr("late", at(60, night), duration=90, callee="+881612345678"),
    ])
    assert run.fired() == [(2, "price_cap", "critical")]
    assert run.alerts[0].time == "2026-03-04T23:02:30+01:00"  # the end event's time
    assert run.alerts[0].evidence["start_time"] == "2026-03-04T23:01:00+01:00"


# --------------------------------------------------------------------------------- irsf_range


def test_irsf_range_counts_distinct_numbers_of_one_prefix() -> None:
    """warning 3, critical 5 distinct numbers of one 8-digit prefix (+53720000…) in 60 minutes:
    a second call to +5372000001 adds no number; the 3rd distinct number (c2) warns, the 5th (c4)
    is critical."""
    eng = make_engine(only("irsf_range", 3, 5))
    calls = [("c0", 0, 0), ("c1", 1, 1), ("c1b", 2, 1), ("c2", 3, 2), ("c3", 4, 3), ("c4", 5, 4)]
    run = feed(eng, [start_cdr(cid, minutes(m), callee=cuba(i)) for cid, m, i in calls])
    assert run.fired() == [(3, "irsf_range", "warning"), (5, "irsf_range", "critical")]
    warning, critical = run.alerts
    assert (warning.observed, warning.threshold, warning.unit) == (3, 3, "numbers")
    assert warning.window == "+53720000 2026-03-04T10:00:00+01:00"
    assert warning.evidence == {
        "prefix": "+53720000…",
        "distinct_numbers": 3,
        "call_ids": ["c0", "c1", "c1b", "c2"],
        "window_start": "2026-03-04T09:03:00+01:00",
    }
    assert critical.evidence["distinct_numbers"] == 5 and critical.time == "2026-03-04T10:05:00+01:00"
    assert [a.action for a in run.actions] == ["restrict_to_emergency"]
    checked(run.alerts, run.actions)
    state = MemoryStore()
    feed(eng, [start_cdr("c0", B, callee=cuba(0))], state)
    kept = state.fraud["alice"].patterns["irsf_range"]
    assert kept[0][:2] == [ms(B), "53720000"] and kept[0][3] == "c0"
    assert "5372000000" not in orjson.dumps(kept).decode()  # a hash, never the number


def test_irsf_range_window_scope_and_prefix_edges() -> None:
    """warning 3. Calls at 0, 30 and 60 min: the first is out of the window at 60 min (starts must
    be within 60 minutes, (start − 60 min, start]), so 2 only; a 4th at 61 min makes 3 (30, 60,
    61). Numbers of another prefix (+53720001…) and of France (not high risk) never count."""
    eng = make_engine(only("irsf_range", 3))
    run = feed(eng, [
        start_cdr("a0", minutes(0), callee=cuba(0)),
        start_cdr("x0", minutes(1), callee=cuba(100)),  # +53720001…
        start_cdr("f0", minutes(2), callee="0145000001"),
        start_cdr("f1", minutes(3), callee="0145000002"),
        start_cdr("f2", minutes(4), callee="0145000003"),
        start_cdr("a1", minutes(30), callee=cuba(1)),
        start_cdr("a2", minutes(60), callee=cuba(2)),
        start_cdr("a3", minutes(61), callee=cuba(3)),
    ])
    assert run.fired() == [(7, "irsf_range", "warning")]
    assert run.alerts[0].evidence["call_ids"] == ["a1", "a2", "a3"]
    assert run.alerts[0].window == "+53720000 2026-03-04T11:00:00+01:00"
    # the rule's destinations replace the high-risk set: France counts, Cuba does not
    france = feed(make_engine(only("irsf_range", 3, destinations=["France Fixe"])), [
        start_cdr(f"f{i}", minutes(i), callee=f"01450000{i:02d}") for i in range(3)
    ] + [start_cdr(f"c{i}", minutes(5 + i), callee=cuba(i)) for i in range(3)])
    assert france.fired() == [(2, "irsf_range", "warning")]
    assert france.alerts[0].evidence["prefix"] == "+33145000…"


# --------------------------------------------------------------------------- short_call_burst


def attempt(call_id: str, start: datetime, billsec: int = 0) -> CallEvent:
    return end_cdr(call_id, start, duration=max(billsec, 10), billsec=billsec, callee="+447700900123")


def test_short_call_burst_many_attempts_collapsing_asr() -> None:
    """warning 5, critical 8, max_asr 0.2, one attempt a minute (ended 10 s later). 5 unanswered:
    warning (ASR 0.00); a 6th answered: 1/6 = 0.17; 8 with 1 answered: 0.125 ≤ 0.2 → critical.
    Start events count nothing (the answer is known at the end)."""
    eng = make_engine(only("short_call_burst", 5, 8, max_asr="0.2"))
    events = [start_cdr("s0", minutes(0), callee="+447700900123")]
    events += [attempt(f"s{i}", minutes(i)) for i in range(5)]
    events += [attempt("s5", minutes(5), billsec=30), attempt("s6", minutes(6)), attempt("s7", minutes(7))]
    run = feed(eng, events)
    assert run.fired() == [(5, "short_call_burst", "warning"), (8, "short_call_burst", "critical")]
    warning, critical = run.alerts
    assert (warning.observed, warning.threshold, warning.unit) == (5, 5, "calls")
    assert warning.window == "2026-03-04T10:00:00+01:00"
    assert warning.evidence == {
        "attempts": 5, "answered": 0, "asr": "0.00", "max_asr": "0.2",
        "window_start": "2026-03-04T09:04:10+01:00",  # 60 minutes before the 5th end (10:04:10)
        "call_ids": ["s0", "s1", "s2", "s3", "s4"],
    }
    assert (critical.evidence["attempts"], critical.evidence["answered"], critical.evidence["asr"]) == (8, 1, "0.12")
    assert [a.action for a in run.actions] == ["suspend_unlimited"]
    checked(run.alerts, run.actions)


def test_short_call_burst_asr_and_window_edges() -> None:
    """5 attempts, 1 answered: ASR 0.2 ≤ max_asr 0.2 fires (at the ratio); with 2 answered (0.4)
    it does not. An attempt that started more than 60 minutes before the event is out."""
    eng = make_engine(only("short_call_burst", 5, max_asr="0.2"))
    at_ratio = feed(eng, [attempt("a0", minutes(0), billsec=20)] + [attempt(f"a{i}", minutes(i)) for i in range(1, 5)])
    assert at_ratio.fired() == [(4, "short_call_burst", "warning")]
    above = feed(eng, [attempt(f"b{i}", minutes(i), billsec=20 if i < 2 else 0) for i in range(5)])
    assert above.fired() == []
    # b0 starts at 0 min; the 5th attempt ends at 60:10 (start 60 min): b0 is out, 4 attempts
    late = feed(eng, [attempt("b0", minutes(0))] + [attempt(f"b{i}", minutes(56 + i)) for i in range(1, 5)])
    assert late.fired() == []


# ----------------------------------------------------------------------- destination_baseline


def test_country_of_a_destination_name() -> None:
    assert country_of("Allemagne Mobile") == "Allemagne"
    assert country_of("Allemagne Fixe") == "Allemagne"
    assert country_of("Royaume-Uni Numero Personnel") == "Royaume-Uni"
    assert country_of("France Special") == "France"
    assert country_of("Cuba") == "Cuba"
    assert country_of("Satellite Iridium") == "Satellite Iridium"


def test_destination_baseline_new_country_after_learning() -> None:
    """learning_days 1 from the first call (B): France and the UK are learned silently, Cuba too
    during learning would be; two days later a UK fixed line is known, Cuba is new: a warning once."""
    eng = make_engine(only("destination_baseline", learning_days=1))
    later = B + timedelta(days=2)
    run = feed(eng, [
        start_cdr("l0", B, callee="0145000000"),  # France Fixe
        start_cdr("l1", at(60), callee="+447700900123"),  # Royaume-Uni Mobile
        start_cdr("k0", later, callee="+442079460000"),  # Royaume-Uni Fixe: known
        start_cdr("n0", at(60, later), callee=cuba(0)),
        start_cdr("n1", at(120, later), callee=cuba(1)),
    ])
    assert run.fired() == [(3, "destination_baseline", "warning")]
    alert = run.alerts[0]
    assert (alert.observed, alert.threshold, alert.unit, alert.window) == (1, 1, "countries", "Cuba")
    assert alert.evidence == {
        "country": "Cuba", "destination": "Cuba", "call_id": "n0",
        "known_countries": ["France", "Royaume-Uni"], "known_countries_total": 2,
        "learning_since": "2026-03-04T10:00:00+01:00",
    }
    checked(run.alerts, run.actions)
    # during learning a new country is learned, not alerted; "none" never alerts
    assert feed(eng, [start_cdr("l0", B), start_cdr("n0", at(3600), callee=cuba(0))]).fired() == []
    silent = make_engine(only("destination_baseline", 5, learning_days=1, new_country_level="none"))
    assert feed(silent, [start_cdr("l0", B), start_cdr("n0", later, callee=cuba(0))]).fired() == []
    critical = make_engine(only("destination_baseline", learning_days=1, new_country_level="critical"))
    acted = feed(critical, [start_cdr("l0", B), start_cdr("n0", later, callee=cuba(0))])
    assert [a.action for a in acted.actions] == ["restrict_to_emergency"]


def test_destination_baseline_spend_above_the_hour_of_week_maximum() -> None:
    """warning 5, critical 10 EUR above the learned maximum; learning_days 1. Wed 10:00-11:00 of
    the learning week: a 300 s Cuba call = 6.00 EUR (0.02 EUR/s), learned when the hour closes
    (the next event, 11:30). A week later, Wed 10:00: a 550 s call = 11.00 EUR, 5.00 above 6.00,
    not above 5 → nothing; a 1 s call more: 11.02, 5.02 above → warning; 600 s more: 23.02,
    17.02 above → critical. The same spend on Wed 12:00 (learned 0.00) is 11.00 above."""
    eng = make_engine(only("destination_baseline", 5, 10, learning_days=1, new_country_level="none"))
    week = B + timedelta(days=7)
    store = MemoryStore()
    learn = feed(eng, [
        cuba_end("l0", B, 300),
        end_cdr("l1", minutes(90), duration=10),  # 11:30: closes 10:00-11:00
    ], store)
    assert learn.fired() == []
    history = store.fraud["alice"].patterns["destination_baseline"]
    assert history[2] == {str(2 * 24 + 10): 600}  # Wednesday 10:00: 600 cents
    run = feed(eng, [
        cuba_end("w0", week, 550),
        cuba_end("w1", minutes(10, week), 1),
        cuba_end("w2", minutes(11, week), 600),
    ], store)
    assert run.fired() == [(1, "destination_baseline", "warning"), (2, "destination_baseline", "critical")]
    warning, critical = run.alerts
    assert (warning.observed, warning.threshold, warning.unit) == ("5.02", "5.00", "EUR")
    assert warning.window == "2026-03-11T10:00:00+01:00"
    assert warning.evidence == {
        "spend": "11.02", "learned_max": "6.00", "hour_of_week": "wed 10:00",
        "window_start": "2026-03-11T10:00:00+01:00",
        "learning_since": "2026-03-04T10:05:00+01:00",  # the user's first call event: l0's end
    }
    assert (critical.observed, critical.evidence["spend"]) == ("17.02", "23.02")
    assert [a.action for a in run.actions] == ["restrict_to_emergency"]
    checked(run.alerts, run.actions)
    noon = feed(eng, [cuba_end("m0", minutes(120, week), 550)], store)
    assert [(a.level, a.observed, a.evidence["learned_max"]) for a in noon.alerts] == [("critical", "11.00", "0.00")]


def cuba_end(call_id: str, start: datetime, seconds: int) -> CallEvent:
    return end_cdr(call_id, start, duration=seconds, callee=cuba(7))


# ------------------------------------------------------------------------------------ wangiri


RINGS = {"wangiri_rings": {"kind": "wangiri", "leg": "inbound", "warning": 3}}
CALLBACK = {"wangiri_callback": {"kind": "wangiri", "leg": "outbound", "critical": 1}}


def test_wangiri_inbound_one_range_rings_many_subscribers() -> None:
    """warning 3 distinct subscribers rung ≤ 5 s, unanswered, by one range (+53720000…) in 60 min.
    u1 rung twice counts once; a 6 s ring and an answered call do not count; the 3rd subscriber
    (u2) flags the range: u0, u1 and u2 are alerted at once; u3 rung later, alone."""
    eng = make_engine(RINGS)
    run = feed(eng, [
        ring("r0", "u0", cuba(1), minutes(0)),
        ring("r1", "u1", cuba(2), minutes(1)),
        ring("r1b", "u1", cuba(3), minutes(2)),
        ring("long", "u5", cuba(4), minutes(3), 6),
        ring("talk", "u6", cuba(5), minutes(4), 30, billsec=30),
        ring("r2", "u2", cuba(6), minutes(5)),
        ring("r3", "u3", cuba(7), minutes(6)),
    ])
    assert [(i, a.user, a.level, a.observed) for i, o in enumerate(run.outcomes) for a in o.alerts] == [
        (5, "u0", "warning", 3), (5, "u1", "warning", 3), (5, "u2", "warning", 3), (6, "u3", "warning", 4),
    ]
    first = run.alerts[0]
    assert (first.window, first.unit, first.threshold) == ("+53720000 2026-03-04T10:00:00+01:00", "subscribers", 3)
    assert first.evidence == {"range": "+53720000…", "distinct_subscribers": 3, "call_id": "r0",
                              "window_start": "2026-03-04T09:05:00+01:00"}
    assert run.alerts[1].evidence["call_id"] == "r1b"  # u1's latest ring
    assert len({a.alert_id for a in run.alerts}) == 4
    checked(run.alerts, run.actions)


def test_wangiri_inbound_window_edge_and_shared_record() -> None:
    """Rings at 0, 30 and 60 min: at 60 min the first is out ((start − 60 min, start]), 2 only; a
    ring at 61 min makes 3 (u1, u2, u3): u0 is not alerted. The range's record is shared, in the
    store, not in a user's state."""
    eng = make_engine(RINGS)
    store = MemoryStore()
    run = feed(eng, [
        ring("r0", "u0", cuba(1), minutes(0)),
        ring("r1", "u1", cuba(1), minutes(30)),
        ring("r2", "u2", cuba(1), minutes(60)),
        ring("r3", "u3", cuba(1), minutes(61)),
    ], store)
    assert [(i, a.user) for i, o in enumerate(run.outcomes) for a in o.alerts] == [(3, "u1"), (3, "u2"), (3, "u3")]
    assert run.alerts[0].window == "+53720000 2026-03-04T11:00:00+01:00"
    assert list(store.shared) == ["wangiri|wangiri_rings|53720000"]
    shared = orjson.loads(store.shared["wangiri|wangiri_rings|53720000"])
    assert [r[1] for r in shared["r"]] == ["u1", "u2", "u3"]  # u0's ring pruned: beyond the window
    assert all(not state.patterns for state in store.fraud.values())
    # a redelivered ring is a duplicate: no alert again
    assert eng.on_call(store, ring("r3", "u3", cuba(1), minutes(61))).status == "duplicate"


def test_wangiri_callback_to_a_short_missed_call() -> None:
    """critical 1: alice misses a 3 s call from +5372000042 at 10:00, and calls the number back at
    12:00: critical (restrict_to_emergency) on the call's start; its end adds nothing. A call to
    another number of the same range is no call back."""
    eng = make_engine(CALLBACK)
    store = MemoryStore()
    run = feed(eng, [
        ring("m0", "alice", cuba(42), B),
        start_cdr("other", minutes(60), callee=cuba(43)),
        start_cdr("back", minutes(120), callee=cuba(42)),
        end_cdr("back", minutes(120), duration=60, callee=cuba(42)),
    ], store)
    assert run.fired() == [(2, "wangiri_callback", "critical")]
    alert = run.alerts[0]
    assert (alert.window, alert.observed, alert.threshold, alert.unit) == ("back", 1, 1, "calls")
    assert alert.evidence == {"call_id": "back", "missed_call_time": "2026-03-04T10:00:00+01:00",
                              "ring_seconds": 3, "destination": "Cuba", "callbacks": 1}
    assert [a.action for a in run.actions] == ["restrict_to_emergency"]
    assert "call(s) back" in run.actions[0].reason
    checked(run.alerts, run.actions)
    kept = store.fraud["alice"].patterns["wangiri_callback"]
    assert len(kept[0]) == 1 and "5372000042" not in orjson.dumps(kept).decode()
    assert FraudState.decode(store.fraud["alice"].encode()) == store.fraud["alice"]


def test_wangiri_callback_edges() -> None:
    """A 6 s ring is not remembered; a call back 24 h after the ring is too late, 23 h 59 min is
    not; a destination scope (France only) leaves a call back to Cuba alone."""
    eng = make_engine(CALLBACK)
    long_ring = feed(eng, [ring("m0", "alice", cuba(42), B, 6), start_cdr("back", minutes(5), callee=cuba(42))])
    assert long_ring.fired() == []
    day = 24 * 60
    too_late = feed(eng, [ring("m0", "alice", cuba(42), B), start_cdr("back", minutes(day), callee=cuba(42))])
    assert too_late.fired() == []
    in_time = feed(eng, [ring("m0", "alice", cuba(42), B), start_cdr("back", minutes(day - 1), callee=cuba(42))])
    assert in_time.fired() == [(1, "wangiri_callback", "critical")]
    scoped = make_engine({"wangiri_callback": {**CALLBACK["wangiri_callback"], "destinations": ["France Fixe"]}})
    assert feed(scoped, [ring("m0", "alice", cuba(42), B), start_cdr("back", minutes(5), callee=cuba(42))]).fired() == []


def test_older_fraud_states_decode_unchanged() -> None:
    state = FraudState(newest_call_ms=1)
    assert b'"p"' not in state.encode()
    assert FraudState.decode(state.encode()).patterns == {}


# ------------------------------------------------------------------------------------- config


def _rule(spec: dict[str, Any], name: str) -> dict[str, Any]:
    data = plans_data()
    data["fraud"] = {"high_risk": ["Cuba"], "rules": {name: spec}}
    return data


def test_pattern_parameters_are_parsed() -> None:
    book = parse_plans(_rule({"kind": "wangiri", "leg": "inbound", "warning": 3, "prefix_digits": 6,
                              "window_minutes": 30, "ring_seconds": 4}, "w"), DECK)
    rule = book.get(None).fraud.rules[0]
    assert (rule.leg, rule.prefix_digits, rule.window_minutes, rule.ring_seconds) == ("inbound", 6, 30, 4)
    burst = parse_plans(_rule({"warning": 3, "max_asr": "0.15"}, "short_call_burst"), DECK).get(None).fraud.rules[0]
    assert burst.max_asr == D("0.15") and burst.window_minutes == 60
    cap = parse_plans(_rule({"critical": 1.1}, "price_cap"), DECK).get(None).fraud.rules[0]
    assert cap.critical == D("1.1")
    baseline = parse_plans(_rule({}, "destination_baseline"), DECK).get(None).fraud.rules[0]
    assert (baseline.warning, baseline.critical, baseline.new_country_level, baseline.learning_days) == (
        None, None, "warning", 14)


@pytest.mark.parametrize(
    ("name", "spec", "needles"),
    [
        ("wangiri", {"warning": 1}, ["[fraud.rules.wangiri] leg", "inbound", "outbound"]),
        ("wangiri", {"warning": 1, "leg": "both"}, ["leg", "both"]),
        ("wangiri", {"warning": 1, "leg": "outbound", "window_minutes": 5}, ["window_minutes", "inbound leg"]),
        ("wangiri", {"warning": 1, "leg": "inbound", "window_hours": 5}, ["window_hours", "outbound leg"]),
        ("price_cap", {"warning": 1, "prefix_digits": 6}, ["[fraud.rules.price_cap] prefix_digits", "only"]),
        ("price_cap", {"warning": 0}, ["[fraud.rules.price_cap] warning", "above 0"]),
        ("irsf_range", {"warning": 2.5}, ["[fraud.rules.irsf_range] warning", "whole number"]),
        ("irsf_range", {"warning": 2, "prefix_digits": 2}, ["prefix_digits", "4 to 15"]),
        ("short_call_burst", {"warning": 5, "max_asr": "1.5"}, ["max_asr", "between 0 and 1"]),
        ("short_call_burst", {"warning": 5, "max_asr": "x"}, ["max_asr", "'x'"]),
        ("destination_baseline", {"new_country_level": "none"}, ["warning or a critical"]),
        ("destination_baseline", {"warning": 5, "new_country_level": "info"}, ["new_country_level", "info"]),
        ("destination_baseline", {"warning": 5, "learning_days": -1}, ["learning_days"]),
        ("destination_baseline", {"warning": "abc"}, ["decimal"]),
    ],
)
def test_pattern_errors_name_the_key(name: str, spec: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(PlansError) as info:
        parse_plans(_rule(spec, name), DECK, source="my-plans.toml")
    message = str(info.value)
    assert message.startswith("my-plans.toml: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert isinstance(info.value, ConfigError)


def test_irsf_range_needs_a_high_risk_list_or_destinations() -> None:
    data = plans_data()
    data["fraud"] = {"rules": {"irsf_range": {"warning": 3}}}
    with pytest.raises(PlansError, match="irsf_range.*needs a high_risk list"):
        parse_plans(data, DECK)
    data["fraud"]["rules"]["irsf_range"]["destinations"] = ["Cuba"]
    assert parse_plans(data, DECK).get(None).fraud.rules[0].destinations is not None


# ------------------------------------------------------------------------ the worker's tables


class _Table:
    """A table whose values are a plain dict (what TableStore reads through ``data.get``)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


class _Sink:
    def __init__(self) -> None:
        self.staged: list[tuple[Any, bytes, bytes | None, int]] = []

    def stage(self, table: Any, key: bytes, value: bytes | None, partition: int) -> None:
        self.staged.append((table, key, value, partition))


class _Source:
    partition = 3


def test_table_store_keeps_shared_records_apart_from_users() -> None:
    """A shared record lives in the fraud table under a NUL-prefixed key (the input schemas refuse
    a user name starting with NUL), written to the partition of the event that changed it."""
    from streams.agents.tables import TableCaches, TableStore

    fraud = _Table()
    store = TableStore(_Table(), _Table(), _Table(), TableCaches(), fraud)
    store.source = _Source()
    assert store.get_shared("wangiri|w|53720000") is None
    store.put_shared("wangiri|w|53720000", b'{"r":[],"a":[]}')
    assert store.get_shared("wangiri|w|53720000") == b'{"r":[],"a":[]}'
    sink = _Sink()
    store._write(sink, None)  # type: ignore[arg-type]
    assert sink.staged == [(fraud, b"\x00wangiri|w|53720000", b'{"r":[],"a":[]}', 3)]
    fraud.data[b"\x00wangiri|w|53720000"] = b'{"r":[],"a":[]}'
    assert TableStore(_Table(), _Table(), _Table(), TableCaches(), fraud).get_shared("wangiri|w|53720000") is not None
    from streams.codecs import cdr_payload, decode_cdr
    from streams.core.errors import InvalidRecord

    payload = cdr_payload("start", "c0", "alice", "acme", "+33199000000", cuba(0), "outbound", B.isoformat())
    assert decode_cdr(orjson.dumps(payload)).user == "alice"
    with pytest.raises(InvalidRecord, match="user"):
        decode_cdr(orjson.dumps(payload | {"user": "\x00wangiri|w|53720000"}))
