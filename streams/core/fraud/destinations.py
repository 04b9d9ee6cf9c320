"""What the fraud rules know of a called number: the longest rate-deck or configured prefix of the
callee (stored instead of the number), its destination and rate, and whether a rule's scope holds it."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from ..callee import Callee
from ..plans import FraudConfig, Plan, PlanBook
from ..rates import RateDeck
from ..timeutil import MINUTE_MS
from .alerts import local_minute

if TYPE_CHECKING:
    from .rules import Rule


class Destinations:
    """The rate deck as the fraud rules read it, with the prefixes every plan's scopes name."""

    def __init__(self, plans: PlanBook, rates: RateDeck) -> None:
        self.rates = rates
        configs = [plan.fraud for plan in plans.plans.values()]
        self._prefixes = sorted(
            {p for c in configs for p in c.high_risk.prefixes}
            | {p for c in configs for r in c.rules if r.destinations is not None for p in r.destinations.prefixes},
            key=len,
            reverse=True,
        )
        self._rate_cache: dict[str, tuple[str | None, Decimal]] = {}

    def classify(self, callee: Callee, direction: str, config: FraudConfig) -> tuple[str, int]:
        if callee.number.is_emergency or direction not in config.directions:
            return "", 0
        if not callee.is_e164:
            return "", 1  # counted (an attempt), but no rate and no destination
        digits = callee.number.digits
        rate = callee.rate()
        key = rate.prefix if rate is not None else ""
        for prefix in self._prefixes:  # longest first
            if digits.startswith(prefix):
                if len(prefix) > len(key):
                    key = prefix
                break
        return key, 1

    def rate(self, key: str) -> tuple[str | None, Decimal]:
        """Destination and rate per minute of a stored callee key."""
        hit = self._rate_cache.get(key)
        if hit is None:
            rate = self.rates.lookup(key) if key else None
            hit = (rate.destination, rate.rate_per_minute) if rate is not None else (None, Decimal(0))
            self._rate_cache[key] = hit
        return hit

    def in_scope(self, rule: Rule, plan: Plan, start_ms: int, key: str) -> bool:
        if not rule.scoped:
            return True
        kind, destinations, time = rule.rule.kind, rule.rule.destinations, rule.rule.time
        if kind == "high_risk_destination" or destinations is not None:
            destination = self.rate(key)[0]
            if kind == "high_risk_destination" and not plan.fraud.high_risk.matches(key, destination):
                return False
            if destinations is not None and not destinations.matches(key, destination):
                return False
        return not time or time.matches(*local_minute(start_ms // MINUTE_MS, plan.timezone))
