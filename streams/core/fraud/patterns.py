"""The pattern rules: a price above a cap, a range of numbers dialled in a row (IRSF), a burst of
short failed attempts, a departure from the user's own history, wangiri (one-ring) calls and the
call back to them. One function per kind over one event's ``Evaluation``; what each keeps of the
user is in ``FraudState.patterns`` under the rule's name:

* ``irsf_range``: ``[[start_ms, prefix, callee hash, call_id], ...]`` of the in-scope calls of the
  last ``window_minutes`` (never a whole number);
* ``destination_baseline``: ``[since_ms, [country, ...], {hour of week: max cents}, hour_ms,
  cents]`` — when the history began, the countries called, the largest spend seen in each hour of
  the week (0 = Monday 00:00 … 167 = Sunday 23:00, local time), the clock hour being watched and
  its spend so far;
* ``wangiri`` (outbound leg): ``[[start_ms, caller hash, ring_ms], ...]`` of the short missed
  inbound calls of the last ``window_hours``, then ``[[start_ms, call_id], ...]`` of the calls back.

``short_call_burst`` and ``price_cap`` read the calls the state keeps anyway. The inbound leg of
``wangiri`` counts subscribers across users: its record is shared, keyed by the caller's range
(``Store.get_shared``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from ..callee import Callee
from ..plans import DestinationSet, PlanBook
from ..records import OPEN, CallEvent
from ..state import FraudState, Store
from ..timeutil import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, from_ms, local_iso
from .alerts import Evaluation, clock_hour, fire, local_minute, money, threshold_money
from .rules import EVIDENCE_CALLS, Rule

MAX_IRSF_CALLS = 4096  # in-scope calls an irsf_range rule keeps for a user (the oldest go beyond this)
MAX_COUNTRIES = 64  # countries destination_baseline learns for a user; beyond, no more are learned
EVIDENCE_COUNTRIES = 20
MAX_MISSED_CALLS = 256  # short missed inbound calls wangiri (outbound leg) keeps for a user
MAX_RANGE_RINGS = 1024  # rings one caller range keeps in its shared record
# The rate-deck destination name up to the first of these is the country: "Allemagne Mobile" and
# "Allemagne Fixe" are both "Allemagne".
COUNTRY_SUFFIXES = (" Fixe", " Mobile", " Premium", " VAS", " OLO", " Numero", " Special", " Banalise")
ASR_PLACES = Decimal("0.01")


def country_of(destination: str) -> str:
    """The country of a rate-deck destination name: the name up to the first of COUNTRY_SUFFIXES."""
    cut = len(destination)
    for suffix in COUNTRY_SUFFIXES:
        i = destination.find(suffix)
        if 0 < i < cut:
            cut = i
    return destination[:cut]


def pattern_rules(ctx: Evaluation, rules: tuple[Rule, ...], store: Store, plans: PlanBook, ev: CallEvent,
                  record: list[Any], callee: Callee | None, hash_key: bytes) -> None:
    """The pattern rules on one call event. ``record`` is the call's record in the state;
    ``callee`` is given on the call's first event (None on a later one)."""
    state = ctx.state
    if state.patterns:  # a rule no longer in the plan keeps nothing
        names = {rule.rule.name for rule in rules}
        for name in [n for n in state.patterns if n not in names]:
            del state.patterns[name]
    call_id = ev.call_id
    counted = bool(record[4])
    missed = (ev.is_end and ev.direction == "inbound" and ev.billsec == 0 and ev.end_ms is not None)
    caller: Callee | None = None
    for rule in rules:
        kind = rule.rule.kind
        if kind == "price_cap":
            if counted and callee is not None:
                price_cap(ctx, rule, call_id, record)
        elif kind == "irsf_range":
            if counted and callee is not None:
                irsf_range(ctx, rule, call_id, record, callee)
        elif kind == "short_call_burst":
            if counted and ev.is_end:
                short_call_burst(ctx, rule)
        elif kind == "destination_baseline":
            if counted:
                destination_baseline(ctx, rule, call_id, record, callee is not None)
        elif rule.rule.leg == "outbound":
            if missed:
                caller = caller or Callee(ev.caller, ctx.destinations.rates, hash_key)
                remember_missed_call(ctx, rule, ev, caller)
            elif counted and callee is not None:
                wangiri_callback(ctx, rule, call_id, record, callee)
        elif missed:
            caller = caller or Callee(ev.caller, ctx.destinations.rates, hash_key)
            wangiri_rings(ctx, rule, store, plans, ev, caller)


def in_scope(ctx: Evaluation, rule: Rule, start: int, key: str, default: DestinationSet | None = None) -> bool:
    """The rule's destinations (else ``default``, when given) and time scope, for a call."""
    destinations = rule.rule.destinations if rule.rule.destinations is not None else default
    if destinations is not None and not destinations.matches(key, ctx.destinations.rate(key)[0]):
        return False
    time = rule.rule.time
    return not time or time.matches(*local_minute(start // MINUTE_MS, ctx.plan.timezone))


def _patterns(state: FraudState, rule: Rule, initial: Any) -> Any:
    found = state.patterns.get(rule.rule.name)
    if found is None:
        found = state.patterns[rule.rule.name] = initial
    return found


# ---------------------------------------------------------------------------------- price_cap


def price_cap(ctx: Evaluation, rule: Rule, call_id: str, record: list[Any]) -> None:
    """A call to a destination priced above the cap (EUR/min), on the call's first event."""
    start, key = record[0], record[3]
    if not key or not in_scope(ctx, rule, start, key):
        return
    destination, price = ctx.destinations.rate(key)
    for level in rule.levels:
        if price <= level.threshold:
            continue
        evidence = {
            "call_id": call_id,
            "destination": destination,
            "price_per_minute": threshold_money(price),
            "start_time": local_iso(start, ctx.plan.timezone),
        }
        fire(ctx, rule.rule, level.name, call_id, ctx.now, threshold_money(price), level.threshold, evidence)


# --------------------------------------------------------------------------------- irsf_range


def irsf_range(ctx: Evaluation, rule: Rule, call_id: str, record: list[Any], callee: Callee) -> None:
    """Distinct numbers sharing one ``prefix_digits`` prefix called within ``window_minutes``, among
    the calls to high-risk destinations (or the rule's ``destinations``)."""
    start, key = record[0], record[3]
    digits = callee.number.digits
    size = rule.rule.prefix_digits
    if not callee.is_e164 or len(digits) <= size:
        return
    if not in_scope(ctx, rule, start, key, ctx.plan.fraud.high_risk):
        return
    prefix = digits[:size]
    span = rule.rule.window_minutes * MINUTE_MS
    calls: list[list[Any]] = _patterns(ctx.state, rule, [])
    calls.append([start, prefix, callee.hash(), call_id])
    top = max(c[0] for c in calls)
    calls[:] = sorted((c for c in calls if c[0] > top - span), key=lambda c: (c[0], c[3]))[-MAX_IRSF_CALLS:]
    group = [c for c in calls if c[1] == prefix and start - span < c[0] <= start]
    distinct = len({c[2] for c in group})
    window = ""
    for level in rule.levels:
        if distinct < level.count:
            continue
        window = window or f"+{prefix} {clock_hour(start, ctx.plan)}"
        evidence = {
            "prefix": f"+{prefix}…",
            "distinct_numbers": distinct,
            "call_ids": [c[3] for c in group[:EVIDENCE_CALLS]],
            "window_start": local_iso(start - span, ctx.plan.timezone),
        }
        fire(ctx, rule.rule, level.name, window, start, distinct, level.threshold, evidence)


# --------------------------------------------------------------------------- short_call_burst


def short_call_burst(ctx: Evaluation, rule: Rule) -> None:
    """Ended attempts of the last ``window_minutes`` (by their start): at least N of them, and at
    most ``max_asr`` of them answered."""
    if len(ctx.state.calls) < rule.least:  # most users: fewer calls in the state than the threshold
        return
    now = ctx.now
    lo = now - rule.rule.window_minutes * MINUTE_MS
    scoped, within, plan = rule.scoped, ctx.destinations.in_scope, ctx.plan
    attempts: list[tuple[int, str, bool]] = []
    for call_id, r in ctx.state.calls.items():
        if r[4] and r[1] != OPEN and lo < r[0] <= now and (not scoped or within(rule, plan, r[0], r[3])):
            attempts.append((r[0], call_id, r[2] > 0))
    if len(attempts) < rule.least:
        return
    answered = sum(1 for a in attempts if a[2])
    if answered > rule.rule.max_asr * len(attempts):
        return
    attempts.sort()
    window = clock_hour(now, ctx.plan)
    for level in rule.levels:
        if len(attempts) < level.count:
            continue
        evidence = {
            "attempts": len(attempts),
            "answered": answered,
            "asr": str((Decimal(answered) / len(attempts)).quantize(ASR_PLACES)),
            "max_asr": str(rule.rule.max_asr),
            "window_start": local_iso(lo, ctx.plan.timezone),
            "call_ids": [call_id for _s, call_id, _a in attempts[:EVIDENCE_CALLS]],
        }
        fire(ctx, rule.rule, level.name, window, now, len(attempts), level.threshold, evidence)


# ----------------------------------------------------------------------- destination_baseline


def hour_of_week(ms: int, ctx: Evaluation) -> int:
    local = from_ms(ms, ctx.plan.timezone)
    return local.weekday() * 24 + local.hour


def spend(ctx: Evaluation, rule: Rule, lo: int, hi: int) -> Decimal:
    """Tariff value (EUR) of the in-scope calls' answered time inside ``[lo, hi)``, calls in
    progress counted from their start up to now (as cost_burst values them)."""
    now, cap = min(ctx.now, hi), ctx.max_call_ms
    scoped, destinations = rule.scoped, ctx.destinations
    total = 0  # EUR x ms / min, in 1/scale (Destinations.units)
    for r in ctx.state.calls.values():
        if not r[4]:
            continue
        end: int = r[1]
        if end == OPEN:
            a: int = r[0]
            b = min(now, a + cap)
        elif end <= lo:
            continue
        else:
            a, b = end - r[2], min(end, now)
        overlap = b - max(a, lo)
        if overlap <= 0:
            continue
        rate = destinations.units(r[3])
        if rate and (not scoped or destinations.in_scope(rule, ctx.plan, r[0], r[3])):
            total += overlap * rate
    return Decimal(total) / (MINUTE_MS * destinations.scale)


def destination_baseline(ctx: Evaluation, rule: Rule, call_id: str, record: list[Any], new: bool) -> None:
    """The user against its own history: a call to a country it never called, and the spend of the
    current clock hour above the largest spend of the same hour of the week. Learns only (alerts
    never) during the ``learning_days`` from the user's first call event."""
    now = ctx.now
    hour = now - now % HOUR_MS
    history: list[Any] = _patterns(ctx.state, rule, [now, [], {}, hour, 0])
    since, countries, maxima = history[0], history[1], history[2]
    learning = now < since + rule.rule.learning_days * DAY_MS
    if hour > history[3]:  # the watched hour has closed: it teaches its hour of the week
        closed = history[3]
        # its calls as the state still holds them (26 h), or what its last event saw of them
        cents = max(history[4], int(spend(ctx, rule, closed, closed + HOUR_MS) * 100))
        closed_bucket = str(hour_of_week(closed, ctx))
        if cents > maxima.get(closed_bucket, 0):
            maxima[closed_bucket] = cents
        history[3], history[4] = hour, 0
    tz = ctx.plan.timezone
    if new and record[3] and in_scope(ctx, rule, record[0], record[3]):
        destination = ctx.destinations.rate(record[3])[0]
        country = country_of(destination) if destination is not None else None
        if country is not None and country not in countries:
            named = rule.rule.new_country_level
            if not learning and named != "none":
                evidence = {
                    "country": country,
                    "destination": destination,
                    "call_id": call_id,
                    "known_countries": sorted(countries)[:EVIDENCE_COUNTRIES],
                    "known_countries_total": len(countries),
                    "learning_since": local_iso(since, tz),
                }
                fire(ctx, rule.rule, named, country, now, 1, Decimal(1), evidence, unit="countries")
            if len(countries) < MAX_COUNTRIES:
                countries.append(country)
    if hour < history[3]:  # a late event of an hour already closed
        return
    amount = spend(ctx, rule, hour, hour + HOUR_MS)
    history[4] = max(history[4], int(amount * 100))
    if learning:
        return
    bucket = hour_of_week(hour, ctx)
    learned = Decimal(maxima.get(str(bucket), 0)) / 100
    excess = amount - learned
    for level in rule.levels:
        if excess <= level.threshold:
            continue
        evidence = {
            "spend": money(amount),
            "learned_max": money(learned),
            "hour_of_week": f"{('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')[bucket // 24]} {bucket % 24:02d}:00",
            "window_start": local_iso(hour, tz),
            "learning_since": local_iso(since, tz),
        }
        fire(ctx, rule.rule, level.name, clock_hour(now, ctx.plan), now, money(excess), level.threshold, evidence)


# ------------------------------------------------------------------------------------ wangiri


def _ring_ms(ev: CallEvent) -> int:
    assert ev.end_ms is not None
    return ev.end_ms - ev.start_ms


def _range_of(caller: Callee, rule: Rule) -> str | None:
    digits = caller.number.digits
    size = rule.rule.prefix_digits
    return digits[:size] if caller.is_e164 and len(digits) > size else None


def remember_missed_call(ctx: Evaluation, rule: Rule, ev: CallEvent, caller: Callee) -> None:
    """A short unanswered inbound call: its caller's hash, for the outbound leg."""
    ring = _ring_ms(ev)
    if not caller.is_e164 or caller.number.is_emergency or ring > rule.rule.ring_seconds * SECOND_MS:
        return
    if rule.rule.time and not rule.rule.time.matches(*local_minute(ev.start_ms // MINUTE_MS, ctx.plan.timezone)):
        return
    record: list[Any] = _patterns(ctx.state, rule, [[], []])
    horizon = ctx.state.newest_call_ms - rule.rule.window_hours * HOUR_MS
    missed = [m for m in record[0] if m[0] > horizon]
    missed.append([ev.start_ms, caller.hash(), ring])
    missed.sort(key=lambda m: m[0])
    record[0] = missed[-MAX_MISSED_CALLS:]
    record[1] = [c for c in record[1] if c[0] > horizon]


def wangiri_callback(ctx: Evaluation, rule: Rule, call_id: str, record: list[Any], callee: Callee) -> None:
    """A call to a number that rang the user briefly, unanswered, in the last ``window_hours``."""
    kept = ctx.state.patterns.get(rule.rule.name)
    if kept is None or not kept[0]:
        return
    start, key = record[0], record[3]
    span = rule.rule.window_hours * HOUR_MS
    number = callee.hash()
    rings = [m for m in kept[0] if m[1] == number and start - span < m[0] < start]
    if not rings or not in_scope(ctx, rule, start, key):
        return
    kept[1].append([start, call_id])
    callbacks = sum(1 for c in kept[1] if start - span < c[0] <= start)
    ring = rings[-1]
    for level in rule.levels:
        if callbacks < level.count:
            continue
        evidence = {
            "call_id": call_id,
            "missed_call_time": local_iso(ring[0], ctx.plan.timezone),
            "ring_seconds": ring[2] // SECOND_MS,
            "destination": ctx.destinations.rate(key)[0],
            "callbacks": callbacks,
        }
        fire(ctx, rule.rule, level.name, call_id, ctx.now, callbacks, level.threshold, evidence, unit="calls")


def wangiri_rings(ctx: Evaluation, rule: Rule, store: Store, plans: PlanBook, ev: CallEvent, caller: Callee) -> None:
    """One caller range ringing many distinct subscribers briefly (unanswered, at most
    ``ring_seconds``) within ``window_minutes``. The range's record is shared by the users of the
    store: ``{"r": [[start_ms, user, customer, plan, call_id], ...], "a": [[hour_ms, level, user],
    ...]}`` — the rings of the window and the subscribers already alerted. Once the range has rung
    N distinct subscribers, each of them is alerted (once per clock hour), the ones rung before too,
    under this plan's rule."""
    start, ring = ev.start_ms, _ring_ms(ev)
    cut = _range_of(caller, rule)
    if cut is None or caller.number.is_emergency or ring > rule.rule.ring_seconds * SECOND_MS:
        return
    time, destinations = rule.rule.time, rule.rule.destinations
    if time and not time.matches(*local_minute(start // MINUTE_MS, ctx.plan.timezone)):
        return
    if destinations is not None:
        rate = caller.rate()
        if not destinations.matches(caller.number.digits, rate.destination if rate is not None else None):
            return
    key = f"wangiri|{rule.rule.name}|{cut}"
    raw = store.get_shared(key)
    shared: dict[str, Any] = orjson.loads(raw) if raw is not None else {"r": [], "a": []}
    span = rule.rule.window_minutes * MINUTE_MS
    rings: list[list[Any]] = shared["r"]
    entry = [start, ctx.user, ctx.customer, ctx.plan.name, ev.call_id]
    if rings and (rings[-1][0], rings[-1][4]) > (start, ev.call_id):
        rings.append(entry)
        rings.sort(key=lambda r: (r[0], r[4]))  # a ring older than the newest: rarely
    else:
        rings.append(entry)  # kept in start order
    top = rings[-1][0]
    first = 0
    while rings[first][0] <= top - span:
        first += 1
    rings = rings[max(first, len(rings) - MAX_RANGE_RINGS):]
    alerted: list[list[Any]] = [a for a in shared["a"] if a[0] > top - span - HOUR_MS]
    group = [r for r in rings if start - span < r[0] <= start]
    subscribers: dict[str, list[Any]] = {}
    for r in group:
        subscribers[r[1]] = r  # the latest ring of each subscriber
    hour = start - start % HOUR_MS
    window = f"+{cut} {clock_hour(start, ctx.plan)}"
    done = {(a[1], a[2]) for a in alerted if a[0] == hour}
    for level in rule.levels:
        if len(subscribers) < level.count:
            continue
        for user, r in sorted(subscribers.items()):
            if (level.name, user) in done:
                continue
            done.add((level.name, user))
            alerted.append([hour, level.name, user])
            target = ctx if user == ctx.user else _other(ctx, store, plans, r)
            evidence = {
                "range": f"+{cut}…",
                "distinct_subscribers": len(subscribers),
                "call_id": r[4],
                "window_start": local_iso(start - span, ctx.plan.timezone),
            }
            fire(target, rule.rule, level.name, window, ctx.now, len(subscribers), level.threshold, evidence,
                 unit="subscribers")
    store.put_shared(key, orjson.dumps({"r": rings, "a": alerted}))


def _other(ctx: Evaluation, store: Store, plans: PlanBook, ring: list[Any]) -> Evaluation:
    """The evaluation of another subscriber rung by the range: its plan and its analyst's mutes,
    its alerts in this event's outcome; its state is not written (the shared record remembers that
    it was alerted)."""
    user, customer, plan_name = ring[1], ring[2], ring[3]
    theirs = store.get_fraud(user)
    state = FraudState(muted=dict(theirs.muted) if theirs is not None else None)
    return Evaluation(user, customer, plans.resolve(plan_name), state, ctx.now, ctx.outcome, ctx.destinations,
                      ctx.max_call_ms)
