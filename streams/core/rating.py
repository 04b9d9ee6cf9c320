"""Per-minute rating of covered calls: billed seconds, amounts rounded up to the cent, line ids."""

from __future__ import annotations

import hashlib
from decimal import ROUND_CEILING, Context, Decimal

from .plans import Billing

CENT = Decimal("0.01")
_CONTEXT = Context(prec=34)


def call_amount(billed_seconds: int, rate_per_minute: Decimal, multiplier: Decimal) -> Decimal:
    """``billed_seconds / 60 × rate × multiplier``, rounded up to the next cent, as operators' terms price calls."""
    exact = _CONTEXT.divide(_CONTEXT.multiply(Decimal(billed_seconds) * rate_per_minute, multiplier), Decimal(60))
    return exact.quantize(CENT, rounding=ROUND_CEILING)


def rate_call(billsec: int, billing: Billing, rate_per_minute: Decimal, multiplier: Decimal) -> tuple[int, Decimal]:
    billed = billing.billed_seconds(billsec)
    return billed, call_amount(billed, rate_per_minute, multiplier)


def stable_id(*parts: str) -> str:
    """A deterministic id: the same parts give the same id on every worker and every replay."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
