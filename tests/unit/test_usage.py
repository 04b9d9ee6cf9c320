"""The usage engine against the README's rules, on a MemoryStore, with hand-computed expectations.

The plan book (tests/factories.py) has the real limits 150/3/3/60, billing 60/60, France Fixe at
0.0150 EUR/min and France Mobile at 0.0133 EUR/min, multipliers 1 except third_party_device 2,
pbx_or_gateway 4 and autodialer 4.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Sequence

import pytest

from streams.core.records import CallEvent, Registration
from streams.core.state import MemoryStore, PeriodState, UserState
from tests.factories import (
    ASTERISK,
    T0,
    YEALINK,
    ZOIPER,
    at,
    end_cdr,
    engine,
    feed,
    national,
    registration,
    start_cdr,
    utc,
)

Event = CallEvent | Registration
D = Decimal


def day(n: int, seconds: float = 0) -> datetime:
    """``n`` days after T0 (2026-03-02T08:00Z), plus ``seconds``."""
    return at(seconds, base=T0 + timedelta(days=n))


def covered_calls(count: int, *, first: int = 0, base: datetime = T0, spacing: int = 120) -> list[CallEvent]:
    """``count`` answered outbound 30 s calls to distinct French fixed numbers, ``spacing`` s apart
    (30 calls an hour: never an auto-dialler, never simultaneous)."""
    return [
        end_cdr(f"call-{first + i}", at(i * spacing, base=base), duration=30, callee=national(first + i))
        for i in range(count)
    ]


def after(calls: Sequence[CallEvent], seconds: int = 120) -> datetime:
    """A start time ``seconds`` after the last call's start."""
    return datetime.fromisoformat(calls[-1].start_time) + timedelta(seconds=seconds)


# ---------------------------------------------------------------------------- distinct numbers


def test_150_distinct_numbers_is_no_breach() -> None:
    run = feed(covered_calls(150))
    assert run.alerts == []
    assert run.lines == []
    assert set(run.statuses) == {"ok"}


def test_151st_distinct_number_breaches_once() -> None:
    calls = covered_calls(153)
    run = feed(calls)
    assert [(i, a.rule) for i, o in enumerate(run.outcomes) for a in o.alerts] == [(150, "distinct_numbers")]
    alert = run.alerts[0]
    assert (alert.observed, alert.limit, alert.period, alert.multiplier) == (151, 150, "2026-03", D(1))
    assert (alert.user, alert.customer, alert.plan) == ("alice", "acme", "unlimited")
    assert utc(alert.time) == utc(calls[150].start_time)


def test_same_number_in_different_formats_counts_once() -> None:
    calls = covered_calls(149)
    formats = ["+33612345678", "0033612345678", "0612345678", "06 12 34 56 78", "06.12.34.56.78"]
    t = after(calls)
    calls += [end_cdr(f"fmt-{i}", at(i * 120, base=t), duration=30, callee=f) for i, f in enumerate(formats)]
    assert feed(calls).alerts == []  # 149 + 1 distinct
    calls.append(end_cdr("new", after(calls), duration=30, callee="0699999999"))
    run = feed(calls)
    assert run.rules() == ["distinct_numbers"]
    assert run.alerts[0].observed == 151


@pytest.mark.parametrize(
    "uncovered",
    [
        dict(direction="inbound"),
        dict(direction="forwarded"),
        dict(billsec=0),  # unanswered
        dict(billsec=0, disposition="ANSWERED"),  # answered, 0 s
        dict(callee="0899123456"),  # France Special: in the deck, not included
        dict(callee="+442079460958"),  # Royaume-Uni Fixe: not included
        dict(callee="+12025550143"),  # Etats-Unis Fixe: not included
        dict(callee="+999123456789"),  # no rate-deck match
        dict(callee="112"),
        dict(callee="+33 15"),
        dict(callee="116000"),
        dict(callee="anonymous"),
        dict(callee="sip:bob@example.org"),
        dict(callee="3631"),
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_uncovered_calls_never_count(uncovered: dict[str, object]) -> None:
    calls = covered_calls(150)
    extra = end_cdr("uncovered", after(calls), duration=30, **uncovered)  # type: ignore[arg-type]
    last = end_cdr("the-151st", after(calls, 240), duration=30, callee="0612345678")
    run = feed([*calls, extra, last])
    assert run.outcomes[150].alerts == []
    assert run.outcomes[150].lines == []
    assert [a.rule for a in run.outcomes[151].alerts] == ["distinct_numbers"]
    assert run.outcomes[151].alerts[0].observed == 151
    # the uncovered call is not re-billed: the 150 covered ones and the 151st are
    assert sorted(line.call_id for line in run.lines) == sorted([c.call_id for c in calls] + ["the-151st"])


def test_distinct_numbers_counted_per_user() -> None:
    alice = covered_calls(100)
    bob = [end_cdr(f"bob-{i}", at(i * 120 + 60), duration=30, callee=national(1000 + i), user="bob") for i in range(100)]
    events = [e for pair in zip(alice, bob) for e in pair]
    assert feed(events).alerts == []


# ------------------------------------------------------------------------------------- periods


@pytest.mark.parametrize(
    ("start", "period"),
    [
        ("2026-10-31T23:30:00Z", "2026-11"),  # 00:30 CET on 1 November
        ("2026-10-31T22:59:59Z", "2026-10"),  # 23:59:59 CET
        ("2026-10-31T23:00:00Z", "2026-11"),
        ("2026-06-30T22:30:00Z", "2026-07"),  # 00:30 CEST
        ("2026-06-30T21:59:59Z", "2026-06"),
        ("2026-12-31T23:00:00Z", "2027-01"),
        ("2026-03-01T00:30:00+01:00", "2026-03"),
        ("2026-02-28T23:30:00-01:00", "2026-03"),  # 01:30 CET on 1 March
    ],
)
def test_period_is_the_month_in_the_plan_timezone(start: str, period: str) -> None:
    t = utc(start)
    run = feed([
        end_cdr("c1", t, duration=61, callee="0145678901"),
        registration("pbx", t, user_agent=ASTERISK),
    ])
    assert [(a.rule, a.period) for a in run.alerts] == [("pbx_or_gateway", period)]
    assert {(line.call_id, line.period) for line in run.lines} == {("c1", period)}
    assert sum(line.amount for line in run.lines) == D("0.12")  # 120 s x 0.0150 x 4


def test_registration_period_in_plan_timezone() -> None:
    run = feed([registration("pbx", utc("2026-10-31T23:30:00Z"), user_agent=ASTERISK)])
    assert [(a.rule, a.period) for a in run.alerts] == [("pbx_or_gateway", "2026-11")]
    assert utc(run.alerts[0].time) == utc("2026-10-31T23:30:00Z")


# --------------------------------------------------------------------------- simultaneous calls


def _calls(spans: Sequence[tuple[int, int]], direction: str = "outbound") -> list[CallEvent]:
    """One answered call per ``(start_s, end_s)`` after T0, to distinct numbers."""
    return [
        end_cdr(f"s{i}", at(s), duration=e - s, callee=national(500 + i), direction=direction)
        for i, (s, e) in enumerate(spans)
    ]


@pytest.mark.parametrize(
    ("spans", "alerts"),
    [
        ([(0, 60), (60, 120), (120, 180), (180, 240)], 0),  # back to back
        ([(0, 300), (0, 300), (0, 300), (300, 360)], 0),  # 3 overlapping, the 4th starts as they end
        ([(300, 360), (0, 300), (0, 300), (0, 300)], 0),  # same, the 4th arriving first
        ([(0, 300), (60, 300), (120, 300)], 0),  # exactly 3
        ([(0, 100), (50, 150), (100, 200), (150, 250)], 0),  # never more than 2 at once
        ([(0, 300), (60, 300), (120, 300), (180, 240)], 1),
        ([(180, 240), (120, 300), (60, 300), (0, 300)], 1),  # arrival order does not matter
        ([(0, 300), (60, 300), (120, 300), (299, 400)], 1),  # overlap of one second is enough
        ([(0, 300), (60, 300), (120, 300), (180, 240), (200, 220), (210, 215)], 1),  # 4, 5, 6: one alert
        ([(0, 300), (60, 300), (120, 300), (150, 150)], 0),  # zero-length (failed) call occupies nothing
    ],
)
def test_simultaneous_calls(spans: list[tuple[int, int]], alerts: int) -> None:
    run = feed(_calls(spans))
    assert run.rules() == ["simultaneous_calls"] * alerts


def test_calls_longer_than_the_live_cap_still_overlap_later_calls() -> None:
    """Windowed lookups reach back by the longest call: three 10-hour calls (longer than the
    4-hour cap of a call whose end is not known) overlap a fourth call 9 hours after they began."""
    hours = 3600
    run = feed(_calls([(0, 10 * hours), (60, 10 * hours), (120, 10 * hours), (9 * hours, 9 * hours + 60)]))
    assert run.rules() == ["simultaneous_calls"]
    assert sorted(run.alerts[0].evidence["call_ids"]) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("seed", range(20))
def test_period_call_index_and_window_query_match_a_scan_of_every_call(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    state = PeriodState()
    for step in range(300):
        call_id = f"c{rnd.randrange(120)}"
        start = rnd.randrange(0, 10_000)
        end = -1 if rnd.random() < 0.3 else start + rnd.randrange(0, 5_000)
        state.put_call(call_id, start, end, rnd.randrange(2))
        if step % 7 == 0:  # index built part-way: later puts must keep it in step
            lo = rnd.randrange(-100, 10_000)
            hi = lo + rnd.randrange(0, 3_000)
            expected = sorted((r[0], c) for c, r in state.calls.items() if lo <= r[0] < hi)
            assert [(r[0], c) for c, r in state.calls_starting(lo, hi)] == expected
            # the window query: every call whose [start, end) meets [lo, hi), open calls lasting 4 s
            ends = {c: (r[1] if r[1] != -1 else r[0] + 4_000) for c, r in state.calls.items()}
            meeting = sorted((r[0], ends[c], c) for c, r in state.calls.items() if r[0] < ends[c] and lo < ends[c] and r[0] < hi)
            assert sorted(state.calls_in(lo, hi, 4_000)) == meeting
    decoded = PeriodState.decode(state.encode())  # a decoded state builds its index afresh
    assert decoded.calls_starting(0, 20_000) == state.calls_starting(0, 20_000)


def test_a_covered_call_after_a_breach_is_billed_alone() -> None:
    """2,000 calls in a month: past the breach, each new covered call gets its own line and the
    month's earlier calls (already billed at the multiplier) none."""
    calls = covered_calls(2_000, spacing=600)
    store = MemoryStore()
    eng = engine()
    for ev in calls[:-1]:
        eng.on_call(store, ev)
    (state,) = store.periods.values()
    assert "distinct_numbers" in state.breaches
    outcome = eng.on_call(store, calls[-1])
    assert [line.call_id for line in outcome.lines] == [calls[-1].call_id]
    assert {entry[2] for entry in state.covered.values()} == {state.breaches["distinct_numbers"]}


def test_simultaneous_alert_details() -> None:
    run = feed(_calls([(0, 300), (60, 300), (120, 300), (180, 240), (200, 220)]))
    assert [len(o.alerts) for o in run.outcomes] == [0, 0, 0, 1, 0]
    alert = run.alerts[0]
    assert (alert.rule, alert.observed, alert.limit, alert.period) == ("simultaneous_calls", 4, 3, "2026-03")
    assert utc(alert.time) == at(180)
    assert sorted(alert.evidence["call_ids"]) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("direction", ["inbound", "forwarded"])
def test_simultaneous_counts_every_direction(direction: str) -> None:
    events = [
        end_cdr("out-1", at(0), duration=300, callee=national(1)),
        end_cdr("out-2", at(60), duration=240, callee=national(2)),
        end_cdr("other-1", at(120), duration=180, callee=national(3), direction=direction),
        end_cdr("other-2", at(180), duration=60, callee=national(4), direction=direction),
    ]
    run = feed(events)
    assert run.rules() == ["simultaneous_calls"]
    assert sorted(run.alerts[0].evidence["call_ids"]) == ["other-1", "other-2", "out-1", "out-2"]


def test_unanswered_calls_occupy_their_interval() -> None:
    events = [end_cdr(f"u{i}", at(i * 10), duration=120, billsec=0, callee=national(700 + i)) for i in range(4)]
    assert feed(events).rules() == ["simultaneous_calls"]


@pytest.mark.parametrize(
    ("order", "status_of_last"),
    [("ABCD", "ok"), ("DABC", "late")],
)
def test_simultaneous_period_is_the_breach_instant(order: str, status_of_last: str) -> None:
    # Paris: A, B, C start on 31 October (CET), D starts at 00:05 on 1 November while A-C are up.
    calls = {
        "A": end_cdr("A", utc("2026-10-31T22:50:00Z"), duration=1800),
        "B": end_cdr("B", utc("2026-10-31T22:55:00Z"), duration=1500, callee="0145678902"),
        "C": end_cdr("C", utc("2026-10-31T22:58:00Z"), duration=1320, callee="0145678903"),
        "D": end_cdr("D", utc("2026-10-31T23:05:00Z"), duration=300, callee="0145678904"),
    }
    run = feed([calls[k] for k in order])
    assert [(a.rule, a.period, a.observed) for a in run.alerts] == [("simultaneous_calls", "2026-11", 4)]
    assert utc(run.alerts[0].time) == utc("2026-10-31T23:05:00Z")
    assert run.statuses[-1] == status_of_last
    # the breach is in November: the covered October calls are not re-billed, D is
    assert [(line.call_id, line.period) for line in run.lines] == [("D", "2026-11")]


def test_live_starts_without_ends_breach_at_the_fourth_start() -> None:
    starts = [start_cdr(f"live-{i}", at(i * 10), callee=national(i)) for i in range(4)]
    run = feed(starts)
    assert [len(o.alerts) for o in run.outcomes] == [0, 0, 0, 1]
    assert run.alerts[0].rule == "simultaneous_calls"
    assert run.alerts[0].observed == 4
    assert utc(run.alerts[0].time) == at(30)


@pytest.mark.parametrize(("fourth_at", "alerts"), [(599, 1), (600, 0), (3600, 0)])
def test_stale_start_stops_counting_after_max_call_duration(fourth_at: int, alerts: int) -> None:
    eng = engine(max_call_duration_s=600)
    events = [start_cdr(f"live-{i}", at(0), callee=national(i)) for i in range(3)]
    events.append(start_cdr("live-3", at(fourth_at), callee=national(3)))
    assert feed(events, eng).rules() == ["simultaneous_calls"] * alerts


def test_end_closes_the_interval_of_its_start() -> None:
    events: list[Event] = [start_cdr(f"c{i}", at(0), callee=national(i)) for i in range(3)]
    events += [end_cdr(f"c{i}", at(0), duration=60, callee=national(i)) for i in range(3)]
    events.append(start_cdr("c3", at(120), callee=national(3)))
    run = feed(events)
    assert run.alerts == []
    assert run.statuses == ["ok"] * 7


def test_start_and_end_of_one_call_count_once() -> None:
    events: list[Event] = [end_cdr(f"c{i}", at(0), duration=300, callee=national(i)) for i in range(2)]
    events += [start_cdr("c2", at(10), callee=national(2)), end_cdr("c2", at(10), duration=100, callee=national(2))]
    assert feed(events).alerts == []  # 3 calls, not 4


# ---------------------------------------------------------------------------------- duplicates


def test_duplicate_end_changes_nothing() -> None:
    eng, store = engine(), MemoryStore()
    call = end_cdr("c1", at(0), duration=61)
    assert feed([call], eng, store).statuses == ["ok"]
    before = {k: v.encode() for k, v in store.periods.items()}
    users_before = {k: v.encode() for k, v in store.users.items()}
    run = feed([call, end_cdr("c1", at(0), duration=61, callee="0612345678")], eng, store)
    assert run.statuses == ["duplicate", "duplicate"]
    assert run.alerts == [] and run.lines == []
    assert {k: v.encode() for k, v in store.periods.items()} == before
    assert {k: v.encode() for k, v in store.users.items()} == users_before


def test_start_after_its_end_is_a_duplicate() -> None:
    run = feed([end_cdr("c1", at(0), duration=61), start_cdr("c1", at(0))])
    assert run.statuses == ["ok", "duplicate"]


def test_duplicate_start_is_a_duplicate() -> None:
    run = feed([start_cdr("c1", at(0)), start_cdr("c1", at(0)), end_cdr("c1", at(0), duration=61)])
    assert run.statuses == ["ok", "duplicate", "ok"]


def test_duplicate_of_the_breaching_call_emits_nothing() -> None:
    calls = covered_calls(151)
    run = feed([*calls, calls[-1], calls[0]])
    assert run.rules() == ["distinct_numbers"]
    assert run.statuses[-2:] == ["duplicate", "duplicate"]
    assert run.outcomes[-1].lines == [] and run.outcomes[-2].lines == []


# ------------------------------------------------------------------------------- registrations


@pytest.mark.parametrize(
    ("regs", "alerts"),
    [
        # 4 bindings at once
        ([registration(b, at(i * 10)) for i, b in enumerate(["b1", "b2", "b3", "b4"])], 1),
        ([registration(b, at(i * 10)) for i, b in enumerate(["b1", "b2", "b3"])], 0),
        # refresh of b1 (same instance_id, new contact and port) is not a new device
        ([registration("b1", at(0)), registration("b2", at(10)), registration("b3", at(20)),
          registration("b1", at(30), contact="sip:alice@198.51.100.7:5062")], 0),
        # b1 unregisters, then a new b4: 3 at once
        ([registration("b1", at(0)), registration("b2", at(10)), registration("b3", at(20)),
          registration("b1", at(30), expires=0), registration("b4", at(40))], 0),
        # b1 expired (registered at 0 for 60 s) before b4 registers at 120
        ([registration("b1", at(0), expires=60), registration("b2", at(100)), registration("b3", at(110)),
          registration("b4", at(120))], 0),
        # control: b1 still active
        ([registration("b1", at(0), expires=3600), registration("b2", at(100)), registration("b3", at(110)),
          registration("b4", at(120))], 1),
        # b1's refresh at 100 keeps it active at 200 although the first REGISTER (60 s) ran out
        ([registration("b1", at(0), expires=60), registration("b1", at(100), expires=3600),
          registration("b2", at(150)), registration("b3", at(160)), registration("b4", at(200))], 1),
        # a short refresh shortens the binding: b1's second REGISTER (10 s) ends it at 110
        ([registration("b1", at(0), expires=3600), registration("b1", at(100), expires=10),
          registration("b2", at(150)), registration("b3", at(160)), registration("b4", at(200))], 0),
        # unregister of a binding that does not exist changes nothing
        ([registration("b1", at(0)), registration("b2", at(10)), registration("b9", at(15), expires=0),
          registration("b3", at(20)), registration("b4", at(30))], 1),
    ],
    ids=["four", "three", "refresh", "unregister", "expired", "not-expired", "refreshed-before-expiry",
         "shortened-by-refresh", "unknown-unregister"],
)
def test_registered_devices(regs: list[Registration], alerts: int) -> None:
    run = feed(regs)
    assert run.rules() == ["registered_devices"] * alerts


def test_registered_devices_alert_details() -> None:
    regs = [registration(b, at(i * 10)) for i, b in enumerate(["b1", "b2", "b3", "b4", "b5"])]
    run = feed(regs)
    assert [len(o.alerts) for o in run.outcomes] == [0, 0, 0, 1, 0]
    alert = run.alerts[0]
    assert (alert.rule, alert.observed, alert.limit, alert.period, alert.multiplier) == (
        "registered_devices", 4, 3, "2026-03", D(1),
    )
    assert utc(alert.time) == at(30)
    assert sorted(alert.evidence["bindings"]) == sorted(f"<urn:uuid:b{i}>" for i in range(1, 5))


@pytest.mark.parametrize(
    ("fourth", "alerts"),
    [
        # no instance_id: the contact is the identity, and it is the same contact as device 1
        (registration("c4", at(30), instance_id=None, contact="sip:alice@c1.example.net:5060"), 0),
        # no instance_id, a new contact: a new device
        (registration("c4", at(30), instance_id=None, contact="sip:alice@c4.example.net:5060"), 1),
    ],
    ids=["same-contact", "new-contact"],
)
def test_contact_is_the_identity_without_instance_id(fourth: Registration, alerts: int) -> None:
    regs = [registration(c, at(i * 10), instance_id=None) for i, c in enumerate(["c1", "c2", "c3"])]
    assert feed([*regs, fourth]).rules() == ["registered_devices"] * alerts


@pytest.mark.parametrize(
    ("fourth", "alerts"),
    [
        # the same instance_id behind a new contact (NAT rebinding): the same device
        (registration("i1", at(30), contact="sip:alice@203.0.113.9:40000"), 0),
        # a new instance_id behind the same contact as the others: a new device
        (registration("i4", at(30), contact="sip:alice@192.0.2.10:5060"), 1),
    ],
    ids=["same-instance", "new-instance-same-contact"],
)
def test_instance_id_is_the_identity(fourth: Registration, alerts: int) -> None:
    regs = [registration(i, at(n * 10), contact="sip:alice@192.0.2.10:5060") for n, i in enumerate(["i1", "i2", "i3"])]
    assert feed([*regs, fourth]).rules() == ["registered_devices"] * alerts


def test_devices_counted_per_user() -> None:
    regs = [registration(b, at(i * 10), user=u) for i, (b, u) in enumerate(
        [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("b2", "bob")])]
    assert feed(regs).alerts == []


def test_registrations_arriving_out_of_order_still_breach() -> None:
    # At b4's time (30 s) b1, b2, b3 and b4 are all active: the rule is about event time.
    regs = [registration("b4", at(30)), registration("b1", at(0)), registration("b2", at(10)), registration("b3", at(20))]
    assert feed(regs).rules() == ["registered_devices"]


def test_redelivered_register_does_not_resurrect_an_unregistered_binding() -> None:
    # at-least-once: the REGISTER of b1 is delivered again after b1's unregister
    regs = [
        registration("b1", at(0)),
        registration("b2", at(10)),
        registration("b3", at(20)),
        registration("b1", at(30), expires=0),
        registration("b1", at(0)),  # redelivery of the first message
        registration("b4", at(40)),  # active at 40: b2, b3, b4
    ]
    assert feed(regs).rules() == []


@pytest.mark.parametrize(
    ("user_agent", "rule", "multiplier"),
    [
        (ZOIPER, "third_party_device", D(2)),
        ("", "third_party_device", D(2)),
        (ASTERISK, "pbx_or_gateway", D(4)),
        ("FreeSWITCH-mod_sofia/1.10.9", "pbx_or_gateway", D(4)),
        ("Yealink SIP-T46S behind 3CX", "pbx_or_gateway", D(4)),
        (YEALINK, None, None),
        ("snomD785/10.1.54.13", None, None),
    ],
)
def test_user_agent_rules(user_agent: str, rule: str | None, multiplier: Decimal | None) -> None:
    run = feed([registration("b1", at(0), user_agent=user_agent)])
    if rule is None:
        assert run.alerts == []
        return
    assert [(a.rule, a.multiplier, a.period) for a in run.alerts] == [(rule, multiplier, "2026-03")]
    assert run.alerts[0].evidence["user_agent"] == user_agent
    assert utc(run.alerts[0].time) == at(0)


def test_user_agent_rule_once_per_period() -> None:
    run = feed([
        registration("b1", at(0), user_agent=ZOIPER, expires=60),
        registration("b1", at(600), user_agent=ZOIPER, expires=60),
        registration("b2", at(700), user_agent="Linphone/5.2.0", expires=60),
        registration("b3", at(800), user_agent=ASTERISK, expires=60),
        registration("b4", at(900), user_agent="FreeSWITCH", expires=60),
        registration("b1", day(31), user_agent=ZOIPER, expires=60),  # April: a new period
    ])
    assert [(a.rule, a.period) for a in run.alerts] == [
        ("third_party_device", "2026-03"),
        ("pbx_or_gateway", "2026-03"),
        ("third_party_device", "2026-04"),
    ]


# ---------------------------------------------------------------------------------- autodialer


def _dials(count: int, spacing: int, *, billsec: int | None = None, first: int = 0) -> list[CallEvent]:
    return [
        end_cdr(f"d{first + i}", at(i * spacing), duration=10, billsec=billsec, callee=national(first + i))
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("calls", "alerts"),
    [
        (_dials(60, 59), 0),  # 60 starts within 58 min 1 s
        (_dials(61, 59), 1),  # 61 starts within 59 min
        (_dials(61, 11), 1),  # 61 starts within 11 min
        (_dials(61, 61), 0),  # 61 starts spread over 61 min
        (_dials(90, 61), 0),
        (_dials(61, 59, billsec=0), 1),  # unanswered calls count too
        (list(reversed(_dials(61, 59))), 1),  # arrival order does not matter
        # 60 outbound plus inbound calls within the hour
        (_dials(60, 59) + [end_cdr(f"in{i}", at(i * 59 + 20), duration=10, direction="inbound",
                                   callee="0199000000") for i in range(30)], 0),
        (_dials(60, 59) + [end_cdr(f"fw{i}", at(i * 59 + 20), duration=10, direction="forwarded",
                                   callee="0199000000") for i in range(30)], 0),
    ],
    ids=["60-in-an-hour", "61-in-an-hour", "61-in-11-min", "61-over-61-min", "90-over-90-min", "61-unanswered",
         "61-reversed", "60-plus-inbound", "60-plus-forwarded"],
)
def test_autodialer(calls: list[CallEvent], alerts: int) -> None:
    assert feed(calls).rules() == ["autodialer"] * alerts


def test_autodialer_alert_details() -> None:
    calls = _dials(70, 30)
    run = feed(calls)
    assert [i for i, o in enumerate(run.outcomes) if o.alerts] == [60]
    alert = run.alerts[0]
    assert (alert.rule, alert.observed, alert.limit, alert.multiplier, alert.period) == ("autodialer", 61, 60, D(4), "2026-03")
    assert utc(alert.time) == at(60 * 30)


def test_autodialer_period_is_the_month_of_the_breaching_call() -> None:
    # 23:30 CET on 31 October + 60 x 59 s: the 61st call starts at 00:29 CET on 1 November
    base = utc("2026-10-31T22:30:00Z")
    calls = [end_cdr(f"d{i}", at(i * 59, base=base), duration=10, callee=national(i)) for i in range(61)]
    run = feed(calls)
    assert [(a.rule, a.period) for a in run.alerts] == [("autodialer", "2026-11")]
    assert utc(run.alerts[0].time) == utc("2026-10-31T23:29:00Z")


def test_autodialer_counts_live_starts_once() -> None:
    events: list[Event] = []
    for i in range(61):
        events += [start_cdr(f"d{i}", at(i * 50), callee=national(i)),
                   end_cdr(f"d{i}", at(i * 50), duration=10, callee=national(i))]
    run = feed(events[:-2])  # 60 calls, each with its start and its end
    assert run.alerts == []
    assert feed(events).rules() == ["autodialer"]


# ----------------------------------------------------------------------- one alert per rule


def test_one_alert_per_user_period_rule() -> None:
    events: list[Event] = []
    events += covered_calls(155)  # distinct numbers exceeded 5 times
    events += _calls([(i * 3, 4000) for i in range(6)])  # 4, 5, 6 at once
    events += [registration(f"b{i}", at(i * 10), user_agent=ZOIPER) for i in range(6)]  # 4, 5, 6 devices
    run = feed(events)
    assert sorted(run.rules()) == ["distinct_numbers", "registered_devices", "simultaneous_calls", "third_party_device"]
    assert {a.period for a in run.alerts} == {"2026-03"}


def test_same_rule_in_the_next_period_alerts_again() -> None:
    run = feed([
        *_calls([(0, 300), (60, 300), (120, 300), (180, 240)]),
        *[end_cdr(f"apr{i}", day(31, i * 10), duration=120, callee=national(800 + i)) for i in range(4)],
    ])
    assert [(a.rule, a.period) for a in run.alerts] == [
        ("simultaneous_calls", "2026-03"), ("simultaneous_calls", "2026-04"),
    ]
    assert run.alerts[0].alert_id != run.alerts[1].alert_id


# ---------------------------------------------------------------------------------- determinism


def _scenario() -> list[Event]:
    """March: 2 covered calls, an inbound and a UK one; 4 devices (x1); another covered call; a PBX (x4);
    a last covered call. April: one covered call."""
    return [
        end_cdr("c1", day(0), duration=61, callee="0145678901"),  # 120 s x 0.0150
        end_cdr("c2", day(0, 600), duration=1, callee="0612345678"),  # 60 s x 0.0133
        end_cdr("in1", day(0, 1200), duration=100, direction="inbound", callee="0145678999"),
        end_cdr("uk1", day(0, 1800), duration=100, callee="+442079460958"),
        registration("b1", day(1)),
        registration("b2", day(1, 10)),
        registration("b3", day(1, 20)),
        registration("b4", day(1, 30)),  # registered_devices, x1
        end_cdr("c3", day(2), duration=125, callee="0145678902"),  # 180 s x 0.0150
        registration("pbx", day(3), user_agent=ASTERISK),  # pbx_or_gateway, x4
        end_cdr("c4", day(4), duration=59, callee="0712345678"),  # 60 s x 0.0133
        end_cdr("c5", day(31), duration=61, callee="0145678901"),  # April
    ]


def _lines(run: object) -> list[tuple[str, str, str, str, int, int, Decimal, Decimal, Decimal]]:
    return [
        (ln.call_id, ln.period, ln.rule, ln.destination, ln.billsec, ln.billed_seconds, ln.rate_per_minute,
         ln.multiplier, ln.amount)
        for ln in run.lines  # type: ignore[attr-defined]
    ]


def test_rebilling_retroactive_and_supplementary() -> None:
    run = feed(_scenario())
    assert run.statuses == ["ok"] * 12
    assert [(a.rule, a.period, a.multiplier) for a in run.alerts] == [
        ("registered_devices", "2026-03", D(1)),
        ("pbx_or_gateway", "2026-03", D(4)),
    ]
    # the plan's ladder of multipliers is x1, x2 (third_party_device), x4: a call climbs it one
    # line per step, so the lines do not depend on the order in which rules breached
    by_event = [[(ln.call_id, ln.multiplier, ln.amount) for ln in o.lines] for o in run.outcomes]
    assert by_event == [
        [], [], [], [], [], [], [],
        [("c1", D(1), D("0.03")), ("c2", D(1), D("0.02"))],  # retroactive at x1
        [("c3", D(1), D("0.05"))],  # after the breach, at once
        [  # x4: supplements through x2 and x4
            ("c1", D(2), D("0.03")), ("c1", D(4), D("0.06")),
            ("c2", D(2), D("0.01")), ("c2", D(4), D("0.03")),
            ("c3", D(2), D("0.04")), ("c3", D(4), D("0.09")),
        ],
        [("c4", D(1), D("0.02")), ("c4", D(2), D("0.01")), ("c4", D(4), D("0.03"))],  # after x4: all steps at once
        [],  # April is not breached
    ]
    assert _lines(run)[:3] == [
        ("c1", "2026-03", "registered_devices", "France Fixe", 61, 120, D("0.0150"), D(1), D("0.03")),
        ("c2", "2026-03", "registered_devices", "France Mobile", 1, 60, D("0.0133"), D(1), D("0.02")),
        ("c3", "2026-03", "registered_devices", "France Fixe", 125, 180, D("0.0150"), D(1), D("0.05")),
    ]
    assert _lines(run)[4] == ("c1", "2026-03", "pbx_or_gateway", "France Fixe", 61, 120, D("0.0150"), D(4), D("0.06"))
    # each call's lines sum to the amount at x4
    totals: dict[str, Decimal] = {}
    for ln in run.lines:
        totals[ln.call_id] = totals.get(ln.call_id, D(0)) + ln.amount
    assert totals == {"c1": D("0.12"), "c2": D("0.06"), "c3": D("0.18"), "c4": D("0.06")}
    assert all(str(ln.amount) == f"{ln.amount:.2f}" for ln in run.lines)
    assert all(ln.currency == "EUR" for ln in run.lines)
    assert len({ln.line_id for ln in run.lines}) == 12


def test_rebilling_at_4x_first_then_1x_adds_nothing() -> None:
    run = feed([
        end_cdr("c1", day(0), duration=61, callee="0145678901"),
        registration("pbx", day(1), user_agent=ASTERISK),
        *[registration(f"b{i}", day(1, 10 + i)) for i in range(4)],  # 5 devices: x1, below x4
        end_cdr("c2", day(2), duration=61, callee="0145678902"),
    ])
    assert [a.rule for a in run.alerts] == ["pbx_or_gateway", "registered_devices"]
    steps = [("pbx_or_gateway", D(1), D("0.03")), ("pbx_or_gateway", D(2), D("0.03")), ("pbx_or_gateway", D(4), D("0.06"))]
    assert [(ln.call_id, ln.rule, ln.multiplier, ln.amount) for ln in run.lines] == [
        ("c1", *step) for step in steps] + [("c2", *step) for step in steps]


def test_call_with_start_and_end_is_billed_once() -> None:
    run = feed([
        registration("pbx", day(0), user_agent=ASTERISK),
        start_cdr("c1", day(1), callee="0145678901"),
        end_cdr("c1", day(1), duration=61, callee="0145678901"),
        end_cdr("c1", day(1), duration=61, callee="0145678901"),
    ])
    assert run.statuses == ["ok", "ok", "ok", "duplicate"]
    assert [(ln.call_id, ln.amount) for ln in run.lines] == [("c1", D("0.03")), ("c1", D("0.03")), ("c1", D("0.06"))]


def test_rebilling_uses_the_users_plan() -> None:
    store = MemoryStore()
    store.subscribers["bob"] = "per-second"
    run = feed([
        end_cdr("b1", day(0), duration=61, callee="0612345678", user="bob"),  # 61 s x 0.0133 x 4
        end_cdr("b2", day(0, 600), duration=1, callee="0145678901", user="bob"),  # 1 s x 0.0150 x 4
        registration("pbx", day(1), user_agent=ASTERISK, user="bob"),
    ], store=store)
    assert [(a.rule, a.plan) for a in run.alerts] == [("pbx_or_gateway", "per-second")]
    assert [(ln.call_id, ln.billed_seconds, ln.multiplier, ln.amount) for ln in run.lines] == [
        ("b1", 61, D(1), D("0.02")),  # x1: 0.013521... -> 0.02
        ("b1", 61, D(2), D("0.01")),  # x2: 0.027043... -> 0.03
        ("b1", 61, D(4), D("0.03")),  # x4: 0.054086... -> 0.06
        ("b2", 1, D(1), D("0.01")),  # 0.00025 -> 0.01; x2 and x4 round to 0.01 too: no more lines
    ]


def test_same_events_in_fresh_engines_give_the_same_ids() -> None:
    first, second = feed(_scenario()), feed(_scenario())
    assert [a.alert_id for a in first.alerts] == [a.alert_id for a in second.alerts]
    assert [a.payload() for a in first.alerts] == [a.payload() for a in second.alerts]
    assert [ln.payload() for ln in first.lines] == [ln.payload() for ln in second.lines]
    assert len({a.alert_id for a in first.alerts}) == 2


def test_replaying_into_the_same_store_emits_nothing() -> None:
    eng, store = engine(), MemoryStore()
    feed(_scenario(), eng, store)
    snapshot = {k: v.encode() for k, v in store.periods.items()}
    again = feed(_scenario(), eng, store)
    assert again.alerts == [] and again.lines == []
    assert {k: v.encode() for k, v in store.periods.items()} == snapshot


def test_alert_ids_differ_by_user_period_and_rule() -> None:
    run = feed([
        registration("x", day(0), user_agent=ASTERISK),
        registration("x", day(0, 10), user_agent=ZOIPER, user="bob"),
        registration("y", day(0, 20), user_agent=ASTERISK, user="bob"),
        registration("x", day(31), user_agent=ASTERISK),
    ])
    assert len(run.alerts) == 4
    assert len({a.alert_id for a in run.alerts}) == 4


# ----------------------------------------------------------------------------- late events


def test_late_cdr_counts_in_its_own_period() -> None:
    run = feed([
        registration("pbx", day(0), user_agent=ASTERISK),  # March breached at x4
        end_cdr("apr", day(31), duration=61, callee="0145678901"),  # April: watermark moves on
        end_cdr("mar", day(5), duration=61, callee="0145678902"),  # a late March CDR
    ])
    assert run.statuses == ["ok", "ok", "late"]
    assert [(ln.call_id, ln.period, ln.multiplier, ln.amount) for ln in run.lines] == [
        ("mar", "2026-03", D(1), D("0.03")), ("mar", "2026-03", D(2), D("0.03")), ("mar", "2026-03", D(4), D("0.06")),
    ]


def test_late_cdr_can_breach_its_own_period() -> None:
    march = covered_calls(150)
    run = feed([
        *march,
        end_cdr("apr", day(31), duration=30, callee="0612345678"),
        end_cdr("late", after(march), duration=30, callee="0699999999"),
    ])
    assert run.statuses[-1] == "late"
    assert [(a.rule, a.period, a.observed) for a in run.alerts] == [("distinct_numbers", "2026-03", 151)]
    assert {ln.period for ln in run.lines} == {"2026-03"}
    assert len(run.lines) == 151


@pytest.mark.parametrize(
    "late_event",
    [
        end_cdr("jan", utc("2026-03-15T12:00:00Z"), duration=61),
        start_cdr("jan", utc("2026-03-15T12:00:00Z")),
        registration("b1", utc("2026-03-15T12:00:00Z"), user_agent=ASTERISK),
    ],
    ids=["end", "start", "registration"],
)
def test_event_two_months_back_is_too_late(late_event: Event) -> None:
    eng, store = engine(), MemoryStore()
    feed([end_cdr("may", utc("2026-05-02T12:00:00Z"), duration=61)], eng, store)
    outcome = feed([late_event], eng, store).outcomes[0]
    assert outcome.status == "too_late"
    assert "2026-03" in outcome.reason and "2026-05" in outcome.reason
    assert outcome.alerts == [] and outcome.lines == []
    assert ("alice", "2026-03") not in store.periods


def test_previous_month_is_still_open() -> None:
    run = feed([
        end_cdr("may", utc("2026-05-02T12:00:00Z"), duration=61),
        end_cdr("apr", utc("2026-04-30T21:00:00Z"), duration=61),  # 23:00 CEST on 30 April
        end_cdr("may-1", utc("2026-04-30T22:30:00Z"), duration=61),  # 00:30 CEST on 1 May
    ])
    assert run.statuses == ["ok", "late", "ok"]


# ------------------------------------------------------------------------------ state codecs


def test_period_state_round_trip() -> None:
    state = PeriodState(
        calls={"c1": [1772442000000, 1772442061000, 1], "c2": [1772442100000, -1, 0]},
        numbers={1, 2**62 + 5, 9_223_372_036_854_775_807 >> 1},
        breaches={"registered_devices": "1", "pbx_or_gateway": "4"},
        covered={"c1": [61, "33145678901", "4"]},
        peak_simultaneous=4,
        peak_devices=5,
        customer="acme",
        plan="unlimited",
    )
    decoded = PeriodState.decode(state.encode())
    assert decoded == state
    assert list(decoded.breaches) == ["registered_devices", "pbx_or_gateway"]  # breach order kept
    assert decoded.multiplier() == D(4)
    assert PeriodState.decode(PeriodState().encode()) == PeriodState()
    assert PeriodState().multiplier() == D(0)


def test_user_state_round_trip() -> None:
    state = UserState(
        bindings={"<urn:uuid:b1>": [1772442000000, 1772445600000, YEALINK], "sip:alice@x": [1, 2, ""]},
        watermark="2026-04",
        newest_ms=1772445600000,
        periods=["2026-03", "2026-04"],
    )
    assert UserState.decode(state.encode()) == state
    assert UserState.decode(UserState().encode()) == UserState()


def test_states_after_a_scenario_round_trip() -> None:
    store = MemoryStore()
    feed(_scenario(), store=store)
    assert store.periods and store.users
    for state in store.periods.values():
        assert PeriodState.decode(state.encode()) == state
    for ustate in store.users.values():
        assert UserState.decode(ustate.encode()) == ustate


@pytest.mark.parametrize("split", [4, 8, 9, 10])
def test_engine_continues_identically_from_decoded_state(split: int) -> None:
    events = _scenario()
    straight = feed(events)
    eng, store = engine(), MemoryStore()
    head = feed(events[:split], eng, store)
    # what a restarted worker would see: every state decoded from its changelog bytes
    store.periods = {k: PeriodState.decode(v.encode()) for k, v in store.periods.items()}
    store.users = {k: UserState.decode(v.encode()) for k, v in store.users.items()}
    tail = feed(events[split:], eng, store)
    assert [ln.payload() for ln in head.lines + tail.lines] == [ln.payload() for ln in straight.lines]
    assert [a.payload() for a in head.alerts + tail.alerts] == [a.payload() for a in straight.alerts]
