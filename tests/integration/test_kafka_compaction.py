"""The compacted ``subscribers`` topic after Apache Kafka's log cleaner has really run.

Every user is switched between plans many times; some end on a plan, some with a tombstone (back
to the default plan). The test waits until the broker's log cleaner has compacted the topic —
twice: the second pass also drops the tombstones of the first one, as ``delete.retention.ms``
allows — and checks what the cleaner left by reading each partition from the beginning: only each
user's last record, with holes of two offsets or more between them (Faust's commit goes past a
hole of one offset on its own).

A worker of a new consumer group then reads the topic from the beginning, with a CDR of each user
after it. It must apply each user's last plan (a tombstoned user is on the default plan again),
and its commits must go past the holes: the committed offset of every ``subscribers`` partition
reaches the partition's end, and the group has no lag left. A consumer that commits only up to the
first hole would re-read the topic at every restart and report lag on it for ever.

The run is made twice: once where every partition's first record is replaced later, once where
the first subscriber of each partition never changes plan (offset 0 stays, a hole follows it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from streams.agents.pipeline import Pipeline, build_pipeline
from streams.topics import ALL_TOPICS
from streams.settings import load_plans_and_rates
from streams.tools.embedded import create_topics
from streams.tools.replay import InputMessage, _message, _wait_processed, committed_offsets, end_offsets, group_lag, produce
from streams.settings import Settings
from tests.kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 2
SEGMENT_MS = 100  # a segment is closed, and so cleanable, once it is this old and a record comes
# The cleaner looks for work again this soon after finding none (the broker's default: 15 s)
CLEANER_BACKOFF_MS = 100
SUBSCRIBERS_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(SEGMENT_MS),
    "segment.bytes": str(1024 * 1024),  # the smallest Apache Kafka takes: segments roll on time here
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",  # a tombstone one pass keeps goes at the next pass
}

DEFAULT_PLAN = "full-illimite"
# fixe-illimite counts UK personal numbers (+4470) as high-risk destinations, the other plans do
# not: one call there raises a fraud alert on that plan only.
WATCHED_PLAN = "fixe-illimite"
ROTATION = ("pro-illimite", "fixe-illimite", "full-illimite")
UK_PERSONAL_NUMBER = "+447012345678"

USERS = [f"user-{n:02d}" for n in range(1, 13)]
# Each user's last word in the first round of changes (None: a tombstone); the cleaner's second
# pass removes these tombstones, and the users' every record with them.
FIRST_ROUND_FINAL: dict[str, str | None] = {
    user: (WATCHED_PLAN, "pro-illimite", None, DEFAULT_PLAN)[n % 4] for n, user in enumerate(USERS)
}
# Users whose plan changes again later, with what they end on: these tombstones are still in the
# log when the worker reads it.
LATE_FINAL: dict[str, str | None] = {"user-01": "pro-illimite", "user-04": None, "user-07": WATCHED_PLAN,
                                     "user-10": None}


def partition_of(key: str) -> int:
    """Where the producer's default partitioner puts ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def one_per_partition(prefix: str) -> list[str]:
    """User names, the first of each partition among ``prefix-0``, ``prefix-1``, ...: one per
    partition, in partition order."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < PARTITIONS:
        name = f"{prefix}-{n}"
        found.setdefault(partition_of(name), name)
        n += 1
    return [found[p] for p in range(PARTITIONS)]


def value(plan: str | None) -> bytes | None:
    return None if plan is None else orjson.dumps({"customer": "acme", "plan": plan})


Batch = list[tuple[str, str | None]]  # (user, plan; None: a tombstone)


def first_round(steady: list[str]) -> list[Batch]:
    """Batches of (user, plan or None), each to land in a segment of its own: every user changes
    plan 4 times per batch, users finish in different batches (the last ones to finish leave
    holes between the records of the others), a tombstone comes after the watched plan."""
    batches: list[Batch] = [[(user, "pro-illimite") for user in steady]]
    versions = dict.fromkeys(USERS, 0)
    for number in range(6):
        batch: Batch = []
        for step in range(4):
            for n, user in enumerate(USERS):
                finish = 2 + n % 4
                if number > finish:
                    continue
                if number == finish and step == 3:
                    plan = FIRST_ROUND_FINAL[user]
                elif number == finish and step == 2 and FIRST_ROUND_FINAL[user] is None:
                    plan = WATCHED_PLAN
                else:
                    plan = ROTATION[(n + versions[user]) % len(ROTATION)]
                versions[user] += 1
                batch.append((user, plan))
        batches.append(batch)
    return batches


def late_round() -> list[Batch]:
    batch: Batch = []
    for step in range(3):
        for n, (user, final) in enumerate(LATE_FINAL.items()):
            if step < 2:
                batch.append((user, ROTATION[(n + step) % len(ROTATION)]))
            else:
                batch.append((user, WATCHED_PLAN if final is None else final))
                if final is None:
                    batch.append((user, None))
    return [batch]


@dataclass
class Written:
    """What was sent to ``subscribers``: per partition, each key's offsets."""

    offsets: dict[int, dict[str, list[int]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    tombstones: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    count: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    final: dict[str, str | None] = field(default_factory=dict)

    def last_offsets(self, partition: int) -> dict[str, int]:
        return {key: offsets[-1] for key, offsets in self.offsets[partition].items()}


async def send_batches(settings: Settings, batches: list[Batch], written: Written) -> None:
    """Each batch acknowledged, then a pause so that the next record starts a new segment."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **settings.client_kwargs())
    await producer.start()
    try:
        for batch in batches:
            sent = [await producer.send(settings.topic("subscribers"), key=user.encode(), value=value(plan))
                    for user, plan in batch]
            for (user, plan), meta in zip(batch, await asyncio.gather(*sent), strict=True):
                assert meta.partition == partition_of(user)
                written.offsets[meta.partition][user].append(meta.offset)
                written.count[meta.partition] += 1
                if plan is None:
                    written.tombstones[meta.partition].add(meta.offset)
                written.final[user] = plan
            await asyncio.sleep(2.5 * SEGMENT_MS / 1000)
    finally:
        await producer.stop()


async def close_segments(settings: Settings, written: Written, newcomers: str) -> None:
    """A new subscriber on each partition, in a new segment: the segments before it are no longer
    the active one, which the cleaner never touches (nor reads: a key written again there would
    keep its older record)."""
    await send_batches(settings, [[(user, "pro-illimite") for user in one_per_partition(newcomers)]], written)


async def read_log(settings: Settings) -> dict[int, list[tuple[int, str, bytes | None]]]:
    """Every record of each ``subscribers`` partition, from the beginning: (offset, key, value)."""
    tps = [TopicPartition(settings.topic("subscribers"), p) for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.client_kwargs())
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got: dict[int, list[tuple[int, str, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
        pending = [tp for tp in tps if ends[tp] > 0]
        async with asyncio.timeout(20):
            while pending:
                for tp, records in (await consumer.getmany(*pending, timeout_ms=500)).items():
                    got[tp.partition] += [(r.offset, r.key.decode(), r.value) for r in records]
                pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return got
    finally:
        await consumer.stop()


def holes(records: list[tuple[int, str, bytes | None]]) -> list[tuple[int, int]]:
    """(first, last) offsets without a record between two records that are there."""
    return [(a + 1, b - 1) for (a, _, _), (b, _, _) in zip(records, records[1:]) if b - a > 1]


def compaction(written: Written, tombstones_gone: set[int]) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """What complete passes of the cleaner leave of each partition: the offsets that must be there
    (each key's last record, less the tombstones ``tombstones_gone``), and those that may be (the
    other last records that are tombstones: a pass keeps a tombstone it sees for the first time,
    a later one drops it, and the cleaner may already have run while the batches were sent)."""
    must: dict[int, set[int]] = {}
    may: dict[int, set[int]] = {}
    for p in range(PARTITIONS):
        last = set(written.last_offsets(p).values()) - tombstones_gone
        may[p] = last & written.tombstones[p]
        must[p] = last - may[p]
    return must, may


async def wait_cleaned(settings: Settings, must: dict[int, set[int]], may: dict[int, set[int]], what: str,
                       timeout_s: float = 20.0) -> dict[int, list[tuple[int, str, bytes | None]]]:
    """Until reading the partitions from the beginning finds the offsets ``must``, and besides
    them only some of ``may``."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = await read_log(settings)
        found = {p: {offset for offset, _, _ in records} for p, records in log.items()}
        if all(must[p] <= found[p] <= must[p] | may[p] for p in range(PARTITIONS)):
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"the log cleaner did not {what} within {timeout_s:.0f} s: offsets "
                                 f"{ {p: sorted(f) for p, f in found.items()} }, expected "
                                 f"{ {p: sorted(m) for p, m in must.items()} } and some of "
                                 f"{ {p: sorted(m) for p, m in may.items()} }")
        await asyncio.sleep(0.2)


async def create_run_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(settings.topic("subscribers"), PARTITIONS, 1,
                                                       topic_configs=SUBSCRIBERS_CONFIG)])
    finally:
        await admin.close()
    errors = [(topic, code, message) for topic, code, message in response.topic_errors if code]
    assert not errors, errors
    await create_topics(settings.client_kwargs(), [settings.topic(t) for t in ALL_TOPICS], PARTITIONS)


def uk_call(user: str) -> InputMessage:
    start = "2026-11-03T10:00:00+01:00"
    cdr = {"event": "end", "call_id": f"{user}-uk", "user": user, "customer": "acme", "caller": "0140000000",
           "callee": UK_PERSONAL_NUMBER, "direction": "outbound", "start_time": start,
           "answer_time": "2026-11-03T10:00:05+01:00", "end_time": "2026-11-03T10:00:35+01:00",
           "billsec": 30, "disposition": "ANSWERED"}
    return _message("cdrs", orjson.dumps(cdr), cdr, "start_time")


@dataclass
class WorkerRun:
    plans: dict[str, str]  # each user's plan in the worker's table (the default one if none)
    fraud_alerts: list[dict[str, Any]]
    ends: dict[TopicPartition, int]
    committed: dict[TopicPartition, int | None]
    lag: int


async def run_worker(settings: Settings, subscriber_records: int, users: list[str],
                     commit_timeout_s: float = 10.0) -> WorkerRun:
    """A worker of a new consumer group: it reads ``subscribers`` from the beginning, then a UK
    call of each user; then wait (up to ``commit_timeout_s``) until it has committed the end of
    every ``subscribers`` partition and the group has no lag."""
    plans, rates = load_plans_and_rates(settings)
    assert plans.default_plan == DEFAULT_PLAN
    pipeline: Pipeline = build_pipeline(settings, plans, rates)
    fraud: list[dict[str, Any]] = []
    pipeline.on_output.append(lambda topic, p: fraud.append(p) if topic == "fraud-alerts" else None)
    inputs = [settings.topic(t) for t in ("subscribers", "cdrs")]
    subscribers = [TopicPartition(settings.topic("subscribers"), p) for p in range(PARTITIONS)]
    pipeline.app.finalize()
    await pipeline.app.start()
    try:
        await _wait_processed(pipeline, subscriber_records, 30, None)
        calls = [uk_call(user) for user in users]
        await produce(settings, calls)
        await _wait_processed(pipeline, subscriber_records + len(calls), 30, None)
        store = pipeline.store()
        table = {user: store.plan_of(user) or plans.default_plan for user in users}
        ends = await end_offsets(settings, [settings.topic("subscribers")])
        deadline = time.monotonic() + commit_timeout_s
        while True:
            committed = await committed_offsets(settings, subscribers)
            lag = await group_lag(settings, inputs)
            if (committed == ends and lag == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await pipeline.app.stop()
    return WorkerRun(table, fraud, ends, committed, lag)


@pytest.fixture(scope="module")
def compacting_kafka() -> Iterator[KafkaCluster]:
    """One Apache Kafka broker whose log cleaner looks for work every 100 ms instead of every 15 s
    once it has found none: the test waits for two of its passes."""
    with KafkaCluster(nodes=1, properties={"log.cleaner.backoff.ms": str(CLEANER_BACKOFF_MS)}) as cluster:
        yield cluster


@pytest.mark.parametrize("steady", [
    pytest.param(False, id="every-first-record-replaced"),
    # the topic's first subscriber on each partition keeps its plan: offset 0 stays, then a hole
    pytest.param(True, id="first-subscriber-never-changes"),
])
def test_a_worker_applies_the_compacted_subscribers_and_commits_past_the_holes(
        compacting_kafka: KafkaCluster, tmp_path: Path, steady: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=compacting_kafka.url, store="memory://", data_dir=tmp_path,
                        app_id=f"compaction-{tag}", topic_prefix=f"compaction-{tag}-", web_enabled=False,
                        partitions=PARTITIONS)
    assert {partition_of(user) for user in USERS} == set(range(PARTITIONS))
    steady_ones = one_per_partition("steady") if steady else []
    written = Written()

    async def write_and_compact() -> dict[int, list[tuple[int, str, bytes | None]]]:
        await create_run_topics(settings)
        await send_batches(settings, first_round(steady_ones), written)
        await close_segments(settings, written, "newcomer")
        # each user's last record only (a tombstone stays at the first pass that sees it)
        await wait_cleaned(settings, *compaction(written, set()), "compact the first round")
        first_tombstones = {o for p in range(PARTITIONS) for o in written.tombstones[p]}
        await send_batches(settings, late_round(), written)
        await close_segments(settings, written, "late-newcomer")
        # the late changes compacted, and the first round's tombstones gone: their deletion
        # horizon (delete.retention.ms after the pass that kept them) has passed
        return await wait_cleaned(settings, *compaction(written, first_tombstones), "drop the first tombstones")

    log = asyncio.run(write_and_compact())

    # What the cleaner left: fewer records than written, holes of two offsets or more between them,
    # both kinds of tombstoned users (gone from the log, tombstone still there)
    for p, records in log.items():
        assert len(records) < written.count[p]
        assert any(last - first >= 1 for first, last in holes(records)), (p, holes(records))
        if steady:
            assert records[0][0] == 0 and records[1][0] >= 3, records[:2]  # offset 0 kept, then a hole
    survivors = {key: v for records in log.values() for _, key, v in records}
    tombstoned = sorted(u for u, plan in written.final.items() if plan is None)
    assert tombstoned and set(tombstoned) - set(survivors), "a tombstoned user gone from the log"
    assert any(survivors.get(u, b"") is None for u in tombstoned), "a tombstone still in the log"
    expected = {user: plan or DEFAULT_PLAN for user, plan in written.final.items()}
    assert set(expected.values()) == {DEFAULT_PLAN, *ROTATION}

    run = asyncio.run(run_worker(settings, sum(len(r) for r in log.values()), sorted(written.final)))

    # (1) every user on its last plan, tombstoned ones on the default plan: in the worker's table,
    # and in what a call costs (a fraud alert on the watched plan only, naming it)
    assert run.plans == expected
    alerted = {a["user"]: a["plan"] for a in run.fraud_alerts if a["rule"] == "high_risk_destination"}
    assert alerted == {u: WATCHED_PLAN for u, plan in expected.items() if plan == WATCHED_PLAN}
    # (2) the group's commit reached the end of every subscribers partition, past every hole
    assert run.committed == run.ends, (
        f"committed {run.committed}, end offsets {run.ends}; holes "
        f"{ {p: holes(records)[:3] for p, records in log.items()} }")
    # (3) nothing left to read
    assert run.lag == 0
