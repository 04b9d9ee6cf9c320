"""The core's Store on Faust tables: decoded states are cached, writes are staged until the
event's outputs are delivered, so state never runs ahead of what downstream has received."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any, Callable, Generic, TypeVar

from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from .batching import aiokafka_producer, transaction_producer
from ..core.state import CustomerState, FraudState, PeriodState, UserState
from ..topics import chunk_key, period_key, period_reader

T = TypeVar("T", PeriodState, UserState, FraudState)


class _DecodeCache(Generic[T]):
    """Decoded states keyed by table key, valid while the table still holds the same bytes."""

    def __init__(self, decode: Callable[[bytes, bytes], T], size: int = 200_000) -> None:
        self._decode: Callable[[bytes, bytes], T] = decode  # (key, record) -> state
        self._entries: OrderedDict[bytes, tuple[bytes, T]] = OrderedDict()
        self._size = size

    def get(self, key: bytes, raw: bytes) -> T:
        hit = self._entries.get(key)
        if hit is not None and (hit[0] is raw or hit[0] == raw):
            return hit[1]
        state = self._decode(key, raw)
        self.remember(key, raw, state)
        return state

    def remember(self, key: bytes, raw: bytes, state: T) -> None:
        self._entries[key] = (raw, state)
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, key: bytes) -> None:
        self._entries.pop(key, None)


class ChangelogWriter:
    """Table writes without Faust's per-write machinery (FutureMessage, producer buffer, sensors):
    the value goes into the table's store at once and into one record batch per changelog
    partition, handed to the aiokafka producer under Faust's when the batch of input is done.
    The hand-over runs beside the worker, one queue per changelog partition: aiokafka accepts a
    partition's next batch only once the previous one has left for the broker, a wait that would
    otherwise stall the worker for a round trip per batch. The worker's checkpoint drains these
    queues and flushes the producer before it commits input offsets (``checkpoint.Checkpoint``),
    so a committed offset never runs ahead of its state. RocksDB's persisted changelog offset is
    kept up to date the way Faust's own writes do. A batch the broker refuses (e.g. a record over
    its size limit) is reported to ``on_error``: the table would no longer match its changelog."""

    MAX_QUEUED = 16  # batches waiting per changelog partition before send() waits for the broker

    def __init__(self, app: Any, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._app = app
        self.on_error = on_error
        # exactly_once: the open transaction the records staged now belong to (the producer that
        # sends them); None: Faust's producer, outside transactions
        self.transactional_id: str | None = None
        # (topic, partition, transaction) -> batches waiting for the producer, and the task handing them over
        self._queues: dict[tuple[str, int, str | None], deque[tuple[Any, Any, int]]] = {}
        self._pumps: dict[tuple[str, int, str | None], asyncio.Task[None]] = {}
        # (topic, partition, transaction) -> [open batch, store, records in it]; full batches wait in _full
        self._open: dict[tuple[str, int, str | None], list[Any]] = {}
        self._full: list[tuple[str, int, str | None, Any, Any, int]] = []
        self._targets: dict[str, tuple[Any, str]] = {}  # table name -> (where values go, changelog topic)

    def stage(self, table: Any, key: bytes, value: bytes | None, partition: int) -> None:
        target = self._targets.get(table.name)
        if target is None:
            target = self._targets[table.name] = (_backing(table), table.changelog_topic.get_topic_name())
        data, topic = target
        if value is None:
            if key in data:
                del data[key]
        else:
            data[key] = value
        tid = self.transactional_id
        entry = self._open.get((topic, partition, tid))
        if entry is None:
            entry = self._open[(topic, partition, tid)] = [self._producer(tid).create_batch(), table.data, 0]
        if entry[0].append(key=key, value=value, timestamp=None) is None:  # full: start another
            self._full.append((topic, partition, tid, entry[0], entry[1], entry[2]))
            entry[0], entry[2] = self._producer(tid).create_batch(), 0
            entry[0].append(key=key, value=value, timestamp=None)
        entry[2] += 1

    async def send(self) -> None:
        """Queue every staged batch for the producer, in order per changelog partition (delivery
        is awaited by Faust's commit, through ``drain``)."""
        batches = self._full + [(t, p, tid, e[0], e[1], e[2]) for (t, p, tid), e in self._open.items() if e[2]]
        self._open.clear()
        self._full = []
        for topic, partition, tid, batch, store, count in batches:
            batch.close()
            where = (topic, partition, tid)
            queue = self._queues.setdefault(where, deque())
            queue.append((batch, store, count))
            pump = self._pumps.get(where)
            if pump is None or pump.done():
                self._pumps[where] = asyncio.ensure_future(self._pump(topic, partition, tid, queue))
        for where, queue in self._queues.items():
            if len(queue) > self.MAX_QUEUED:  # the broker is slower than the worker: wait for it
                await asyncio.wait([self._pumps[where]])

    async def _pump(self, topic: str, partition: int, tid: str | None, queue: deque[tuple[Any, Any, int]]) -> None:
        producer = self._producer(tid)
        tp = TP(topic, partition)
        while queue:
            batch, store, count = queue[0]
            try:
                fut = await producer.send_batch(batch, topic, partition=partition)
            except Exception as exc:  # the producer is closed or broken: nothing more can be sent
                queue.clear()
                if self.on_error is not None:
                    self.on_error(f"{topic}/{partition}", exc)
                return
            queue.popleft()
            rocksdb = type(store).__module__.endswith("rocksdb")
            fut.add_done_callback(self._delivered(store if rocksdb else None, tp, count, tid))

    async def drain(self) -> None:
        """Wait until every queued batch is in the producer's hands."""
        while True:
            pending = [task for task in self._pumps.values() if not task.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    def _producer(self, tid: str | None) -> Any:
        return aiokafka_producer(self._app) if tid is None else transaction_producer(self._app, tid)

    def _delivered(self, store: Any, tp: TP, count: int, tid: str | None) -> Callable[[Any], None]:
        def done(fut: Any) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                if self.on_error is not None:
                    self.on_error(f"{tp.topic}/{tp.partition}", exc)
            elif store is not None:
                last = fut.result().offset + count - 1  # the batch's last record
                if tid is None:
                    store.set_persisted_offset(tp, last)
                else:  # exactly_once: RocksDB's offset moves once the transaction has committed
                    self._app.tables.persist_offset_on_commit(store, tp, last)

        return done


def _backing(table: Any) -> Any:
    """Where a table's values live, for direct reads and writes (no per-operation sensor): the
    memory store's own dict (the store's mapping methods go through collections.abc, and its
    ``get`` raises KeyError inside for every missing key), else the store itself (RocksDB)."""
    store = table.data
    return store.data if isinstance(store, MemoryStore) and type(store.data) is dict else store


def _reader(table: Any) -> Callable[[bytes], bytes | None]:
    """The fastest ``get`` of a table's values."""
    if table is None:
        return lambda _key: None
    return _backing(table).get  # type: ignore[no-any-return]


_UNSEEN = object()
# a customer's record in the fraud table: no user name starts with a NUL (the schemas refuse it)
CUSTOMER_KEY = b"\x00customer|"


SHARED_PREFIX = b"\x00"  # fraud-table keys of the records shared by users (TableStore.get_shared)


class TableStore:
    """A batch's view of the tables (the processor's ``Store``). ``write()`` writes what the engines
    put; anything they only read (and may have touched) is dropped from the cache so the next read
    decodes the table."""

    def __init__(self, periods: Any, users: Any, subscribers: Any, caches: "TableCaches", fraud: Any = None,
                 partitions: int = 1) -> None:
        self._partitions = partitions
        self._periods, self._users, self._subscribers, self._fraud = periods, users, subscribers, fraud
        self._read_period_raw, self._read_user_raw = _reader(periods), _reader(users)
        self._read_plan_raw, self._read_fraud_raw = _reader(subscribers), _reader(fraud)
        self._caches = caches
        if caches.periods_table is None:
            caches.periods_table = periods  # where the months' sealed chunks are read
        self._put_fraud: dict[bytes, FraudState] = {}
        self._put_customers: dict[bytes, CustomerState] = {}
        self._read_fraud: set[bytes] = set()
        self._put_shared: dict[bytes, bytes] = {}  # SHARED_PREFIX + key -> record (see get_shared)
        self.source: Any = None  # the input message being applied: its partition is the key's
        self._sources: dict[bytes, Any] = {}
        self._plans: dict[bytes, str | None] = {}
        self._put_periods: dict[bytes, PeriodState | None] = {}
        self._dropped: dict[bytes, int] = {}  # a dropped month's head key -> its sealed chunks
        self._put_users: dict[bytes, UserState] = {}
        self._read_periods: set[bytes] = set()
        self._read_users: set[bytes] = set()
        # what get_period answered, by (user, period): an event asks for its month several times
        self._seen_periods: dict[tuple[str, str], PeriodState | None] = {}

    period_key = staticmethod(period_key)

    def get_period(self, user: str, period: str) -> PeriodState | None:
        seen = self._seen_periods.get((user, period), _UNSEEN)
        if seen is not _UNSEEN:
            return seen  # type: ignore[return-value]
        key = self.period_key(user, period)
        state: PeriodState | None
        if key in self._put_periods:
            state = self._put_periods[key]
        else:
            raw = self._read_period_raw(key)
            if raw is None:
                state = None
            else:
                self._read_periods.add(key)
                state = self._caches.periods.get(key, raw)
        self._seen_periods[(user, period)] = state
        return state

    def put_period(self, user: str, period: str, state: PeriodState) -> None:
        key = self.period_key(user, period)
        state.log()
        self._put_periods[key] = state
        self._sources[key] = self.source
        self._seen_periods[(user, period)] = state

    def drop_period(self, user: str, period: str) -> None:
        state = self.get_period(user, period)
        key = self.period_key(user, period)
        self._dropped[key] = max(self._dropped.get(key, 0), state.sealed if state is not None else 0)
        self._put_periods[key] = None
        self._sources[key] = self.source
        self._seen_periods[(user, period)] = None

    def get_user(self, user: str) -> UserState | None:
        return _get(user.encode(), self._put_users, self._read_user_raw, self._read_users, self._caches.users)

    def put_user(self, user: str, state: UserState) -> None:
        key = user.encode()
        self._put_users[key] = state
        self._sources[b"u:" + key] = self.source

    def get_fraud(self, user: str) -> FraudState | None:
        return _get(user.encode(), self._put_fraud, self._read_fraud_raw, self._read_fraud, self._caches.fraud)

    def put_fraud(self, user: str, state: FraudState) -> None:
        key = user.encode()
        self._put_fraud[key] = state
        self._sources[b"f:" + key] = self.source

    def _customer_key(self, customer: str, partition: int) -> bytes:
        return CUSTOMER_KEY + f"{partition}|".encode() + customer.encode()

    def get_customer(self, customer: str) -> CustomerState | None:
        """A customer's record, merged from one per input partition: each is written only by the
        events of its partition (so a changelog partition restores it whole), from what all of
        them held when it was written."""
        merged: CustomerState | None = None
        for partition in range(self._partitions):
            key = self._customer_key(customer, partition)
            state = self._put_customers.get(key)
            if state is None:
                raw = self._read_fraud_raw(key)
                state = CustomerState.decode(raw) if raw is not None else None
            if state is None:
                continue
            if merged is None:
                merged = CustomerState(state.since, dict(state.networks))
                continue
            merged.since = min(merged.since, state.since)
            for network, at in state.networks.items():
                if at > merged.networks.get(network, -1):
                    merged.networks[network] = at
        return merged

    def put_customer(self, customer: str, state: CustomerState) -> None:
        key = self._customer_key(customer, self.source.partition)
        self._put_customers[key] = state
        self._sources[key] = self.source

    def get_shared(self, key: str) -> bytes | None:
        """A record shared by the users of this worker (the wangiri rule's caller ranges), kept in
        the fraud table under ``SHARED_PREFIX`` + key: the input schemas refuse a user name starting
        with NUL, so no user's state has such a key.

        Its limitation: a worker sees the events of its own partitions only, so with several
        workers each counts the subscribers of its partitions (a range ringing subscribers spread
        over N workers reaches a worker's threshold N times later, or never). The record is written
        to the changelog partition of the event that last changed it; after a rebalance a worker
        restores the copy last written by one of its partitions."""
        raw_key = SHARED_PREFIX + key.encode()
        if raw_key in self._put_shared:
            return self._put_shared[raw_key]
        return self._read_fraud_raw(raw_key)

    def put_shared(self, key: str, value: bytes) -> None:
        raw_key = SHARED_PREFIX + key.encode()
        self._put_shared[raw_key] = value
        self._sources[b"x:" + raw_key] = self.source

    def plan_of(self, user: str) -> str | None:
        key = user.encode()
        if key in self._plans:
            return self._plans[key]
        raw = self._read_plan_raw(key)
        return raw.decode() if raw is not None else None

    def set_plan(self, user: str, plan: str | None) -> None:
        key = user.encode()
        self._plans[key] = plan
        self._sources[b"s:" + key] = self.source

    async def write(self, writer: ChangelogWriter, context: Any) -> None:
        """Write every put state once, with ``writer`` (see ChangelogWriter); ``context`` names the
        partition for stores that look at the current event (RocksDB picks its database by it);
        None for stores that do not."""
        self._write(writer, context)
        await writer.send()

    def _write(self, sink: ChangelogWriter, context: Any) -> None:
        enter = context.enter if context is not None else (lambda _message: None)
        try:
            for key, plan in self._plans.items():
                source = self._sources[b"s:" + key]
                enter(source)
                sink.stage(self._subscribers, key, plan.encode() if plan is not None else None, source.partition)
            for key, state in self._put_periods.items():
                source = self._sources[key]
                enter(source)
                if state is None:  # a dropped month: its head and its sealed chunks
                    for number in range(self._dropped.get(key, 0)):
                        sink.stage(self._periods, chunk_key(key, number), None, source.partition)
                    sink.stage(self._periods, key, None, source.partition)
                    self._caches.periods.forget(key)
                    continue
                # the chunks before the head that counts them, on the same changelog partition
                for number, chunk in state.seal():
                    sink.stage(self._periods, chunk_key(key, number), chunk, source.partition)
                raw = state.encode()
                sink.stage(self._periods, key, raw, source.partition)
                self._caches.periods.remember(key, raw, state)
            per_user: tuple[tuple[dict[bytes, Any], bytes, Any, _DecodeCache[Any]], ...] = (
                (self._put_users, b"u:", self._users, self._caches.users),
                (self._put_fraud, b"f:", self._fraud, self._caches.fraud),
            )
            for key, customer in self._put_customers.items():
                source = self._sources[key]
                enter(source)
                sink.stage(self._fraud, key, customer.encode(), source.partition)
            for puts, prefix, table, cache in per_user:
                for key, ustate in puts.items():
                    source = self._sources[prefix + key]
                    enter(source)
                    raw = ustate.encode()
                    sink.stage(table, key, raw, source.partition)
                    cache.remember(key, raw, ustate)
            for key, shared in self._put_shared.items():
                source = self._sources[b"x:" + key]
                enter(source)
                sink.stage(self._fraud, key, shared, source.partition)
        finally:
            if context is not None:
                context.leave()
        self.discard(keep_written=True)

    def discard(self, keep_written: bool = False) -> None:
        """Forget decoded objects the engine may have mutated without a write."""
        for key in self._read_periods:
            if not (keep_written and key in self._put_periods):
                self._caches.periods.forget(key)
        for key in self._read_users:
            if not (keep_written and key in self._put_users):
                self._caches.users.forget(key)
        for key in self._read_fraud:
            if not (keep_written and key in self._put_fraud):
                self._caches.fraud.forget(key)
        if not keep_written:
            for key in self._put_periods:
                self._caches.periods.forget(key)
            for key in self._put_users:
                self._caches.users.forget(key)
            for key in self._put_fraud:
                self._caches.fraud.forget(key)


def _get(key: bytes, puts: dict[bytes, T], read_raw: Callable[[bytes], bytes | None], read: set[bytes],
         cache: _DecodeCache[T]) -> T | None:
    """A per-user state: as put in this batch, else decoded from its table (and remembered as read)."""
    if key in puts:
        return puts[key]
    raw = read_raw(key)
    if raw is None:
        return None
    read.add(key)
    return cache.get(key, raw)


class TableCaches:
    def __init__(self, periods: Any = None) -> None:
        """``periods``: the table the months' sealed chunks are read from."""
        self.periods_table = periods
        self.periods: _DecodeCache[PeriodState] = _DecodeCache(self._decode_period)
        self.users: _DecodeCache[UserState] = _DecodeCache(lambda _key, raw: UserState.decode(raw))
        self.fraud: _DecodeCache[FraudState] = _DecodeCache(lambda _key, raw: FraudState.decode(raw))

    def _decode_period(self, key: bytes, raw: bytes) -> PeriodState:
        table = self.periods_table
        return PeriodState.decode(raw, period_reader(_backing(table), key) if table is not None else None)
