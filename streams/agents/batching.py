"""Batch consumption for cdrwatch's input topics, inside Faust — and every use of Faust's and
aiokafka's private API, in this one module, refused at import on versions never tested with it.

Faust delivers each message through its conductor and a Stream: a few futures and a context
switch per message, which caps a worker near 10,000 messages/s whatever the agent does. For the
topics listed in ``app.cdrwatch_batch_handler.topics`` this consumer hands each fetched batch to
the handler in one call instead, and acks the messages once the handler returns — Faust's own
commit, rebalance and table machinery are unchanged (the handler writes tables under the
partition's event context, so changelogs stay co-partitioned). Other topics take Faust's path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from importlib import metadata
from typing import Any, Awaitable, Callable, Mapping, Protocol, cast

import faust
from faust.events import Event
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message

from ..tools.embedded import true_end_offsets

log = logging.getLogger(__name__)

# The private attributes and methods used below were read in these releases, and the test suite
# ran on them. Another release may rename or change them silently: refuse to run on it.
TESTED_VERSIONS = {"faust-streaming": ("0.15.3",), "aiokafka": ("0.14.0",)}
ALLOW_UNTESTED_ENV = "CDRWATCH_ALLOW_UNTESTED_VERSIONS"


def check_versions(version: Callable[[str], str] = metadata.version) -> None:
    """Raise ImportError naming the package when an installed release was never tested here
    (``CDRWATCH_ALLOW_UNTESTED_VERSIONS=1`` runs anyway, with a warning)."""
    for package, tested in TESTED_VERSIONS.items():
        installed = version(package)
        if installed in tested:
            continue
        message = (f"cdrwatch uses private API of {package} and was tested with {', '.join(tested)}, not "
                   f"{installed}: install the pinned versions (pip install -e .), or set "
                   f"{ALLOW_UNTESTED_ENV}=1 to run untested")
        if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
            log.warning("%s", message)
        else:
            raise ImportError(message)


check_versions()


def aiokafka_producer(app: faust.App) -> Any:
    """The aiokafka producer under Faust's (its record batches, ``send_batch``)."""
    return cast(Any, app.producer)._producer


def transaction_producer(app: faust.App, transactional_id: str) -> Any:
    """The aiokafka producer of one of Faust's open transactions (exactly_once)."""
    return cast(Any, app.producer)._transaction_producers[transactional_id]


def transactional_id(app: faust.App, topic: str, partition: int) -> str:
    """The id of the transaction that commits ``topic``/``partition``'s offsets: Faust's
    TransactionManager names one per partition of each group of co-partitioned topics, starts it
    when the partition is assigned (fencing any earlier owner) and commits it with the offsets."""
    return f"{app.conf.id}-{app.assignor.group_for_topic(topic)}-{partition}"


def consumer_of(app: faust.App) -> Any:
    """The app's consumer if it has one yet (the ``consumer`` property would create one)."""
    return getattr(app, "_consumer", None)


def read_marks(app: faust.App) -> dict[TP, tuple[int | None, int | None, int]]:
    """Each assigned partition of the app's consumer: (its position, the offset up to which the
    broker had records when it was last fetched — the high watermark, or under read_committed the
    last stable offset — and when that fetch answered, wall-clock ms, 0 if never); None where not
    known yet. The position counts records fetched, not yet handed over."""
    consumer = consumer_of(app)
    thread = getattr(consumer, "_thread", None) if consumer is not None else None
    inner = getattr(thread, "_consumer", None) if thread is not None else None
    if inner is None:
        return {}
    subscription = inner._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return {}
    out: dict[TP, tuple[int | None, int | None, int]] = {}
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if state is None:
            out[TP(tp.topic, tp.partition)] = (None, None, 0)
            continue
        mark = state.lso if state.lso is not None else state.highwater
        out[TP(tp.topic, tp.partition)] = (state.position if state.has_valid_position else None, mark,
                                           state.timestamp or 0)
    return out


async def refresh_metadata(consumer: Any) -> None:
    """Ask an aiokafka consumer's client for fresh cluster metadata now."""
    await consumer._client.force_metadata_update()


def prometheus_metrics(monitor: Any) -> Any:
    """The metric objects of Faust's Prometheus monitor."""
    return monitor._metrics


class BatchHandler(Protocol):
    topics: frozenset[str]

    def __call__(self, messages: list[Message]) -> Awaitable[None]: ...


class _Fetched(dict[Any, Any]):
    """The records of one fetch (TP → records), with the assignment they came from and where the
    fetch left each partition's position: what ``_ConsumerThread.put_back`` needs to undo it."""

    assignment: Any = None
    positions: dict[TP, int]


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust asks the broker to hold a fetch up to 1.5 s; Tansu holds it that long even when
        # records are waiting, which is what an alert's latency then costs. 100 ms is plenty.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets for table recovery, not trusting Tansu's ListOffsets (see
        ``embedded.true_end_offsets``; on Apache Kafka the reported ones are kept)."""
        if self.consumer.in_transaction:
            # Faust takes each partition's last stable offset from the consumer's fetch responses:
            # -1 for a partition not fetched yet, and its recovery then refuses a persisted offset
            # above it. ListOffsets at isolation read_committed answers the last stable offset.
            return cast("Mapping[TP, int]", await self._ensure_consumer().end_offsets(partitions))
        reported = await super()._highwaters(partitions)
        client_kwargs = getattr(self.consumer.app, "cdrwatch_client_kwargs", None)
        if client_kwargs is None:
            return reported
        # Faust's own type leaves out the None it gives a partition without an end offset
        return cast("Mapping[TP, int]", await true_end_offsets(client_kwargs, reported))

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        if not records:
            return records
        # In the consumer's thread, right after the fetch: nothing has moved the positions yet.
        fetched = _Fetched(records)
        fetched.assignment = assignment = consumer._subscription.subscription.assignment
        fetched.positions = {}
        for tp in records:
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position:
                fetched.positions[tp] = state.position
        return fetched

    async def put_back(self, fetched: Any, firsts: Mapping[TP, int]) -> None:
        """Seek each partition of ``firsts`` back to its offset (the first record of ``fetched``
        that was not handled), unless something moved the partition since that fetch: a new
        assignment, or a seek of Faust's — those know where to read from."""
        if firsts and isinstance(fetched, _Fetched):
            await self.call_thread(self._put_back, fetched, firsts)

    async def _put_back(self, fetched: _Fetched, firsts: Mapping[TP, int]) -> None:
        assignment = fetched.assignment
        if assignment is None or not assignment.active:
            return  # replaced by a rebalance: the new assignment starts from the committed offsets
        consumer = self._ensure_consumer()
        for tp, offset in firsts.items():
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position and state.position == fetched.positions.get(tp):
                consumer.seek(tp, offset)


FETCH_MAX_WAIT_MS = 100


class BatchConsumer(driver.Consumer):
    _thread: _ConsumerThread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Offsets whose commit the broker refused (a rebalance under way): Faust has already taken
        # them off its acknowledged offsets and counts them as committed, so it would never send
        # them again — a partition whose last commit failed would stay behind until more input
        # came. They go with the next commit instead, while the partition is still assigned.
        self._commit_again: dict[TP, int] = {}
        # set while Faust seeks the stream partitions to their committed offsets (the end of a
        # recovery): the batch loop hands over nothing meanwhile
        self._seeked = asyncio.Event()
        self._seeked.set()

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's choice of the offset to commit, with the recorded gaps up to the highest
        acknowledged offset merged into the acknowledged ones first, each offset once. Faust merges
        them itself but keeps duplicates, and its search for the first run of consecutive offsets
        stops at each one: a gap recorded over offsets already handled (the loop's read offset
        rewound by the seek to the committed offsets that ends a recovery, while the loop had
        already read on) then holds the commit back to one offset per commit interval."""
        acked, gaps = self._acked[tp], self._gap.get(tp)
        if acked and gaps:
            top = max(acked)
            index = self._acked_index[tp]
            for interval in gaps.overlap(0, top + 1):
                for offset in range(interval.begin, min(interval.end, top + 1)):
                    if offset not in index:
                        index.add(offset)
                        acked.append(offset)
            gaps.chop(0, top + 1)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._commit_again.pop(tp, None)
        if self.in_transaction and self.assignment():
            await self._commit_before_revocation()
        await super().on_partitions_revoked(revoked)

    async def _commit_before_revocation(self) -> None:
        """exactly_once: commit the batches handled since the last commit before Faust forgets
        their offsets. Faust drops the acknowledged offsets of the revoked partitions first and
        commits after, so they would stay in the open transactions; a partition this worker keeps
        is then read again from its committed offset, by tables that have seen those batches
        already, into the same transaction — which then holds each rejection of them twice."""
        self.stop_flow()  # no batch begins now; the one being handled ends before the commit (the batch lock)
        await self.maybe_wait_for_commit_to_finish()
        try:
            await self.commit()
        except Exception as exc:  # the broker's: the open transactions are aborted by the next owner
            self.log.warning("commit before the rebalance failed (%r): those batches are read again", exc)

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, with the batch loop held meanwhile. It goes
        partition by partition, while the others are already resumed (and, on a worker's first
        assignment, with the flow active): a batch read before the seek reaches its partition
        would be read again after it, into the same transaction under exactly_once."""
        self._seeked.clear()
        try:
            await super().perform_seek()
        finally:
            self._seeked.set()

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        """exactly_once: no batch may be handled between the choice of the offsets to commit and
        the commit of the transactions, or its outputs would commit without its offsets."""
        lock = getattr(self.app, "cdrwatch_batch_lock", None)
        if not self.in_transaction or lock is None:
            return bool(await super()._commit_tps(tps, start_new_transaction))
        async with lock:
            return bool(await super()._commit_tps(tps, start_new_transaction))

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        offsets: dict[TP, int] = super()._filter_committable_offsets(tps)
        for tp, offset in self._commit_again.items():
            if offsets.get(tp, -1) < offset:
                offsets[tp] = offset
        return offsets

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit with its flush-then-commit replaced by the app's ``Checkpoint``
        (outputs → changelogs → offsets); the rest as Faust does it."""
        checkpoint = getattr(self.app, "cdrwatch_checkpoint", None)
        if checkpoint is None:
            return await super()._commit_offsets(offsets, start_new_transaction)
        if self.in_transaction:  # exactly_once: Faust's commit of its transactions, offsets included
            async def commit_transactions(_offsets: Mapping[TP, int]) -> bool:
                return bool(await super(BatchConsumer, self)._commit_offsets(_offsets, start_new_transaction))

            return bool(await checkpoint.commit_transactions(offsets, commit_transactions))
        assignment = self.assignment()
        committable = {tp: offset for tp, offset in offsets.items() if tp in assignment}
        if len(committable) < len(offsets):
            self.log.info("Discarded commit for revoked partitions that will be eventually processed again: %r",
                          {tp: o for tp, o in offsets.items() if tp not in committable})
        if not committable:
            return False
        did_commit = bool(await checkpoint.commit(committable, self._commit))
        if did_commit:
            for tp in committable:
                self._commit_again.pop(tp, None)
            self.app.tables.on_commit(committable)
        else:
            self.log.warning("the broker did not take the commit of %s (the group is rebalancing): sent again with "
                             "the next commit", _offsets_text(committable))
            self._commit_again.update(committable)
        self._committed_offset.update(committable)
        self.app.monitor.on_tp_commit(committable)
        return did_commit

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised end to end
        handler: BatchHandler | None = getattr(self.app, "cdrwatch_batch_handler", None)
        if handler is None:
            await super()._drain_messages(fetcher)
            return
        batch_topics = handler.topics
        callback = self.callback
        read_offset = self._read_offset
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        to_message = self._to_message
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                if records is None or self.should_stop:
                    continue
                # Records this loop does not hand over go back (``put_back``): the fetch has already
                # moved the partitions' positions past them. Faust's seek to the committed offsets
                # would not undo that for a partition that has no committed offset yet: it would
                # never read them.
                if not self.flow_active or not self._seeked.is_set():
                    # a rebalance is under way (typically a fetch begun before it, returning the
                    # new assignment's first records while every partition is paused), or the seek
                    # to the committed offsets that ends it: the recovery sets every position
                    # before the flow goes on
                    await self._thread.put_back(records, {tp: recs[0].offset for tp, recs in records.items() if recs})
                    await self._seeked.wait()
                    continue
                generation = self.app.consumer_generation_id
                batch: list[Message] = []
                gaps: list[tuple[TP, int, int]] = []
                paused: dict[TP, int] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        if recs:
                            paused[tp] = recs[0].offset  # read again once resumed
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    start = last = read_offset[tp]
                    batched, acked = tp.topic in batch_topics, acks_enabled_for(tp.topic)
                    for record in recs:
                        offset = record.offset
                        if start is not None and offset < start:
                            continue  # already read (a seek back after a rebalance)
                        if acked and last is not None and offset - last > 1:  # (Faust's own loop skips last == 0)
                            # Offsets without a record (compaction, transaction markers): as in
                            # Faust's own loop, so that its commit goes past them. The batch's are
                            # recorded once the batch is handed over.
                            if batched:
                                gaps.append((tp, last + 1, offset))
                            else:
                                await self._add_gap(tp, last + 1, offset)
                        message: Message = to_message(tp, record)
                        if batched:
                            batch.append(message)
                        else:
                            await callback(message)
                        read_offset[tp] = last = offset
                if paused:
                    await self._thread.put_back(records, paused)
                if not batch:
                    continue
                if self.app.consumer_generation_id != generation:
                    # a rebalance happened while fetching: the new owner reads these again (the
                    # assignment they came from is gone, and with it their positions; put_back
                    # only acts if it is not)
                    firsts: dict[TP, int] = {}
                    for message in batch:
                        read_offset.pop(message.tp, None)
                        firsts.setdefault(message.tp, message.offset)
                    await self._thread.put_back(records, firsts)
                    continue
                for tp, first, until in gaps:
                    await self._add_gap(tp, first, until)
                for message in batch:
                    self._unacked_messages.add(message)  # Consumer.track_message, less its sensors
                _report(self.app.sensors, batch, "in")
                try:
                    await handler(batch)
                except Exception as exc:
                    # Bad input never gets here (it goes to the DLQ): this is the broker or a bug.
                    # Stop the worker — its offsets are not committed, so a restart redoes the batch
                    # — rather than leave it alive and deaf.
                    self.log.exception("batch handler failed: stopping the worker")
                    failed = getattr(self.app, "cdrwatch_failure", None)
                    if failed is not None:
                        failed(exc)
                    await self.app.crash(exc)
                    return
                # no await between the handler's return and these acks: a commit waiting for the
                # batch lock (exactly_once) chooses its offsets with the whole batch acknowledged
                for message in batch:
                    self.ack(message)
                _report(self.app.sensors, batch, "out")
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise


def _offsets_text(offsets: Mapping[TP, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition} at {offset}" for tp, offset in sorted(offsets.items()))


def _report(sensors: Any, batch: list[Message], direction: str) -> None:
    """Tell the sensors a batch came in (before the handler) or went out (acked): once per partition
    to a sensor that takes counts (``on_messages_in/out``), once per message to any other."""
    per_tp: dict[TP, list[int]] = {}
    for message in batch:
        entry = per_tp.get(message.tp)
        if entry is None:
            per_tp[message.tp] = [message.offset, 1]
        else:
            entry[0], entry[1] = message.offset, entry[1] + 1
    for sensor in sensors:
        batched = getattr(sensor, f"on_messages_{direction}", None)
        if batched is not None:
            for tp, (offset, count) in per_tp.items():
                batched(tp, offset, count)
        else:
            single = getattr(sensor, f"on_message_{direction}")
            for message in batch:
                single(message.tp, message.offset, message)


def cached_prometheus_monitor() -> type:
    """Faust's Prometheus sensor with the label children of its per-message and per-table-operation
    metrics cached: ``labels()`` costs ~4 µs a call (a lock and a dict lookup on formatted strings),
    and a worker reads its tables several times per event. Same metrics, same values."""
    from faust.sensors.monitor import Monitor
    from faust.sensors.prometheus import PrometheusMonitor

    class CachedPrometheusMonitor(PrometheusMonitor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._table_ops: dict[tuple[str, str], Any] = {}
            self._per_topic: dict[str, Any] = {}
            self._per_tp: dict[Any, Any] = {}

        def _table_op(self, table: Any, operation: str) -> None:
            child = self._table_ops.get((table.name, operation))
            if child is None:
                child = self._metrics.table_operations.labels(table=f"table.{table.name}", operation=operation)
                self._table_ops[(table.name, operation)] = child
            child.inc()

        def on_table_get(self, table: Any, key: Any) -> None:
            Monitor.on_table_get(self, table, key)
            self._table_op(table, self.KEYS_RETRIEVED)

        def on_table_set(self, table: Any, key: Any, value: Any) -> None:
            Monitor.on_table_set(self, table, key, value)
            self._table_op(table, self.KEYS_UPDATED)

        def on_table_del(self, table: Any, key: Any) -> None:
            Monitor.on_table_del(self, table, key)
            self._table_op(table, self.KEYS_DELETED)

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            Monitor.on_message_in(self, tp, offset, message)
            self._received(tp, offset, 1)

        # The batch consumer (streams.agents.batching) reports a partition's messages once per
        # batch: the same counts as one on_message_in/on_message_out per message.
        def on_messages_in(self, tp: Any, offset: int, count: int) -> None:
            self.messages_received_total += count
            self.messages_active += count
            self.messages_received_by_topic[tp.topic] += count
            self.tp_read_offsets[tp] = offset
            self._received(tp, offset, count)

        def _received(self, tp: Any, offset: int, count: int) -> None:
            metrics = self._metrics
            metrics.messages_received.inc(count)
            metrics.active_messages.inc(count)
            topic = self._per_topic.get(tp.topic)
            if topic is None:
                topic = self._per_topic[tp.topic] = metrics.messages_received_per_topics.labels(topic=tp.topic)
            topic.inc(count)
            partition = self._per_tp.get(tp)
            if partition is None:
                partition = self._per_tp[tp] = metrics.messages_received_per_topics_partition.labels(
                    topic=tp.topic, partition=tp.partition)
            partition.set(offset)

        def on_messages_out(self, tp: Any, offset: int, count: int) -> None:
            self.messages_active -= count
            self._metrics.active_messages.dec(count)

        def _clear_partition_related_metrics(self) -> None:
            super()._clear_partition_related_metrics()  # removes the per-topic/partition children
            self._per_topic.clear()
            self._per_tp.clear()

    return CachedPrometheusMonitor


class BatchTransport(driver.Transport):
    Consumer = BatchConsumer


class App(faust.App):
    """faust.App whose consumer hands batches of the input topics to ``cdrwatch_batch_handler``."""

    cdrwatch_batch_handler: BatchHandler | None = None

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


class PartitionContext:
    """Table writes go to the changelog partition of the current event: one event per input
    partition stands in for the batch's messages of that partition."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._events: dict[int, Event] = {}

    def enter(self, message: Message) -> None:
        event = self._events.get(message.partition)
        if event is None:
            event = Event(self._app, message.key, message.value, message.headers, message)
            self._events[message.partition] = event
        _current_event.set(weakref.ref(event))

    def leave(self) -> None:
        _current_event.set(None)


Runner = Callable[[list[Message]], Awaitable[None]]


def attach(app: faust.App, topics: frozenset[str], run: Runner) -> None:
    handler = cast(Any, run)
    handler.topics = topics
    cast(Any, app).cdrwatch_batch_handler = handler


__all__ = ["App", "BatchConsumer", "PartitionContext", "attach", "read_marks", "TP"]
