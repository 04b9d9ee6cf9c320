"""The fair-use rules (README "Rules"): an event and the user's state in, (state changes, alerts,
re-bill lines) out. The state is ``PeriodState`` per user-month and ``UserState`` per user
(``streams.core.state``), read and written through a ``Store``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .callee import Callee
from .plans import Plan, PlanBook
from .rates import RateDeck
from .rating import number_hash_key, rate_call, stable_id
from .records import OPEN, Alert, CallEvent, RebillLine, Registration
from .state import PeriodState, Store, UserState
from .timeutil import HOUR_MS, local_iso, period_of, shift_period


# ------------------------------------------------------------------------------------- outcome


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class Outcome:
    """What one event did: ``ok``, ``late`` (an older, still open period), ``duplicate`` or
    ``too_late`` (its period is closed: it goes to the DLQ with ``reason``)."""

    status: str
    alerts: list[Alert]
    lines: list[RebillLine]
    reason: str

    def __init__(self, status: str, alerts: list[Alert] | None = None, lines: list[RebillLine] | None = None,
                 reason: str = "") -> None:
        self.status, self.reason = status, reason
        self.alerts = alerts if alerts is not None else []
        self.lines = lines if lines is not None else []


@dataclass(frozen=True, slots=True)
class Breach:
    rule: str
    period: str
    at_ms: int
    observed: int
    limit: int
    evidence: dict[str, Any]


# -------------------------------------------------------------------------------------- engine


class FairUseEngine:
    """Applies the fair-use rules (README "Rules") to one event at a time against a ``Store``."""

    def __init__(
        self,
        plans: PlanBook,
        rates: RateDeck,
        *,
        hash_secret: bytes,
        max_call_duration_s: int = 4 * 3600,
        retention_months: int = 2,
    ) -> None:
        if retention_months < 2:
            raise ValueError("retention_months must be at least 2 (current and previous month)")
        self.plans = plans
        self.rates = rates
        self.hash_key = number_hash_key(hash_secret)  # of the callees' hashes (see Callee)
        self.max_call_ms = max_call_duration_s * 1000
        self.retention_months = retention_months

    # -- helpers ------------------------------------------------------------------------------

    def _admit(self, store: Store, user: str, period: str) -> tuple[UserState, str | None]:
        """Move the user's watermark; ``(state, None)`` if the period is open, else a DLQ reason."""
        ustate = store.get_user(user) or UserState()
        oldest_open = shift_period(ustate.watermark, -(self.retention_months - 1)) if ustate.watermark else ""
        if ustate.watermark and period < oldest_open:
            return ustate, (
                f"too late: period {period} is closed (newest period for this user is {ustate.watermark}; "
                f"{self.retention_months} months are kept open)"
            )
        if period > ustate.watermark:
            ustate.watermark = period
            keep_from = shift_period(period, -(self.retention_months - 1))
            for old in [p for p in ustate.periods if p < keep_from]:
                store.drop_period(user, old)
                ustate.periods.remove(old)
        return ustate, None

    def _period_state(self, store: Store, ustate: UserState, user: str, period: str) -> PeriodState:
        state = store.get_period(user, period)
        if state is None:
            state = PeriodState()
            if period not in ustate.periods:
                bisect.insort(ustate.periods, period)
        return state

    def _neighbour_states(
        self, store: Store, user: str, tz_plan: Plan, lo_ms: int, hi_ms: int
    ) -> list[tuple[str, PeriodState]]:
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

    # -- CDRs ---------------------------------------------------------------------------------

    def on_call(self, store: Store, ev: CallEvent, plan: Plan | None = None, callee: Callee | None = None) -> Outcome:
        """One ``cdrs`` event. ``plan``: the user's plan, ``callee``: the event's called number, when
        the caller has them already (None: from the store and the event)."""
        if plan is None:
            plan = self.plans.resolve(store.plan_of(ev.user))
        period = period_of(ev.start_ms, plan.timezone)
        known = store.get_user(ev.user)
        before = (known.watermark, tuple(known.periods)) if known is not None else None
        ustate, too_late = self._admit(store, ev.user, period)
        if too_late:
            return Outcome("too_late", reason=too_late)
        state = self._period_state(store, ustate, ev.user, period)
        late = period < ustate.watermark
        user_changed = before != (ustate.watermark, tuple(ustate.periods))

        record = state.calls.get(ev.call_id)
        outbound = 1 if ev.direction == "outbound" else 0
        if ev.is_end:
            assert ev.end_ms is not None
            if record is not None and record[1] != OPEN:
                return Outcome("duplicate")
            state.put_call(ev.call_id, ev.start_ms, ev.end_ms, outbound)
        else:
            if record is not None:
                return Outcome("duplicate")
            state.put_call(ev.call_id, ev.start_ms, OPEN, outbound)
        state.customer, state.plan = ev.customer, plan.name
        store.put_period(ev.user, period, state)
        if user_changed:  # a new month or a moved watermark; most CDRs leave the user state alone
            store.put_user(ev.user, ustate)

        breaches = self._simultaneous(store, ev, plan)
        if outbound:
            breaches += self._autodialer(store, ev, plan)
        outcome = Outcome("late" if late else "ok")
        if ev.is_end and outbound and ev.billsec > 0:
            if callee is None:
                callee = Callee(ev.callee, self.rates, self.hash_key)
            rate = callee.rate()
            if rate is not None and rate.destination in plan.included:
                state.covered[ev.call_id] = [ev.billsec, rate.prefix, "0"]
                state.numbers.add(callee.hash())
                if len(state.numbers) > plan.max_distinct_numbers and "distinct_numbers" not in state.breaches:
                    breaches.append(
                        Breach(
                            "distinct_numbers", period, ev.start_ms, len(state.numbers), plan.max_distinct_numbers,
                            {"call_id": ev.call_id, "distinct_numbers": len(state.numbers)},
                        )
                    )
                # a covered call arriving after a breach is billed at once (the others already are)
                outcome.lines += self._rebill(ev.user, period, state, plan, None, only=ev.call_id)
        for breach in breaches:
            self._apply_breach(store, ev.user, ev.customer, plan, breach, outcome)
        return outcome

    def _simultaneous(self, store: Store, ev: CallEvent, plan: Plan) -> list[Breach]:
        """Max overlap of half-open call intervals around this call; a breach above the limit.

        A call whose ``end`` has not arrived is in progress — live detection from ``start`` events —
        for at most ``max_call_duration``. Overlap only rises at interval starts, so a sweep over the
        calls that can overlap this one finds the first instant above the limit.
        """
        start = ev.start_ms
        end = ev.end_ms if ev.end_ms is not None else start + self.max_call_ms
        lo, hi = start - self.max_call_ms, end
        states = self._neighbour_states(store, ev.user, plan, lo, hi)
        intervals: list[tuple[int, int, str]] = []
        for _, state in states:
            # a call overlapping [start, hi) started at most the longest call's length before it
            reach = max(self.max_call_ms, state.longest_call_ms())
            for call_id, (s, e, _outbound) in state.calls_starting(start - reach, hi):
                if e == OPEN:
                    e = s + self.max_call_ms
                if s < e and s < hi and start < e:
                    intervals.append((s, e, call_id))
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
                if count > peaks.get(p, 0):
                    peaks[p] = count
                if count > plan.max_simultaneous_calls and p not in first_breach:
                    first_breach[p] = (instant, count)
        by_period = dict(states)
        for p, peak in peaks.items():
            month = by_period.get(p)
            if month is not None and peak > month.peak_simultaneous:
                month.peak_simultaneous = peak
                store.put_period(ev.user, p, month)
        breaches = []
        for period, (at, count) in first_breach.items():
            if self._breached(store, ev.user, period, "simultaneous_calls"):
                continue
            overlapping = sorted(cid for s, e, cid in intervals if s <= at < e)
            breaches.append(
                Breach(
                    "simultaneous_calls", period, at, count, plan.max_simultaneous_calls,
                    {"call_ids": overlapping, "simultaneous_calls": count},
                )
            )
        return breaches

    def _breached(self, store: Store, user: str, period: str, rule: str) -> bool:
        state = store.get_period(user, period)
        return state is not None and rule in state.breaches

    def _autodialer(self, store: Store, ev: CallEvent, plan: Plan) -> list[Breach]:
        """More than ``max_calls_per_hour`` outbound call starts within any 60-minute window."""
        limit = plan.max_calls_per_hour
        lo, hi = ev.start_ms - HOUR_MS, ev.start_ms + HOUR_MS
        starts: list[tuple[int, str]] = []
        for _, state in self._neighbour_states(store, ev.user, plan, lo, hi):
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
            if period in breaches or self._breached(store, ev.user, period, "autodialer"):
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

    # -- registrations ------------------------------------------------------------------------

    def on_registration(self, store: Store, reg: Registration, plan: Plan | None = None) -> Outcome:
        """One ``sip-registrations`` event; ``plan`` as in ``on_call``."""
        if plan is None:
            plan = self.plans.resolve(store.plan_of(reg.user))
        period = period_of(reg.time_ms, plan.timezone)
        ustate, too_late = self._admit(store, reg.user, period)
        if too_late:
            return Outcome("too_late", reason=too_late)
        late = period < ustate.watermark
        status = "late" if late else "ok"
        identity = reg.binding
        current = ustate.bindings.get(identity)
        if current is not None and current[0] > reg.time_ms:
            status = "late"  # an older REGISTER than the binding we hold: keep the newer one
        else:
            # an unregister leaves an expired binding behind (expiry = its time), so that a
            # redelivered older REGISTER cannot bring the binding back
            fresh = [reg.time_ms, reg.time_ms + reg.expires * 1000, reg.user_agent]
            if current == fresh or (reg.expires == 0 and current is None):
                status = "duplicate"
            ustate.bindings[identity] = fresh

        state = self._period_state(store, ustate, reg.user, period)
        state.customer, state.plan = reg.customer, plan.name
        store.put_period(reg.user, period, state)
        outcome = Outcome(status)
        breaches: list[Breach] = []
        if reg.expires > 0:
            breaches += self._devices(store, reg, plan, ustate)
            rule = plan.classify_user_agent(reg.user_agent)
            if rule is not None and rule not in state.breaches:
                breaches.append(
                    Breach(
                        rule, period, reg.time_ms, 1, 0,
                        {"user_agent": reg.user_agent, "contact": reg.contact, "source_ip": reg.source_ip},
                    )
                )
        # Forget bindings that expired a day before the user's newest REGISTER. Registrations only:
        # the CDR topic is consumed independently and may run days ahead.
        ustate.newest_ms = max(ustate.newest_ms, reg.time_ms)
        horizon = ustate.newest_ms - 24 * HOUR_MS
        for key in [k for k, b in ustate.bindings.items() if b[1] < horizon]:
            del ustate.bindings[key]
        store.put_user(reg.user, ustate)
        for breach in breaches:
            self._apply_breach(store, reg.user, reg.customer, plan, breach, outcome)
        return outcome

    def _devices(self, store: Store, reg: Registration, plan: Plan, ustate: UserState) -> list[Breach]:
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
            if state is not None and len(active) > state.peak_devices:
                state.peak_devices = len(active)
            if len(active) > plan.max_registered_devices and period not in first:
                first[period] = (instant, active)
        return [
            Breach(
                "registered_devices", period, at, len(active), plan.max_registered_devices,
                {"bindings": active, "registered_devices": len(active)},
            )
            for period, (at, active) in first.items()
            if not self._breached(store, reg.user, period, "registered_devices")
        ]

    # -- breaches and re-billing --------------------------------------------------------------

    def _apply_breach(
        self, store: Store, user: str, customer: str, plan: Plan, breach: Breach, outcome: Outcome
    ) -> None:
        state = store.get_period(user, breach.period)
        if state is None:  # the breach instant is in a month with no event of its own yet
            ustate = store.get_user(user) or UserState()
            state = self._period_state(store, ustate, user, breach.period)
            state.customer, state.plan = customer, plan.name
            store.put_user(user, ustate)
        if breach.rule in state.breaches:
            return
        multiplier = plan.multipliers[breach.rule]
        state.breaches[breach.rule] = str(multiplier)
        state.breach_ms[breach.rule] = breach.at_ms
        outcome.alerts.append(
            Alert(
                alert_id=stable_id("alert", user, breach.period, breach.rule),
                rule=breach.rule,
                user=user,
                customer=customer,
                plan=plan.name,
                period=breach.period,
                observed=breach.observed,
                limit=breach.limit,
                multiplier=multiplier,
                time=local_iso(breach.at_ms, plan.timezone),
                evidence=breach.evidence,
            )
        )
        outcome.lines += self._rebill(user, breach.period, state, plan, breach.rule)
        store.put_period(user, breach.period, state)

    def _rebill(
        self, user: str, period: str, state: PeriodState, plan: Plan, rule: str | None, only: str | None = None
    ) -> list[RebillLine]:
        """Bring every covered call of the period (or just the call ``only``) up to the highest
        multiplier breached so far.

        A call climbs the plan's ladder of multipliers one step per line: the line for step ``m``
        carries ``amount(m) - amount(previous step)``, so the lines of a call always sum to the
        amount due at the highest multiplier, and — because the steps are the plan's, not the
        order in which rules happened to breach — the same input gives the same line ids and
        amounts whatever order the worker saw the topics in.
        """
        if not state.breaches:
            return []
        target = state.multiplier()
        if rule is None or Decimal(state.breaches[rule]) < target:
            rule = next(r for r, m in state.breaches.items() if Decimal(m) == target)
        ladder = sorted({m for m in plan.multipliers.values() if m > 0} | {Decimal(m) for m in state.breaches.values()})
        lines = []
        calls = state.covered.items() if only is None else [(only, state.covered[only])]
        for call_id, entry in calls:
            billsec, prefix, billed = entry
            already = Decimal(billed)
            if already >= target:
                continue
            rate = self.rates.by_prefix(prefix)
            if rate is None:  # the deck lost this prefix since the call was stored
                continue
            paid = rate_call(billsec, plan.billing, rate.rate_per_minute, already)[1] if already else Decimal(0)
            for step in (m for m in ladder if already < m <= target):
                billed_seconds, due = rate_call(billsec, plan.billing, rate.rate_per_minute, step)
                if due == paid:  # a step that rounds to the same cent costs nothing: no line
                    continue
                lines.append(
                    RebillLine(
                        line_id=stable_id("line", user, period, call_id, str(step)),
                        call_id=call_id,
                        user=user,
                        customer=state.customer,
                        period=period,
                        rule=rule,
                        destination=rate.destination,
                        billsec=billsec,
                        billed_seconds=billed_seconds,
                        rate_per_minute=rate.rate_per_minute,
                        multiplier=step,
                        amount=due - paid,
                    )
                )
                paid = due
            entry[2] = str(target)
        return lines
