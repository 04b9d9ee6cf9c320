"""Thin Faust agents: read ``cdrs``, ``sip-registrations`` and ``subscribers``, call the core,
write tables and the output topics. Bad messages go to ``<topic>-dlq`` with a reason header."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
from faust.types import EventT

from ..codecs import DLQ_REASON_HEADER, decode_cdr, decode_key, decode_registration, decode_subscriber, encode
from ..config import build_engine
from ..core.errors import InvalidRecord
from ..core.plans import PlanBook
from ..core.rates import RateDeck
from ..core.records import CallEvent, Registration
from ..core.usage import Outcome, UsageEngine
from ..metrics import Metrics
from ..settings import Settings
from .store import TableCaches, TableStore

log = logging.getLogger(__name__)

INPUT_TOPICS = ("cdrs", "sip-registrations", "subscribers")
OUTPUT_TOPICS = ("fairuse-alerts", "rebilled-calls")
DLQ_TOPICS = tuple(f"{t}-dlq" for t in INPUT_TOPICS)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS + DLQ_TOPICS

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
    agents: dict[str, Any] = field(default_factory=dict)
    processed: int = 0  # input messages fully handled (any outcome)
    restored: dict[str, int] = field(default_factory=dict)  # changelog records read back, per table
    on_output: list[OutputHook] = field(default_factory=list)
    caches: TableCaches = field(default_factory=TableCaches)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: asyncio.Event | None = None

    def store(self) -> TableStore:
        return TableStore(self.periods, self.users, self.subscribers, self.caches)

    # -- per-message handlers (called from the agents) ----------------------------------------

    async def handle_cdr(self, event: EventT) -> None:
        await self._handle("cdrs", event, decode_cdr, self.engine.on_call)

    async def handle_registration(self, event: EventT) -> None:
        await self._handle("sip-registrations", event, decode_registration, self.engine.on_registration)

    async def handle_subscriber(self, event: EventT) -> None:
        try:
            sub = decode_subscriber(event.key, event.value, lambda plan: plan in self.engine.plans.plans)
        except InvalidRecord as exc:
            await self._dead_letter("subscribers", event, str(exc))
        else:
            key = sub.user.encode()
            if sub.plan is None:
                if key in self.subscribers:
                    del self.subscribers[key]
            else:
                self.subscribers[key] = sub.plan.encode()
            self.metrics.event("subscribers", "ok")
        self._done()

    async def _handle(
        self,
        topic: str,
        event: EventT,
        decode: Callable[[bytes | None], CallEvent | Registration],
        apply: Callable[[TableStore, Any], Outcome],
    ) -> None:
        try:
            record = decode(event.value)
        except InvalidRecord as exc:
            await self._dead_letter(topic, event, str(exc))
            self._done()
            return
        if decode_key(event.key) != record.user and self.settings.partitions > 1:
            # Partitioning by user is what keeps a user's state on one worker: re-key and requeue.
            await self.topics[topic].send(key=record.user.encode(), value=event.value, force=True)
            self.metrics.event(topic, "rekeyed")
            self._done()
            return
        async with self.lock:
            store = self.store()
            try:
                outcome = apply(store, record)
                if outcome.status == "too_late":
                    store.discard()
                    await self._dead_letter(topic, event, outcome.reason)
                else:
                    await self._emit(outcome)
                    store.flush()
                    self.metrics.event(topic, outcome.status)
            except BaseException:
                store.discard()
                raise
        self._done()

    async def _emit(self, outcome: Outcome) -> None:
        """Send the event's outputs and wait until the broker has them, before state is written."""
        pending: list[Awaitable[Any]] = []
        for alert in outcome.alerts:
            pending.append(await self._send("fairuse-alerts", alert.user, alert.payload()))
            self.metrics.alert(alert)
        for line in outcome.lines:
            pending.append(await self._send("rebilled-calls", line.user, line.payload()))
            self.metrics.rebill(line)
        if pending:
            await asyncio.gather(*pending)
        for alert in outcome.alerts:
            log.info(
                "ALERT %s user=%s period=%s observed=%s limit=%s", alert.rule, alert.user, alert.period,
                alert.observed, alert.limit,
            )

    async def _send(self, topic: str, user: str, payload: dict[str, Any]) -> Awaitable[Any]:
        for hook in self.on_output:
            hook(topic, payload)
        return await self.topics[topic].send(key=user.encode(), value=encode(payload), force=True)

    async def _dead_letter(self, topic: str, event: EventT, reason: str) -> None:
        message = event.message
        headers = [
            (DLQ_REASON_HEADER, reason.encode()),
            ("cdrwatch-source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ]
        await self.topics[f"{topic}-dlq"].send(key=event.key, value=event.value, headers=headers, force=True)
        self.metrics.event(topic, "dlq")
        log.info("DLQ %s/%s/%s: %s", message.topic, message.partition, message.offset, reason)

    def _done(self) -> None:
        self.processed += 1
        if self.progress is not None:
            self.progress.set()


def build_pipeline(settings: Settings, plans: PlanBook, rates: RateDeck, app: faust.App | None = None) -> Pipeline:
    from ..app import create_app

    app = app or create_app(settings)
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    topics = {name: app.topic(settings.topic(name), partitions=settings.partitions, **raw) for name in ALL_TOPICS}
    restored: dict[str, int] = {}

    def counter(name: str) -> Callable[[EventT], Awaitable[None]]:
        async def on_changelog_event(_event: EventT) -> None:
            restored[name] = restored.get(name, 0) + 1

        return on_changelog_event

    def table(name: str, help: str) -> Any:
        # bytes key and value types give the changelog the raw serializer
        return app.Table(name, help=help, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                         default=None, on_changelog_event=counter(name))

    periods = table("periods", "PeriodState per user|YYYY-MM")
    users = table("users", "UserState (SIP bindings, watermark) per user")
    subscribers = table("subscribers", "plan name per user")
    engine = build_engine(settings, plans, rates)
    pipeline = Pipeline(
        app=app, settings=settings, engine=engine, metrics=Metrics(), topics=topics,
        periods=periods, users=users, subscribers=subscribers, restored=restored,
    )

    # concurrency stays 1: with more, Faust can commit past an in-flight message (faust-streaming #606)
    async def process_cdrs(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await pipeline.handle_cdr(event)

    async def process_registrations(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await pipeline.handle_registration(event)

    async def process_subscribers(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await pipeline.handle_subscriber(event)

    pipeline.agents["cdrs"] = app.agent(topics["cdrs"], name="cdrs")(process_cdrs)
    pipeline.agents["sip-registrations"] = app.agent(topics["sip-registrations"], name="registrations")(
        process_registrations
    )
    pipeline.agents["subscribers"] = app.agent(topics["subscribers"], name="subscribers")(process_subscribers)
    pipeline.metrics.install(app)
    return pipeline


__all__ = ["Pipeline", "build_pipeline", "ALL_TOPICS", "INPUT_TOPICS", "OUTPUT_TOPICS", "DLQ_TOPICS"]
