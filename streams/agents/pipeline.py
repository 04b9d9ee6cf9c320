"""The Faust shell around the processor: the worker's topics, tables and agents. Each batch of input
messages goes through ``streams.processor.Processor``; then its outputs are sent and acknowledged,
then each touched state is written once to its table's changelog, and only then are the offsets
committed (``streams.agents.batching``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
from aiokafka.partitioner import murmur2
from faust.stores.memory import Store as MemoryStore
from faust.types import EventT, Message

from ..codecs import encode
from ..core.plans import PlanBook
from ..core.rates import RateDeck
from ..metrics import Metrics
from ..core.state import FraudState
from ..processor import Outputs, Processor, build_processor
from ..settings import Settings
from ..topics import ALL_TOPICS, INPUT_TOPICS
from .batching import App as BatchApp
from .batching import PartitionContext, attach, consumer_of, read_marks, transactional_id
from .checkpoint import Checkpoint
from .tables import ChangelogWriter, TableCaches, TableStore

log = logging.getLogger(__name__)

IDLE_S = 2.0  # input quiet this long: the wall clock drives the live fraud rules


@dataclass(frozen=True)
class _ClockSource:
    """Where a recovered user's state is written when its live rules fire before its next event."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None = None
    offset: int = -1
    headers: tuple[()] = ()


OutputHook = Callable[[str, dict[str, Any]], None]


@dataclass
class Pipeline:
    """Everything one worker runs: the app, its topics and tables, the engine, the counters."""

    app: faust.App
    settings: Settings
    processor: Processor
    metrics: Metrics
    topics: dict[str, faust.TopicT]
    periods: Any
    users: Any
    subscribers: Any
    fraud_table: Any = None  # None: no plan has fraud rules
    agents: dict[str, Any] = field(default_factory=dict)
    processed: int = 0  # input messages fully handled (any outcome)
    restored: dict[str, int] = field(default_factory=dict)  # changelog records read back, per table
    on_output: list[OutputHook] = field(default_factory=list)
    caches: TableCaches = field(default_factory=TableCaches)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: asyncio.Event | None = None
    failure: BaseException | None = None  # what stopped the worker, if anything did
    started_at: float | None = None
    writer: ChangelogWriter = field(init=False)
    by_partition: bool | None = None  # whether a table's store reads the current event (RocksDB)
    last_input: float = field(default_factory=time.monotonic)  # when the newest batch arrived
    newest_read: tuple[int, int] = (-1, 0)  # the newest event time read, and the wall clock (ms) then
    last_cdr: dict[int, float] = field(default_factory=dict)  # input partition -> when it last handed over a CDR
    handed: dict[int, int] = field(default_factory=dict)  # cdrs partition -> the offset after the last handed over
    generation: int | None = None  # the consumer group generation the live rules' clock was resumed for

    def __post_init__(self) -> None:
        self.writer = ChangelogWriter(self.app, on_error=self._changelog_failed)

    def _changelog_failed(self, where: str, exc: BaseException) -> None:
        """A changelog batch the broker refused: the tables no longer match their changelogs, and
        a restart would restore older state under committed offsets. Stop the worker, loudly."""
        log.error("changelog write to %s failed (%r): stopping the worker", where, exc)
        topic = where.rpartition("/")[0]
        self.metrics.changelog_failure(topic.removeprefix(f"{self.app.conf.id}-").removesuffix("-changelog"))
        self.failed(exc)
        asyncio.ensure_future(self.app.crash(exc))

    def failed(self, exc: BaseException) -> None:
        """The worker stops: what stopped it, for whoever waits on its progress."""
        self.failure = exc
        if self.progress is not None:
            self.progress.set()

    def store(self) -> TableStore:
        return TableStore(self.periods, self.users, self.subscribers, self.caches, self.fraud_table,
                          self.settings.partitions)

    # -- handlers -----------------------------------------------------------------------------

    async def handle_batch(self, messages: list[Message], context: PartitionContext,
                           transaction_of: Callable[[Message], str] | None = None) -> None:
        """Apply a batch of input messages: the engine on each, then the outputs (delivered and
        acknowledged by the broker), then each touched state written once. With
        ``transaction_of`` (exactly_once) the messages of each input partition are applied apart,
        their outputs and state records sent into that partition's open transaction — all of the
        batch under the lock the commit takes, so that no transaction commits with part of it."""
        if self.started_at is None:
            self.started_at = time.perf_counter()  # the first batch begins (benchmarks time from here)
            gc.freeze()  # the state recovered so far is long-lived: out of the collector's way
        # stores that pick a database by the current event's partition (RocksDB) need it set
        by_partition = context if self._stores_by_partition() else None
        parts: dict[str | None, list[Message]] = {}
        if transaction_of is None:
            parts[None] = messages
        else:
            for message in messages:
                parts.setdefault(transaction_of(message), []).append(message)
        self.last_input = time.monotonic()
        async with self.lock:
            self._resume_clock()
            watermarks = None
            now, cdrs = time.monotonic(), self.settings.topic("cdrs")
            for message in messages:
                if message.topic == cdrs:
                    self.last_cdr[message.partition] = now
                    if message.offset >= self.handed.get(message.partition, 0):
                        self.handed[message.partition] = message.offset + 1
            for transactional_id, part in parts.items():
                store = self.store()
                out = Outputs()
                for message in part:
                    store.source = message
                    if by_partition is not None:
                        by_partition.enter(message)
                    self.processor.process(self._base_topic(message.topic), message, store, out)
                if self.fraud_table is not None:
                    watermarks = self.watermarks() if watermarks is None else watermarks
                    self._advance(watermarks, store, out, by_partition,
                                  None if transactional_id is None else {m.partition for m in part})
                await self._complete(store, out, transactional_id, by_partition)
            newest = max(self.processor.read_ms.values(), default=-1)
            if newest > self.newest_read[0]:
                self.newest_read = (newest, int(time.time() * 1000))
        self.processed += len(messages)
        if self.progress is not None:
            self.progress.set()

    # -- the live fraud rules' clock ---------------------------------------------------------

    def watermarks(self, idle: bool = False) -> dict[int, int]:
        """Per input partition this worker owns (a user's ``cdrs`` and ``sip-registrations`` share
        it): the event time up to which its users' live fraud rules may be evaluated — as far as
        its ``cdrs`` have been read, the only input those rules look at. A partition that has
        caught up with the broker (a fetch answered within ``IDLE_S``, and every record it had
        handed over) and handed over no CDR for ``IDLE_S`` does not hold its users
        back: they go as far as any input partition has been read — and, ``idle`` (nothing
        arrived for ``IDLE_S``), that far moved on by the wall-clock time since it was read (a
        recording replayed weeks later moves on by the seconds waited, not to today)."""
        read = self.processor.read_ms
        newest = max(read.values(), default=-1)
        wall = int(time.time() * 1000)
        if idle and newest >= 0:
            at, read_at = self.newest_read
            newest = max(newest, min(wall, at + wall - read_at))
        quiet_since = time.monotonic() - IDLE_S
        cdrs = self.settings.topic("cdrs")
        marks: dict[int, int] = {}
        for tp, (position, mark, fetched_at) in read_marks(self.app).items():
            if tp.topic != cdrs:
                continue
            # caught up: a fetch answered lately (its leader is up), and every record the broker
            # had then has been handed over here
            handed = self.handed.get(tp.partition, position)
            done = (handed is not None and mark is not None and handed >= mark
                    and wall - fetched_at <= IDLE_S * 1000)
            own = read.get(("cdrs", tp.partition), -1)
            quiet = self.last_cdr.get(tp.partition, 0.0) <= quiet_since
            marks[tp.partition] = max(own, newest) if done and quiet else own
        return marks

    def _advance(self, until: dict[int, int], store: TableStore, out: Outputs, context: PartitionContext | None,
                 partitions: set[int] | None) -> None:
        def enter(message: Any) -> None:
            store.source = message
            if context is not None:
                context.enter(message)

        self.processor.advance(until, store, out, enter, partitions)

    def _resume_clock(self) -> None:
        """After an assignment: the users of the recovered fraud table with calls still open go
        back on the live rules' clock (the clock itself is not kept in the table)."""
        consumer = consumer_of(self.app)
        generation = getattr(self.app, "consumer_generation_id", None)
        if self.fraud_table is None or consumer is None or generation == self.generation:
            return
        self.generation = generation
        owned = {tp.partition for tp in read_marks(self.app)}
        self.processor.forget(set(range(self.settings.partitions)) - owned)
        self.handed.clear()  # read again from the committed offsets
        topic = self.settings.topic("cdrs")
        for key, raw in list(self.fraud_table.data.items()):
            if key.startswith(b"\x00") or raw is None:
                continue
            partition = (murmur2(key) & 0x7FFFFFFF) % self.settings.partitions  # the producers' partitioner
            if partition not in owned:
                continue
            self.processor.resume(key.decode(), FraudState.decode(raw), _ClockSource(topic, partition, key))

    async def tick(self, _app: Any = None) -> None:
        """Every second (a Faust timer, which may pass the app): when input is idle, the wall
        clock drives the live rules."""
        if self.fraud_table is None or self.started_at is None:
            return
        if time.monotonic() - self.last_input < IDLE_S or self.processor.pending() == 0:
            return
        async with self.lock:
            until = self.watermarks(idle=True)
            by_partition = PartitionContext(self.app) if self._stores_by_partition() else None
            groups: list[tuple[str | None, set[int] | None]] = [(None, None)]
            if self.app.in_transaction:
                cdrs = self.settings.topic("cdrs")
                groups = [(transactional_id(self.app, cdrs, p), {p}) for p in {tp.partition for tp in read_marks(self.app)}]
            for tid, partitions in groups:
                store = self.store()
                out = Outputs()
                self._advance(until, store, out, by_partition, partitions)
                await self._complete(store, out, tid, by_partition)

    async def _complete(self, store: TableStore, out: Outputs, transactional_id: str | None,
                        context: PartitionContext | None) -> None:
        """Send the outputs, then write the states (in the open transaction, if any), then count."""
        try:
            await self._deliver(out, transactional_id)
            self.writer.transactional_id = transactional_id
            await store.write(self.writer, context)
        except BaseException:
            store.discard()
            raise
        self.metrics.report(out)

    def _stores_by_partition(self) -> bool:
        if self.by_partition is None:
            tables = [t for t in (self.periods, self.users, self.subscribers, self.fraud_table) if t is not None]
            self.by_partition = not all(isinstance(t.data, MemoryStore) for t in tables)
        return self.by_partition

    async def _deliver(self, out: Outputs, transactional_id: str | None = None) -> None:
        """Send the batch's outputs and wait until the broker has them all (in the open
        transaction ``transactional_id`` if one is given)."""
        pending: list[Awaitable[Any]] = []
        for alert in out.alerts:
            pending.append(await self._send("fairuse-alerts", alert.user.encode(), alert.payload(), transactional_id))
            log.info("ALERT %s user=%s period=%s observed=%s limit=%s", alert.rule, alert.user, alert.period,
                     alert.observed, alert.limit)
        for line in out.lines:
            pending.append(await self._send("rebilled-calls", line.user.encode(), line.payload(), transactional_id))
        for fraud in out.fraud_alerts:
            pending.append(await self._send("fraud-alerts", fraud.user.encode(), fraud.payload(), transactional_id))
            log.info("FRAUD %s %s user=%s observed=%s", fraud.level, fraud.rule, fraud.user, fraud.observed)
        for action in out.actions:
            pending.append(await self._send("account-actions", action.user.encode(), action.payload(), transactional_id))
        for topic, key, value, headers in out.sends:
            pending.append(await self._send_raw(topic, key, value, headers, transactional_id))
        if pending:
            await asyncio.gather(*pending)

    async def _send(self, topic: str, key: bytes, payload: dict[str, Any], transactional_id: str | None) -> Awaitable[Any]:
        for hook in self.on_output:
            hook(topic, payload)
        return await self._send_raw(topic, key, encode(payload), None, transactional_id)

    async def _send_raw(self, topic: str, key: bytes | None, value: bytes | None,
                        headers: list[tuple[str, bytes]] | None, transactional_id: str | None) -> Awaitable[Any]:
        if transactional_id is None:
            return await self.topics[topic].send(key=key, value=value, headers=headers, force=True)
        # Faust's own transactional send picks the transaction by the output's partition; the
        # batch's input partition is the one whose offsets commit with it
        return await self.app.producer.send(self.topics[topic].get_topic_name(), key, value, None, None, headers,
                                            transactional_id=transactional_id)

    def _base_topic(self, name: str) -> str:
        prefix = self.settings.topic_prefix
        return name[len(prefix):] if prefix and name.startswith(prefix) else name


def build_pipeline(settings: Settings, plans: PlanBook, rates: RateDeck, app: BatchApp | None = None) -> Pipeline:
    from ..app import MAX_RECORD_BYTES, create_app

    if app is None:
        app = create_app(settings)
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    topics = {name: app.topic(settings.topic(name), partitions=settings.partitions, **raw) for name in ALL_TOPICS}
    restored: dict[str, int] = {}

    def counter(name: str) -> Callable[[EventT[Any]], Awaitable[None]]:
        async def on_changelog_event(_event: EventT[Any]) -> None:
            restored[name] = restored.get(name, 0) + 1

        return on_changelog_event

    def table(name: str, help: str) -> Any:
        # bytes key and value types give the changelog the raw serializer
        return app.Table(name, help=help, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                         default=None, on_changelog_event=counter(name),
                         extra_topic_configs={"max.message.bytes": str(MAX_RECORD_BYTES)})

    periods = table("periods", "PeriodState per user|YYYY-MM")
    users = table("users", "UserState (SIP bindings, watermark) per user")
    subscribers = table("subscribers", "plan name per user")
    processor = build_processor(settings, plans, rates)
    fraud_table = table("fraud", "FraudState per user") if processor.fraud is not None else None
    metrics = Metrics()
    metrics.declare(INPUT_TOPICS)
    pipeline = Pipeline(
        app=app, settings=settings, processor=processor, metrics=metrics, topics=topics,
        periods=periods, users=users, subscribers=subscribers, restored=restored, fraud_table=fraud_table,
    )

    # The agents subscribe the worker to its input topics and own the tables' partitions; the
    # batching consumer (streams.agents.batching) hands their messages to handle_batch instead.
    # Should an event reach an agent all the same, it takes the same path, as a batch of one.
    # Concurrency stays 1: with more, Faust can commit past an in-flight message (faust-streaming #606).
    context = PartitionContext(app)

    async def process(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await pipeline.handle_batch([event.message], context)

    for name, agent_name in (("cdrs", "cdrs"), ("sip-registrations", "registrations"), ("subscribers", "subscribers"),
                             ("fraud-feedback", "feedback")):
        pipeline.agents[name] = app.agent(topics[name], name=agent_name)(process)

    def transaction_of(message: Message) -> str:
        return transactional_id(app, message.topic, message.partition)

    async def run_batch(messages: list[Message]) -> None:
        # exactly_once: a transaction per input partition (its outputs, state and offsets)
        await pipeline.handle_batch(messages, context, transaction_of if app.in_transaction else None)

    attach(app, frozenset(settings.topic(t) for t in INPUT_TOPICS), run_batch)
    if fraud_table is not None:
        app.timer(1.0, name="cdrwatch.live_rules_clock")(pipeline.tick)
    app.cdrwatch_checkpoint = Checkpoint(app.producer.flush, pipeline.writer.drain)  # type: ignore[attr-defined]
    app.cdrwatch_batch_lock = pipeline.lock  # type: ignore[attr-defined]
    app.cdrwatch_failure = pipeline.failed  # type: ignore[attr-defined]
    from ..web import (
        install_views,  # metrics and web views: /metrics, /healthz, /users/{user}/usage, /alerts
    )

    install_views(app, pipeline)
    return pipeline


__all__ = ["Pipeline", "build_pipeline"]
