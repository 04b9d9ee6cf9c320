"""The monthly fair-use summary: one row per (customer, user, period), from the period state.

Operators' terms can make the monthly summary authoritative when a bill is contested, so its
re-billed amount is computed from the same covered-call store and multiplier as the re-bill lines,
and equals their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable

from .plans import PlanBook
from .rates import RateDeck
from .rating import CENT, rate_call
from .timeutil import from_ms
from .state import PeriodState


@dataclass(frozen=True, slots=True)
class SummaryRow:
    customer: str
    user: str
    period: str
    plan: str
    distinct_numbers: int
    peak_simultaneous_calls: int
    peak_registered_devices: int
    rules_breached: tuple[str, ...]
    multiplier: Decimal
    first_breach_at: datetime | None
    covered_calls: int
    covered_seconds: int
    covered_minutes: Decimal
    rebilled_amount: Decimal
    currency: str = "EUR"


def summarise(user: str, period: str, state: PeriodState, plans: PlanBook, rates: RateDeck) -> SummaryRow:
    plan = plans.plans.get(state.plan) or plans.get(None)
    amount = Decimal(0)
    seconds = 0
    for billsec, prefix, billed in state.covered.values():
        seconds += billsec
        rate = rates.by_prefix(prefix)
        if rate is not None and Decimal(billed) > 0:
            amount += rate_call(billsec, plan.billing, rate.rate_per_minute, Decimal(billed))[1]
    first = min(state.breach_ms.values(), default=None)
    return SummaryRow(
        customer=state.customer,
        user=user,
        period=period,
        plan=plan.name,
        distinct_numbers=len(state.numbers),
        peak_simultaneous_calls=state.peak_simultaneous,
        peak_registered_devices=state.peak_devices,
        # in order of breach time: the order of arrival differs between topics and runs
        rules_breached=tuple(sorted(state.breaches, key=lambda r: (state.breach_ms.get(r, 0), r))),
        multiplier=state.multiplier(),
        first_breach_at=from_ms(first, plan.timezone) if first is not None else None,
        covered_calls=len(state.covered),
        covered_seconds=seconds,
        covered_minutes=(Decimal(seconds) / 60).quantize(CENT, rounding=ROUND_HALF_UP),
        rebilled_amount=amount,
    )


def summary_rows(
    states: Iterable[tuple[str, str, PeriodState]], plans: PlanBook, rates: RateDeck
) -> list[SummaryRow]:
    rows = [summarise(user, period, state, plans, rates) for user, period, state in states]
    return sorted(rows, key=lambda r: (r.customer, r.user, r.period))
