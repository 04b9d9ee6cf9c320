"""Live fraud rules (hacked accounts, toll fraud): per-user state in, (fraud alerts, account actions) out.

One ``FraudState`` per user (``streams.core.state``), read and written through a ``Store``, holds
what the rules need and nothing older:

* the user's calls of the last ~26 h (start, end or open, talk time, a rate-deck/scope prefix of the
  callee — never the whole number), the duplicate filter and the clock of every call rule;
* per-day call counters and the current same-callee run of each rule;
* the source networks (/24, /64) the user registered from, its SIP bindings, and the registrations
  from a new network while another binding was active (24 h);
* the (rule, level, window) triples already alerted, so that each alert is emitted once;
* an analyst's verdicts (``fraud-feedback``): the networks trusted for the user, and the rules muted
  for the user until a given instant.

"Now" is always the event time of the event being processed: a ``start`` event's ``start_time``, an
``end`` event's ``end_time``, a registration's ``time``. Calls in progress are valued and timed up to
that instant, so every event of the user — including a registration — re-evaluates ``cost_burst`` and
``long_call`` live, before any ``end`` has arrived.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from .callee import Callee
from .plans import FraudConfig, FraudRule, Plan, PlanBook
from .rates import RateDeck
from .rating import CENT, number_hash_key, stable_id
from .records import OPEN, AccountAction, CallEvent, Feedback, FraudAlert, Registration
from .state import FraudState, Store
from .timeutil import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, from_ms, local_iso

__all__ = [
    "AccountAction",
    "FraudAlert",
    "FraudEngine",
    "FraudOutcome",
    "FraudState",
    "network_of",
]


# A call event this much older than the newest call event of its user (a registration: than the
# newest registration) is ignored: fraud alerting is live, and the state does not reach that far back.
STALE_MS = DAY_MS
# A call is kept this long after its last instant (end, or start + max call duration while open):
# longer than STALE_MS plus the 60-minute windows, so every non-stale duplicate is still recognised.
KEEP_CALLS_MS = 26 * HOUR_MS
# Day counters and alerted windows are kept long enough to cover a local day (≤ 25 h) that a
# non-stale event can still reach.
KEEP_WINDOWS_MS = 50 * HOUR_MS
FRESH_NETWORK_MS = DAY_MS  # new_network counts the new networks of the last 24 h
MAX_TRUSTED_NETWORKS = 256  # networks an analyst trusted for one user: the oldest go beyond this
SEQUENCE_GAP_MS = HOUR_MS  # a same-callee run breaks when a call starts more than 1 h after the previous one
PRUNE_EVERY_MS = 10 * MINUTE_MS  # the state is walked for pruning at most this often (event time)
EVIDENCE_CALLS = 50  # at most this many calls listed in an alert's evidence

LEVELS = ("critical", "warning")  # critical first: it supersedes the warning of the same window
UNITS = {
    "cost_burst": "EUR",
    "calls_per_minute": "calls",
    "total_calls_per_day": "calls",
    "sequential_calls": "calls",
    "long_call": "seconds",
    "high_risk_destination": "calls",
    "new_network": "networks",
}
_CALL_COUNT_RULES = ("calls_per_minute", "total_calls_per_day", "sequential_calls", "high_risk_destination")


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class FraudOutcome:
    """What one event did: ``ok``; ``duplicate`` (seen before), ``late`` (a REGISTER older than the
    binding held) or ``stale`` (older than the state reaches) change nothing and emit nothing."""

    status: str
    alerts: list[FraudAlert]
    actions: list[AccountAction]

    def __init__(self, status: str, alerts: list[FraudAlert] | None = None,
                 actions: list[AccountAction] | None = None) -> None:
        self.status = status
        self.alerts = alerts if alerts is not None else []
        self.actions = actions if actions is not None else []


@dataclass(frozen=True)
class _Level:
    name: str  # critical | warning
    threshold: Decimal
    count: int  # the threshold as a whole count (count rules)


@dataclass(frozen=True)
class _Rule:
    """A rule as the hot path needs it: its levels (critical first) and whether any scope applies."""

    rule: FraudRule
    levels: tuple[_Level, ...]
    scoped: bool  # a destination or time scope (or high-risk): _in_scope must be asked
    least: int  # the smallest count threshold


@dataclass(frozen=True)
class _PlanRules:
    """One plan's fraud rules, sorted by what triggers them."""

    plan: Plan
    on_new_call: tuple[_Rule, ...]  # calls_per_minute, total_calls_per_day, sequential_calls, high_risk
    span_least: int  # the fewest calls any span rule (calls_per_minute, high_risk) needs; 0: none
    live: tuple[_Rule, ...]  # cost_burst, long_call: every event
    long_call: tuple[_Rule, ...]
    cost_least: Decimal | None  # the lowest cost_burst threshold (EUR); None: no cost_burst rule

    @classmethod
    def of(cls, plan: Plan) -> "_PlanRules":
        def compiled(rule: FraudRule) -> _Rule:
            levels = tuple(
                _Level(level, t, int(t)) for level in LEVELS if (t := rule.threshold(level)) is not None
            )
            scoped = rule.kind == "high_risk_destination" or rule.destinations is not None or bool(rule.time)
            return _Rule(rule, levels, scoped, min(level.count for level in levels))

        rules = [compiled(r) for r in plan.fraud.rules if any(r.threshold(level) is not None for level in LEVELS)]
        counts = tuple(r for r in rules if r.rule.kind in _CALL_COUNT_RULES)
        spans = [r.least for r in counts if r.rule.kind in ("calls_per_minute", "high_risk_destination")]
        return cls(
            plan=plan,
            on_new_call=counts,
            span_least=min(spans, default=0),
            live=tuple(r for r in rules if r.rule.kind in ("cost_burst", "long_call")),
            long_call=tuple(r for r in rules if r.rule.kind == "long_call"),
            cost_least=min((lv.threshold for r in rules if r.rule.kind == "cost_burst" for lv in r.levels),
                           default=None),
        )


class _Eval:
    """The context of one event's evaluation."""

    def __init__(self, user: str, customer: str, plan: Plan, state: FraudState, now: int,
                 outcome: FraudOutcome) -> None:
        self.user, self.customer, self.plan, self.state, self.now, self.outcome = (
            user, customer, plan, state, now, outcome)


# ------------------------------------------------------------------------------------ helpers


def network_of(source_ip: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) of a source address, or None when it is not an IP address.
    Tolerates a port (``192.0.2.1:5060``, ``[2001:db8::1]:5060``); IPv4-mapped IPv6 counts as IPv4."""
    text = source_ip.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((int(ip) >> 8 << 8, 24)))
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


@lru_cache(maxsize=65536)
def _local_minute(epoch_minute: int, tz: ZoneInfo) -> tuple[int, int]:
    """(weekday, minute of the day) of an epoch minute in a zone: the time scopes' test, cached
    because every live evaluation tests the same recent calls again."""
    local = from_ms(epoch_minute * MINUTE_MS, tz)
    return local.weekday(), local.hour * 60 + local.minute


@lru_cache(maxsize=65536)
def _local_day(epoch_minute: int, tz: ZoneInfo) -> str:
    """The local date (ISO) of an epoch minute: UTC offsets are whole minutes, so every instant of
    the minute has it; cached because calls cluster in time."""
    return from_ms(epoch_minute * MINUTE_MS, tz).date().isoformat()


def _money(value: Decimal) -> str:
    """An amount in EUR as shown: cents, rounded down (what was reached, never more)."""
    return str(value.quantize(CENT, rounding=ROUND_DOWN))


def _threshold_money(value: Decimal) -> str:
    return str(value.quantize(CENT)) if value == value.quantize(CENT) else f"{value.normalize():f}"


# -------------------------------------------------------------------------------------- engine


class FraudEngine:
    """Applies the fraud rules of each user's plan (``Plan.fraud``) to one event at a time."""

    def __init__(
        self,
        plans: PlanBook,
        rates: RateDeck,
        *,
        hash_secret: bytes = b"",
        max_call_duration_s: int = 4 * 3600,
    ) -> None:
        self.plans = plans
        self.rates = rates
        self.hash_key = number_hash_key(hash_secret)  # of the callees' hashes (see Callee)
        self.max_call_ms = max_call_duration_s * SECOND_MS
        configs = [plan.fraud for plan in plans.plans.values()]
        self._prefixes = sorted(
            {p for c in configs for p in c.high_risk.prefixes}
            | {p for c in configs for r in c.rules if r.destinations is not None for p in r.destinations.prefixes},
            key=len,
            reverse=True,
        )
        self._network_days = max(
            (r.days for c in configs for r in c.rules if r.kind == "new_network"), default=0
        )
        self._rate_cache: dict[str, tuple[str | None, Decimal]] = {}
        self._rules: dict[str, _PlanRules] = {}

    @property
    def enabled(self) -> bool:
        """False when no plan has a fraud rule: the caller may skip the engine (and its table)."""
        return any(plan.fraud for plan in self.plans.plans.values())

    # -- CDRs ---------------------------------------------------------------------------------

    def on_call(self, store: Store, ev: CallEvent, *, plan: Plan | None = None,
                callee: Callee | None = None) -> FraudOutcome:
        """One ``cdrs`` event. ``plan``: the user's plan (None: from the store), ``callee``: the
        event's called number when the caller has it already."""
        the_plan = plan if plan is not None else self.plans.resolve(store.plan_of(ev.user))
        if not the_plan.fraud:
            return FraudOutcome("ok")
        rules = self._compiled(the_plan)
        now = ev.event_ms
        state = store.get_fraud(ev.user) or FraudState()
        if state.newest_call_ms and now < state.newest_call_ms - STALE_MS:
            return FraudOutcome("stale")
        record = state.calls.get(ev.call_id)
        if record is not None and (record[1] != OPEN or not ev.is_end):
            return FraudOutcome("duplicate")
        new = record is None
        if record is None:
            if callee is None:
                callee = Callee(ev.callee, self.rates, self.hash_key)
            key, counted = self._classify(callee, ev.direction, the_plan.fraud)
            record = [ev.start_ms, OPEN, 0, key, counted]
            state.calls[ev.call_id] = record
        if ev.is_end:
            assert ev.end_ms is not None
            record[0], record[1], record[2] = ev.start_ms, ev.end_ms, ev.billsec * SECOND_MS
        state.newest_call_ms = max(state.newest_call_ms, now)
        self._prune(state)

        ctx = _Eval(ev.user, ev.customer, the_plan, state, now, FraudOutcome("ok"))
        if new and record[4] and rules.on_new_call:
            assert callee is not None  # classified above: a new call
            self._count_rules(ctx, rules, ev.call_id, ev.start_ms, record[3], callee)
        if rules.live:
            self._live(ctx, rules)
        if ev.is_end and record[4]:
            for rule in rules.long_call:
                self._long_call(ctx, rule, ev.call_id, record, record[2], False)
        store.put_fraud(ev.user, state)
        return ctx.outcome

    def _compiled(self, plan: Plan) -> _PlanRules:
        rules = self._rules.get(plan.name)
        if rules is None or rules.plan is not plan:
            rules = self._rules[plan.name] = _PlanRules.of(plan)
        return rules

    def _classify(self, callee: Callee, direction: str, config: FraudConfig) -> tuple[str, int]:
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

    def _rate(self, key: str) -> tuple[str | None, Decimal]:
        """Destination and rate per minute of a stored callee key."""
        hit = self._rate_cache.get(key)
        if hit is None:
            rate = self.rates.lookup(key) if key else None
            hit = (rate.destination, rate.rate_per_minute) if rate is not None else (None, Decimal(0))
            self._rate_cache[key] = hit
        return hit

    def _in_scope(self, rule: _Rule, plan: Plan, start_ms: int, key: str) -> bool:
        if not rule.scoped:
            return True
        kind, destinations, time = rule.rule.kind, rule.rule.destinations, rule.rule.time
        if kind == "high_risk_destination" or destinations is not None:
            destination = self._rate(key)[0]
            if kind == "high_risk_destination" and not plan.fraud.high_risk.matches(key, destination):
                return False
            if destinations is not None and not destinations.matches(key, destination):
                return False
        return not time or time.matches(*_local_minute(start_ms // MINUTE_MS, plan.timezone))

    # -- rules on a new call ------------------------------------------------------------------

    def _count_rules(self, ctx: _Eval, rules: _PlanRules, call_id: str, start: int, key: str, callee: Callee) -> None:
        # the span rules need at least `span_least` counted calls near this one: most users have fewer
        # calls in the whole state, and then the rules cannot fire (the state only grows their count)
        spans = rules.span_least and len(ctx.state.calls) >= rules.span_least
        near: list[tuple[int, str, str]] | None = None  # counted calls starting within an hour of this one
        for rule in rules.on_new_call:
            kind = rule.rule.kind
            if kind in ("calls_per_minute", "high_risk_destination"):
                if not spans or not self._in_scope(rule, ctx.plan, start, key):
                    continue
                if near is None:
                    near = [
                        (r[0], cid, r[3]) for cid, r in ctx.state.calls.items() if r[4] and abs(r[0] - start) < HOUR_MS
                    ]
                self._span_rule(ctx, rule, start, MINUTE_MS if kind == "calls_per_minute" else HOUR_MS, near)
            elif not self._in_scope(rule, ctx.plan, start, key):
                continue
            elif kind == "total_calls_per_day":
                self._day_rule(ctx, rule, call_id, start)
            else:
                self._sequence_rule(ctx, rule, call_id, start, callee)

    def _span_rule(
        self, ctx: _Eval, rule: _Rule, start: int, span: int, near: list[tuple[int, str, str]]
    ) -> None:
        """At least N in-scope calls starting within ``span``: every span ``[first, first + span)`` that
        contains this call and holds N calls alerts in the clock hour of its N-th call (once)."""
        if len(near) < rule.least:  # the common case: far fewer calls than any threshold
            return
        starts = sorted(
            (s, cid)
            for s, cid, key in near
            if start - span < s < start + span and self._in_scope(rule, ctx.plan, s, key)
        )
        times = [s for s, _ in starts]
        for level in rule.levels:
            need = level.count
            for j, (first, _) in enumerate(starts):
                if first > start:
                    break
                if first + span <= start:
                    continue
                end = bisect.bisect_left(times, first + span)
                if end - j >= need:
                    group = starts[j:end]
                    at = group[need - 1][0]
                    window = self._hour(at, ctx.plan)
                    if _fired(ctx, rule.rule, level.name, window):
                        continue
                    evidence = {
                        "window_start": local_iso(first, ctx.plan.timezone),
                        "window_seconds": span // SECOND_MS,
                        "call_ids": [cid for _, cid in group[:EVIDENCE_CALLS]],
                    }
                    if rule.rule.kind == "high_risk_destination":
                        keys = {ctx.state.calls[cid][3] for _, cid in group}
                        evidence["destinations"] = sorted({self._rate(k)[0] or "+" + k for k in keys})
                    self._fire(ctx, rule.rule, level.name, window, at, len(group), level.threshold, evidence)

    def _day_rule(self, ctx: _Eval, rule: _Rule, call_id: str, start: int) -> None:
        """In-scope calls starting on the local calendar day of this call."""
        day = _local_day(start // MINUTE_MS, ctx.plan.timezone)
        counter = ctx.state.days.setdefault(f"{rule.rule.name}|{day}", [0, start])
        counter[0] += 1
        counter[1] = max(counter[1], start)
        for level in rule.levels:
            if counter[0] >= level.threshold:
                self._fire(ctx, rule.rule, level.name, day, start, counter[0], level.threshold,
                           {"day": day, "call_id": call_id})

    def _sequence_rule(self, ctx: _Eval, rule: _Rule, call_id: str, start: int, callee: Callee) -> None:
        """In-scope calls to the same callee in a row, each within an hour of the previous one."""
        h = callee.hash()
        name = rule.rule.name
        run = ctx.state.runs.get(name)
        if run is not None and run[0] == h and abs(start - run[3]) <= SEQUENCE_GAP_MS:
            run[1] += 1
            run[3] = max(run[3], start)
        else:
            run = [h, 1, call_id, start]
            ctx.state.runs[name] = run
        for level in rule.levels:
            if run[1] >= level.threshold:
                evidence = {"first_call_id": run[2], "call_id": call_id, "calls_in_a_row": run[1]}
                self._fire(ctx, rule.rule, level.name, run[2], start, run[1], level.threshold, evidence)

    # -- live rules (every event) -------------------------------------------------------------

    def _live(self, ctx: _Eval, rules: _PlanRules) -> None:
        # the counted calls that cost money in the last hour, and all open ones: one pass for all rules
        now, lo = ctx.now, ctx.now - HOUR_MS
        cap = self.max_call_ms
        recent: list[tuple[str, list[Any], int, int]] = []
        for call_id, record in ctx.state.calls.items():
            if not record[4]:
                continue
            start, end = record[0], record[1]
            if end == OPEN:  # costing from its start to now, at most the maximum call duration
                recent.append((call_id, record, start, min(now, start + cap)))
            elif end > lo:  # its answered seconds [end - billsec, end]
                recent.append((call_id, record, end - record[2], end))
        if not recent:
            return
        # every cost_burst rule values a subset of these calls: below the lowest threshold, none fires
        costly = rules.cost_least is not None and self._value(recent, now) >= rules.cost_least * MINUTE_MS
        for rule in rules.live:
            if rule.rule.kind == "cost_burst":
                if costly:
                    self._cost_burst(ctx, rule, recent)
            else:
                for call_id, record, a, b in recent:  # long_call: open calls, timed from their start
                    if record[1] == OPEN:
                        self._long_call(ctx, rule, call_id, record, b - a, True)

    def _value(self, recent: list[tuple[str, list[Any], int, int]], now: int) -> Decimal:
        """Tariff value (EUR x ms / min) of ``recent``'s answered time in the 60 minutes up to now."""
        lo, total = now - HOUR_MS, Decimal(0)
        for _call_id, record, a, b in recent:
            overlap = min(b, now) - max(a, lo)
            if overlap > 0:
                total += overlap * self._rate(record[3])[1]
        return total

    def _cost_burst(self, ctx: _Eval, rule: _Rule, recent: list[tuple[str, list[Any], int, int]]) -> None:
        """Tariff value of the in-scope calls' answered time inside the 60 minutes up to now."""
        now, lo = ctx.now, ctx.now - HOUR_MS
        total = Decimal(0)  # EUR x ms / min
        parts: list[tuple[str, Decimal, int, bool, str | None]] = []
        for call_id, record, a, b in recent:
            overlap = min(b, now) - max(a, lo)
            if overlap <= 0:
                continue
            destination, rate = self._rate(record[3])
            if rate == 0 or not self._in_scope(rule, ctx.plan, record[0], record[3]):
                continue
            value = overlap * rate
            total += value
            parts.append((call_id, value, overlap, record[1] == OPEN, destination))
        if not total:
            return
        window = ""  # computed only when a threshold is reached: most events cost little
        for level in rule.levels:
            threshold = level.threshold
            if total < threshold * MINUTE_MS:
                continue
            window = window or self._hour(now, ctx.plan)
            if _fired(ctx, rule.rule, level.name, window):
                continue
            parts.sort(key=lambda p: (-p[1], p[0]))
            evidence = {
                "amount": _money(total / MINUTE_MS),
                "window_start": local_iso(lo, ctx.plan.timezone),
                "window_end": local_iso(now, ctx.plan.timezone),
                "calls": [
                    {
                        "call_id": call_id,
                        "destination": destination,
                        "seconds": overlap // SECOND_MS,
                        "amount": _money(value / MINUTE_MS),
                        "in_progress": in_progress,
                    }
                    for call_id, value, overlap, in_progress, destination in parts[:EVIDENCE_CALLS]
                ],
                "calls_total": len(parts),
            }
            self._fire(ctx, rule.rule, level.name, window, now, _money(total / MINUTE_MS), threshold, evidence)

    def _long_call(
        self, ctx: _Eval, rule: _Rule, call_id: str, record: list[Any], duration: int, live: bool
    ) -> None:
        """A call that has lasted (live: is lasting) more than N minutes."""
        if duration <= 0 or not self._in_scope(rule, ctx.plan, record[0], record[3]):
            return
        for level in rule.levels:
            threshold = level.threshold
            if duration <= threshold * MINUTE_MS or _fired(ctx, rule.rule, level.name, call_id):
                continue
            evidence = {
                "call_id": call_id,
                "start_time": local_iso(record[0], ctx.plan.timezone),
                "destination": self._rate(record[3])[0],
                "in_progress": live,
                "seconds": duration // SECOND_MS,
            }
            self._fire(ctx, rule.rule, level.name, call_id, ctx.now, duration // SECOND_MS, threshold, evidence)

    # -- registrations ------------------------------------------------------------------------

    def on_registration(self, store: Store, reg: Registration, *, plan: Plan | None = None,
                        calls_read_ms: int | None = None) -> FraudOutcome:
        """One ``sip-registrations`` event. ``plan`` as in ``on_call``.

        ``calls_read_ms``: how far, in event time, the caller has read the ``cdrs`` partition of this
        user (None: as far as this registration, e.g. events fed in event-time order). The two topics
        are not read in step — a worker may read a user's REGISTERs days ahead of its CDRs — so calls
        in progress are valued up to ``min(registration time, max(calls_read_ms, newest call event of
        the user))`` only: a call whose ``end`` is still unread is not taken for a call lasting until
        the registration's time."""
        the_plan = plan if plan is not None else self.plans.resolve(store.plan_of(reg.user))
        config = the_plan.fraud
        if not config:
            return FraudOutcome("ok")
        now = reg.time_ms
        state = store.get_fraud(reg.user) or FraudState()
        if state.newest_registration_ms and now < state.newest_registration_ms - STALE_MS:
            return FraudOutcome("stale")
        identity = reg.binding
        network = network_of(reg.source_ip)
        entry = [now, now + reg.expires * SECOND_MS, network or ""]
        current = state.bindings.get(identity)
        if current == entry:
            return FraudOutcome("duplicate")
        if current is not None and current[0] > now:
            return FraudOutcome("late")  # an older REGISTER than the binding held

        fresh = False
        memory = min((r.days for r in config.rules if r.kind == "new_network"), default=0)
        if memory and reg.expires > 0 and network is not None:
            others = any(k != identity and s <= now < e for k, (s, e, _n) in state.bindings.items())
            previous = state.networks.get(network, -1)
            # new for the rule with the shortest memory; each rule checks its own `days` when counting
            if others and previous < now - memory * DAY_MS and network not in state.trusted:
                state.fresh.append([now, network, previous])
                fresh = True
            state.networks[network] = max(previous, now)
        # an unregister stays as an expired binding, so that its redelivery is a duplicate
        state.bindings[identity] = entry
        state.newest_registration_ms = max(state.newest_registration_ms, now)
        self._prune(state)
        self._prune_networks(state)

        ctx = _Eval(reg.user, reg.customer, the_plan, state, now, FraudOutcome("ok"))
        if fresh:
            for rule in config.rules:
                if rule.kind == "new_network":
                    self._new_network(ctx, rule, reg, identity)
        rules = self._compiled(the_plan)
        if rules.live:
            clock = now if calls_read_ms is None else min(now, max(calls_read_ms, state.newest_call_ms))
            self._live(ctx if clock == now else _Eval(reg.user, reg.customer, the_plan, state, clock, ctx.outcome),
                       rules)
        store.put_fraud(reg.user, state)
        return ctx.outcome

    def _new_network(self, ctx: _Eval, rule: FraudRule, reg: Registration, identity: str) -> None:
        """Distinct networks, new for this rule (unused for ``days``), registered from in the last
        24 h while another binding was active."""
        now = ctx.now
        if rule.time and not rule.time.contains(from_ms(now, ctx.plan.timezone)):
            return
        networks: dict[str, int] = {}
        for at, network, previous in ctx.state.fresh:
            if network in ctx.state.trusted:
                continue
            if now - FRESH_NETWORK_MS < at <= now and previous < at - rule.days * DAY_MS:
                if not rule.time or rule.time.contains(from_ms(at, ctx.plan.timezone)):
                    networks.setdefault(network, previous)
        if not networks:
            return
        day = _local_day(now // MINUTE_MS, ctx.plan.timezone)
        others = sorted(k for k, (s, e, _n) in ctx.state.bindings.items() if k != identity and s <= now < e)
        for level in LEVELS:
            threshold = rule.threshold(level)
            if threshold is None or len(networks) < threshold:
                continue
            evidence = {
                "networks": sorted(networks),
                "last_used": {n: (local_iso(p, ctx.plan.timezone) if p >= 0 else None) for n, p in sorted(networks.items())},
                "source_ip": reg.source_ip,
                "binding": identity,
                "user_agent": reg.user_agent,
                "active_bindings": others,
                "days": rule.days,
            }
            self._fire(ctx, rule, level, day, now, len(networks), threshold, evidence)

    # -- an analyst's verdicts ----------------------------------------------------------------

    def on_feedback(self, store: Store, feedback: Feedback) -> FraudOutcome:
        """One ``fraud-feedback`` message: trust its networks for the user, mute its rule until its
        instant. ``duplicate`` when the state already holds the verdict (a redelivery, or the same
        verdict given twice): applying it again changes nothing."""
        state = store.get_fraud(feedback.user) or FraudState()
        changed = False
        for network in feedback.networks:
            if network not in state.trusted:
                state.trusted[network] = feedback.time_ms
                changed = True
        if len(state.trusted) > MAX_TRUSTED_NETWORKS:
            for network in sorted(state.trusted, key=lambda n: (state.trusted[n], n))[:-MAX_TRUSTED_NETWORKS]:
                del state.trusted[network]
        until = feedback.mute_until_ms
        if until is not None and until > state.muted.get(feedback.rule_name, 0):
            state.muted[feedback.rule_name] = until
            changed = True
        if not changed:
            return FraudOutcome("duplicate")
        store.put_fraud(feedback.user, state)
        return FraudOutcome("ok")

    # -- alerts, actions, pruning -------------------------------------------------------------

    def _fire(
        self,
        ctx: _Eval,
        rule: FraudRule,
        level: str,
        window: str,
        at: int,
        observed: int | str,
        threshold: Decimal,
        evidence: dict[str, Any],
    ) -> None:
        key = _fired_key(rule, level, window)
        if key in ctx.state.fired:
            return
        if ctx.state.muted and at < ctx.state.muted.get(rule.name, 0):
            return  # an analyst's verdict: no alert from this rule for the user until then
        ctx.state.fired[key] = at
        if level == "critical":  # a critical supersedes the warning of the same window
            ctx.state.fired.setdefault(_fired_key(rule, "warning", window), at)
        shown: int | str
        if rule.kind == "cost_burst":
            shown = _threshold_money(threshold)
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
            unit=UNITS[rule.kind],
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
                    reason=_reason(alert),
                    time=alert.time,
                )
            )

    def _prune(self, state: FraudState) -> None:
        """Keep the state bounded: drop what no non-stale event can reach any more.

        Every horizon below is hours beyond the reach of a non-stale event, so walking the state at
        most once per ``PRUNE_EVERY_MS`` of event time keeps exactly the same outputs for a
        fraction of the cost. Networks are the exception — an alert's evidence shows when a
        network was last used, so they are pruned on every registration (``_prune_networks``)."""
        tc, tr = state.newest_call_ms, state.newest_registration_ms
        if max(tc, tr) < state.prune_due:
            return
        state.prune_due = max(tc, tr) + PRUNE_EVERY_MS
        horizon = tc - KEEP_CALLS_MS
        cap = self.max_call_ms
        for call_id in [c for c, r in state.calls.items() if (r[0] + cap if r[1] == OPEN else r[1]) < horizon]:
            del state.calls[call_id]
        # a window fired by either kind of event stays remembered until both have moved past it: the
        # topics are not read in step, and a window forgotten too early fires again, with other evidence
        windows = (min(tc, tr) if tc and tr else max(tc, tr)) - KEEP_WINDOWS_MS
        if state.days:
            for key in [k for k, (_n, last) in state.days.items() if last < tc - KEEP_WINDOWS_MS]:
                del state.days[key]
        if state.fired:
            for key in [k for k, at in state.fired.items() if at < windows]:
                del state.fired[key]
        if state.runs:
            for name in [n for n, run in state.runs.items() if run[3] < tc - KEEP_WINDOWS_MS]:
                del state.runs[name]
        if state.bindings:
            for identity in [k for k, b in state.bindings.items() if b[1] < tr - DAY_MS]:
                del state.bindings[identity]
        if state.fresh:
            state.fresh = [f for f in state.fresh if f[0] >= tr - FRESH_NETWORK_MS]
        if state.muted:
            for name in [n for n, until in state.muted.items() if until < windows]:
                del state.muted[name]

    def _prune_networks(self, state: FraudState) -> None:
        memory = max(self._network_days, 1) * DAY_MS
        tr = state.newest_registration_ms
        for network in [n for n, last in state.networks.items() if last < tr - memory]:
            del state.networks[network]

    def _hour(self, ms: int, plan: Plan) -> str:
        """The clock hour containing ``ms``, as the local time of its start (offset included)."""
        return local_iso(ms - ms % HOUR_MS, plan.timezone)


def _fired_key(rule: FraudRule, level: str, window: str) -> str:
    return f"{rule.name}|{level}|{window}"


def _fired(ctx: _Eval, rule: FraudRule, level: str, window: str) -> bool:
    return _fired_key(rule, level, window) in ctx.state.fired


def _reason(alert: FraudAlert) -> str:
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
    }[alert.rule]
    return f"fraud rule {alert.rule_name} ({alert.rule}) critical: {what}"
