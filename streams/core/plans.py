"""Plans (``plans.toml``): limits, covered destinations, billing increments, multipliers."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
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

    def get(self, name: str | None) -> Plan:
        if name is None:
            return self.plans[self.default_plan]
        return self.plans[name]


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
            multipliers={rule: Decimal(str(spec["multipliers"][rule])) for rule in RULES},
            timezone=_zone(spec["timezone"], source, f"plans.{name}.timezone") if "timezone" in spec else zone,
        )
    if data["default_plan"] not in plans:
        raise PlansError(
            f"{source}: default_plan {data['default_plan']!r} is not defined (plans: {', '.join(sorted(plans))})"
        )
    return PlanBook(default_plan=data["default_plan"], timezone=zone, plans=plans)


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
        except re.error as exc:
            raise PlansError(f"{where}: bad regex {pattern!r}: {exc}") from None
    return tuple(compiled)
