"""The fraud rules, one function per rule kind, each over the state of one user at one instant
(``Evaluation``): the count rules on a new call, the live rules on every event, new_network on a
registration. A plan's rules are compiled once (``PlanRules``) into what each kind of event runs."""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..callee import Callee
from ..folds import DayCount, SameCalleeRun
from ..plans import PATTERN_RULES, FraudRule, Plan
from ..records import OPEN, Registration
from ..timeutil import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, from_ms, local_iso
from .alerts import LEVELS, Evaluation, clock_hour, fire, fired, local_day, money

FRESH_NETWORK_MS = DAY_MS  # new_network counts the new networks of the last 24 h
SEQUENCE_GAP_MS = HOUR_MS  # a same-callee run breaks when a call starts more than 1 h after the previous one
EVIDENCE_CALLS = 50  # at most this many calls listed in an alert's evidence
_RUNS = SameCalleeRun(SEQUENCE_GAP_MS)
_CALL_COUNT_RULES = ("calls_per_minute", "total_calls_per_day", "sequential_calls", "high_risk_destination")


@dataclass(frozen=True)
class Level:
    name: str  # critical | warning
    threshold: Decimal
    count: int  # the threshold as a whole count (count rules)


@dataclass(frozen=True)
class Rule:
    """A rule as the hot path needs it: its levels (critical first) and whether any scope applies."""

    rule: FraudRule
    levels: tuple[Level, ...]
    scoped: bool  # a destination or time scope (or high-risk): _in_scope must be asked
    least: int  # the smallest count threshold
    least_money: Decimal  # the smallest threshold (cost_burst: EUR)


@dataclass(frozen=True)
class PlanRules:
    """One plan's fraud rules, sorted by what triggers them."""

    plan: Plan
    on_new_call: tuple[Rule, ...]  # calls_per_minute, total_calls_per_day, sequential_calls, high_risk
    span_least: int  # the fewest calls any span rule (calls_per_minute, high_risk) needs; 0: none
    live: tuple[Rule, ...]  # cost_burst, long_call: every event
    long_call: tuple[Rule, ...]
    cost_least: Decimal | None  # the lowest cost_burst threshold (EUR); None: no cost_burst rule
    patterns: tuple[Rule, ...] = ()  # price_cap … wangiri (``patterns``): on every call event

    @classmethod
    def of(cls, plan: Plan) -> "PlanRules":
        def compiled(rule: FraudRule) -> Rule:
            levels = tuple(
                Level(level, t, int(t)) for level in LEVELS if (t := rule.threshold(level)) is not None
            )
            scoped = rule.kind == "high_risk_destination" or rule.destinations is not None or bool(rule.time)
            return Rule(rule, levels, scoped, min((level.count for level in levels), default=0),
                        min((level.threshold for level in levels), default=Decimal(0)))

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
            patterns=tuple(compiled(r) for r in plan.fraud.rules if r.kind in PATTERN_RULES),
        )



# ------------------------------------------------------------------- count rules (a new call)


def count_rules(ctx: Evaluation, rules: PlanRules, call_id: str, start: int, key: str, callee: Callee) -> None:
    # the span rules need at least `span_least` counted calls near this one: most users have fewer
    # calls in the whole state, and then the rules cannot fire (the state only grows their count)
    spans = rules.span_least and len(ctx.state.calls) >= rules.span_least
    near: list[tuple[int, str, str]] | None = None  # counted calls starting within an hour of this one
    for rule in rules.on_new_call:
        kind = rule.rule.kind
        if kind in ("calls_per_minute", "high_risk_destination"):
            if not spans or not ctx.destinations.in_scope(rule, ctx.plan, start, key):
                continue
            if near is None:
                near = [
                    (r[0], cid, r[3]) for cid, r in ctx.state.calls.items() if r[4] and abs(r[0] - start) < HOUR_MS
                ]
            span_rule(ctx, rule, start, MINUTE_MS if kind == "calls_per_minute" else HOUR_MS, near)
        elif not ctx.destinations.in_scope(rule, ctx.plan, start, key):
            continue
        elif kind == "total_calls_per_day":
            day_rule(ctx, rule, call_id, start)
        else:
            sequence_rule(ctx, rule, call_id, start, callee)


def span_rule(ctx: Evaluation, rule: Rule, start: int, span: int, near: list[tuple[int, str, str]]) -> None:
    """At least N in-scope calls starting within ``span``: every span ``[first, first + span)`` that
    contains this call and holds N calls alerts in the clock hour of its N-th call (once)."""
    if len(near) < rule.least:  # the common case: far fewer calls than any threshold
        return
    starts = sorted(
        (s, cid)
        for s, cid, key in near
        if start - span < s < start + span and ctx.destinations.in_scope(rule, ctx.plan, s, key)
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
                window = clock_hour(at, ctx.plan)
                if fired(ctx, rule.rule, level.name, window):
                    continue
                evidence = {
                    "window_start": local_iso(first, ctx.plan.timezone),
                    "window_seconds": span // SECOND_MS,
                    "call_ids": [cid for _, cid in group[:EVIDENCE_CALLS]],
                }
                if rule.rule.kind == "high_risk_destination":
                    keys = {ctx.state.calls[cid][3] for _, cid in group}
                    evidence["destinations"] = sorted({ctx.destinations.rate(k)[0] or "+" + k for k in keys})
                fire(ctx, rule.rule, level.name, window, at, len(group), level.threshold, evidence)


def day_rule(ctx: Evaluation, rule: Rule, call_id: str, start: int) -> None:
    """In-scope calls starting on the local calendar day of this call."""
    day = local_day(start // MINUTE_MS, ctx.plan.timezone)
    counter = ctx.state.days.setdefault(f"{rule.rule.name}|{day}", DayCount.initialize(start))
    DayCount.add(counter, start)
    count = DayCount.result(counter)
    for level in rule.levels:
        if count >= level.threshold:
            fire(ctx, rule.rule, level.name, day, start, count, level.threshold, {"day": day, "call_id": call_id})


def sequence_rule(ctx: Evaluation, rule: Rule, call_id: str, start: int, callee: Callee) -> None:
    """In-scope calls to the same callee in a row, each within an hour of the previous one."""
    name = rule.rule.name
    run = ctx.state.runs[name] = _RUNS.add(ctx.state.runs.get(name), callee.hash(), call_id, start)
    count = _RUNS.result(run)
    for level in rule.levels:
        if count >= level.threshold:
            evidence = {"first_call_id": run[2], "call_id": call_id, "calls_in_a_row": count}
            fire(ctx, rule.rule, level.name, run[2], start, count, level.threshold, evidence)


# ------------------------------------------------------------- live rules (as event time passes)

# a call in the hour up to an instant: (call_id, record, costing from, costing to, open then)
Recent = tuple[str, list[Any], int, int, bool]
NO_DUE = -1


def known_at(record: list[Any]) -> int:
    """When the worker learnt of a call: the event time of its first event (its ``start`` event,
    else its ``end``). States written before this was kept count an ended call from its end."""
    if len(record) > 5:
        return int(record[5])
    return int(record[0] if record[1] == OPEN else record[1])


def live_rules(ctx: Evaluation, rules: PlanRules) -> int:
    """cost_burst and long_call at the instant ``ctx.now``, from what was known of the calls by then
    (a call is open at that instant when its end is later, even if the end has been read since);
    returns the next instant at which one of them could fire (``NO_DUE``: none before new input).

    The caller evaluates a user at each instant returned, and at each event of the user, once
    every input has been read up to that instant (a watermark): the alerts' times are the
    crossing times, whatever the order in which the topics were read."""
    now, lo = ctx.now, ctx.now - HOUR_MS
    cap = ctx.max_call_ms
    recent: list[Recent] = []
    learnt = NO_DUE  # the next instant a call of the state becomes known (read ahead of the clock)
    # the tariff value (EUR x ms / min, in 1/``Destinations.scale``) of these calls' answered time
    # in the 60 minutes up to now, and how fast the open ones add to it (the same per ms)
    value, growth, units = 0, 0, ctx.destinations.units
    for call_id, record in ctx.state.calls.items():
        if not record[4]:
            continue
        known = known_at(record)
        if known > now:
            learnt = _sooner(learnt, known)
            continue
        start, end = record[0], record[1]
        if end == OPEN or end > now:  # costing from its start to now, at most the maximum call duration
            b, running = min(now, start + cap), start + cap > now
            recent.append((call_id, record, start, b, running))
            overlap, rate = b - max(start, lo), units(record[3])
            if running:
                growth += rate
        elif end > lo:  # its answered seconds [end - billsec, end]
            a = end - record[2]
            recent.append((call_id, record, a, end, False))
            overlap, rate = end - max(a, lo), units(record[3])
        else:
            continue
        if overlap > 0:
            value += overlap * rate
    if not recent:
        return learnt
    due = learnt
    # every cost_burst rule values a subset of these calls: below the lowest threshold, none fires
    # and a rule whose lowest threshold this is below cannot fire: it is due when the open calls
    # could bring the value there (sooner than its own calls could: a due too early costs one
    # evaluation, which raises nothing)
    per_eur = MINUTE_MS * ctx.destinations.scale  # a threshold in EUR as such a value
    costly = rules.cost_least is not None and value >= rules.cost_least * per_eur
    for rule in rules.live:
        if rule.rule.kind == "cost_burst":
            if costly and value >= rule.least_money * per_eur:
                due = _sooner(due, cost_burst(ctx, rule, recent))
            elif costly and growth > 0:
                due = _sooner(due, _after(now, (rule.least_money * per_eur - value) / growth))
        else:
            for call_id, record, a, b, running in recent:  # long_call: open calls, timed from their start
                if running:
                    due = _sooner(due, long_call(ctx, rule, call_id, record, b - a, True))
    if not costly and rules.cost_least is not None and growth > 0:
        due = _sooner(due, _after(now, (rules.cost_least * per_eur - value) / growth))
    return due


def _sooner(a: int, b: int) -> int:
    return b if a == NO_DUE or (b != NO_DUE and b < a) else a


def _after(now: int, wait: Decimal) -> int:
    """The first whole second (event time) at least ``wait`` ms after ``now``, and after ``now``:
    alerts carry whole-second times."""
    at = now + max(1, int(-(-wait // 1)))
    return -(-at // SECOND_MS) * SECOND_MS


def cost_burst(ctx: Evaluation, rule: Rule, recent: list[Recent]) -> int:
    """Tariff value of the in-scope calls' answered time inside the 60 minutes up to now; returns
    when the next level could be reached at the pace of the open calls (``NO_DUE``: never). Once
    every level has fired in the current clock hour nothing more can fire before the next one:
    due then (when a call is open), the calls not valued."""
    now, lo = ctx.now, ctx.now - HOUR_MS
    window = clock_hour(now, ctx.plan)
    if all(fired(ctx, rule.rule, level.name, window) for level in rule.levels):
        return now - now % HOUR_MS + HOUR_MS if any(r[4] for r in recent) else NO_DUE
    destinations, plan = ctx.destinations, ctx.plan
    total = 0  # EUR x ms / min, in 1/scale (as live_rules values the calls)
    growth = 0
    for _call_id, record, a, b, running in recent:
        rate = destinations.units(record[3])
        if rate == 0 or not destinations.in_scope(rule, plan, record[0], record[3]):
            continue
        if running:
            growth += rate
        overlap = min(b, now) - max(a, lo)
        if overlap > 0:
            total += overlap * rate
    per_eur = MINUTE_MS * destinations.scale
    amount = Decimal(total) / per_eur  # EUR
    due = NO_DUE
    parts: list[tuple[str, Decimal, int, bool, str | None]] | None = None  # the evidence, once needed
    for level in rule.levels:
        threshold = level.threshold
        if total < threshold * per_eur:
            if growth > 0:
                due = _sooner(due, _after(now, (threshold * per_eur - total) / growth))
            continue
        if fired(ctx, rule.rule, level.name, window):
            if growth > 0:  # still above it: the next clock hour is a new window
                due = _sooner(due, now - now % HOUR_MS + HOUR_MS)
            continue
        if parts is None:
            parts = _valued(ctx, rule, recent)
        evidence = {
            "amount": money(amount),
            "window_start": local_iso(lo, ctx.plan.timezone),
            "window_end": local_iso(now, ctx.plan.timezone),
            "calls": [
                {
                    "call_id": call_id,
                    "destination": destination,
                    "seconds": overlap // SECOND_MS,
                    "amount": money(value / MINUTE_MS),
                    "in_progress": in_progress,
                }
                for call_id, value, overlap, in_progress, destination in parts[:EVIDENCE_CALLS]
            ],
            "calls_total": len(parts),
        }
        fire(ctx, rule.rule, level.name, window, now, money(amount), threshold, evidence)
    return due


def _valued(ctx: Evaluation, rule: Rule, recent: list[Recent]) -> list[tuple[str, Decimal, int, bool, str | None]]:
    """cost_burst's evidence: the in-scope calls with answered time in the last 60 minutes, the
    costliest first (then by call id)."""
    now, lo = ctx.now, ctx.now - HOUR_MS
    parts: list[tuple[str, Decimal, int, bool, str | None]] = []
    for call_id, record, a, b, _running in recent:
        destination, rate = ctx.destinations.rate(record[3])
        overlap = min(b, now) - max(a, lo)
        if rate == 0 or overlap <= 0 or not ctx.destinations.in_scope(rule, ctx.plan, record[0], record[3]):
            continue
        parts.append((call_id, overlap * rate, overlap, record[1] == OPEN or record[1] > now, destination))
    parts.sort(key=lambda p: (-p[1], p[0]))
    return parts


def long_call(ctx: Evaluation, rule: Rule, call_id: str, record: list[Any], duration: int, live: bool) -> int:
    """A call that has lasted (live: is lasting) more than N minutes; live, returns the instant
    the next level will be crossed (``NO_DUE``: none)."""
    if duration < 0 or not ctx.destinations.in_scope(rule, ctx.plan, record[0], record[3]):
        return NO_DUE
    due = NO_DUE
    for level in rule.levels:
        threshold = level.threshold
        if fired(ctx, rule.rule, level.name, call_id):
            continue
        limit = int(threshold) * MINUTE_MS
        if duration <= limit:
            if live and limit + SECOND_MS <= ctx.max_call_ms:
                due = _sooner(due, record[0] + limit + SECOND_MS)  # the first whole second it is longer
            continue
        evidence = {
            "call_id": call_id,
            "start_time": local_iso(record[0], ctx.plan.timezone),
            "destination": ctx.destinations.rate(record[3])[0],
            "in_progress": live,
            "seconds": duration // SECOND_MS,
        }
        fire(ctx, rule.rule, level.name, call_id, ctx.now, duration // SECOND_MS, threshold, evidence)
    return due


# ------------------------------------------------------------------- new_network (a REGISTER)


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


def new_network(ctx: Evaluation, rule: FraudRule, reg: Registration, identity: str,
                customer_networks: list[str]) -> None:
    """Distinct networks, new for this rule (unused for ``days`` by the user and by the other users
    of its customer, ``customer_networks``), registered from in the last 24 h while another
    binding was active."""
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
    day = local_day(now // MINUTE_MS, ctx.plan.timezone)
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
            "first_seen": local_iso(ctx.state.since, ctx.plan.timezone) if ctx.state.since else None,
            "learning_days": ctx.plan.fraud.learning_days,
            "customer_networks": customer_networks,
        }
        fire(ctx, rule, level, day, now, len(networks), threshold, evidence)
