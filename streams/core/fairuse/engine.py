"""The fair-use engine: an event and the user's state in, (state changes, alerts, re-bill lines)
out. It keeps the calls and bindings, opens and closes the user's months (the watermark), runs the
rules (``rules``) and re-bills the month on a breach (``rebill``). The state is ``PeriodState`` per
user-month and ``UserState`` per user (``streams.core.state``), read and written through a ``Store``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..callee import Callee
from ..plans import Plan, PlanBook
from ..rates import RateDeck
from ..rating import number_hash_key, stable_id
from ..records import OPEN, Alert, CallEvent, RebillLine, Registration
from ..state import PeriodState, Store, UserState
from ..timeutil import HOUR_MS, local_iso, period_of, shift_period
from .rebill import rebill
from .rules import Breach, autodialer, device_kind, distinct_numbers, registered_devices, simultaneous_calls


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

        breaches = simultaneous_calls(store, ev, plan, self.max_call_ms)
        if outbound:
            breaches += autodialer(store, ev, plan)
        outcome = Outcome("late" if late else "ok")
        if ev.is_end and outbound and ev.billsec > 0:
            if callee is None:
                callee = Callee(ev.callee, self.rates, self.hash_key)
            rate = callee.rate()
            if rate is not None and rate.destination in plan.included:
                state.cover(ev.call_id, ev.billsec, rate.prefix)
                state.add_number(callee.hash())
                breaches += distinct_numbers(state, ev, period, plan)
                # a covered call arriving after a breach is billed at once (the others already are)
                outcome.lines += rebill(self.rates, ev.user, period, state, plan, None, only=ev.call_id)
        for breach in breaches:
            self._apply_breach(store, ev.user, ev.customer, plan, breach, outcome)
        return outcome

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
            breaches += registered_devices(store, reg, plan, ustate)
            breaches += device_kind(state, reg, period, plan)
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
        outcome.lines += rebill(self.rates, user, breach.period, state, plan, breach.rule)
        store.put_period(user, breach.period, state)

