"""Replaying recorded streams through a real broker and a real worker, and collecting the outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ..agents.batching import refresh_metadata
from ..agents.pipeline import Pipeline, build_pipeline
from ..processor import Outputs, Replayed, build_processor
from ..settings import load_plans_and_rates
from ..core.summary import SummaryRow, summary_rows
from ..core.state import MemoryStore, PeriodState
from .embedded import EmbeddedBroker, create_topics, true_end_offsets
from .inputs import InputError, InputFile, InputMessage, InputStream, event_time, message, read_stream
from .reports import write_summary
from ..settings import Settings
from ..topics import (ALL_TOPICS, CHUNK_PREFIX, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TOPICS, INPUT_TOPICS,
                      OUTPUT_TOPICS, period_reader)

log = logging.getLogger(__name__)


END_OF_TIME = 2**62  # event time (ms) past any input: what is left on the live rules' clock runs out


# the inputs' names, re-exported from .inputs: callers and tests import them from here too
__all__ = ["InputError", "InputFile", "InputMessage", "InputStream", "read_stream"]

Inputs = Iterable[InputMessage]  # an InputStream (in event-time order already), or messages in any order
_message = message


def in_event_order(inputs: Inputs) -> InputStream | list[InputMessage]:
    """``inputs`` in event-time order: an ``InputStream`` merges its files as it is read; other
    messages (a list a test built) are sorted, stably."""
    if isinstance(inputs, InputStream):
        return inputs
    return sorted(inputs, key=event_time)


@dataclass
class ReplayResult:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    rebills: list[dict[str, Any]] = field(default_factory=list)
    fraud_alerts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    summary: list[SummaryRow] | None = None  # None: external workers (their tables are not here)
    timezone: str = "UTC"
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    sent: int = 0
    seconds: float = 0.0

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out_dir / "alerts.jsonl", self.alerts)
        _write_jsonl(out_dir / "rebills.jsonl", self.rebills)
        _write_jsonl(out_dir / "fraud-alerts.jsonl", self.fraud_alerts)
        _write_jsonl(out_dir / "account-actions.jsonl", self.actions)
        _write_jsonl(out_dir / "dlq.jsonl", self.dlq)
        if self.summary is not None:
            write_summary(self.summary, out_dir / "summary.parquet", self.timezone)


def run_offline(settings: Settings, messages: Inputs,
                report: Callable[[str], None] | None = None) -> tuple[MemoryStore, dict[tuple[str, str], int]]:
    """The worker's processor without Kafka, in event-time order: the `summary` command and a
    reference for tests (the streaming result must match it). The counts are per (topic, outcome).
    ``report``: progress every 2 s."""
    processor = build_processor(settings, *load_plans_and_rates(settings), partitions=1)
    store, out = MemoryStore(), Outputs()
    ordered = in_event_order(messages)
    progress = Progress("processed", len(ordered), report) if report else None
    counts: dict[tuple[str, str], int] = {}
    n = -1
    for n, msg in enumerate(ordered):
        if msg.time_ms not in (float("inf"), float("-inf")):
            processor.advance(int(msg.time_ms) - 1, store, out)  # every earlier event is read
        processor.process(msg.topic, Replayed(msg.topic, msg.key, msg.value, 0, n), store, out)
        if n % 1000 == 0:
            _drain(out, counts)
            if progress is not None:
                progress(n)
    processor.advance(END_OF_TIME, store, out)  # the input has ended: time runs on
    _drain(out, counts)
    if progress is not None:
        progress(n + 1)
    return store, counts


def _drain(out: Outputs, counts: dict[tuple[str, str], int]) -> None:
    """Count the outcomes of the messages processed so far and drop what they emitted. Nobody
    sends it offline: kept, the emitted lines and each message's decoded event (``applied``, for
    the worker's metrics, with the message's bytes) would grow with the month."""
    for key in out.counts:
        counts[key] = counts.get(key, 0) + 1
    for emitted in (out.alerts, out.lines, out.fraud_alerts, out.actions, out.sends, out.counts, out.applied):
        emitted.clear()


def table_states(table: Any) -> list[tuple[str, str, PeriodState]]:
    """Every period state a worker holds (all partitions are local in a single-worker replay)."""
    states = []
    for key, raw in table.items():
        if key.startswith(CHUNK_PREFIX):  # a sealed chunk of a month's log, read with its head
            continue
        user, _, period = key.decode().rpartition("|")
        states.append((user, period, PeriodState.decode(raw, period_reader(table, key))))
    return states


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)


@contextlib.asynccontextmanager
async def broker_for(settings: Settings, broker_url: str | None) -> AsyncIterator[Settings]:
    """The given broker, or an embedded one for the duration of the block."""
    if broker_url:
        yield settings.with_(broker=broker_url)
        return
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        yield settings.with_(broker=broker.url)
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


@contextlib.asynccontextmanager
async def _scratch_dir() -> AsyncIterator[Path]:
    """A data directory for a worker whose state lives only as long as the run (memory store)."""
    with tempfile.TemporaryDirectory(prefix="cdrwatch-worker-") as tmp:
        yield Path(tmp)


async def produce(settings: Settings, messages: Iterable[InputMessage],
                  progress: Callable[[int], None] | None = None, speed: float | None = None) -> int:
    """Send ``messages`` in order; return how many. With ``speed``, event time is played ``speed``
    times faster than real time (60: one hour of traffic per minute), from the earliest event of a
    list, or the first of a stream (in event-time order); without, as fast as the broker takes them.

    ``messages`` is read as it is sent (an ``InputStream`` is never held whole): at most 2,000
    sends are in flight before the producer waits for their acknowledgements."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **settings.client_kwargs())
    await producer.start()
    first_ms: float | None = None
    if isinstance(messages, Sequence):
        timed = [m.time_ms for m in messages if m.time_ms not in (float("inf"), float("-inf"))]
        first_ms = min(timed) if timed else 0.0
    started = time.monotonic()
    n = 0
    try:
        batch: list[asyncio.Future[Any]] = []
        for n, msg in enumerate(messages, start=1):
            if speed and msg.time_ms not in (float("inf"), float("-inf")):
                if first_ms is None:
                    first_ms = msg.time_ms
                due = (msg.time_ms - first_ms) / 1000 / speed - (time.monotonic() - started)
                if due > 0:
                    await asyncio.gather(*batch)  # what is due now is on the wire before we wait
                    batch.clear()
                    await asyncio.sleep(due)
            batch.append(await producer.send(settings.topic(msg.topic), key=msg.key, value=msg.value))
            if len(batch) >= 2000 or (speed and progress and n % 500 == 0):
                await asyncio.gather(*batch)
                batch.clear()
                if progress:
                    progress(n)
        await asyncio.gather(*batch)
        if progress:
            progress(n)
    finally:
        await producer.stop()
    return n


async def collect(settings: Settings, expected: Callable[[], dict[str, int]],
                  done: Callable[[bool], bool], timeout_s: float,
                  start: Mapping[TopicPartition, int] | None = None) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Read output and DLQ topics (from ``start``, else the beginning) until ``expected`` counts are
    reached and ``done(got_nothing_this_poll)`` holds; outputs are de-duplicated by id.
    The broker's end offsets are not trusted (Tansu under-reports them)."""
    names = [settings.topic(t) for t in OUTPUT_TOPICS + DLQ_TOPICS]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **settings.client_kwargs())
    await consumer.start()
    got: dict[str, dict[str, tuple[dict[str, Any], Any]]] = {t: {} for t in OUTPUT_TOPICS + DLQ_TOPICS}
    try:
        parts = await _partitions(consumer, names)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        for tp, offset in (start or {}).items():
            if tp in parts:
                consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                base = tp.topic[len(settings.topic_prefix):]
                for rec in records:
                    if base in DLQ_TOPICS:
                        headers = dict(rec.headers or ())
                        row = {
                            "topic": base[: -len("-dlq")],
                            "reason": headers.get(DLQ_REASON_HEADER, b"").decode(errors="replace"),
                            "source": headers.get(DLQ_SOURCE_HEADER, b"").decode(errors="replace"),
                            "value": (rec.value or b"").decode("utf-8", errors="replace"),
                        }
                        got[base][f"{tp.partition}/{rec.offset}"] = (row, rec)
                    else:
                        payload = orjson.loads(rec.value)
                        ident = payload.get("alert_id") or payload.get("line_id") or payload.get("action_id")
                        got[base][ident] = (payload, rec)
            want = expected()
            if done(not batches) and all(len(got[t]) >= want.get(t, 0) for t in got):
                break
            if time.monotonic() > deadline:
                have = {t: len(v) for t, v in got.items()}
                raise TimeoutError(f"outputs incomplete after {timeout_s:.0f} s: have {have}, expected {want}")
    finally:
        await consumer.stop()
    return {t: list(v.values()) for t, v in got.items()}


async def replay(
    settings: Settings,
    inputs: Inputs,
    *,
    broker_url: str | None = None,
    timeout_s: float = 600.0,
    report: Callable[[str], None] | None = None,
    on_pipeline: Callable[[Pipeline], None] | None = None,
    speed: float | None = None,
    live_until_ms: int | None = None,
) -> ReplayResult:
    """Run ``inputs`` through a broker and an in-process worker; return everything it emitted.
    ``live_until_ms``: keep the worker up until that wall-clock instant, so that the live fraud
    rules due by then fire on time (a live feed, rather than a recording)."""
    plans, rates = load_plans_and_rates(settings)
    started = time.monotonic()
    async with broker_for(settings, broker_url) as run_settings, _scratch_dir() as scratch:
        run_settings = run_settings.with_(data_dir=scratch)
        if broker_url:  # a shared broker: isolate this run's topics and consumer group
            tag = uuid.uuid4().hex[:8]
            run_settings = run_settings.with_(topic_prefix=f"replay-{tag}-", app_id=f"cdrwatch-replay-{tag}")
        await create_topics(run_settings.client_kwargs(), [run_settings.topic(t) for t in ALL_TOPICS],
                            run_settings.partitions, replication_factor=run_settings.replication_factor)
        pipeline = build_pipeline(run_settings.with_(web_enabled=False), plans, rates)
        sent_outputs: dict[str, set[str]] = {t: set() for t in OUTPUT_TOPICS}
        pipeline.on_output.append(
            lambda topic, p: sent_outputs[topic].add(str(p.get("alert_id") or p.get("line_id") or p.get("action_id")))
        )
        if on_pipeline:
            on_pipeline(pipeline)
        app = pipeline.app
        app.finalize()
        await app.start()
        try:
            # subscriber records are consumed by their own agent: let them land before any event
            subscribers, rest, n_rest = _split_subscribers(inputs)
            total = await produce(run_settings, subscribers)
            await _wait_processed(pipeline, total, timeout_s, None)
            total += await produce(run_settings, rest, _produce_progress(n_rest, report), speed)
            await _wait_processed(pipeline, total, timeout_s, report)
            await _wait_clock(pipeline, timeout_s, live_until_ms)

            def expected() -> dict[str, int]:
                want = {t: len(ids) for t, ids in sent_outputs.items()}
                for topic in INPUT_TOPICS:
                    want[f"{topic}-dlq"] = pipeline.metrics.counts.get((topic, "dlq"), 0)
                return want

            got = await collect(run_settings, expected, lambda _quiet: True, timeout_s)
            summary = summary_rows(table_states(pipeline.periods), plans, rates)
        finally:
            await app.stop()
    result = ReplayResult(sent=total, counts=dict(pipeline.metrics.counts), seconds=time.monotonic() - started,
                          summary=summary, timezone=plans.timezone.key)
    _fill(result, got, inputs)
    return result


def _split_subscribers(inputs: Inputs) -> tuple[Iterable[InputMessage], Iterable[InputMessage], int]:
    """The subscriber records, and the other messages with their count, each in event-time order."""
    if isinstance(inputs, InputStream):
        others = [f.topic for f in inputs.files if f.topic != "subscribers"]
        return inputs.select(["subscribers"]), inputs.select(others), len(inputs) - inputs.count("subscribers")
    ordered = sorted(inputs, key=event_time)
    rest = [m for m in ordered if m.topic != "subscribers"]
    return [m for m in ordered if m.topic == "subscribers"], rest, len(rest)


async def _wait_processed(pipeline: Pipeline, total: int, timeout_s: float, report: Callable[[str], None] | None) -> None:
    """Until every input message has been handled; progress every 2 s on long replays."""
    pipeline.progress = asyncio.Event()
    started = last_report = time.monotonic()
    first = pipeline.processed
    last_count, last_change = -1, started
    while True:
        target = total + pipeline.metrics.counts.get(("cdrs", "rekeyed"), 0) + pipeline.metrics.counts.get(
            ("sip-registrations", "rekeyed"), 0
        )
        if pipeline.failure is not None:
            raise RuntimeError(f"the worker stopped: {pipeline.failure!r}") from pipeline.failure
        if pipeline.processed >= target:
            return
        now = time.monotonic()
        if pipeline.processed != last_count:
            last_count, last_change = pipeline.processed, now
        elif now - last_change > min(timeout_s, 120.0):
            raise TimeoutError(f"worker stalled: {pipeline.processed} of {target} messages processed")
        if report and now - last_report >= 2.0:
            rate = (pipeline.processed - first) / max(now - started, 1e-9)
            report(f"processed {pipeline.processed:,}/{target:,} messages ({rate:,.0f}/s)")
            last_report = now
        pipeline.progress.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(pipeline.progress.wait(), 0.5)


async def _wait_clock(pipeline: Pipeline, timeout_s: float, until_ms: int | None = None) -> None:
    """Until the live fraud rules have been evaluated up to now (or up to ``until_ms``, wall clock):
    once input is idle, the worker's clock runs on, and a call still open fires when its threshold
    is crossed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        due, now = pipeline.processor.next_due(), time.time() * 1000
        if (until_ms is None or now >= until_ms) and (due is None or due > now):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the live fraud rules' clock did not catch up with the wall clock")


def _produce_progress(total: int, report: Callable[[str], None] | None) -> Callable[[int], None] | None:
    """Progress of the sending phase, at most every 2 s (long replays spend minutes there)."""
    return None if report is None else Progress("sent", total, report)


class Progress:
    """``report``s "<verb> n/total messages (rate/s)" at most every 2 s, and at the last one."""

    def __init__(self, verb: str, total: int, report: Callable[[str], None] | None) -> None:
        self.verb, self.total, self.report = verb, total, report
        self.started = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.report is not None and (now - self.last >= 2.0 or done == self.total):
            rate = done / max(now - self.started, 1e-9)
            self.report(f"{self.verb} {done:,}/{self.total:,} messages ({rate:,.0f}/s)")
            self.last = now


def final_figures(messages: int, seconds: float) -> str:
    """The closing line of a replay or a summary: throughput, and this process's peak resident
    memory (the embedded broker runs in a process of its own)."""
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rate = messages / max(seconds, 1e-9)
    return f"{messages:,} messages in {seconds:.1f} s ({rate:,.0f} messages/s), peak RSS {peak_kib / 1024:,.0f} MiB"


def stderr_report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    parts = []
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        if not found:
            await refresh_metadata(consumer)
            found = consumer.partitions_for_topic(topic) or {0}
        parts += [TopicPartition(topic, p) for p in sorted(found)]
    return parts


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.client_kwargs())
    await consumer.start()
    try:
        parts = await _partitions(consumer, topics)
        reported = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
    fixed = await true_end_offsets(settings.client_kwargs(), reported)
    return {tp: int(off or 0) for tp, off in fixed.items()}


async def committed_offsets(settings: Settings, tps: list[TopicPartition],
                            **admin_kwargs: Any) -> dict[TopicPartition, int | None]:
    """The workers' consumer group's (the Faust app id's) committed offset of each of ``tps``; None
    where it has committed none."""
    admin = AIOKafkaAdminClient(**admin_kwargs, **settings.client_kwargs())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
    finally:
        await admin.close()
    return {tp: meta.offset if meta is not None and meta.offset >= 0 else None
            for tp in tps for meta in [committed.get(tp)]}


async def group_lag(settings: Settings, topics: list[str]) -> int:
    """Messages of ``topics`` the workers' consumer group (the Faust app id) has not committed."""
    ends = await end_offsets(settings, topics)
    committed = await committed_offsets(settings, list(ends))
    return sum(max(end - (committed[tp] or 0), 0) for tp, end in ends.items())


async def replay_external(settings: Settings, inputs: Inputs, *, timeout_s: float = 600.0,
                          quiet_s: float = 3.0, report: Callable[[str], None] | None = None,
                          speed: float | None = None) -> ReplayResult:
    """Produce ``inputs`` into a running deployment and collect what its workers emit.

    Done when the workers' consumer group has no lag on the input topics and the output topics
    have been quiet for ``quiet_s``. Outputs are read from where they ended before the input was
    sent, and de-duplicated by id (consumption is at-least-once)."""
    started = time.monotonic()
    outputs = [settings.topic(t) for t in OUTPUT_TOPICS + DLQ_TOPICS]
    inputs_topics = [settings.topic(t) for t in INPUT_TOPICS]
    await create_topics(settings.client_kwargs(), [settings.topic(t) for t in ALL_TOPICS], settings.partitions,
                        replication_factor=settings.replication_factor)
    before = await end_offsets(settings, outputs)
    ordered = in_event_order(inputs)
    total = await produce(settings, ordered, _produce_progress(len(ordered), report), speed)
    state = {"lag": -1, "checked": 0.0, "quiet_since": time.monotonic()}

    def done(got_nothing: bool) -> bool:
        now = time.monotonic()
        if not got_nothing:
            state["quiet_since"] = now
        return state["lag"] == 0 and now - state["quiet_since"] >= quiet_s

    async def watch_lag() -> None:
        while True:
            state["lag"] = await group_lag(settings, inputs_topics)
            if report:
                report(f"consumer group {settings.app_id}: lag {state['lag']}")
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch_lag())
    try:
        got = await collect(settings, lambda: {}, done, timeout_s, start=before)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    result = ReplayResult(sent=total, seconds=time.monotonic() - started)
    _fill(result, got, inputs)
    return result


def _fill(result: ReplayResult, got: dict[str, list[tuple[dict[str, Any], Any]]],
          inputs: Iterable[InputMessage] = ()) -> None:
    """The collected outputs, in a stable order for files that diff well; each DLQ row also says
    where its message was read (``input``: file and line): the inputs are read again for it (a
    stream from its files), only when something was rejected."""
    result.alerts = sorted((p for p, _ in got["fairuse-alerts"]), key=lambda a: (a["time"], a["user"], a["rule"]))
    result.rebills = sorted(
        (p for p, _ in got["rebilled-calls"]), key=lambda r: (r["period"], r["user"], r["call_id"], r["multiplier"])
    )
    result.fraud_alerts = sorted((p for p, _ in got["fraud-alerts"]), key=lambda a: (a["time"], a["user"], a["alert_id"]))
    result.actions = sorted((p for p, _ in got["account-actions"]), key=lambda a: (a["time"], a["user"], a["action_id"]))
    result.dlq = [row for t in DLQ_TOPICS for row, _ in got[t]]
    if not result.dlq:
        return
    rejected = {(row["topic"], row["value"]) for row in result.dlq}
    origins: dict[tuple[str, str], list[str]] = {}
    for msg in inputs:
        found = (msg.topic, (msg.value or b"").decode("utf-8", errors="replace"))
        if msg.origin and found in rejected:
            origins.setdefault(found, []).append(msg.origin)
    for row in result.dlq:
        row["input"] = ", ".join(origins.get((row["topic"], row["value"]), []))
