"""Re-billing: once a rule is breached, every covered call of the month is billed again at the
highest multiplier breached, one line per step of the plan's ladder (README "Re-billing")."""

from __future__ import annotations

from decimal import Decimal

from ..plans import Plan
from ..rates import RateDeck
from ..rating import rate_call, stable_id
from ..records import RebillLine
from ..state import PeriodState


def rebill(rates: RateDeck, user: str, period: str, state: PeriodState, plan: Plan, rule: str | None,
           only: str | None = None) -> list[RebillLine]:
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
        rate = rates.by_prefix(prefix)
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
        state.billed(call_id, str(target))
    return lines
