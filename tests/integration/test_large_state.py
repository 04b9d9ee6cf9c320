"""A user-month of ≈ 1.2 MB of state: stored as a log of small records (the month's head and its
sealed chunks), so no record nears a size limit, and the month keeps counting."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.agents.pipeline import Pipeline
from streams.tools.replay import _message, replay
from streams.settings import Settings
from tests.factories import cdr_payload
from tests.brokers import Broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALLS = 17_000  # every 150 s for 29.5 days: ≈ 1.2 MB of state for the month


def test_a_month_over_one_megabyte_is_stored_and_counted(broker: Broker) -> None:
    start = datetime.fromisoformat("2026-11-01T00:00:00+01:00")
    messages = []
    for n in range(CALLS):
        at = start + timedelta(seconds=150 * n)
        payload = cdr_payload(call_id=f"big-{n}", user="big", start_time=at.isoformat(),
                              answer_time=(at + timedelta(seconds=5)).isoformat(),
                              end_time=(at + timedelta(seconds=66)).isoformat())
        messages.append(_message("cdrs", orjson.dumps(payload), payload, "start_time"))
    pipelines: list[Pipeline] = []
    result = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=300,
                                on_pipeline=pipelines.append))
    assert result.dlq == [] and result.counts.get(("cdrs", "ok")) == CALLS
    (pipeline,) = pipelines
    assert pipeline.failure is None
    sizes: dict[Any, int] = {key: len(raw) for key, raw in pipeline.periods.data.items()}
    assert sum(sizes.values()) > 1024 * 1024  # the month is past Kafka's default record limit...
    assert max(sizes.values()) < 64 * 1024, max(sizes.values())  # ...and no record comes near it
    assert len(sizes) > 100  # the head and its sealed chunks
    (row,) = [r for r in result.summary or [] if r.user == "big"]
    assert row.covered_calls == CALLS
