"""Plans (``plans.toml``): limits, covered destinations, billing increments, multipliers, fraud rules."""

from __future__ import annotations

import dataclasses

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fastjsonschema

from .errors import PlansError
from .rates import RateDeck
from .schemas import explain, validator

RULES = (
    "distinct_numbers",
    "simultaneous_calls",
    "registered_devices",
    "third_party_device",
    "pbx_or_gateway",
    "autodialer",
)

FRAUD_RULES = (
    "cost_burst",
    "calls_per_minute",
    "total_calls_per_day",
    "sequential_calls",
    "long_call",
    "high_risk_destination",
    "new_network",
    "price_cap",
    "irsf_range",
    "short_call_burst",
    "destination_baseline",
    "wangiri",
)
PATTERN_RULES = FRAUD_RULES[7:]  # price_cap … wangiri: streams.core.fraud.patterns
ACCOUNT_ACTIONS = ("restrict_to_emergency", "suspend_unlimited")
# What a critical alert asks the switch to do unless the rule says otherwise: theft (someone else
# spending the account's money) cuts the line down to emergency calls; abuse patterns of the
# account holder only lose the flat fee.
DEFAULT_ACTIONS = {
    "cost_burst": "restrict_to_emergency",
    "calls_per_minute": "suspend_unlimited",
    "total_calls_per_day": "suspend_unlimited",
    "sequential_calls": "suspend_unlimited",
    "long_call": "restrict_to_emergency",
    "high_risk_destination": "restrict_to_emergency",
    "new_network": "restrict_to_emergency",
    "price_cap": "restrict_to_emergency",
    "irsf_range": "restrict_to_emergency",
    "short_call_burst": "suspend_unlimited",
    "destination_baseline": "restrict_to_emergency",
    "wangiri": "restrict_to_emergency",
}
# The parameters of the pattern rules beyond thresholds and scopes: the kinds that take each one,
# and its default.
PATTERN_PARAMETERS: dict[str, tuple[str, ...]] = {
    "prefix_digits": ("irsf_range", "wangiri"),
    "window_minutes": ("irsf_range", "short_call_burst", "wangiri"),
    "max_asr": ("short_call_burst",),
    "new_country_level": ("destination_baseline",),
    "learning_days": ("destination_baseline",),
    "leg": ("wangiri",),
    "ring_seconds": ("wangiri",),
    "window_hours": ("wangiri",),
}
MONEY_RULES = ("cost_burst", "price_cap", "destination_baseline")  # thresholds in EUR (price_cap: EUR/min)
WANGIRI_LEGS = ("inbound", "outbound")
DEFAULT_PREFIX_DIGITS = 8
DEFAULT_WINDOW_MINUTES = 60
DEFAULT_MAX_ASR = Decimal("0.2")
DEFAULT_LEARNING_DAYS = 14
DEFAULT_RING_SECONDS = 5
DEFAULT_WINDOW_HOURS = 24
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_NETWORK_DAYS = 30
DEFAULT_LEARNING_DAYS = 14
MAX_COST_THRESHOLD = Decimal(1_000_000_000)  # EUR: far above any burst, far below Decimal overflow
_HOURS = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
_PREFIX = re.compile(r"\+([1-9]\d{0,14})")


@dataclass(frozen=True, slots=True)
class Billing:
    initial: int
    increment: int

    def billed_seconds(self, billsec: int) -> int:
        """``billsec`` rounded up: the first ``initial`` seconds, then whole ``increment`` steps."""
        if billsec <= 0:
            return 0
        if billsec <= self.initial:
            return self.initial
        extra = billsec - self.initial
        steps = -(-extra // self.increment)
        return self.initial + steps * self.increment

    def __str__(self) -> str:
        return f"{self.initial}/{self.increment}"


@dataclass(frozen=True, slots=True)
class DestinationSet:
    """Rate-deck destination names and E.164 prefixes (digits); empty matches nothing."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.prefixes)

    def matches(self, digits: str, destination: str | None) -> bool:
        return (destination is not None and destination in self.names) or any(
            digits.startswith(p) for p in self.prefixes
        )

    def union(self, other: "DestinationSet") -> "DestinationSet":
        return DestinationSet(self.names | other.names, tuple(sorted(set(self.prefixes) | set(other.prefixes))))


@dataclass(frozen=True, slots=True)
class HourRange:
    """``[start, end)`` in minutes of the local day; ``start > end`` wraps midnight."""

    start: int
    end: int

    def __contains__(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True, slots=True)
class TimeScope:
    """Local hours and weekdays a rule looks at; both tested on the same local instant."""

    hours: tuple[HourRange, ...] = ()  # empty: all day
    weekdays: frozenset[int] = frozenset()  # 0 = Monday; empty: every day

    def __bool__(self) -> bool:
        return bool(self.hours or self.weekdays)

    def contains(self, local: datetime) -> bool:
        return self.matches(local.weekday(), local.hour * 60 + local.minute)

    def matches(self, weekday: int, minute: int) -> bool:
        """``weekday`` 0 = Monday, ``minute`` of the local day."""
        if self.weekdays and weekday not in self.weekdays:
            return False
        return not self.hours or any(minute in r for r in self.hours)


@dataclass(frozen=True)
class FraudRule:
    """One ``[fraud.rules.NAME]``: a kind, its warning/critical thresholds, its scope and action.

    Thresholds are Decimals: EUR for ``cost_burst`` and ``destination_baseline`` (spend above the
    learned maximum), EUR/min for ``price_cap``, minutes for ``long_call``, a count otherwise.
    ``destinations`` None means every destination.
    """

    name: str
    kind: str
    warning: Decimal | None
    critical: Decimal | None
    action: str
    destinations: DestinationSet | None = None
    time: TimeScope = TimeScope()
    days: int = DEFAULT_NETWORK_DAYS
    # the pattern rules' parameters (see PATTERN_PARAMETERS): the defaults for the other kinds
    prefix_digits: int = DEFAULT_PREFIX_DIGITS
    window_minutes: int = DEFAULT_WINDOW_MINUTES
    max_asr: Decimal = DEFAULT_MAX_ASR
    new_country_level: str = "warning"
    learning_days: int = DEFAULT_LEARNING_DAYS
    leg: str = ""
    ring_seconds: int = DEFAULT_RING_SECONDS
    window_hours: int = DEFAULT_WINDOW_HOURS

    def threshold(self, level: str) -> Decimal | None:
        return self.critical if level == "critical" else self.warning


@dataclass(frozen=True)
class FraudConfig:
    """The fraud rules in force for one plan (the book's ``[fraud]`` merged with the plan's own)."""

    rules: tuple[FraudRule, ...] = ()
    high_risk: DestinationSet = DestinationSet()
    directions: frozenset[str] = frozenset({"outbound"})
    # days after a user's (a customer's) first event during which the history-based rules only learn
    learning_days: int = DEFAULT_LEARNING_DAYS
    customer_learning_days: int = DEFAULT_LEARNING_DAYS

    def __bool__(self) -> bool:
        return bool(self.rules)


@dataclass(frozen=True)
class Plan:
    name: str
    included: frozenset[str]
    billing: Billing
    max_distinct_numbers: int
    max_simultaneous_calls: int
    max_registered_devices: int
    max_calls_per_hour: int
    allowed_user_agents: tuple[re.Pattern[str], ...]
    pbx_user_agents: tuple[re.Pattern[str], ...]
    multipliers: Mapping[str, Decimal]
    timezone: ZoneInfo
    fraud: FraudConfig = field(default_factory=FraudConfig)

    def classify_user_agent(self, user_agent: str) -> str | None:
        """``pbx_or_gateway``, ``third_party_device`` or None for an operator-supplied terminal."""
        if any(p.search(user_agent) for p in self.pbx_user_agents):
            return "pbx_or_gateway"
        if any(p.search(user_agent) for p in self.allowed_user_agents):
            return None
        return "third_party_device"


@dataclass(frozen=True)
class PlanBook:
    default_plan: str
    timezone: ZoneInfo
    plans: Mapping[str, Plan]
    fraud: FraudConfig = field(default_factory=FraudConfig)  # the book-wide [fraud] section

    def get(self, name: str | None) -> Plan:
        if name is None:
            return self.plans[self.default_plan]
        return self.plans[name]

    def resolve(self, name: str | None) -> Plan:
        """A user's plan from its subscription: the default plan when there is none, or when the
        subscribed plan is no longer in the book."""
        plan = self.plans.get(name) if name is not None else None
        return plan if plan is not None else self.plans[self.default_plan]


def load_plans(path: Path, rates: RateDeck | None = None) -> PlanBook:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PlansError(f"{path}: plans file not found") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PlansError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlansError(f"{path}: invalid TOML: {exc}") from None
    return parse_plans(data, rates, source=str(path))


def parse_plans(data: Mapping[str, Any], rates: RateDeck | None = None, *, source: str = "plans.toml") -> PlanBook:
    try:
        validator("plans")(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise PlansError(f"{source}: {explain(exc)}") from None
    zone = _zone(data["timezone"], source, "timezone")
    fraud = _fraud(data.get("fraud", {}), rates, source, "fraud")
    plans: dict[str, Plan] = {}
    for name, spec in data["plans"].items():
        where = f"{source}: [plans.{name}]"
        if rates is not None:
            unknown = sorted(set(spec["included"]) - rates.destinations)
            if unknown:
                raise PlansError(f"{where}: included destinations not in the rate deck: {', '.join(unknown)}")
        initial, increment = (int(part) for part in spec["billing"].split("/"))
        plans[name] = Plan(
            name=name,
            included=frozenset(spec["included"]),
            billing=Billing(initial, increment),
            max_distinct_numbers=spec["max_distinct_numbers"],
            max_simultaneous_calls=spec["max_simultaneous_calls"],
            max_registered_devices=spec["max_registered_devices"],
            max_calls_per_hour=spec["max_calls_per_hour"],
            allowed_user_agents=_patterns(spec["allowed_user_agents"], f"{where} allowed_user_agents"),
            pbx_user_agents=_patterns(spec["pbx_user_agents"], f"{where} pbx_user_agents"),
            multipliers=_multipliers(spec["multipliers"], where),
            timezone=_zone(spec["timezone"], source, f"plans.{name}.timezone") if "timezone" in spec else zone,
            fraud=_plan_fraud(fraud, spec.get("fraud"), rates, source, f"plans.{name}.fraud"),
        )
    if data["default_plan"] not in plans:
        raise PlansError(
            f"{source}: default_plan {data['default_plan']!r} is not defined (plans: {', '.join(sorted(plans))})"
        )
    return PlanBook(default_plan=data["default_plan"], timezone=zone, plans=plans, fraud=fraud)


def _multipliers(spec: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    out = {}
    for rule in RULES:
        value = Decimal(str(spec[rule]))
        if not value.is_finite() or not 0 <= value <= 100:  # TOML has nan and inf; the schema lets nan by
            raise PlansError(f"{where}: multipliers.{rule} must be a number between 0 and 100, got {spec[rule]}")
        out[rule] = value
    return out


def _zone(name: str, source: str, key: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise PlansError(f"{source}: {key}: unknown IANA time zone {name!r}") from None


def _patterns(patterns: list[str], where: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise PlansError(f"{where}: bad regex {pattern[:60]!r}: {exc}") from None
    return tuple(compiled)


# ------------------------------------------------------------------------------------- fraud


def _fraud(spec: Mapping[str, Any], rates: RateDeck | None, source: str, key: str) -> FraudConfig:
    high_risk = _destinations(spec.get("high_risk", []), rates, source, f"{key}.high_risk")
    rules = _fraud_rules(spec.get("rules", {}), rates, source, key)
    directions = frozenset(spec.get("directions", ["outbound"]))
    return FraudConfig(rules=tuple(r for r in rules.values() if r is not None), high_risk=high_risk,
                       directions=directions,
                       learning_days=spec.get("learning_days", DEFAULT_LEARNING_DAYS),
                       customer_learning_days=spec.get("customer_learning_days", DEFAULT_LEARNING_DAYS))


def _plan_fraud(
    book: FraudConfig, spec: Mapping[str, Any] | None, rates: RateDeck | None, source: str, key: str
) -> FraudConfig:
    """A plan's own ``high_risk`` is added to the book's; a rule of the same name replaces the book's
    (``enabled = false`` removes it), other names are added."""
    config = book
    if spec is not None:
        high_risk = book.high_risk.union(_destinations(spec.get("high_risk", []), rates, source, f"{key}.high_risk"))
        merged: dict[str, FraudRule | None] = {rule.name: rule for rule in book.rules}
        merged.update(_fraud_rules(spec.get("rules", {}), rates, source, key))
        config = dataclasses.replace(book, rules=tuple(r for r in merged.values() if r is not None),
                                     high_risk=high_risk)
    for rule in config.rules:
        needs = rule.kind == "high_risk_destination" or (rule.kind == "irsf_range" and rule.destinations is None)
        if needs and not config.high_risk:
            raise PlansError(
                f"{source}: [{key}]: rule {rule.name} ({rule.kind}) needs a high_risk list "
                f"([fraud] high_risk or [{key}] high_risk)"
            )
    return config


def _fraud_rules(
    specs: Mapping[str, Mapping[str, Any]], rates: RateDeck | None, source: str, key: str
) -> dict[str, FraudRule | None]:
    rules: dict[str, FraudRule | None] = {}
    for name, spec in specs.items():
        where = f"{source}: [{key}.rules.{name}]"
        if not spec.get("enabled", True):
            rules[name] = None  # a plan turning off a rule of the book's [fraud]
            continue
        kind = spec.get("kind", name)
        if kind not in FRAUD_RULES:
            raise PlansError(f"{where} kind: unknown fraud rule {kind!r} (set kind to one of {', '.join(FRAUD_RULES)})")
        if "warning" not in spec and "critical" not in spec and not _new_country_only(kind, spec):
            raise PlansError(f"{where}: needs a warning or a critical threshold (or both)")
        warning = _threshold(kind, spec.get("warning"), f"{where} warning")
        critical = _threshold(kind, spec.get("critical"), f"{where} critical")
        if warning is not None and critical is not None and warning > critical:
            raise PlansError(f"{where}: warning {spec['warning']} is above critical {spec['critical']}")
        if kind == "new_network" and "destinations" in spec:
            raise PlansError(f"{where} destinations: new_network has no destination scope (registrations call no one)")
        if kind != "new_network" and "days" in spec:
            raise PlansError(f"{where} days: only new_network has days")
        destinations = (
            _destinations(spec["destinations"], rates, source, f"{key}.rules.{name}.destinations")
            if "destinations" in spec else None
        )
        rules[name] = FraudRule(
            name=name,
            kind=kind,
            warning=warning,
            critical=critical,
            action=spec.get("action", DEFAULT_ACTIONS[kind]),
            destinations=destinations,
            time=TimeScope(
                hours=_hour_ranges(spec.get("hours", []), f"{where} hours"),
                weekdays=frozenset(WEEKDAYS.index(day) for day in spec.get("weekdays", [])),
            ),
            days=spec.get("days", DEFAULT_NETWORK_DAYS),
            **_pattern_parameters(kind, spec, where),
        )
    return rules


def _new_country_only(kind: str, spec: Mapping[str, Any]) -> bool:
    """destination_baseline may alert on new countries alone (no spend threshold)."""
    return kind == "destination_baseline" and spec.get("new_country_level", "warning") != "none"


def _pattern_parameters(kind: str, spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The parameters of the pattern rules, checked: a parameter of another kind is refused."""
    out: dict[str, Any] = {}
    for name, kinds in PATTERN_PARAMETERS.items():
        if name not in spec:
            continue
        if kind not in kinds:
            raise PlansError(f"{where} {name}: only {' and '.join(kinds)} {'have' if len(kinds) > 1 else 'has'} {name}")
        value = spec[name]
        if name == "max_asr":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise PlansError(f"{where} max_asr: expected a ratio between 0 and 1, got {value!r}")
            try:
                ratio = Decimal(value if isinstance(value, str) else str(value))
            except InvalidOperation:
                raise PlansError(f"{where} max_asr: {value!r} is not a decimal ratio") from None
            if not ratio.is_finite() or not 0 <= ratio <= 1:
                raise PlansError(f"{where} max_asr: must be a ratio between 0 and 1, got {value!r}")
            out[name] = ratio
        elif name == "new_country_level":
            if value not in ("warning", "critical", "none"):
                raise PlansError(f"{where} new_country_level: must be \"warning\", \"critical\" or \"none\", got {value!r}")
            out[name] = value
        elif name == "leg":
            if value not in WANGIRI_LEGS:
                raise PlansError(f"{where} leg: must be \"inbound\" or \"outbound\", got {value!r}")
            out[name] = value
        else:
            low, high = {"prefix_digits": (4, 15), "window_minutes": (1, 1440), "learning_days": (0, 365),
                         "ring_seconds": (1, 120), "window_hours": (1, 72)}[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise PlansError(f"{where} {name}: must be a whole number from {low} to {high}, got {value!r}")
            out[name] = value
    if kind == "wangiri":
        if "leg" not in spec:
            raise PlansError(f"{where} leg: wangiri needs leg = \"inbound\" (a caller range ringing many subscribers) "
                             "or \"outbound\" (a call back to such a caller)")
        if spec["leg"] == "inbound" and ("window_hours" in spec):
            raise PlansError(f"{where} window_hours: only the outbound leg of wangiri has window_hours")
        if spec["leg"] == "outbound" and ("window_minutes" in spec or "prefix_digits" in spec):
            name = "window_minutes" if "window_minutes" in spec else "prefix_digits"
            raise PlansError(f"{where} {name}: only the inbound leg of wangiri has {name}")
    return out


def _threshold(kind: str, value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    if kind in MONEY_RULES:
        # money: a TOML float is read through its shortest repr, a string as written
        if isinstance(value, bool):
            raise PlansError(f"{where}: expected an amount in EUR, got {value!r}")
        try:
            amount = Decimal(value if isinstance(value, str) else str(value))
        except InvalidOperation:
            raise PlansError(f"{where}: {value!r} is not a decimal amount in EUR") from None
        if not amount.is_finite() or amount <= 0:
            raise PlansError(f"{where}: must be an amount in EUR above 0, got {value!r}")
        if amount > MAX_COST_THRESHOLD:
            raise PlansError(f"{where}: {value!r} EUR is above the largest threshold, {MAX_COST_THRESHOLD}")
        if amount != amount.quantize(Decimal("0.0001")):
            raise PlansError(f"{where}: {value!r} has more than 4 decimal places")
        return amount
    unit = "minutes" if kind == "long_call" else "a count"
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlansError(f"{where}: must be a whole number ({unit}), got {value!r}")
    if value < 1:
        raise PlansError(f"{where}: must be at least 1 ({unit}), got {value}")
    return Decimal(value)


def _destinations(entries: list[str], rates: RateDeck | None, source: str, key: str) -> DestinationSet:
    names: set[str] = set()
    prefixes: set[str] = set()
    for entry in entries:
        if entry.startswith("+"):
            match = _PREFIX.fullmatch(entry)
            if match is None:
                raise PlansError(f"{source}: {key}: bad prefix {entry!r} (a '+' then 1-15 digits, not starting with 0)")
            prefixes.add(match.group(1))
        else:
            names.add(entry)
    if rates is not None:
        unknown = sorted(names - rates.destinations)
        if unknown:
            raise PlansError(
                f"{source}: {key}: destinations not in the rate deck: {', '.join(unknown)} "
                "(write prefixes with a leading '+')"
            )
    return DestinationSet(frozenset(names), tuple(sorted(prefixes)))


def _hour_ranges(value: str | list[str], where: str) -> tuple[HourRange, ...]:
    ranges = []
    for text in [value] if isinstance(value, str) else value:
        match = _HOURS.fullmatch(text.strip())
        if match is None:
            raise PlansError(f"{where}: bad hour range {text!r} (expected \"HH:MM-HH:MM\", e.g. \"22:00-06:00\")")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise PlansError(f"{where}: bad hour range {text!r} (hours 00-23, minutes 00-59; 24:00 only as the end)")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end % 1440:
            raise PlansError(f"{where}: bad hour range {text!r} (start equals end; omit hours for all day)")
        ranges.append(HourRange(start, end))
    return tuple(ranges)
