"""The batch loop around a rebalance: nothing is read twice into one transaction.

- The seek to the committed offsets that ends a recovery goes partition by partition, with the
  stream partitions resumed already (and on a worker's first assignment with the flow active): a
  batch read before the seek reaches its partition would be read again after it.
- Faust drops the acknowledged offsets of revoked partitions before it commits: under
  exactly_once the batches handled since the last commit must commit first, or a partition the
  worker keeps is read again into the transaction that already holds them.

No broker: the consumer of an app that is not started (as in ``test_batching_gaps``)."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from faust.types import TP

from tests.agents.test_batching_gaps import TP0, consume, drain


async def test_records_read_while_the_partitions_are_seeked_wait_for_the_seek() -> None:
    consumer, handled = await consume([])
    seeking, release = asyncio.Event(), asyncio.Event()

    async def seek_to_committed() -> dict[TP, int]:  # the broker's answer takes a while
        seeking.set()
        await release.wait()
        return {TP0: 10}

    consumer.seek_to_committed = seek_to_committed
    seek = asyncio.ensure_future(consumer.perform_seek())
    await seeking.wait()
    # a fetch from the position the partition had before the seek, then the same records read
    # again from where the seek leaves it
    loop = asyncio.ensure_future(drain(consumer, [[10, 11, 12], [10, 11, 12]]))
    await asyncio.sleep(0.05)
    assert handled == [], "records handed over while the seek was under way"
    release.set()
    await seek
    await loop
    assert handled == [10, 11, 12]


class Transactions:
    """A checkpoint whose transactions commit (exactly_once)."""

    def __init__(self) -> None:
        self.committed: list[dict[TP, int]] = []

    async def commit_transactions(self, offsets: Mapping[TP, int], _commit: Any) -> bool:
        self.committed.append(dict(offsets))
        return True


async def test_exactly_once_commits_the_handled_batches_before_a_revocation() -> None:
    consumer, handled = await consume([[0, 1, 2], [3, 4]])
    assert handled == [0, 1, 2, 3, 4]
    consumer.in_transaction = True
    transactions = consumer.app.cdrwatch_checkpoint = Transactions()
    consumer.assignment = lambda: {TP0}
    revoked: list[set[TP]] = []

    async def app_revoked(tps: set[TP]) -> None:  # the app's part: waits for the streams, commits
        revoked.append(set(tps))
        await consumer.commit()

    consumer._on_partitions_revoked = app_revoked
    await consumer.on_partitions_revoked({TP0})
    assert transactions.committed == [{TP0: 5}]
    assert revoked == [{TP0}]
    assert not consumer.flow_active  # no batch begins before the new assignment's recovery
