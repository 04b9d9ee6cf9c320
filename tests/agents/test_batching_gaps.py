"""The batch consumer's loop on partitions whose offsets skip: a compacted topic (``subscribers``)
once the log cleaner has run, or transaction markers. Faust commits an offset only after a run of
acknowledged offsets with no hole; the offsets that hold no record must be recorded as gaps, as
Faust's own loop does, or the commit stops before the first hole of two offsets or more.

No broker: the consumer of a Faust app that is not started, fed by a stub fetch; commits are
Faust's own choice of committable offsets, applied as a successful commit would apply them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.agents.batching import App, attach

TOPIC = "subscribers"
TP0 = TP(TOPIC, 0)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic=TOPIC, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"u",
                          value=b"{}", checksum=None, serialized_key_size=1, serialized_value_size=2, headers=[])


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


async def consume(fetches: list[list[int]], *, committed: int | None = None) -> tuple[Any, list[int]]:
    """Run the batch loop over ``fetches`` (the offsets each fetch returns) from ``committed``;
    return the consumer and the offsets the handler was given."""
    app = App(f"gaps-{id(fetches)}", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False,
              web_enabled=False)
    handled: list[int] = []

    async def run(messages: list[Any]) -> None:
        handled.extend(m.offset for m in messages)

    attach(app, frozenset({TOPIC}), run)
    consumer = app.consumer
    if committed is not None:  # as Consumer.perform_seek leaves them after an assignment
        consumer._read_offset[TP0] = committed
        consumer._committed_offset[TP0] = committed
    consumer.highwater = lambda tp: 0
    app.topics.acks_enabled_for = lambda topic: True  # the agents' topics, once subscribed
    await drain(consumer, fetches)
    return consumer, handled


async def drain(consumer: Any, fetches: list[list[int]]) -> None:
    """Run the consumer's batch loop until it has been given ``fetches``."""
    pending = [{TP0: [record(o) for o in offsets]} for offsets in fetches]
    fetcher = _Fetcher()

    async def wait_next_records(timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        if not pending:
            fetcher._stopped.set()
            return {}, {TP0}
        return pending.pop(0), {TP0}

    consumer._wait_next_records = wait_next_records
    await consumer._drain_messages(fetcher)


def commit_rounds(consumer: Any, rounds: int) -> list[int | None]:
    """The committed offset after each of ``rounds`` commit intervals."""
    seen = []
    for _ in range(rounds):
        offsets = consumer._filter_committable_offsets([TP0])
        consumer._committed_offset.update(offsets)  # what Consumer._commit_offsets does on success
        seen.append(consumer._committed_offset[TP0])
    return seen


@pytest.mark.parametrize("fetches, committed", [
    pytest.param([[0, 1, 2, 5, 6], [9, 10], [14]], None, id="compacted"),
    pytest.param([[0, 1, 2], [6, 7]], None, id="hole-between-fetches"),
    pytest.param([[8, 9]], 5, id="hole-after-the-committed-offset"),
    pytest.param([[0, 5, 6]], None, id="hole-right-after-offset-0"),
    # a marker after each transaction; two in a row where two producers' transactions interleave
    pytest.param([[0, 1, 2, 4, 5, 8, 9]], None, id="transaction-markers"),
])
async def test_the_commit_goes_past_offsets_without_records(fetches: list[list[int]], committed: int | None) -> None:
    consumer, handled = await consume(fetches, committed=committed)
    assert handled == [o for offsets in fetches for o in offsets]
    end = fetches[-1][-1] + 1
    assert commit_rounds(consumer, 4)[-1] == end


async def test_without_holes_one_commit_takes_all() -> None:
    consumer, handled = await consume([[0, 1, 2], [3, 4]])
    assert handled == [0, 1, 2, 3, 4]
    assert commit_rounds(consumer, 1) == [5]


async def test_a_read_offset_rewound_after_the_loop_read_on_does_not_hold_the_commit_back() -> None:
    """The seek to the committed offsets that ends a recovery goes partition by partition; the loop
    may read a partition seeked already (684–3912) before the seek has finished with the others,
    and its end then sets the read offset back to the committed 684. The next fetch (3913 on) looks
    like it skipped 685–3912: a gap over offsets that were handled and acknowledged. Faust merged
    them twice, and its commit then moved one offset per commit interval (seen on a three-node
    Kafka after a worker and a broker were killed: 172 offsets in 180 s)."""
    consumer, _ = await consume([list(range(684, 3913))], committed=684)
    consumer._read_offset[TP0] = 684  # what Consumer.perform_seek sets when it ends
    await drain(consumer, [list(range(3913, 4752))])
    assert commit_rounds(consumer, 2) == [4752, 4752]
