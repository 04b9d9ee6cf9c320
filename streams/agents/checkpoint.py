"""The commit protocol of a worker, in one place.

A batch of input changes the world in three ways, and they become durable in this order:

1. **outputs** — its alerts, re-bill lines, fraud alerts, account actions, DLQ records and re-keyed
   messages. ``Pipeline.handle_batch`` awaits the broker's acknowledgement (acks=all) of every one
   of them before it stages the batch's state, so no state change ever hides an unsent output;
2. **changelogs** — each touched state, one record per key, handed to the producer by the
   changelog writer's queues and acknowledged by the broker;
3. **offsets** — the input offsets of the messages handled, committed for the consumer group.

A crash between any two steps redoes the batch from its input (at-least-once): its outputs come
again with the same ids, its state is rebuilt the same. ``Checkpoint.commit`` is what the
consumer calls in place of Faust's flush-then-commit.

With ``exactly_once`` the same three steps run inside one Kafka transaction per input partition
(``Checkpoint.commit_transactions``): the batch's outputs go into its partition's open
transaction, then its changelog records, then the transaction commits with the partition's input
offsets — all visible to ``read_committed`` consumers together, or none of them. A worker that
dies mid-transaction leaves it open; the partition's next owner fences it (same transactional
id) and the broker aborts it, so the batch is redone and nothing of the first try is seen.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

from faust.types import TP

Flush = Callable[[], Awaitable[None]]
CommitOffsets = Callable[[Mapping[TP, int]], Awaitable[bool]]


class Checkpoint:
    """``commit(offsets, commit_offsets)`` = outputs delivered → changelogs delivered → offsets."""

    def __init__(self, flush_producer: Flush, drain_changelogs: Flush) -> None:
        self._flush_producer = flush_producer  # waits until the producer's buffer is acknowledged
        self._drain_changelogs = drain_changelogs  # hands every queued changelog batch to the producer

    async def commit(self, offsets: Mapping[TP, int], commit_offsets: CommitOffsets) -> bool:
        await self.outputs()
        await self.changelogs()
        return await commit_offsets(offsets)

    async def commit_transactions(self, offsets: Mapping[TP, int], commit_transactions: CommitOffsets) -> bool:
        """exactly_once: outputs are in their transactions already (sent with their batch); the
        changelog records join them; each transaction then commits with its offsets (its commit
        waits for every record sent in it)."""
        await self._drain_changelogs()
        return await commit_transactions(offsets)

    async def outputs(self) -> None:
        """Delivered with their batch already; anything the producer still holds (sends of Faust's
        own, e.g. a table write on the per-event path) is acknowledged now."""
        await self._flush_producer()

    async def changelogs(self) -> None:
        """Every staged state record reaches the producer, then the broker."""
        await self._drain_changelogs()
        await self._flush_producer()
