"""The benchmark's peer: cdrwatch's fair-use rules on CDRs as a quix-streams application, written
the way quix's documentation has it (``Application``, ``app.topic``, ``app.dataframe``, a stateful
``apply`` on RocksDB state with its changelog topic, ``to_topic``).

It does what a cdrwatch worker does with the fraud rules off, for CDRs: the same schema validation
(cdrwatch's decoder; a rejected record goes to a dead-letter topic with its reason), a user's months
in the plan's time zone with two kept open (an event of an older month is a dead letter too), calls
deduplicated by ``call_id``, and three rules of the default plan, each alerting once per user-month:
distinct covered numbers called, simultaneous calls, and outbound calls starting within 60 minutes
(auto-dialler). It does not re-bill, read registrations or subscribers (every user has the default
plan), nor run the fraud rules. ``python -m streams.tools.peer_quix --help``; ``bench_peer`` runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from quixstreams import Application, State
from quixstreams.models import Topic, TopicConfig

from ..codecs import decode_cdr
from ..core.errors import InvalidRecord
from ..core.numbering import NumberKind, normalise
from ..core.plans import Plan
from ..core.rates import RateDeck
from ..core.rating import stable_id
from ..core.records import CallEvent, json_number
from ..settings import Settings, load_plans_and_rates
from ..topics import DLQ_REASON_HEADER

HOUR_MS = 3_600_000
OPEN = -1  # a call's end while only its start is known
UserState = State[str, Any]  # a user's keys: "user", "m|YYYY-MM"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record for the dead-letter topic: the message as read, and why."""

    raw: bytes
    reason: str


def month_of(ms: int, tz: ZoneInfo) -> str:
    local = datetime.fromtimestamp(ms / 1000, tz)
    return f"{local.year:04d}-{local.month:02d}"


def shift_month(month: str, months: int) -> str:
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def months_between(first: str, last: str) -> list[str]:
    found = [first]
    while found[-1] < last:
        found.append(shift_month(found[-1], 1))
    return found


class FairUse:
    """The stateful step: one decoded CDR and the user's quix ``State`` in, its outputs out (alert
    payloads, or a dead letter for a month no longer open).

    The state of a user: ``"user"`` → ``[newest month, [months held]]``, and per month ``"m|YYYY-MM"``
    → ``{"calls": {call_id: [start, end, outbound]}, "numbers": {digits: 1}, "breaches": [rules]}``.
    """

    def __init__(self, plan: Plan, rates: RateDeck, *, max_call_s: int = 4 * 3600, retention_months: int = 2) -> None:
        self.plan, self.rates = plan, rates
        self.tz = plan.timezone
        self.max_call_ms = max_call_s * 1000
        self.retention = retention_months

    def __call__(self, value: tuple[bytes, CallEvent] | DeadLetter, state: UserState) -> list[Any]:
        if isinstance(value, DeadLetter):
            return [value]
        raw, ev = value
        month = month_of(ev.start_ms, self.tz)
        newest, held = state.get("user", ["", []])
        if newest and month < shift_month(newest, 1 - self.retention):
            return [DeadLetter(raw, f"too late: period {month} is closed (newest period for this user is {newest})")]
        months: dict[str, dict[str, Any]] = {}  # the months read (and written back) for this event
        if month > newest:
            newest = month
            keep_from = shift_month(month, 1 - self.retention)
            for old in [m for m in held if m < keep_from]:
                state.delete(f"m|{old}")
                held.remove(old)
        if month not in held:
            held.append(month)
            held.sort()
        state.set("user", [newest, held])
        current = self._month(state, months, month)
        calls = current["calls"]
        record = calls.get(ev.call_id)
        if (ev.is_end and record is not None and record[1] != OPEN) or (not ev.is_end and record is not None):
            return []  # a duplicate
        outbound = 1 if ev.direction == "outbound" else 0
        calls[ev.call_id] = [ev.start_ms, ev.end_ms if ev.end_ms is not None else OPEN, outbound]

        breaches = self.simultaneous_calls(state, months, ev)
        if outbound:
            breaches += self.autodialer(state, months, ev)
            if ev.is_end and ev.billsec > 0:
                breaches += self.distinct_numbers(current, ev, month)
        alerts = []
        for rule, period, at_ms, observed, limit, evidence in breaches:
            target = self._month(state, months, period)
            if rule in target["breaches"]:
                continue
            target["breaches"].append(rule)
            if period not in held:  # the breach instant is in a month with no event of its own
                held.append(period)
                held.sort()
                state.set("user", [newest, held])
            alerts.append(self.alert(ev, rule, period, at_ms, observed, limit, evidence))
        for name, held_month in months.items():
            state.set(f"m|{name}", held_month)
        return alerts

    # -- the user's months --------------------------------------------------------------------

    @staticmethod
    def _month(state: UserState, months: dict[str, dict[str, Any]], month: str) -> dict[str, Any]:
        found = months.get(month)
        if found is None:
            found = months[month] = state.get(f"m|{month}") or {"calls": {}, "numbers": {}, "breaches": []}
        return found

    def _existing(self, state: UserState, months: dict[str, dict[str, Any]], lo_ms: int,
                  hi_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """The months held that meet ``[lo_ms, hi_ms]``."""
        found = []
        for month in months_between(month_of(lo_ms, self.tz), month_of(hi_ms, self.tz)):
            value = months.get(month)
            if value is None:
                stored = state.get(f"m|{month}")
                if stored is None:
                    continue
                value = months[month] = stored
            found.append((month, value))
        return found

    def _breached(self, state: UserState, months: dict[str, dict[str, Any]], month: str, rule: str) -> bool:
        value = months.get(month) or state.get(f"m|{month}")
        return value is not None and rule in value["breaches"]

    # -- the rules ----------------------------------------------------------------------------

    def simultaneous_calls(self, state: UserState, months: dict[str, dict[str, Any]], ev: CallEvent) -> list[Any]:
        """The most calls in progress at one instant, among the calls that meet this one (a call
        whose end has not come lasts at most ``max_call``); a breach per month above the limit."""
        start = ev.start_ms
        hi = ev.end_ms if ev.end_ms is not None else start + self.max_call_ms
        intervals = []
        for _, value in self._existing(state, months, start - self.max_call_ms, hi):
            for call_id, (s, e, _outbound) in value["calls"].items():
                if e == OPEN:
                    e = s + self.max_call_ms
                if s < hi and start < e and s < e:
                    intervals.append((s, e, call_id))
        points = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])  # ends first
        limit = self.plan.max_simultaneous_calls
        first: dict[str, tuple[int, int]] = {}
        count = 0
        for instant, delta in points:
            count += delta
            if delta > 0 and count > limit:
                month = month_of(instant, self.tz)
                if month not in first:
                    first[month] = (instant, count)
        breaches = []
        for month, (at, count) in first.items():
            if self._breached(state, months, month, "simultaneous_calls"):
                continue
            overlapping = sorted(cid for s, e, cid in intervals if s <= at < e)
            breaches.append(("simultaneous_calls", month, at, count, limit,
                             {"call_ids": overlapping, "simultaneous_calls": count}))
        return breaches

    def autodialer(self, state: UserState, months: dict[str, dict[str, Any]], ev: CallEvent) -> list[Any]:
        """More than ``max_calls_per_hour`` outbound calls starting within 60 minutes."""
        limit = self.plan.max_calls_per_hour
        lo, hi = ev.start_ms - HOUR_MS, ev.start_ms + HOUR_MS
        if all(self._breached(state, months, m, "autodialer") for m in {month_of(lo + 1, self.tz),
                                                                        month_of(hi - 1, self.tz)}):
            return []
        starts = []
        for _, value in self._existing(state, months, lo, hi):
            for call_id, (s, _e, outbound) in value["calls"].items():
                if outbound and lo < s < hi:
                    starts.append((s, call_id))
        if len(starts) <= limit:
            return []
        starts.sort()
        found: dict[str, Any] = {}
        for j in range(len(starts) - limit):
            first, last = starts[j], starts[j + limit]
            if last[0] - first[0] >= HOUR_MS:
                continue
            month = month_of(last[0], self.tz)
            if month in found or self._breached(state, months, month, "autodialer"):
                continue
            window = sum(1 for s in starts if first[0] <= s[0] < first[0] + HOUR_MS)
            found[month] = ("autodialer", month, last[0], window, limit,
                            {"window_start": self.local_time(first[0]), "first_call_id": first[1],
                             "breaching_call_id": last[1], "calls_in_window": window})
        return list(found.values())

    def distinct_numbers(self, current: dict[str, Any], ev: CallEvent, month: str) -> list[Any]:
        """More distinct numbers called in the month, among the calls the plan covers, than it allows."""
        number = normalise(ev.callee)
        if number.kind is not NumberKind.E164:
            return []
        rate = self.rates.lookup(number.digits)
        if rate is None or rate.destination not in self.plan.included:
            return []
        numbers = current["numbers"]
        numbers[number.digits] = 1
        limit = self.plan.max_distinct_numbers
        if len(numbers) <= limit or "distinct_numbers" in current["breaches"]:
            return []
        return [("distinct_numbers", month, ev.start_ms, len(numbers), limit,
                 {"call_id": ev.call_id, "distinct_numbers": len(numbers)})]

    # -- outputs ------------------------------------------------------------------------------

    def local_time(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.tz).isoformat(timespec="milliseconds" if ms % 1000 else "seconds")

    def alert(self, ev: CallEvent, rule: str, period: str, at_ms: int, observed: int, limit: int,
              evidence: dict[str, Any]) -> dict[str, Any]:
        return {"alert_id": stable_id("alert", ev.user, period, rule), "rule": rule, "user": ev.user,
                "customer": ev.customer, "plan": self.plan.name, "period": period, "observed": observed,
                "limit": limit, "multiplier": json_number(self.plan.multipliers[rule]), "time": self.local_time(at_ms),
                "evidence": evidence}


def decode(raw: bytes) -> tuple[bytes, CallEvent] | DeadLetter:
    """cdrwatch's own validation (JSON Schema and the checks beyond it): the record with what was
    read, or a dead letter."""
    try:
        return raw, decode_cdr(raw)
    except InvalidRecord as exc:
        return DeadLetter(raw, str(exc))


def dead_letter_headers(value: Any, _key: Any, _timestamp: int, headers: Any) -> Any:
    return [(DLQ_REASON_HEADER, value.reason.encode())] if isinstance(value, DeadLetter) else headers


def build_app(bootstrap: str, group: str, *, source: str, alerts: str, dead_letters: str, state_dir: Path,
              settings: Settings | None = None, on_first: Callable[[], None] | None = None) -> Application:
    """The peer application: ``source`` (CDRs, keyed by user) → ``alerts`` (fair-use alerts, JSON);
    rejected records → ``dead_letters`` (the message as read, its reason in a header).
    ``on_first``: called once, on the first record (the benchmark's clock starts there)."""
    settings = settings or Settings()
    plans, rates = load_plans_and_rates(settings)
    rules = FairUse(plans.resolve(None), rates, max_call_s=settings.max_call_duration_s,
                    retention_months=settings.retention_months)
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      commit_interval=settings.commit_interval_s, state_dir=str(state_dir), loglevel="WARNING")
    config = TopicConfig(num_partitions=settings.partitions, replication_factor=settings.replication_factor)
    cdrs = app.topic(source, key_deserializer="str", value_deserializer="bytes")
    alerts_topic = app.topic(alerts, key_serializer="str", value_serializer="json", config=config)
    dlq_topic = app.topic(dead_letters, key_serializer="str", value_serializer="bytes", config=config)

    def route(value: Any, _key: Any, _timestamp: int, _headers: Any) -> Topic:
        return dlq_topic if isinstance(value, bytes) else alerts_topic

    check = decode
    if on_first is not None:
        first = on_first

        def check(raw: bytes) -> tuple[bytes, CallEvent] | DeadLetter:
            nonlocal check
            first()
            check = decode
            return decode(raw)

    sdf = app.dataframe(cdrs)
    sdf = sdf.apply(lambda raw: check(raw))
    sdf = sdf.apply(rules, stateful=True, expand=True)
    sdf = sdf.set_headers(dead_letter_headers)
    sdf = sdf.apply(lambda out: out.raw if isinstance(out, DeadLetter) else out)
    sdf.to_topic(route)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.tools.peer_quix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="the Kafka cluster")
    parser.add_argument("--group", required=True, help="consumer group (and state namespace)")
    parser.add_argument("--source", required=True, help="topic of CDRs, keyed by user")
    parser.add_argument("--alerts", required=True, help="topic of the fair-use alerts")
    parser.add_argument("--dlq", required=True, help="topic of the rejected records")
    parser.add_argument("--state-dir", required=True, type=Path, help="RocksDB state directory")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topics it creates (4)")
    args = parser.parse_args(argv)

    def first() -> None:  # the benchmark reads this line: the system's monotonic clock
        print(f"first-record {time.monotonic():.6f}", flush=True)

    app = build_app(args.bootstrap, args.group, source=args.source, alerts=args.alerts, dead_letters=args.dlq,
                    state_dir=args.state_dir, settings=Settings(partitions=args.partitions), on_first=first)
    print("peer: running", flush=True)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
