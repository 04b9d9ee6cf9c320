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
        # rates as whole numbers of 1/scale EUR per minute, exactly (scale: 10 ** the deck's most
        # decimals), for the sums the live rules make over every recent call
        places = [-int(r.rate_per_minute.as_tuple().exponent) for r in rates.rates()]
        self.scale: int = int(10 ** max(0, *places)) if places else 1
        self._units: dict[str, int] = {}
        self._scopes: dict[int, _Scope] = {}  # per compiled rule (its id), see in_scope

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

    def units(self, key: str) -> int:
        """The rate per minute of a stored callee key in 1/``scale`` EUR (a whole number)."""
        hit = self._units.get(key)
        if hit is None:
            hit = self._units[key] = int(self.rate(key)[1] * self.scale)
        return hit

    def in_scope(self, rule: Rule, plan: Plan, start_ms: int, key: str) -> bool:
        """Whether a call (its start, its stored callee key) is in ``rule``'s scope in ``plan``:
        memoised per rule, by key and by minute, because the live rules ask it again of every
        recent call at every event of a user (a dialler's hundreds)."""
        if not rule.scoped:
            return True
        scope = self._scopes.get(id(rule))
        if scope is None or scope.rule is not rule or scope.plan is not plan:
            scope = self._scopes[id(rule)] = _Scope(rule, plan)
        if scope.by_key is not None:
            held = scope.by_key.get(key)
            if held is None:
                held = scope.by_key[key] = self._destination_holds(rule, plan, key)
            if not held:
                return False
        time = rule.rule.time
        if not time:
            return True
        minute = start_ms // MINUTE_MS
        held = scope.by_minute.get(minute)
        if held is None:
            if len(scope.by_minute) >= SCOPE_MINUTES:
                scope.by_minute.clear()
            held = scope.by_minute[minute] = time.matches(*local_minute(minute, plan.timezone))
        return held

    def _destination_holds(self, rule: Rule, plan: Plan, key: str) -> bool:
        destination, destinations = self.rate(key)[0], rule.rule.destinations
        if rule.rule.kind == "high_risk_destination" and not plan.fraud.high_risk.matches(key, destination):
            return False
        return destinations is None or destinations.matches(key, destination)


SCOPE_MINUTES = 100_000  # minutes remembered per time-scoped rule (about ten weeks of calls)


class _Scope:
    """One compiled rule's scope decisions so far: by stored callee key (None: no destination
    scope) and by epoch minute (its time scope, in its plan's zone)."""

    def __init__(self, rule: Rule, plan: Plan) -> None:
        self.rule = rule
        self.plan = plan
        destined = rule.rule.kind == "high_risk_destination" or rule.rule.destinations is not None
        self.by_key: dict[str, bool] | None = {} if destined else None
        self.by_minute: dict[int, bool] = {}
