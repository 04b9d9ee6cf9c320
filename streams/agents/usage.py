"""Thin Faust agents: read ``cdrs``, ``sip-registrations``, ``subscribers`` and ``fraud-feedback``, call the core,
write tables and the output topics. Bad messages go to ``<topic>-dlq`` with a reason header."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
from faust.stores.memory import Store as MemoryStore
from faust.types import EventT, Message

from ..codecs import (
    decode_cdr,
    decode_feedback,
    decode_key,
    decode_registration,
    decode_subscriber,
    encode,
)
from ..config import build_engine, build_fraud_engine
from ..core.errors import InvalidRecord
from ..core.fraud import AccountAction, FraudAlert, FraudEngine
from ..core.plans import PlanBook
from ..core.rates import RateDeck
from ..core.records import Alert, CallEvent, RebillLine
from ..core.usage import UsageEngine
from ..metrics import Metrics
from ..settings import Settings
from ..topics import ALL_TOPICS, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TOPICS, INPUT_TOPICS, OUTPUT_TOPICS
from .batching import App as BatchApp
from .batching import PartitionContext, attach, transactional_id
from .checkpoint import Checkpoint
from .store import ChangelogWriter, TableCaches, TableStore

log = logging.getLogger(__name__)


OutputHook = Callable[[str, dict[str, Any]], None]


@dataclass
class Pipeline:
    """Everything one worker runs: the app, its topics and tables, the engine, the counters."""

    app: faust.App
    settings: Settings
    engine: UsageEngine
    metrics: Metrics
    topics: dict[str, faust.TopicT]
    periods: Any
    users: Any
    subscribers: Any
    fraud: FraudEngine | None = None  # None: no plan has fraud rules
    fraud_table: Any = None
    agents: dict[str, Any] = field(default_factory=dict)
    processed: int = 0  # input messages fully handled (any outcome)
    restored: dict[str, int] = field(default_factory=dict)  # changelog records read back, per table
    on_output: list[OutputHook] = field(default_factory=list)
    caches: TableCaches = field(default_factory=TableCaches)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: asyncio.Event | None = None
    failure: BaseException | None = None  # what stopped the worker, if anything did
    started_at: float | None = None
    # per input partition: the newest event time of a CDR applied from it (the topics are
    # co-partitioned by user). A REGISTER values its user's open calls no further than this.
    calls_read_ms: dict[int, int] = field(default_factory=dict)
    writer: ChangelogWriter = field(init=False)
    by_partition: bool | None = None  # whether a table's store reads the current event (RocksDB)

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
        return TableStore(self.periods, self.users, self.subscribers, self.caches, self.fraud_table)

    # -- handlers -----------------------------------------------------------------------------

    async def handle_event(self, event: EventT[Any]) -> None:
        """Faust's per-event path (agents, ``test_context``): a batch of one, written in the
        stream's own event context."""
        await self.handle_batch([event.message], context=None)

    async def handle_batch(self, messages: list[Message], context: PartitionContext | None,
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
        by_partition = context if context is not None and self._stores_by_partition() else None
        parts: dict[str | None, list[Message]] = {}
        if transaction_of is None:
            parts[None] = messages
        else:
            for message in messages:
                parts.setdefault(transaction_of(message), []).append(message)
        counts: list[tuple[str, str]] = []
        async with self.lock:
            for transactional_id, part in parts.items():
                store = self.store()
                out = _Outputs(counts=counts)
                for message in part:
                    store.source = message
                    if by_partition is not None:
                        by_partition.enter(message)
                    self._apply(message, store, out)
                try:
                    await self._deliver(out, transactional_id)
                    if context is None:
                        store.flush()  # Faust's per-event path: through the tables
                    else:
                        self.writer.transactional_id = transactional_id
                        await store.flush_fast(self.writer, by_partition)
                except BaseException:
                    store.discard()
                    raise
        for (topic, outcome), n in Counter(counts).items():
            self.metrics.event(topic, outcome, n)
        self.processed += len(messages)
        if self.progress is not None:
            self.progress.set()

    def _stores_by_partition(self) -> bool:
        if self.by_partition is None:
            tables = [t for t in (self.periods, self.users, self.subscribers, self.fraud_table) if t is not None]
            self.by_partition = not all(isinstance(t.data, MemoryStore) for t in tables)
        return self.by_partition

    def _apply(self, message: Message, store: TableStore, out: "_Outputs") -> None:
        topic = self._base_topic(message.topic)
        if topic == "subscribers":
            try:
                sub = decode_subscriber(message.key, message.value, lambda plan: plan in self.engine.plans.plans)
            except InvalidRecord as exc:
                out.dead_letter(topic, message, str(exc))
            else:
                store.set_plan(sub.user, sub.plan)
                out.counts.append((topic, "ok"))
            return
        if topic == "fraud-feedback":
            self._apply_feedback(message, store, out)
            return
        cdr = topic == "cdrs"
        try:
            record = decode_cdr(message.value) if cdr else decode_registration(message.value)
        except InvalidRecord as exc:
            out.dead_letter(topic, message, str(exc))
            return
        if decode_key(message.key) != record.user and self.settings.partitions > 1:
            # Partitioning by user keeps a user's state on one worker: re-key and requeue.
            out.sends.append((topic, record.user.encode(), message.value, None))
            out.counts.append((topic, "rekeyed"))
            return
        try:
            outcome = (self.engine.on_call(store, record) if isinstance(record, CallEvent)
                       else self.engine.on_registration(store, record))
        except Exception as exc:  # a bug must cost one message, not the worker
            log.exception("engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            out.dead_letter(topic, message, f"internal error: {exc!r}")
            return
        if outcome.status == "too_late":
            out.dead_letter(topic, message, outcome.reason)
            return
        out.counts.append((topic, outcome.status))
        self.metrics.applied(record, outcome.status, message.tp)  # metrics: event-time lag, live calls/bindings
        out.alerts += outcome.alerts
        out.lines += outcome.lines
        if isinstance(record, CallEvent):
            seen = record.event_ms
            if seen > self.calls_read_ms.get(message.partition, 0):
                self.calls_read_ms[message.partition] = seen
        if self.fraud is not None:
            plan = store.plan_of(record.user)
            try:
                found = self.fraud.on_call(store, record, plan=plan) if isinstance(record, CallEvent) else self.fraud.on_registration(
                    store, record, plan=plan, calls_read_ms=self.calls_read_ms.get(message.partition, 0))
            except Exception:  # the fair-use outcome stands; a fraud bug costs this event's fraud check
                log.exception("fraud engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            else:
                out.fraud_alerts += found.alerts
                out.actions += found.actions

    def _apply_feedback(self, message: Message, store: TableStore, out: "_Outputs") -> None:
        try:
            feedback = decode_feedback(message.value)
        except InvalidRecord as exc:
            out.dead_letter("fraud-feedback", message, str(exc))
            return
        if decode_key(message.key) != feedback.user and self.settings.partitions > 1:
            out.sends.append(("fraud-feedback", feedback.user.encode(), message.value, None))
            out.counts.append(("fraud-feedback", "rekeyed"))
            return
        if self.fraud is None:  # no plan has fraud rules: nothing to honour
            out.counts.append(("fraud-feedback", "ignored"))
            return
        try:
            outcome = self.fraud.on_feedback(store, feedback) if feedback.kind != "acknowledge" else None
        except Exception as exc:  # a bug must cost one message, not the worker
            log.exception("fraud engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            out.dead_letter("fraud-feedback", message, f"internal error: {exc!r}")
            return
        out.counts.append(("fraud-feedback", outcome.status if outcome is not None else "ok"))
        log.info("FEEDBACK %s user=%s rule=%s alert=%s", feedback.kind, feedback.user, feedback.rule_name,
                 feedback.alert_id)

    async def _deliver(self, out: "_Outputs", transactional_id: str | None = None) -> None:
        """Send the batch's outputs and wait until the broker has them all (in the open
        transaction ``transactional_id`` if one is given)."""
        pending: list[Awaitable[Any]] = []
        for alert in out.alerts:
            pending.append(await self._send("fairuse-alerts", alert.user.encode(), alert.payload(), transactional_id))
            self.metrics.alert(alert)
            log.info("ALERT %s user=%s period=%s observed=%s limit=%s", alert.rule, alert.user, alert.period,
                     alert.observed, alert.limit)
        for line in out.lines:
            pending.append(await self._send("rebilled-calls", line.user.encode(), line.payload(), transactional_id))
            self.metrics.rebill(line)
        for fraud in out.fraud_alerts:
            pending.append(await self._send("fraud-alerts", fraud.user.encode(), fraud.payload(), transactional_id))
            self.metrics.fraud_alert(fraud)
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


@dataclass
class _Outputs:
    """What a batch will send once the engine has seen all of it."""

    alerts: list[Alert] = field(default_factory=list)
    lines: list[RebillLine] = field(default_factory=list)
    fraud_alerts: list[FraudAlert] = field(default_factory=list)
    actions: list[AccountAction] = field(default_factory=list)
    sends: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = field(default_factory=list)
    counts: list[tuple[str, str]] = field(default_factory=list)

    def dead_letter(self, topic: str, message: Message, reason: str) -> None:
        headers = [
            (DLQ_REASON_HEADER, reason.encode()),
            (DLQ_SOURCE_HEADER, f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ]
        self.sends.append((f"{topic}-dlq", message.key, message.value, headers))
        self.counts.append((topic, "dlq"))
        # the reason may quote the offending value (a phone number): the log gets it without
        log.info("DLQ %s/%s/%s: %s", message.topic, message.partition, message.offset, reason.split(" (got ")[0])


def build_pipeline(settings: Settings, plans: PlanBook, rates: RateDeck, app: faust.App | None = None) -> Pipeline:
    from ..app import MAX_RECORD_BYTES, create_app

    app = app or create_app(settings)
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
    engine = build_engine(settings, plans, rates)
    fraud = build_fraud_engine(settings, plans, rates)
    fraud_table = table("fraud", "FraudState per user") if fraud is not None else None
    metrics = Metrics()
    metrics.declare(INPUT_TOPICS)
    pipeline = Pipeline(
        app=app, settings=settings, engine=engine, metrics=metrics, topics=topics,
        periods=periods, users=users, subscribers=subscribers, restored=restored,
        fraud=fraud, fraud_table=fraud_table,
    )

    # The agents subscribe the worker to its input topics and own the tables' partitions. With the
    # batching consumer (streams.agents.batching) their messages arrive in handle_batch instead;
    # the per-event path stays for test_context and plain faust.App instances.
    # Concurrency stays 1: with more, Faust can commit past an in-flight message (faust-streaming #606).
    async def process(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await pipeline.handle_event(event)

    for name, agent_name in (("cdrs", "cdrs"), ("sip-registrations", "registrations"), ("subscribers", "subscribers"),
                             ("fraud-feedback", "feedback")):
        pipeline.agents[name] = app.agent(topics[name], name=agent_name)(process)
    if isinstance(app, BatchApp):
        context = PartitionContext(app)

        def transaction_of(message: Message) -> str:
            return transactional_id(app, message.topic, message.partition)

        async def run_batch(messages: list[Message]) -> None:
            # exactly_once: a transaction per input partition (its outputs, state and offsets)
            await pipeline.handle_batch(messages, context, transaction_of if app.in_transaction else None)

        attach(app, frozenset(settings.topic(t) for t in INPUT_TOPICS), run_batch)
        app.cdrwatch_checkpoint = Checkpoint(app.producer.flush, pipeline.writer.drain)  # type: ignore[attr-defined]
        app.cdrwatch_batch_lock = pipeline.lock  # type: ignore[attr-defined]
        app.cdrwatch_failure = pipeline.failed  # type: ignore[attr-defined]
    from ..web import (
        install_views,  # metrics and web views: /metrics, /healthz, /users/{user}/usage, /alerts
    )

    install_views(app, pipeline)
    return pipeline


__all__ = ["Pipeline", "build_pipeline", "ALL_TOPICS", "INPUT_TOPICS", "OUTPUT_TOPICS", "DLQ_TOPICS"]
