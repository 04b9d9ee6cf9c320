"""The direct changelog writer: values in the store at once, one record batch per changelog
partition, a refused batch reported (the table would no longer match its changelog)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from streams.agents.checkpoint import Checkpoint
from streams.agents.tables import ChangelogWriter
from tests.agents.sinks import RecordingProducer


@dataclass
class _Topic:
    name: str

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class _Table:
    name: str
    data: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> _Topic:
        return _Topic(f"app-{self.name}-changelog")


class _App:
    def __init__(self) -> None:
        self.producer = type("FaustProducer", (), {})()
        self.producer._producer = RecordingProducer()


async def test_one_batch_per_changelog_partition_and_a_refused_one_is_reported() -> None:
    app = _App()
    errors: list[tuple[str, BaseException]] = []
    writer = ChangelogWriter(app, on_error=lambda where, exc: errors.append((where, exc)))
    periods, fraud = _Table("periods"), _Table("fraud")
    writer.stage(periods, b"u1|2026-11", b"a", 0)
    writer.stage(periods, b"u2|2026-11", b"b", 1)
    writer.stage(periods, b"u3|2026-11", b"c", 1)
    writer.stage(fraud, b"u1", b"f", 0)
    writer.stage(periods, b"u2|2026-11", None, 1)  # a delete: gone from the store, a tombstone sent
    assert periods.data == {b"u1|2026-11": b"a", b"u3|2026-11": b"c"} and fraud.data == {b"u1": b"f"}
    await writer.send()
    await writer.drain()
    sent = app.producer._producer.sent
    assert sorted((t, p, n) for t, p, n, _ in sent) == [
        ("app-fraud-changelog", 0, 1), ("app-periods-changelog", 0, 1), ("app-periods-changelog", 1, 3)]
    for topic, partition, _, fut in sent:
        if (topic, partition) == ("app-periods-changelog", 1):
            fut.set_exception(MessageSizeTooLargeError())
        else:
            fut.set_result(type("Metadata", (), {"offset": 0})())
    await asyncio.sleep(0)  # done callbacks run
    assert [(where, type(exc)) for where, exc in errors] == [("app-periods-changelog/1", MessageSizeTooLargeError)]
    await writer.send()  # nothing staged since: nothing sent
    await writer.drain()
    assert len(sent) == 3


async def test_the_checkpoint_commits_offsets_only_after_the_queued_batches() -> None:
    """aiokafka takes a partition's next batch only once the previous one has left: the writer
    queues instead of waiting, and the commit (outputs → changelogs → offsets) waits for the queue."""
    app = _App()
    flushed: list[int] = []
    steps: list[str] = []

    async def flush() -> None:
        flushed.append(len(app.producer._producer.sent))
        steps.append("flush")

    async def commit_offsets(offsets: Any) -> bool:
        steps.append(f"offsets {dict(offsets)}")
        return True

    writer = ChangelogWriter(app)
    checkpoint = Checkpoint(flush, writer.drain)
    gate = asyncio.Event()
    real_send = app.producer._producer.send_batch

    async def slow_send_batch(batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await gate.wait()  # the previous batch of the partition has not left yet
        return await real_send(batch, topic, partition=partition)

    app.producer._producer.send_batch = slow_send_batch
    periods = _Table("periods")
    for n in range(3):
        writer.stage(periods, f"u{n}|2026-11".encode(), b"v", 0)
        await writer.send()  # returns at once: the worker goes on
    assert app.producer._producer.sent == []
    commit = asyncio.ensure_future(checkpoint.commit({"cdrs/0": 42}, commit_offsets))
    await asyncio.sleep(0.01)
    assert not commit.done()  # the commit waits for the queued batches...
    assert steps == ["flush"]  # (outputs: flushed; changelogs: still queued)
    gate.set()
    assert await commit
    assert flushed == [0, 3]  # ...then flushes the producer with all three in its hands
    assert steps == ["flush", "flush", "offsets {'cdrs/0': 42}"]  # and only then commits the offsets
    assert [p for _, p, _, _ in app.producer._producer.sent] == [0, 0, 0]


async def test_changelog_topics_and_the_producer_allow_records_of_a_busy_month(pipeline: Any) -> None:
    """Kafka's default 1 MB record limit would stop a user-month at ≈ 11,000 calls."""
    from streams.app import MAX_RECORD_BYTES

    assert MAX_RECORD_BYTES == 16 * 1024 * 1024
    assert pipeline.app.conf.producer_max_request_size == MAX_RECORD_BYTES
    for table in (pipeline.periods, pipeline.users, pipeline.subscribers, pipeline.fraud_table):
        assert table.changelog_topic.config == {"max.message.bytes": str(MAX_RECORD_BYTES)}
