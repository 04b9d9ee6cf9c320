"""Order and duplicates: the same stream in event-time order, locally shuffled, and
with 5 % of its CDR ``end`` events duplicated must give the same alert set (user, period, rule) and
the same re-billed sum per call.

What "locally shuffled" may change is what Kafka may change: users and topics interleave freely,
but one user's events on one topic (one partition) arrive in the order they were produced. Within
that, final CDRs (``end``) may come in any order. Live state is the exception, by design: a
``start`` read before an earlier call's ``end`` counts that call as in progress, and a REGISTER
read before an earlier unregister counts that binding as active — both tested below as such.

The engine tests feed ``FairUseEngine`` directly in the order under test (``run_offline`` sorts by
time, so it cannot show an order effect); the last test sends the duplicated stream through the
embedded broker and a real worker with ``replay()``.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Iterable
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.codecs import decode_cdr, decode_registration
from streams.processor import build_processor
from streams.settings import load_plans_and_rates
from streams.core.records import CallEvent, Registration
from streams.core.state import MemoryStore
from streams.core.fairuse import FairUseEngine
from streams.tools.replay import InputMessage, replay, run_offline
from streams.tools.samples import build_sample
from streams.settings import Settings
from tests.factories import end_cdr, engine as small_engine, registration, start_cdr
from tests.brokers import Broker

Alerts = set[tuple[str, str, str]]
Sums = dict[str, Decimal]

SEEDS = range(8)
WINDOW = 20  # each message moves by at most ~20 positions
DUPLICATE_SHARE = 0.05


@dataclass(frozen=True)
class Msg:
    topic: str  # "cdrs" | "sip-registrations"
    payload: dict[str, Any]
    time_ms: int  # event time: end_time of an `end`, start_time of a `start`, time of a REGISTER

    @property
    def raw(self) -> bytes:
        return orjson.dumps(self.payload)

    @property
    def is_end(self) -> bool:
        return self.topic == "cdrs" and self.payload["event"] == "end"

    @property
    def is_start(self) -> bool:
        return self.topic == "cdrs" and self.payload["event"] == "start"


@dataclass
class Run:
    alerts: Alerts
    sums: Sums
    statuses: Counter[str]


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


@lru_cache(maxsize=1)
def sample_stream() -> tuple[tuple[Msg, ...], tuple[tuple[str, str, str], ...]]:
    """The labelled sample (60 normal users + abusers + edge cases) in event-time order."""
    sample = build_sample(normal_users=60)
    msgs = [Msg("cdrs", p, _ms(str(p["end_time"] if p["event"] == "end" else p["start_time"]))) for p in sample.cdrs]
    msgs += [Msg("sip-registrations", p, _ms(str(p["time"]))) for p in sample.registrations]
    msgs.sort(key=lambda m: m.time_ms)  # stable: the builder's order at equal instants (end before start)
    return tuple(msgs), tuple(sample.expected)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings(store="memory://", web_enabled=False)


@lru_cache(maxsize=1)
def config() -> Any:
    return load_plans_and_rates(settings())


def fresh_engine() -> FairUseEngine:
    plans, rates = config()
    return build_processor(settings(), plans, rates).fairuse


def run_engine(msgs: Iterable[Msg]) -> Run:
    engine, store = fresh_engine(), MemoryStore()
    alerts: Alerts = set()
    sums: dict[str, Decimal] = defaultdict(Decimal)
    statuses: Counter[str] = Counter()
    for msg in msgs:
        if msg.topic == "cdrs":
            outcome = engine.on_call(store, decode_cdr(msg.raw))
        else:
            outcome = engine.on_registration(store, decode_registration(msg.raw))
        statuses[outcome.status] += 1
        alerts |= {(a.user, a.period, a.rule) for a in outcome.alerts}
        for line in outcome.lines:
            sums[line.call_id] += line.amount
    return Run(alerts, dict(sums), statuses)


def shuffled(msgs: Iterable[Msg], seed: int, *, only: str | None = None, per_user_order: bool = False) -> list[Msg]:
    """Local shuffle: each message keeps its position plus a uniform jitter of up to WINDOW places.
    With ``only``, the other topic keeps its exact positions. With ``per_user_order``, each user's
    messages on each topic then take back their original relative order (what a partition keeps)."""
    items = list(msgs)
    rng = random.Random(seed)
    chosen = [i for i, m in enumerate(items) if only is None or m.topic == only]
    order = sorted(chosen, key=lambda i: i + rng.uniform(0, WINDOW))
    out = list(items)
    for slot, src in zip(chosen, order):
        out[slot] = items[src]
    if per_user_order:
        lane = lambda m: (m.topic, m.payload["user"])  # noqa: E731
        queues: dict[tuple[str, str], list[Msg]] = defaultdict(list)
        for m in items:
            queues[lane(m)].append(m)
        heads = {k: iter(v) for k, v in queues.items()}
        out = [next(heads[lane(m)]) for m in out]
    return out


def with_duplicates(msgs: Iterable[Msg], seed: int) -> tuple[list[Msg], int]:
    """5 % of the ``end`` events sent a second time, each at a random later position."""
    items = list(msgs)
    rng = random.Random(seed)
    ends = [i for i, m in enumerate(items) if m.is_end]
    picked = rng.sample(ends, max(1, round(len(ends) * DUPLICATE_SHARE)))
    inserts: dict[int, list[Msg]] = defaultdict(list)
    for i in picked:
        inserts[rng.randint(i + 1, len(items))].append(items[i])
    out: list[Msg] = []
    for pos in range(len(items) + 1):
        out.extend(inserts.get(pos, []))
        if pos < len(items):
            out.append(items[pos])
    return out, len(picked)


def max_displacement(before: list[Msg], after: list[Msg]) -> int:
    where = {id(m): i for i, m in enumerate(after)}
    return max(abs(i - where[id(m)]) for i, m in enumerate(before))


def differences(baseline: Run, other: Run) -> str:
    sums = {c for c in baseline.sums.keys() | other.sums.keys() if baseline.sums.get(c) != other.sums.get(c)}
    return (
        f"alerts only in event-time order: {sorted(baseline.alerts - other.alerts)}; "
        f"only in this order: {sorted(other.alerts - baseline.alerts)}; "
        f"{len(sums)} calls with another re-bill sum, e.g. "
        f"{[(c, baseline.sums.get(c), other.sums.get(c)) for c in sorted(sums)[:3]]}"
    )


@lru_cache(maxsize=1)
def baseline() -> Run:
    msgs, _ = sample_stream()
    return run_engine(msgs)


# ------------------------------------------------------------------------ the sample stream


def test_event_time_order_raises_exactly_the_labelled_alerts_and_matches_run_offline() -> None:
    msgs, expected = sample_stream()
    run = baseline()
    assert sorted(run.alerts) == list(expected)
    assert run.sums and all(amount > 0 for amount in run.sums.values())
    assert set(run.statuses) == {"ok"}
    # the reference path of the code base agrees with the engine driven by hand
    inputs = [InputMessage(m.topic, m.payload["user"].encode(), m.raw, float(m.time_ms)) for m in msgs]
    store, counts = run_offline(settings(), inputs)
    breached = {(user, period, rule) for (user, period), st in store.periods.items() for rule in st.breaches}
    assert breached == run.alerts
    assert sum(counts.values()) == len(msgs)


def test_locally_shuffled_end_cdrs_give_the_same_alerts_and_sums() -> None:
    """Final CDRs only (no `start` events), registrations in order: the rules must not care."""
    msgs, _ = sample_stream()
    ends_only = [m for m in msgs if not m.is_start]
    reference = run_engine(ends_only)
    for seed in SEEDS:
        order = shuffled(ends_only, seed, only="cdrs")
        assert 5 <= max_displacement(ends_only, order) <= 2 * WINDOW
        run = run_engine(order)
        assert (run.alerts, run.sums) == (reference.alerts, reference.sums), f"seed {seed}: " + differences(
            reference, run)


def test_locally_shuffled_stream_gives_the_same_alerts_and_sums() -> None:
    """Every message of the sample (start and end events, registrations) moved within ~20
    positions, each user's messages on each topic kept in their order."""
    msgs, _ = sample_stream()
    failures = []
    for seed in SEEDS:
        order = shuffled(msgs, seed, per_user_order=True)
        assert max_displacement(list(msgs), order) >= 5
        run = run_engine(order)
        if (run.alerts, run.sums) != (baseline().alerts, baseline().sums):
            failures.append(f"seed {seed}: {differences(baseline(), run)}")
    assert not failures, "\n".join(failures)


def test_locally_shuffled_cdrs_with_start_events_give_the_same_alerts_and_sums() -> None:
    msgs, _ = sample_stream()
    failures = []
    for seed in SEEDS:
        run = run_engine(shuffled(msgs, seed, only="cdrs", per_user_order=True))
        if (run.alerts, run.sums) != (baseline().alerts, baseline().sums):
            failures.append(f"seed {seed}: {differences(baseline(), run)}")
    assert not failures, "\n".join(failures)


def test_locally_shuffled_registrations_give_the_same_alerts_and_sums() -> None:
    msgs, _ = sample_stream()
    failures = []
    for seed in SEEDS:
        run = run_engine(shuffled(msgs, seed, only="sip-registrations", per_user_order=True))
        if (run.alerts, run.sums) != (baseline().alerts, baseline().sums):
            failures.append(f"seed {seed}: {differences(baseline(), run)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_duplicated_end_events_change_nothing(seed: int) -> None:
    msgs, _ = sample_stream()
    stream, injected = with_duplicates(msgs, seed)
    assert injected == round(sum(m.is_end for m in msgs) * DUPLICATE_SHARE)
    run = run_engine(stream)
    assert run.alerts == baseline().alerts
    assert run.sums == baseline().sums
    assert run.statuses == Counter({"ok": len(msgs), "duplicate": injected})


@pytest.mark.parametrize("seed", [21, 22])
def test_duplicated_end_events_in_a_shuffled_stream_of_final_cdrs_change_nothing(seed: int) -> None:
    msgs, _ = sample_stream()
    ends_only = [m for m in msgs if not m.is_start]
    reference = run_engine(ends_only)
    stream, injected = with_duplicates(shuffled(ends_only, seed, only="cdrs"), seed)
    run = run_engine(stream)
    assert (run.alerts, run.sums) == (reference.alerts, reference.sums), differences(reference, run)
    assert run.statuses["duplicate"] == injected


@pytest.mark.parametrize("first", ["cdrs", "sip-registrations"])
def test_one_topic_consumed_ahead_of_the_other_gives_the_same_alerts_and_sums(first: str) -> None:
    """`cdrs` and `sip-registrations` are separate topics: a worker may well read a user's whole
    month of CDRs before its REGISTERs (or the reverse). Each topic stays in its own order."""
    msgs, _ = sample_stream()
    order = [m for m in msgs if m.topic == first] + [m for m in msgs if m.topic != first]
    run = run_engine(order)
    assert (run.alerts, run.sums) == (baseline().alerts, baseline().sums), differences(baseline(), run)
    # "late" only says a user's newer month was seen first: ok + late is what must not change
    assert run.statuses["ok"] + run.statuses["late"] == baseline().statuses["ok"]


# ------------------------------------------------------- minimal reproductions of order effects

PARIS = ZoneInfo("Europe/Paris")
Event = CallEvent | Registration


def paris(day: int, hour: int, minute: int, second: int = 0) -> datetime:
    """A Paris wall-clock time on 30 November (day 30) or 1 December (day 1) 2026, as UTC."""
    month = 11 if day == 30 else 12
    return datetime(2026, month, day, hour, minute, second, tzinfo=PARIS).astimezone(timezone.utc)


def alerts_of(events: Iterable[Event]) -> Alerts:
    """The factories' plan book (Europe/Paris; 3 simultaneous calls, 3 devices, 60 calls per hour)."""
    engine, store = small_engine(), MemoryStore()
    alerts: Alerts = set()
    for ev in events:
        outcome = engine.on_call(store, ev) if isinstance(ev, CallEvent) else engine.on_registration(store, ev)
        alerts |= {(a.user, a.period, a.rule) for a in outcome.alerts}
    return alerts


@pytest.mark.parametrize("calls", [4, 5, 8])
def test_a_start_read_before_an_earlier_calls_end_counts_that_call_as_in_progress(calls: int) -> None:
    """Calls back to back ([start, end) intervals never overlap), each with a `start` event. In
    event-time order nothing fires. If every `start` is read before the previous call's `end` —
    which Kafka does not do within a user's partition, only a producer can — the calls still
    open are in progress as far as the stream has said, and the live rule fires (documented)."""
    t = paris(30, 10, 0)
    pairs = []
    for n in range(calls):
        seconds = (300, 450, 450, 240)[n % 4]
        pairs.append((start_cdr(f"b{n}", t, callee=f"01456789{n:02d}"),
                      end_cdr(f"b{n}", t, duration=seconds, callee=f"01456789{n:02d}")))
        t += timedelta(seconds=seconds)
    in_time_order = [ev for pair in pairs for ev in pair]
    starts_first = [s for s, _ in pairs] + [e for _, e in pairs]
    ends_only = [e for _, e in pairs]
    assert alerts_of(in_time_order) == set()
    assert alerts_of(ends_only[::-1]) == set()  # final CDRs in any order: nothing
    assert alerts_of(starts_first) == {("alice", "2026-11", "simultaneous_calls")}


def test_a_register_read_before_an_earlier_unregister_counts_that_binding_as_active() -> None:
    """Three phones; one unregisters (expires 0) at 09:20; a fourth registers at 09:25: never more
    than 3 bindings. Read the other way round (a producer's reordering: one user's REGISTERs share
    a partition), 4 bindings are active at 09:25 as far as the stream has said (documented)."""
    base = paris(30, 9, 0)
    three = [registration(f"p{k}", base + timedelta(seconds=120 * k)) for k in range(3)]
    unregister = registration("p1", base + timedelta(minutes=20), expires=0)
    fourth = registration("p3", base + timedelta(minutes=25))
    assert alerts_of([*three, unregister, fourth]) == set()
    assert alerts_of([*three, fourth, unregister]) == {("alice", "2026-11", "registered_devices")}


def test_registrations_read_after_later_cdrs_still_count_their_bindings() -> None:
    """Four phones registered within five minutes on 2 Nov, read after a CDR of 20 Nov (the CDR
    topic ran ahead). The bindings are forgotten at once ("expired more than a day before the
    newest event of this user", the newest event being the CDR) and the breach is missed."""
    base = paris(30, 9, 0) - timedelta(days=28)
    later_call = end_cdr("late-cdr", base + timedelta(days=18), duration=60)
    phones = [registration(f"d{k}", base + timedelta(seconds=90 * k)) for k in range(4)]
    expected = {("alice", "2026-11", "registered_devices")}
    assert alerts_of(phones) == expected
    assert alerts_of([later_call, *phones]) == expected


def test_simultaneous_breaches_in_two_months_are_both_raised_whatever_the_order() -> None:
    """A 2-hour call from 23:00 (Paris) on 30 Nov, three calls overlapping it at 23:20-23:32 and
    three at 00:20-00:32 on 1 Dec: 4 calls at once in November AND in December. In event-time
    order of the `end` events the long call arrives last and only November is raised."""
    long_call = end_cdr("L", paris(30, 23, 0), duration=7200)
    november = [end_cdr(f"n{i}", paris(30, 23, 20 + i), duration=600, callee=f"014567890{i}") for i in range(3)]
    december = [end_cdr(f"d{i}", paris(1, 0, 20 + i), duration=600, callee=f"014567891{i}") for i in range(3)]
    both = {("alice", "2026-11", "simultaneous_calls"), ("alice", "2026-12", "simultaneous_calls")}
    assert alerts_of([long_call, *november, *december]) == both
    assert alerts_of([*november, *december, long_call]) == both


def test_autodialer_breaches_in_two_months_are_both_raised_whatever_the_order() -> None:
    """One call every 50 s from 22:30 on 30 Nov to 00:50 on 1 Dec (Paris). Windows that end after
    midnight hold 61 calls and end in December. Delivered December-first, the December calls alone
    are only 60 and, once November arrives, the window found first ends in (already breached)
    November, so December is never raised."""
    calls = []
    t = paris(30, 22, 30)
    while t < paris(1, 0, 50):
        calls.append(end_cdr(f"a{len(calls)}", t, duration=20, billsec=0, callee=f"01{len(calls):08d}"))
        t += timedelta(seconds=50)
    midnight_ms = paris(1, 0, 0).timestamp() * 1000
    november = [c for c in calls if c.start_ms < midnight_ms]
    december = [c for c in calls if c.start_ms >= midnight_ms]
    both = {("alice", "2026-11", "autodialer"), ("alice", "2026-12", "autodialer")}
    assert alerts_of(calls) == both
    assert alerts_of([*december, *november]) == both


def test_device_breaches_in_two_months_are_both_raised_whatever_the_order() -> None:
    """A binding up from 23:30 on 30 Nov for 2 h, three more at 23:40 (Nov), three others at 00:10
    (Dec): 4 active in each month. When the long binding's REGISTER arrives last, only November is
    raised."""
    long_binding = registration("X", paris(30, 23, 30), expires=7200)
    november = [registration(f"g{k}", paris(30, 23, 40 + k), expires=600) for k in range(3)]
    december = [registration(f"h{k}", paris(1, 0, 10 + k), expires=600) for k in range(3)]
    both = {("alice", "2026-11", "registered_devices"), ("alice", "2026-12", "registered_devices")}
    assert alerts_of([long_binding, *november, *december]) == both
    assert alerts_of([*november, *december, long_binding]) == both


# ------------------------------------------------------------------------- through the broker


@pytest.mark.integration
async def test_duplicated_end_events_through_the_broker_change_nothing(broker: Broker) -> None:
    """5 % of the `end` events sent twice, at random later positions, through the embedded broker and
    a real worker: same alert set and per-call re-bill sums as the engine in event-time order, no
    line or alert emitted twice, and every duplicate counted as one."""
    msgs, expected = sample_stream()
    stream, injected = with_duplicates(msgs, seed=5)
    # replay() sorts by time_ms: the position keeps the order built here (one user = one partition)
    inputs = [InputMessage(m.topic, m.payload["user"].encode(), m.raw, float(pos)) for pos, m in enumerate(stream)]
    result = await replay(settings(), inputs, broker_url=broker.url, timeout_s=300)

    alerts = [(a["user"], a["period"], a["rule"]) for a in result.alerts]
    assert len(alerts) == len(set(alerts)), "an alert was emitted twice"
    assert set(alerts) == baseline().alerts == set(expected)
    line_ids = [r["line_id"] for r in result.rebills]
    assert len(line_ids) == len(set(line_ids)), "a re-bill line was emitted twice"
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for line in result.rebills:
        sums[str(line["call_id"])] += Decimal(str(line["amount"]))
    assert dict(sums) == baseline().sums
    cdrs = sum(1 for m in msgs if m.topic == "cdrs")
    assert result.counts.get(("cdrs", "duplicate")) == injected
    done = {t: result.counts.get((t, "ok"), 0) + result.counts.get((t, "late"), 0) for t in ("cdrs", "sip-registrations")}
    assert done == {"cdrs": cdrs, "sip-registrations": len(msgs) - cdrs}
    assert result.dlq == []
