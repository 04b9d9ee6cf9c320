"""Typed records: what the boundary hands to the core once a message has been validated."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


OPEN = -1  # in a call index, the end of a call whose `end` has not arrived yet


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class CallEvent:
    """A ``cdrs`` message: ``start`` (call setup, live) or ``end`` (the final CDR). Not to be changed."""

    event: str  # "start" | "end"
    call_id: str
    user: str
    customer: str
    caller: str
    callee: str
    direction: str  # "outbound" | "inbound" | "forwarded"
    start_ms: int
    start_time: str  # as sent, for output payloads
    answer_ms: int | None
    end_ms: int | None
    billsec: int
    disposition: str | None

    def __init__(self, event: str, call_id: str, user: str, customer: str, caller: str, callee: str,
                 direction: str, start_ms: int, start_time: str, answer_ms: int | None = None,
                 end_ms: int | None = None, billsec: int = 0, disposition: str | None = None) -> None:
        self.event, self.call_id, self.user, self.customer = event, call_id, user, customer
        self.caller, self.callee, self.direction = caller, callee, direction
        self.start_ms, self.start_time, self.answer_ms, self.end_ms = start_ms, start_time, answer_ms, end_ms
        self.billsec, self.disposition = billsec, disposition

    @property
    def is_end(self) -> bool:
        return self.event == "end"

    @property
    def event_ms(self) -> int:
        """The event's time: an ``end``'s end_time, a ``start``'s start_time."""
        return self.end_ms if self.end_ms is not None else self.start_ms


@dataclass(init=False)  # see CallEvent
class Registration:
    """A ``sip-registrations`` message: one REGISTER outcome. Not to be changed."""

    user: str
    customer: str
    contact: str
    instance_id: str | None
    user_agent: str
    source_ip: str
    expires: int
    time_ms: int
    time: str

    def __init__(self, user: str, customer: str, contact: str, instance_id: str | None, user_agent: str,
                 source_ip: str, expires: int, time_ms: int, time: str) -> None:
        self.user, self.customer, self.contact, self.instance_id = user, customer, contact, instance_id
        self.user_agent, self.source_ip, self.expires, self.time_ms, self.time = (
            user_agent, source_ip, expires, time_ms, time)

    @property
    def binding(self) -> str:
        """A binding's identity: the ``+sip.instance`` when the device sends one, else the Contact."""
        return self.instance_id or self.contact


@dataclass(frozen=True, slots=True)
class Subscriber:
    user: str
    customer: str | None
    plan: str | None  # None: deleted record (tombstone) → default plan


@dataclass(frozen=True)
class Feedback:
    """A ``fraud-feedback`` message: an analyst's verdict on a fraud alert, which the worker holding
    the user applies to its fraud state. ``acknowledge`` changes nothing; ``false_positive`` and
    ``lift`` mute the alert's rule for the user until ``mute_until_ms`` and trust the ``networks``."""

    feedback_id: str
    kind: str  # acknowledge | false_positive | lift
    alert_id: str
    user: str
    rule_name: str
    networks: tuple[str, ...]  # networks the user may register from without new_network counting them
    mute_until_ms: int | None  # the rule raises no alert for the user before this instant
    time_ms: int


@dataclass(frozen=True, slots=True)
class Alert:
    """A ``fairuse-alerts`` payload."""

    alert_id: str
    rule: str
    user: str
    customer: str
    plan: str
    period: str
    observed: int
    limit: int
    multiplier: Decimal
    time: str
    evidence: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "user": self.user,
            "customer": self.customer,
            "plan": self.plan,
            "period": self.period,
            "observed": self.observed,
            "limit": self.limit,
            "multiplier": json_number(self.multiplier),
            "time": self.time,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class RebillLine:
    """A ``rebilled-calls`` payload."""

    line_id: str
    call_id: str
    user: str
    customer: str
    period: str
    rule: str
    destination: str
    billsec: int
    billed_seconds: int
    rate_per_minute: Decimal
    multiplier: Decimal
    amount: Decimal
    currency: str = "EUR"

    def payload(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id,
            "call_id": self.call_id,
            "user": self.user,
            "customer": self.customer,
            "period": self.period,
            "rule": self.rule,
            "destination": self.destination,
            "billsec": self.billsec,
            "billed_seconds": self.billed_seconds,
            "rate_per_minute": str(self.rate_per_minute),
            "multiplier": json_number(self.multiplier),
            "amount": str(self.amount),
            "currency": self.currency,
        }


def json_number(value: Decimal) -> int | float:
    """A multiplier as JSON shows it: 4, or 1.5."""
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass(frozen=True, slots=True)
class FraudAlert:
    """A ``fraud-alerts`` payload: one per (user, rule, level, window)."""

    alert_id: str
    rule: str  # the kind: cost_burst, long_call, ...
    rule_name: str  # the table name in plans.toml ([fraud.rules.NAME])
    level: str  # warning | critical
    user: str
    customer: str
    plan: str
    window: str
    observed: int | str  # EUR amounts as decimal strings
    threshold: int | str
    unit: str
    time: str
    evidence: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "rule_name": self.rule_name,
            "level": self.level,
            "user": self.user,
            "customer": self.customer,
            "plan": self.plan,
            "window": self.window,
            "observed": self.observed,
            "threshold": self.threshold,
            "unit": self.unit,
            "time": self.time,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class AccountAction:
    """An ``account-actions`` payload: what a critical alert asks the switch/provisioning to do.
    Applying the same action twice is harmless; ``action_id`` de-duplicates redeliveries."""

    action_id: str
    action: str  # restrict_to_emergency | suspend_unlimited
    user: str
    customer: str
    plan: str
    rule: str
    rule_name: str
    alert_id: str
    reason: str
    time: str

    def payload(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "action": self.action,
            "user": self.user,
            "customer": self.customer,
            "plan": self.plan,
            "rule": self.rule,
            "rule_name": self.rule_name,
            "alert_id": self.alert_id,
            "reason": self.reason,
            "time": self.time,
        }

