"""The fair-use rules (README "Rules"), one function per rule: each looks at the user's state
around one event and returns the breaches it finds. The engine applies them (``engine``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..folds import Distinct, Peak
from ..plans import Plan
from ..records import CallEvent, Registration
from ..state import PeriodState, Store, UserState
from ..timeutil import HOUR_MS, local_iso, period_of, shift_period


@dataclass(frozen=True, slots=True)
class Breach:
    """A rule's limit exceeded in a month: when, by how much, and the evidence."""

    rule: str
    period: str
    at_ms: int
    observed: int
    limit: int
    evidence: dict[str, Any]


def neighbour_states(store: Store, user: str, tz_plan: Plan, lo_ms: int, hi_ms: int) -> list[tuple[str, PeriodState]]:
    """The existing period states whose month intersects ``[lo_ms, hi_ms]``."""
    tz = tz_plan.timezone
    first, last = period_of(lo_ms, tz), period_of(hi_ms, tz)
    if first == last:  # nearly always: the window lies in one month
        state = store.get_period(user, first)
        return [(first, state)] if state is not None else []
    found = []
    period = first
    while period <= last:
        state = store.get_period(user, period)
        if state is not None:
            found.append((period, state))
        period = shift_period(period, 1)
    return found


def breached(store: Store, user: str, period: str, rule: str) -> bool:
    """Whether the user's month already breached ``rule`` (each rule alerts once a month)."""
    state = store.get_period(user, period)
    return state is not None and rule in state.breaches


def simultaneous_calls(store: Store, ev: CallEvent, plan: Plan, max_call_ms: int) -> list[Breach]:
    """Max overlap of half-open call intervals around this call; a breach above the limit.

    A call whose ``end`` has not arrived is in progress — live detection from ``start`` events —
    for at most ``max_call_duration``. Overlap only rises at interval starts, so a sweep over the
    calls that can overlap this one finds the first instant above the limit.
    """
    start = ev.start_ms
    end = ev.end_ms if ev.end_ms is not None else start + max_call_ms
    lo, hi = start - max_call_ms, end
    states = neighbour_states(store, ev.user, plan, lo, hi)
    intervals: list[tuple[int, int, str]] = []
    for _, state in states:
        intervals += state.calls_in(start, hi, max_call_ms)
    if not intervals:
        return []
    points = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])  # ends first
    count = 0
    first_breach: dict[str, tuple[int, int]] = {}  # period -> (instant, count): each month decides alone
    peaks: dict[str, int] = {}
    tz = plan.timezone
    for instant, delta in points:
        count += delta
        if delta > 0:
            p = period_of(instant, tz)
            peaks[p] = Peak.add(peaks.get(p, Peak.initialize()), count)
            if count > plan.max_simultaneous_calls and p not in first_breach:
                first_breach[p] = (instant, count)
    by_period = dict(states)
    for p, peak in peaks.items():
        month = by_period.get(p)
        if month is not None and Peak.add(month.peak_simultaneous, peak) > month.peak_simultaneous:
            month.peak_simultaneous = peak
            store.put_period(ev.user, p, month)
    breaches = []
    for period, (at, count) in first_breach.items():
        if breached(store, ev.user, period, "simultaneous_calls"):
            continue
        overlapping = sorted(cid for s, e, cid in intervals if s <= at < e)
        breaches.append(
            Breach(
                "simultaneous_calls", period, at, count, plan.max_simultaneous_calls,
                {"call_ids": overlapping, "simultaneous_calls": count},
            )
        )
    return breaches


def autodialer(store: Store, ev: CallEvent, plan: Plan) -> list[Breach]:
    """More than ``max_calls_per_hour`` outbound call starts within any 60-minute window."""
    limit = plan.max_calls_per_hour
    lo, hi = ev.start_ms - HOUR_MS, ev.start_ms + HOUR_MS
    # each month alerts once: the months this window can reach (two at most) breached, nothing to find
    if all(breached(store, ev.user, p, "autodialer") for p in {period_of(lo + 1, plan.timezone),
                                                              period_of(hi - 1, plan.timezone)}):
        return []
    starts: list[tuple[int, str]] = []
    for _, state in neighbour_states(store, ev.user, plan, lo, hi):
        for call_id, (s, _e, outbound) in state.calls_starting(lo + 1, hi):
            if outbound:
                starts.append((s, call_id))
    if len(starts) <= limit:
        return []
    starts.sort()
    breaches: dict[str, Breach] = {}  # the first window per month of its breaching call
    for j in range(len(starts) - limit):
        first, last = starts[j], starts[j + limit]
        if last[0] - first[0] >= HOUR_MS:
            continue
        period = period_of(last[0], plan.timezone)
        if period in breaches or breached(store, ev.user, period, "autodialer"):
            continue
        window = [s for s in starts if first[0] <= s[0] < first[0] + HOUR_MS]
        breaches[period] = Breach(
            "autodialer", period, last[0], len(window), limit,
            {
                "window_start": local_iso(first[0], plan.timezone),
                "first_call_id": first[1],
                "breaching_call_id": last[1],
                "calls_in_window": len(window),
            },
        )
    return list(breaches.values())


def registered_devices(store: Store, reg: Registration, plan: Plan, ustate: UserState) -> list[Breach]:
    """Active bindings at each instant this binding is up (a binding is ``[time, time + expires)``);
    the count only rises when a binding starts, so those starts are the instants to check —
    which also catches a breach completed by a REGISTER that arrives late."""
    start, end = reg.time_ms, reg.time_ms + reg.expires * 1000
    bindings = [(s, e, k) for k, (s, e, _ua) in ustate.bindings.items() if s < end and start < e]
    instants = sorted({start} | {s for s, _, _ in bindings if start <= s < end})
    first: dict[str, tuple[int, list[str]]] = {}  # period -> first instant above the limit
    for instant in instants:
        active = sorted(k for s, e, k in bindings if s <= instant < e)
        period = period_of(instant, plan.timezone)
        state = store.get_period(reg.user, period)
        if state is not None:
            state.peak_devices = Peak.add(state.peak_devices, len(active))
        if len(active) > plan.max_registered_devices and period not in first:
            first[period] = (instant, active)
    return [
        Breach(
            "registered_devices", period, at, len(active), plan.max_registered_devices,
            {"bindings": active, "registered_devices": len(active)},
        )
        for period, (at, active) in first.items()
        if not breached(store, reg.user, period, "registered_devices")
    ]


def distinct_numbers(state: PeriodState, ev: CallEvent, period: str, plan: Plan) -> list[Breach]:
    """More distinct covered numbers called in the month than the plan allows (the caller has just
    added this call's number to ``state.numbers``)."""
    count = Distinct.result(state.numbers)
    if count <= plan.max_distinct_numbers or "distinct_numbers" in state.breaches:
        return []
    return [Breach("distinct_numbers", period, ev.start_ms, count, plan.max_distinct_numbers,
                   {"call_id": ev.call_id, "distinct_numbers": count})]


def device_kind(state: PeriodState, reg: Registration, period: str, plan: Plan) -> list[Breach]:
    """A device the plan does not cover, told by its user agent: a PBX or gateway, or a third-party
    device (pbx_or_gateway, third_party_device)."""
    rule = plan.classify_user_agent(reg.user_agent)
    if rule is None or rule in state.breaches:
        return []
    return [Breach(rule, period, reg.time_ms, 1, 0,
                   {"user_agent": reg.user_agent, "contact": reg.contact, "source_ip": reg.source_ip})]
