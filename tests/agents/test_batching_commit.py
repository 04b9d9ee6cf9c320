"""The batch consumer's commit when the broker refuses one: a commit sent while the group
rebalances fails ("already rebalanced"), yet Faust has already taken its offsets off the
acknowledged ones and counts them as committed. Without another try, a partition whose last
commit failed stays behind its end for as long as no new input comes: its lag never reaches 0,
and a restart redoes what was done.

No broker: the consumer of an app that is not started (as in ``test_batching_gaps``), its
checkpoint replaced by one that answers as the broker did."""

from __future__ import annotations

from typing import Any, Mapping

from faust.types import TP

from tests.agents.test_batching_gaps import TP0, consume


class Broker:
    """A checkpoint whose commits the broker takes or refuses, in the order of ``answers``."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.sent: list[dict[TP, int]] = []
        self.committed: dict[TP, int] = {}

    async def commit(self, offsets: Mapping[TP, int], _commit_offsets: Any) -> bool:
        self.sent.append(dict(offsets))
        taken = self.answers.pop(0) if self.answers else True
        if taken:
            self.committed.update(offsets)
        return taken


async def commit_round(consumer: Any) -> bool:
    return bool(await consumer._commit_tps(list(consumer._acked), start_new_transaction=False))


async def test_a_refused_commit_is_sent_again_with_the_next_one() -> None:
    consumer, handled = await consume([[0, 1, 2]])
    assert handled == [0, 1, 2]
    broker = consumer.app.cdrwatch_checkpoint = Broker(False)
    consumer.assignment = lambda: {TP0}
    assert await commit_round(consumer) is False  # the last input: nothing new will be acknowledged
    assert await commit_round(consumer) is True
    assert broker.sent == [{TP0: 3}, {TP0: 3}]
    assert broker.committed == {TP0: 3}
    assert await commit_round(consumer) is False and len(broker.sent) == 2  # done: nothing more to send


async def test_a_refused_commit_goes_with_newer_offsets() -> None:
    consumer, _ = await consume([[0, 1, 2]])
    broker = consumer.app.cdrwatch_checkpoint = Broker(False)
    consumer.assignment = lambda: {TP0}
    await commit_round(consumer)
    for offset in (3, 4):  # more input handled meanwhile
        consumer._acked[TP0].append(offset)
        consumer._acked_index[TP0].add(offset)
    await commit_round(consumer)
    assert broker.sent == [{TP0: 3}, {TP0: 5}] and broker.committed == {TP0: 5}


async def test_a_refused_commit_of_a_partition_revoked_since_is_dropped() -> None:
    consumer, _ = await consume([[0, 1, 2]])
    broker = consumer.app.cdrwatch_checkpoint = Broker(False)
    consumer.assignment = lambda: {TP0}
    await commit_round(consumer)
    await consumer.on_partitions_revoked({TP0})
    consumer.assignment = lambda: set()
    assert await commit_round(consumer) is False
    assert broker.sent == [{TP0: 3}] and broker.committed == {}
