"""`cdrwatch bench`: the pipeline against the naive Faust program and the raw-consumer ceiling,
on the embedded broker, in one run; plus alert latency at half load and state bytes per user-month."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .. import codecs
from ..codecs import cdr_payload, encode_cdr, registration_payload
from ..agents.pipeline import build_pipeline
from ..topics import ALL_TOPICS, CHUNK_PREFIX, INPUT_TOPICS
from ..checks import output_file, positive_int
from ..processor import Outputs, Replayed, build_processor
from ..settings import load_plans_and_rates
from ..connect import check_broker
from ..core.errors import ConfigError
from ..core.records import CallEvent
from ..core.state import FraudState
from ..agents.tables import TableCaches, TableStore
from .embedded import EmbeddedBroker, create_topics, free_port
from .replay import committed_offsets, end_offsets
from .workers import cpu_seconds, machine_cpu_seconds, start_worker
from ..settings import PROCESSING_GUARANTEES, Settings


@dataclass(frozen=True)
class BenchStream:
    cdrs: list[tuple[bytes, bytes]]  # (key, value)
    registrations: list[tuple[bytes, bytes]]
    users: int


def synthetic_stream(users: int, cdrs: int, seed: int = 1, month: str = "2026-11") -> BenchStream:
    """Business-hours calls to per-user address books; every user also registers one device.
    Built for speed (JSON bytes straight away), not realism: see `cdrwatch generate` for that."""
    rnd = random.Random(seed)
    books = [[f"+33{rnd.choice('1234567')}{rnd.randrange(10**8):08d}" for _ in range(20)] for _ in range(users)]
    per_user = max(cdrs // users, 1)
    out = []
    seconds_in_month = 28 * 86400
    base = datetime.fromisoformat(f"{month}-01T00:00:00+01:00")
    for n in range(cdrs):
        u = n % users
        user = f"bench{u:06d}"
        # each user's calls spread over the month in order, never overlapping
        offset = (n // users) * (seconds_in_month // per_user) + rnd.randrange(0, 600)
        billsec = rnd.choice((0, 12, 45, 90, 240)) if n % 4 else 0
        start = base + timedelta(seconds=offset)
        answered = billsec > 0
        callee = books[u][rnd.randrange(20)]
        out.append((user.encode(), encode_cdr(
            "end", f"{user}-{n}", user, f"cust{u % 997}", "+33140000000", callee, "outbound", start.isoformat(),
            (start + timedelta(seconds=5)).isoformat() if answered else None,
            (start + timedelta(seconds=5 + billsec)).isoformat(), billsec, "ANSWERED" if answered else "NO ANSWER")))
    regs = []
    for u in range(users):
        reg = registration_payload(f"bench{u:06d}", f"cust{u % 997}", f"sip:bench{u}@10.0.0.1:5060",
                                   f"<urn:uuid:{u:08d}>", "Yealink SIP-T46S 66.86.0.15", "10.0.0.1", 3600,
                                   f"{month}-01T08:00:00+01:00")
        regs.append((reg["user"].encode(), orjson.dumps(reg)))
    return BenchStream(out, regs, users)


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, key=key, value=value))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def prefill(bootstrap: str, settings: Settings, stream: BenchStream) -> None:
    """The settings' topics created, and ``stream``'s registrations and CDRs produced into them."""
    await create_topics(bootstrap, [settings.topic(t) for t in ALL_TOPICS], settings.partitions)
    await _produce(bootstrap, settings.topic("sip-registrations"), stream.registrations)
    await _produce(bootstrap, settings.topic("cdrs"), stream.cdrs)


async def measure_ceiling(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, started = 0, time.perf_counter()
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value)
                seen += sum(len(r) for r in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def measure_naive(bootstrap: str, topic: str, expected: int, partitions: int, data_dir: Path) -> float:
    """What a newcomer writes: json values, one table update per event."""
    app = faust.App(f"naive-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=str(data_dir), web_enabled=False, topic_partitions=partitions,
                    broker_session_timeout=10, broker_heartbeat_interval=1, consumer_auto_offset_reset="earliest")
    counts = app.Table("calls_per_user", default=int, partitions=partitions)
    source = app.topic(topic, value_serializer="json", key_serializer="raw")
    state = {"n": 0, "t0": 0.0, "t1": 0.0}
    done = asyncio.Event()

    @app.agent(source)
    async def count_calls(stream: Any) -> None:
        async for cdr in stream:
            if state["n"] == 0:
                state["t0"] = time.perf_counter()
            counts[cdr["user"]] += 1
            state["n"] += 1
            if state["n"] >= expected:
                state["t1"] = time.perf_counter()
                done.set()

    app.finalize()
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), 1800)
    finally:
        await app.stop()
    return expected / (state["t1"] - state["t0"])


async def measure_pipeline(settings: Settings, expected: int) -> tuple[float, dict[str, Any]]:
    plans, rates = load_plans_and_rates(settings)
    pipeline = build_pipeline(settings, plans, rates)
    done = asyncio.Event()
    marks = {"t0": 0.0, "t1": 0.0}
    pipeline.progress = asyncio.Event()

    async def watch() -> None:
        while True:
            await pipeline.progress.wait()  # type: ignore[union-attr]
            pipeline.progress.clear()  # type: ignore[union-attr]
            if pipeline.processed >= expected:
                marks["t0"] = pipeline.started_at or 0.0
                marks["t1"] = time.perf_counter()
                done.set()
                return

    pipeline.app.finalize()
    await pipeline.app.start()
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(done.wait(), 3600)
        sizes = [len(raw) for raw in pipeline.periods.values()]  # the months' heads and sealed chunks
        heads = sum(1 for key in pipeline.periods.keys() if not key.startswith(CHUNK_PREFIX))
        info = {"period_states": heads, "period_state_bytes": sum(sizes),
                "users_state_bytes": sum(len(raw) for raw in pipeline.users.values())}
    finally:
        watcher.cancel()
        await pipeline.app.stop()
    return expected / (marks["t1"] - marks["t0"]), info


BUSY_CALLS = (50, 500_000)


class _DictTable:
    """A table of records on a plain dict (what ``TableStore`` reads and writes, no Faust)."""

    def __init__(self, name: str) -> None:
        self.name, self.data = name, {}  # type: ignore[var-annotated]


class RecordSink:
    """Where ``TableStore`` writes (a changelog writer's ``stage``): the values into the table,
    and the bytes and the largest record written counted."""

    def __init__(self) -> None:
        self.written, self.records, self.largest = 0, 0, 0

    def stage(self, table: Any, key: bytes, value: bytes | None, partition: int) -> None:
        if value is None:
            table.data.pop(key, None)
            return
        table.data[key] = value
        self.written += len(value)
        self.records += 1
        self.largest = max(self.largest, len(value))


@dataclass
class MonthRun:
    """A month of CDRs through the processor and a ``TableStore`` on dict tables, in batches as a
    worker sees them: every state touched by a batch written once (head records and sealed
    chunks), as to a changelog; ``tables`` then hold what a restarted worker would restore."""

    tables: dict[str, Any]
    caches: TableCaches
    sink: RecordSink
    processor: Any
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)  # per CDR: ok, duplicate, …

    @classmethod
    def start(cls, tables: dict[str, dict[bytes, bytes]] | None = None) -> "MonthRun":
        """A new run, or (``tables``: a run's records) a restarted one: nothing cached, each user
        of the fraud table put back on the live rules' clock, as a worker does after a restart."""
        settings = Settings()
        names = ("periods", "users", "subscribers", "fraud")
        dicts = {name: _DictTable(name) for name in names}
        for name, records in (tables or {}).items():
            dicts[name].data = dict(records)
        run = cls(dicts, TableCaches(), RecordSink(), build_processor(settings, *load_plans_and_rates(settings)))
        for key, raw in dicts["fraud"].data.items():
            if not key.startswith(b"\x00"):  # a user's (not a shared record)
                run.processor.resume(key.decode(), FraudState.decode(raw), Replayed("cdrs", key, None))
        return run

    def records(self) -> dict[str, dict[bytes, bytes]]:
        """A copy of every table's records (what a restarted worker restores)."""
        return {name: dict(table.data) for name, table in self.tables.items()}

    def store(self, caches: TableCaches | None = None) -> TableStore:
        t = self.tables
        return TableStore(t["periods"], t["users"], t["subscribers"], caches or self.caches, t["fraud"])

    def feed(self, events: list[CallEvent], batch: int = 500, keep: Outputs | None = None) -> None:
        """``events`` in batches; what they send added to ``keep`` when given."""
        began = time.perf_counter()
        for first in range(0, len(events), batch):
            store, out = self.store(), Outputs()
            for event in events[first:first + batch]:
                source = Replayed("cdrs", event.user.encode(), None)
                store.source = source
                self.processor.apply("cdrs", event, source, store, out)
            self.processor.advance(events[min(first + batch, len(events)) - 1].event_ms, store, out)
            store._write(self.sink, None)  # type: ignore[arg-type]
            self.outcomes.update(outcome for _topic, outcome in out.counts)
            if keep is not None:
                keep.alerts += out.alerts
                keep.lines += out.lines
                keep.fraud_alerts += out.fraud_alerts
                keep.actions += out.actions
        self.seconds += time.perf_counter() - began


def dialler_calls(user: str, calls: int, every_s: int, start: str = "2026-11-01T00:00:00+01:00",
                  first: int = 0) -> list[CallEvent]:
    """``calls`` answered one-minute calls of ``user``, one every ``every_s`` seconds, each to
    another national number (the month's distinct numbers and re-billed calls grow with them);
    from the ``first``-th call of that series on."""
    at0 = int(datetime.fromisoformat(start).timestamp() * 1000)
    events = []
    for n in range(first, first + calls):
        at = at0 + n * every_s * 1000
        stamp = datetime.fromtimestamp(at / 1000, timezone.utc).isoformat()
        events.append(CallEvent("end", f"{user}-{n}", user, "cust", "+33140000000", f"+3314{n * 7919 % 10**8:08d}",
                                "outbound", at, stamp, at + 5_000, at + 65_000, 60, "ANSWERED"))
    return events


def measure_busy_user(calls: int) -> dict[str, float]:
    """One user's month of ``calls`` calls spread evenly over 29 days, through every rule, in
    batches of 500 written as a worker writes them: µs and bytes written per CDR, the largest
    record written, and the month's stored state at the end."""
    run, every = MonthRun.start(), max(29 * 86400 // calls, 1)
    for first in range(0, calls, 50_000):  # generated as fed: a 500,000-call month is not held
        run.feed(dialler_calls("busy", min(50_000, calls - first), every, first=first))
    stored = sum(len(raw) for table in run.tables.values() for raw in table.data.values())
    return {"us_per_cdr": run.seconds / calls * 1e6, "written_per_cdr": run.sink.written / calls,
            "largest_record": run.sink.largest, "state_bytes": stored}


def compiled() -> bool:
    """Whether this process runs the mypyc-compiled core (pyproject.toml's build hook)."""
    return not (codecs.__file__ or "").endswith(".py")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class BenchResult:
    figures: dict[str, Any]

    def format(self) -> str:
        f = self.figures
        return "\n".join([
            f"stream: {f['cdrs']:,} CDRs, {f['users']:,} users, {f['partitions']} partitions (embedded Tansu)",
            f"ceiling  (aiokafka + orjson)       {f['ceiling_cdr_per_s']:>10,.0f} CDR/s",
            f"naive    (Faust, 1 table write)    {f['naive_cdr_per_s']:>10,.0f} CDR/s",
            f"pipeline (cdrwatch, all rules)     {f['pipeline_cdr_per_s']:>10,.0f} CDR/s",
            f"pipeline/naive {f['pipeline_vs_naive']:.2f}x   pipeline/ceiling {f['pipeline_vs_ceiling']:.3f}",
            *(f"alert latency at {f[f'latency_rate{x}']:,.0f} CDR/s: p50 {f[f'alert_latency_p50_ms{x}']:.0f} ms, "
              f"p99 {f[f'alert_latency_p99_ms{x}']:.0f} ms ({f[f'latency_alerts{x}']} alerts)" for x in ("", "_quarter")),
            f"state: {f['bytes_per_user_month']:.0f} bytes per active user-month "
            f"(small run: {f['bytes_per_user_month_small']:.0f})",
            f"peak RSS {f['peak_rss_mib']:.0f} MiB",
            *(f"a user with {n:,} calls in the month (every rule, records as written, no broker): "
              f"{f[f'busy_{n}_us_per_cdr']:.0f} µs/CDR, {f[f'busy_{n}_written_per_cdr']:,.0f} B written/CDR, "
              f"largest record {f[f'busy_{n}_largest_record'] / 1024:,.1f} KiB, "
              f"state {f[f'busy_{n}_state_bytes'] / 1024:,.0f} KiB" for n in BUSY_CALLS),
            f"core compiled with mypyc: {'yes' if f['compiled'] else 'no (pure Python)'}",
        ])


def bench_settings(bootstrap: str, partitions: int, data_dir: Path, tag: str) -> Settings:
    return Settings(broker=f"kafka://{bootstrap}", app_id=f"bench-{tag}", topic_prefix=f"bench-{tag}-",
                    partitions=partitions, web_enabled=False, data_dir=data_dir)


LATENCY_USERS = 20_000


def _latency_cdr(n: int, base: datetime) -> tuple[str, dict[str, Any], bool]:
    """The ``n``-th CDR of the latency stream: the first four of every 50 are one user's overlapping
    calls (the 4th breaches simultaneous_calls), the rest ordinary calls of 20,000 users — as many
    as the throughput stream, so that "half load" means the same per-user work. (With 2,000 users,
    each user's last hours of calls grow by a call every 0.6 s: the engines' per-CDR work grows
    through the run and the worker falls behind at a third of its rate.)"""
    group, k = divmod(n, 50)
    if k < 4:
        user, start = f"lat{group:06d}", base + timedelta(minutes=k)
        end = base + timedelta(minutes=30)
    else:
        user, start = f"ok{n % LATENCY_USERS:05d}", base + timedelta(minutes=5 * (n // LATENCY_USERS))
        end = start + timedelta(seconds=65)
    cdr = cdr_payload("end", f"{user}-{n}", user, "lat", "+33140000000", f"+3314500{n % 10000:04d}", "outbound",
                      start.isoformat(), (start + timedelta(seconds=5)).isoformat(), end.isoformat(),
                      int((end - start).total_seconds()) - 5, "ANSWERED")
    return user, cdr, k == 3


LATENCY_LINGER_MS = 5


def _paced_producer(bootstrap: str, topic: str, rate: float, seconds: float, results: Any) -> None:
    """In its own process (the worker keeps its process to itself): produce the latency stream at
    ``rate`` CDR/s, then report when each breaching CDR was sent (CLOCK_MONOTONIC, system-wide)."""

    async def produce() -> dict[str, float]:
        # 5 ms of linger, as a switch's CDR exporter would batch: one produce request per
        # message would cost the broker more CPU than the worker gets on a small machine
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=LATENCY_LINGER_MS)
        await producer.start()
        sent_at: dict[str, float] = {}
        try:
            base = datetime.fromisoformat("2026-11-03T08:00:00+01:00")
            interval = 1.0 / rate
            started = time.monotonic()
            for n in range(int(rate * seconds)):
                user, cdr, breaching = _latency_cdr(n, base)
                if breaching:
                    sent_at[user] = time.monotonic()
                await producer.send(topic, key=user.encode(), value=orjson.dumps(cdr))
                delay = started + (n + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.flush()
        finally:
            await producer.stop()
        return sent_at

    results.put(asyncio.run(produce()))


async def measure_latency(bootstrap: str, partitions: int, data_dir: Path, rate: float, seconds: float,
                          guarantee: str | None = None) -> list[float]:
    """Produce at ``rate`` CDR/s of ordinary calls in which one user in 50 makes a 4th overlapping
    call: latency = the breaching CDR sent (by a producer in another process) → its alert handed to
    the producer of the worker. Both clocks are the system's monotonic clock. With a ``guarantee``
    (a comparison on Apache Kafka) the alert counts once a consumer of ``fairuse-alerts`` has it —
    ``read_committed`` under exactly_once, which sees it only when its transaction has committed."""
    import multiprocessing

    tag = uuid.uuid4().hex[:6]
    settings = bench_settings(bootstrap, partitions, data_dir / "latency", tag)
    if guarantee is not None:
        settings = settings.with_(processing_guarantee=guarantee)
    await create_topics(bootstrap, [settings.topic(t) for t in ALL_TOPICS], partitions)
    plans, rates = load_plans_and_rates(settings)
    pipeline = build_pipeline(settings, plans, rates)
    alerted_at: dict[str, float] = {}
    reader: asyncio.Task[None] | None = None
    if guarantee is None:
        def first_alert(topic: str, payload: dict[str, Any]) -> None:
            if topic == "fairuse-alerts":
                alerted_at.setdefault(payload["user"], time.monotonic())

        pipeline.on_output.append(first_alert)
    else:
        ready = asyncio.Event()
        reader = asyncio.create_task(_read_alerts(settings, alerted_at, ready))
        await asyncio.wait_for(ready.wait(), 60)
    pipeline.app.finalize()
    await pipeline.app.start()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    producer = context.Process(target=_paced_producer, args=(bootstrap, settings.topic("cdrs"), rate, seconds, results),
                               daemon=True)
    try:
        producer.start()
        loop = asyncio.get_running_loop()
        sent_at: dict[str, float] = await loop.run_in_executor(None, results.get, True, seconds + 120)
        deadline = time.monotonic() + 30
        while len(alerted_at.keys() & sent_at.keys()) < len(sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        producer.join(timeout=10)
        if producer.is_alive():
            producer.kill()
        results.close()
        results.join_thread()
        if reader is not None:
            reader.cancel()
        await pipeline.app.stop()
    return [(alerted_at[user] - sent) * 1000 for user, sent in sent_at.items() if user in alerted_at]


async def _read_alerts(settings: Settings, alerted_at: dict[str, float], ready: asyncio.Event) -> None:
    """When each user's first fair-use alert reaches a consumer (read_committed under exactly_once);
    ``ready`` once it reads every partition from its beginning."""
    isolation = "read_committed" if settings.processing_guarantee == "exactly_once" else "read_uncommitted"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False,
                                isolation_level=isolation, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        topic = settings.topic("fairuse-alerts")
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        for tp in parts:
            await consumer.position(tp)
        ready.set()
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.monotonic()
                for record in records:
                    alerted_at.setdefault(orjson.loads(record.value)["user"], now)
    finally:
        await consumer.stop()


async def run_bench(users: int, cdrs: int, partitions: int, report: Callable[[str], None]) -> BenchResult:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="cdrwatch-bench-") as tmp:
        data_dir = Path(tmp)
        figures: dict[str, Any] = {"users": users, "cdrs": cdrs, "partitions": partitions}
        report(f"generating {cdrs:,} CDRs for {users:,} users")
        stream = synthetic_stream(users, cdrs)
        tag = uuid.uuid4().hex[:6]
        settings = bench_settings(broker.bootstrap, partitions, data_dir / "pipeline", tag)
        report("producing the stream")
        await prefill(broker.bootstrap, settings, stream)

        report("ceiling: raw aiokafka + orjson")
        figures["ceiling_cdr_per_s"] = await measure_ceiling(broker.bootstrap, settings.topic("cdrs"), cdrs)
        report("naive Faust agent")
        figures["naive_cdr_per_s"] = await measure_naive(broker.bootstrap, settings.topic("cdrs"), cdrs, partitions,
                                                         data_dir / "naive")
        report("cdrwatch pipeline")
        rate, info = await measure_pipeline(settings, cdrs + users)
        figures["pipeline_cdr_per_s"] = rate
        figures["pipeline_vs_naive"] = rate / figures["naive_cdr_per_s"]
        figures["pipeline_vs_ceiling"] = rate / figures["ceiling_cdr_per_s"]
        figures["bytes_per_user_month"] = (info["period_state_bytes"] + info["users_state_bytes"]) / max(
            info["period_states"], 1)
        figures["state"] = info

        report("state at a smaller scale (slope)")
        small = max(users // 10, 100)
        small_stream = synthetic_stream(small, cdrs // 10, seed=2)
        tag2 = uuid.uuid4().hex[:6]
        s2 = bench_settings(broker.bootstrap, partitions, data_dir / "small", tag2)
        await create_topics(broker.bootstrap, [s2.topic(t) for t in ALL_TOPICS], partitions)
        await _produce(broker.bootstrap, s2.topic("cdrs"), small_stream.cdrs)
        _, info2 = await measure_pipeline(s2, len(small_stream.cdrs))
        figures["bytes_per_user_month_small"] = (info2["period_state_bytes"] + info2["users_state_bytes"]) / max(
            info2["period_states"], 1)

        # at half the pipeline's rate (the target's definition) and at a quarter: the producer and
        # the broker take their share of the machine while the worker runs
        for suffix, share in (("", 2), ("_quarter", 4)):
            latency_rate = max(rate / share, 100.0)
            report(f"alert latency at {latency_rate:,.0f} CDR/s")
            latencies = await measure_latency(broker.bootstrap, partitions, data_dir, latency_rate, seconds=10)
            figures[f"latency_rate{suffix}"] = latency_rate
            figures[f"latency_alerts{suffix}"] = len(latencies)
            figures[f"alert_latency_p50_ms{suffix}"] = statistics.median(latencies) if latencies else float("nan")
            figures[f"alert_latency_p99_ms{suffix}"] = (
                statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else float("nan"))
        figures["peak_rss_mib"] = peak_rss_mib()
        report("busy user: the engines on one user's month of calls")
        for n in BUSY_CALLS:
            for name, value in measure_busy_user(n).items():
                figures[f"busy_{n}_{name}"] = value
        figures["compiled"] = compiled()
        return BenchResult(figures)


async def run_guarantees(broker_url: str, users: int, cdrs: int, partitions: int,
                         report: Callable[[str], None]) -> BenchResult:
    """On an Apache Kafka: the pipeline's CDR/s and the alert latency (to a consumer of the alerts)
    under each processing guarantee, the same stream and the same paced rate for both."""
    bootstrap = Settings(broker=broker_url).bootstrap_servers()
    figures: dict[str, Any] = {"users": users, "cdrs": cdrs, "partitions": partitions, "broker": broker_url}
    report(f"generating {cdrs:,} CDRs for {users:,} users")
    stream = synthetic_stream(users, cdrs)
    with tempfile.TemporaryDirectory(prefix="cdrwatch-bench-") as tmp:
        for guarantee in PROCESSING_GUARANTEES:
            settings = bench_settings(bootstrap, partitions, Path(tmp) / guarantee, uuid.uuid4().hex[:6]).with_(
                processing_guarantee=guarantee)
            report(f"{guarantee}: producing the stream")
            await prefill(bootstrap, settings, stream)
            report(f"{guarantee}: cdrwatch pipeline")
            figures[f"{guarantee}_cdr_per_s"], _info = await measure_pipeline(settings, cdrs + users)
        # half the at-least-once rate for both: the same load, the cost of the transactions alone
        latency_rate = max(figures["at_least_once_cdr_per_s"] / 2, 100.0)
        figures["latency_rate"] = latency_rate
        for guarantee in PROCESSING_GUARANTEES:
            report(f"{guarantee}: alert latency at {latency_rate:,.0f} CDR/s")
            where = Path(tmp) / f"{guarantee}-latency"
            where.mkdir()
            latencies = await measure_latency(bootstrap, partitions, where, latency_rate, seconds=10, guarantee=guarantee)
            figures[f"{guarantee}_latency_alerts"] = len(latencies)
            figures[f"{guarantee}_alert_latency_p50_ms"] = statistics.median(latencies) if latencies else float("nan")
            figures[f"{guarantee}_alert_latency_p99_ms"] = (
                statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else float("nan"))
    figures["commit_interval_s"] = Settings().commit_interval_s
    figures["compiled"] = compiled()
    return BenchResult(figures)


def format_guarantees(f: dict[str, Any]) -> str:
    return "\n".join([
        f"stream: {f['cdrs']:,} CDRs, {f['users']:,} users, {f['partitions']} partitions ({f['broker']})",
        *(f"{g:<14} pipeline {f[f'{g}_cdr_per_s']:>8,.0f} CDR/s   alert latency to a consumer at "
          f"{f['latency_rate']:,.0f} CDR/s: p50 {f[f'{g}_alert_latency_p50_ms']:.0f} ms, "
          f"p99 {f[f'{g}_alert_latency_p99_ms']:.0f} ms ({f[f'{g}_latency_alerts']} alerts)" for g in PROCESSING_GUARANTEES),
        f"exactly_once/at_least_once throughput {f['exactly_once_cdr_per_s'] / f['at_least_once_cdr_per_s']:.2f}; "
        f"commit interval {f['commit_interval_s']:g} s",
        f"core compiled with mypyc: {'yes' if f['compiled'] else 'no (pure Python)'}",
    ])


def _health(port: int) -> dict[str, Any] | None:
    """A worker's ``/healthz`` (its partitions and records processed); None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            found: dict[str, Any] = orjson.loads(answer.read())
            return found
    except (OSError, ValueError):
        return None


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def measure_scale_out(settings: Settings, expected: int, workers: int, data_dir: Path, *,
                            broker_pid: int | None = None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """``workers`` ``cdrwatch worker`` processes (each its own data directory and web port) in one
    consumer group of their own, on ``settings``' pre-filled input topics of ``expected`` records.

    The clock starts when the group is settled — every worker holds partitions of ``cdrs``, each
    partition one owner (their ``/healthz``) — and stops when the group has committed every input
    offset; the records the workers processed before the start are left out of the rate. CPU
    seconds (``/proc``) of each worker, of the broker (``broker_pid``) and of the whole machine
    are counted over the same window."""
    group = settings.with_(app_id=f"{settings.app_id}-x{workers}-{uuid.uuid4().hex[:4]}", web_enabled=True)
    ends = await end_offsets(group, [group.topic(t) for t in INPUT_TOPICS])
    cdr_partitions = {tp.partition for tp in ends if tp.topic == group.topic("cdrs")}
    ports = [free_port() for _ in range(workers)]
    logs = [data_dir / f"{group.app_id}-{n}.log" for n in range(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout_s

    def check_running(what: str) -> None:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise RuntimeError(f"scale-out: a worker exited with code {proc.returncode}: {_log_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"scale-out, {workers} workers: {what} within {timeout_s:.0f} s\n{_log_tail(logs[0])}")

    try:
        for n, (port, log) in enumerate(zip(ports, logs)):
            where = data_dir / f"{group.app_id}-{n}"
            where.mkdir(parents=True)
            # the bench's settings, not the caller's CDRWATCH_STORE or guarantee: as the in-process pipeline
            env = {"CDRWATCH_STORE": group.store, "CDRWATCH_PROCESSING_GUARANTEE": group.processing_guarantee}
            procs.append(start_worker(group, where, web_port=port, env=env, log_path=log))
        first: float | None = None  # when a worker had processed its first record
        while True:
            health = await asyncio.gather(*(asyncio.to_thread(_health, port) for port in ports))
            if first is None and any(h and h["processed"] for h in health):
                first = time.perf_counter()
            owned = [set(h["partitions"].get("cdrs", [])) if h else set() for h in health]
            if all(owned) and sum(map(len, owned)) == len(cdr_partitions) == len(set().union(*owned)):
                break
            check_running("no settled group")
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        before = sum(int(h["processed"]) for h in health if h)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        broker0 = cpu_seconds(broker_pid) if broker_pid else 0.0
        busy0, total0 = machine_cpu_seconds()
        own0 = _own_cpu_seconds()
        while True:
            committed = await committed_offsets(group, list(ends))
            if all((committed[tp] or 0) >= end for tp, end in ends.items()):
                break
            check_running("the input not all committed")
            await asyncio.sleep(0.25)
        finished = time.perf_counter()
        seconds = finished - started
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0)]
        broker_cpu = cpu_seconds(broker_pid) - broker0 if broker_pid else None
        busy1, total1 = machine_cpu_seconds()
        own = _own_cpu_seconds() - own0
        after = await asyncio.gather(*(asyncio.to_thread(_health, port) for port in ports))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    return {
        "workers": workers, "group": group.app_id, "records": expected - before, "seconds": seconds,
        "cdr_per_s": (expected - before) / seconds, "processed_before_start": before,
        # the whole stream from the first record processed: the group's rebalance included
        "from_first_cdr_per_s": expected / (finished - (first or started)),
        "worker_cpu_s": cpu, "broker_cpu_s": broker_cpu,
        # the workers' cost per record, whatever share of the cores they got
        "records_per_worker_cpu_s": (expected - before) / max(sum(cpu), 1e-9),
        "machine_busy_cores": (busy1 - busy0) / seconds, "machine_cores": (total1 - total0) / seconds,
        # what the rest of the machine used meanwhile (other users' processes): not the workers,
        # the broker (embedded) or this process
        "others_cores": max(busy1 - busy0 - sum(cpu) - (broker_cpu or 0.0) - own, 0.0) / seconds,
        "partitions": [sorted(o) for o in owned],
        "processed": [int(h["processed"]) if h else None for h in after],
        "input_end_offsets": sum(ends.values()), "committed": sum(v or 0 for v in committed.values()),
    }


SCALE_OUT_WORKERS = (1, 2)


async def run_scale_out(broker_url: str | None, users: int, cdrs: int, partitions: int,
                        report: Callable[[str], None]) -> BenchResult:
    """The same pre-filled stream through 1, then 2 ``cdrwatch worker`` processes (a consumer group
    of their own each time), on the embedded broker or on ``broker_url``."""
    with contextlib.ExitStack() as stack:
        broker_pid = None
        if broker_url is None:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap, broker_pid = broker.bootstrap, broker.process.pid if broker.process else None
        else:
            bootstrap = Settings(broker=broker_url).bootstrap_servers()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cdrwatch-bench-")))
        figures: dict[str, Any] = {"users": users, "cdrs": cdrs, "partitions": partitions,
                                   "broker": broker_url or "embedded Tansu", "cpus": os.cpu_count()}
        report(f"generating {cdrs:,} CDRs for {users:,} users")
        stream = synthetic_stream(users, cdrs)
        settings = bench_settings(bootstrap, partitions, tmp, uuid.uuid4().hex[:6])
        report("producing the stream")
        await prefill(bootstrap, settings, stream)
        for n in SCALE_OUT_WORKERS:
            report(f"scale-out: {n} worker process{'es' if n > 1 else ''}")
            figures[f"scale_out_{n}"] = await measure_scale_out(settings, cdrs + users, n, tmp, broker_pid=broker_pid)
        one, two = (figures[f"scale_out_{n}"]["cdr_per_s"] for n in SCALE_OUT_WORKERS)
        figures["scale_out_ratio"] = two / one
        figures["commit_interval_s"] = Settings().commit_interval_s
        figures["compiled"] = compiled()
        return BenchResult(figures)


def format_scale_out(f: dict[str, Any]) -> str:
    one, two = f["scale_out_1"], f["scale_out_2"]

    def cpu(run: dict[str, Any]) -> str:
        return "[" + ", ".join(f"{s:.1f}" for s in run["worker_cpu_s"]) + "]"

    def detail(run: dict[str, Any]) -> str:
        broker = "" if run["broker_cpu_s"] is None else f", broker {run['broker_cpu_s']:.1f} CPU s"
        n = run["workers"]
        return (f"  {n} worker{'s' if n > 1 else ' '}: {run['records']:,} records in {run['seconds']:.1f} s, "
                f"partitions {run['partitions']} ({run['processed_before_start']:,} processed before the group "
                f"settled; from the first record {run['from_first_cdr_per_s']:,.0f} CDR/s)\n"
                f"             CPU s per worker {cpu(run)} ({run['records_per_worker_cpu_s']:,.0f} records per "
                f"worker CPU s){broker}, machine busy {run['machine_busy_cores']:.2f} of "
                f"{run['machine_cores']:.0f} cores ({run['others_cores']:.2f} by other processes)")

    return "\n".join([
        f"stream: {f['cdrs']:,} CDRs, {f['users']:,} users, {f['partitions']} partitions ({f['broker']}), "
        f"{f['cpus']} CPUs",
        f"scale-out: 1 worker {one['cdr_per_s']:,.0f} CDR/s, 2 workers {two['cdr_per_s']:,.0f} CDR/s "
        f"(Y/X = {f['scale_out_ratio']:.2f}), CPU s per worker {cpu(one)} / {cpu(two)}",
        detail(one), detail(two),
        f"core compiled with mypyc: {'yes' if f['compiled'] else 'no (pure Python)'}",
    ])


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench", description="Benchmark on the embedded broker, in one run: the raw aiokafka+orjson ceiling, the naive "
        "Faust program (one table write per event), and the full cdrwatch pipeline on the same generated stream; "
        "then p50/p99 alert latency at half the pipeline's rate, state bytes per active user-month at two scales, "
        "peak RSS, and for a user with 50 and with 500,000 calls in the month the rules' cost, the bytes written "
        "per CDR and the largest record. "
        "With --broker (an Apache Kafka): the pipeline's CDR/s and the alert latency to a consumer, at-least-once "
        "and exactly-once. With --scale-out (on the embedded broker, or on --broker): the stream through 1, then 2 "
        "`cdrwatch worker` processes in one consumer group, their CDR/s and CPU seconds (make bench runs all of them, "
        "the --broker ones on a one-node Kafka it starts).",
    )
    parser.add_argument("--broker", metavar="URL",
                        help="an Apache Kafka (kafka://host:port): compare the processing guarantees there")
    parser.add_argument("--peer", action="store_true",
                        help="with --broker: the quix-streams peer of the fair-use rules against cdrwatch "
                        "(fair-use only, and every rule) on one topic (streams/tools/bench_peer.py)")
    parser.add_argument("--users", type=positive_int, default=20_000, metavar="N", help="users of the stream (20,000)")
    parser.add_argument("--cdrs", type=positive_int, default=300_000, metavar="N", help="CDRs of the stream (300,000)")
    parser.add_argument("--partitions", type=positive_int, default=4, metavar="N", help="partitions per topic (4)")
    parser.add_argument("--scale-out", action="store_true",
                        help="instead: the stream through 1, then 2 `cdrwatch worker` processes in one consumer group "
                        "(CDR/s of each, their ratio, each worker's CPU seconds); on --broker when given")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out:
        output_file(args.out, "--out")
    def progress(line: str) -> None:
        print(f"... {line}", file=sys.stderr, flush=True)

    if args.peer and not args.broker:
        raise ConfigError("--peer runs on an Apache Kafka: give --broker kafka://host:port")
    if args.broker:
        try:
            broker = Settings(broker=args.broker)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        asyncio.run(check_broker(broker))
    if args.scale_out:
        result = asyncio.run(run_scale_out(args.broker, args.users, args.cdrs, args.partitions, progress))
        print(format_scale_out(result.figures))
    elif args.peer:
        from .bench_peer import format_peer, run_peer_bench

        result = BenchResult(asyncio.run(run_peer_bench(args.broker, args.users, args.cdrs, args.partitions, progress)))
        print(format_peer(result.figures))
    elif args.broker:
        result = asyncio.run(run_guarantees(args.broker, args.users, args.cdrs, args.partitions, progress))
        print(format_guarantees(result.figures))
    else:
        result = asyncio.run(run_bench(args.users, args.cdrs, args.partitions, progress))
        print(result.format())
    if args.out:
        args.out.write_bytes(orjson.dumps(result.figures, option=orjson.OPT_INDENT_2))
    return 0
