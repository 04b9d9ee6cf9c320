"""What a fraud rule emits: each (rule, level, window) alerts once, a critical alert asks for the
rule's account action, and the words an analyst reads."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..plans import FraudRule, Plan
from ..rating import CENT, stable_id
from ..records import AccountAction, FraudAlert
from ..state import FraudState
from ..timeutil import HOUR_MS, MINUTE_MS, from_ms, local_iso

if TYPE_CHECKING:
    from .destinations import Destinations

LEVELS = ("critical", "warning")  # critical first: it supersedes the warning of the same window
UNITS = {
    "cost_burst": "EUR",
    "calls_per_minute": "calls",
    "total_calls_per_day": "calls",
    "sequential_calls": "calls",
    "long_call": "seconds",
    "high_risk_destination": "calls",
    "new_network": "networks",
    "price_cap": "EUR/min",
    "irsf_range": "numbers",
    "short_call_burst": "calls",
    "destination_baseline": "EUR",  # a call to a new country: "countries"
    "wangiri": "subscribers",  # the outbound leg (calls back): "calls"
}
MONEY_UNITS = ("EUR", "EUR/min")


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class FraudOutcome:
    """What one event did: ``ok``; ``duplicate`` (seen before), ``late`` (a REGISTER older than the
    binding held) or ``stale`` (older than the state reaches) change nothing and emit nothing."""

    status: str
    alerts: list[FraudAlert]
    actions: list[AccountAction]
    due: int  # the next instant (event time) at which the user's live rules are to be evaluated; -1: none

    def __init__(self, status: str, alerts: list[FraudAlert] | None = None,
                 actions: list[AccountAction] | None = None, due: int = -1) -> None:
        self.status = status
        self.alerts = alerts if alerts is not None else []
        self.actions = actions if actions is not None else []
        self.due = due


class Evaluation:
    """The context of one event's evaluation: the user, the plan, the state, 'now', what it emits."""

    def __init__(self, user: str, customer: str, plan: Plan, state: FraudState, now: int,
                 outcome: FraudOutcome, destinations: Destinations, max_call_ms: int) -> None:
        self.user, self.customer, self.plan, self.state, self.now, self.outcome = (
            user, customer, plan, state, now, outcome)
        self.destinations, self.max_call_ms = destinations, max_call_ms

    def at(self, now: int) -> "Evaluation":
        """The same evaluation at another instant (its outcome shared)."""
        return Evaluation(self.user, self.customer, self.plan, self.state, now, self.outcome, self.destinations,
                          self.max_call_ms)


def fire(ctx: Evaluation, rule: FraudRule, level: str, window: str, at: int, observed: int | str, threshold: Decimal,
         evidence: dict[str, Any], unit: str | None = None) -> None:
    """An alert of ``rule`` at ``level`` for ``window``, unless it was raised already or an analyst
    muted the rule for the user; a critical one with the rule's account action. ``unit``: when
    not the kind's (UNITS)."""
    key = fired_key(rule, level, window)
    if key in ctx.state.fired:
        return
    if ctx.state.muted and at < ctx.state.muted.get(rule.name, 0):
        return  # an analyst's verdict: no alert from this rule for the user until then
    ctx.state.fired[key] = at
    if level == "critical":  # a critical supersedes the warning of the same window
        ctx.state.fired.setdefault(fired_key(rule, "warning", window), at)
    shown: int | str
    unit = unit or UNITS[rule.kind]
    if unit in MONEY_UNITS:
        shown = threshold_money(threshold)
    elif rule.kind == "long_call":
        shown = int(threshold) * 60
    else:
        shown = int(threshold)
    plan = ctx.plan
    alert = FraudAlert(
        alert_id=stable_id("fraud", ctx.user, rule.name, level, window),
        rule=rule.kind,
        rule_name=rule.name,
        level=level,
        user=ctx.user,
        customer=ctx.customer,
        plan=plan.name,
        window=window,
        observed=observed,
        threshold=shown,
        unit=unit,
        time=local_iso(at, plan.timezone),
        evidence=evidence,
    )
    ctx.outcome.alerts.append(alert)
    if level == "critical":
        ctx.outcome.actions.append(
            AccountAction(
                action_id=stable_id("action", alert.alert_id, rule.action),
                action=rule.action,
                user=ctx.user,
                customer=ctx.customer,
                plan=plan.name,
                rule=rule.kind,
                rule_name=rule.name,
                alert_id=alert.alert_id,
                reason=reason(alert),
                time=alert.time,
            )
        )


def fired_key(rule: FraudRule, level: str, window: str) -> str:
    return f"{rule.name}|{level}|{window}"


def fired(ctx: Evaluation, rule: FraudRule, level: str, window: str) -> bool:
    return fired_key(rule, level, window) in ctx.state.fired


def reason(alert: FraudAlert) -> str:
    """The action's reason, in words for the person who will read it on a switch or a ticket."""
    o, t = alert.observed, alert.threshold
    what = {
        "cost_burst": f"calls worth {o} EUR in the 60 minutes up to {alert.time} (critical at {t} EUR)",
        "calls_per_minute": f"{o} calls started within 60 seconds (critical at {t})",
        "total_calls_per_day": f"{o} calls on {alert.window} (critical at {t})",
        "sequential_calls": f"{o} calls in a row to the same number (critical at {t})",
        "long_call": f"call {alert.window} has lasted {o} s (critical above {t} s)",
        "high_risk_destination": f"{o} calls to high-risk destinations within 60 minutes (critical at {t})",
        "new_network": f"registrations from {o} new network(s) in 24 hours while another device was registered "
        f"(critical at {t})",
        "price_cap": f"call {alert.window} to a destination priced {o} EUR/min (critical above {t} EUR/min)",
        "irsf_range": f"{o} distinct numbers of one range called within minutes (critical at {t})",
        "short_call_burst": f"{o} call attempts, almost none answered, within minutes (critical at {t})",
        "destination_baseline": (
            f"a first call to {alert.window}" if alert.unit == "countries"
            else f"calls worth {o} EUR above the largest spend of this hour of the week (critical above {t} EUR)"),
        "wangiri": (
            f"{o} call(s) back to a number that rang once unanswered (critical at {t})" if alert.unit == "calls"
            else f"one caller range rang {o} subscribers briefly (critical at {t})"),
    }[alert.rule]
    return f"fraud rule {alert.rule_name} ({alert.rule}) critical: {what}"


def clock_hour(ms: int, plan: Plan) -> str:
    """The clock hour containing ``ms``, as the local time of its start (offset included)."""
    return local_iso(ms - ms % HOUR_MS, plan.timezone)


@lru_cache(maxsize=65536)
def local_minute(epoch_minute: int, tz: ZoneInfo) -> tuple[int, int]:
    """(weekday, minute of the day) of an epoch minute in a zone: the time scopes' test, cached
    because every live evaluation tests the same recent calls again."""
    local = from_ms(epoch_minute * MINUTE_MS, tz)
    return local.weekday(), local.hour * 60 + local.minute


@lru_cache(maxsize=65536)
def local_day(epoch_minute: int, tz: ZoneInfo) -> str:
    """The local date (ISO) of an epoch minute: UTC offsets are whole minutes, so every instant of
    the minute has it; cached because calls cluster in time."""
    return from_ms(epoch_minute * MINUTE_MS, tz).date().isoformat()


def money(value: Decimal) -> str:
    """An amount in EUR as shown: cents, rounded down (what was reached, never more)."""
    return str(value.quantize(CENT, rounding=ROUND_DOWN))


def threshold_money(value: Decimal) -> str:
    return str(value.quantize(CENT)) if value == value.quantize(CENT) else f"{value.normalize():f}"
