"""`replay --speed X`: event time is played X times faster than real time."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.topics import ALL_TOPICS
from streams.tools.embedded import create_topics
from streams.tools.replay import InputMessage, produce
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("speed", "at_least", "at_most"), [(4.0, 1.4, 4.0), (None, 0.0, 1.3)])
def test_messages_are_sent_at_the_pace_of_their_event_time(
    tansu: Broker, speed: float | None, at_least: float, at_most: float
) -> None:
    settings = Settings(broker=tansu.url, topic_prefix=f"pace-{speed}-")
    asyncio.run(create_topics(tansu.bootstrap, [settings.topic(t) for t in ALL_TOPICS], 1))
    # 7 messages over 6 s of event time: 1.5 s of sending at 4x, no wait without --speed (the
    # bound, 1.3 s, leaves a slow machine time to start a producer and stays below the paced 1.4 s)
    messages = [InputMessage("cdrs", b"u", b"{}", 1_000_000.0 + 1000 * k) for k in range(7)]
    started = time.monotonic()
    sent = asyncio.run(produce(settings, messages, speed=speed))
    elapsed = time.monotonic() - started
    assert sent == 7
    assert at_least <= elapsed <= at_most, elapsed
