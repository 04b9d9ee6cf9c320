"""Shared fixtures: settings, config, a pipeline on the memory store, and the embedded broker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from streams.agents.usage import Pipeline, build_pipeline
from streams.core.plans import PlanBook
from streams.core.rates import RateDeck
from streams.embedded import EmbeddedBroker
from streams.config import load_config
from streams.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(store="memory://", web_enabled=False, partitions=4)


@pytest.fixture(scope="session")
def config(settings: Settings) -> tuple[PlanBook, RateDeck]:
    return load_config(settings)


@pytest.fixture()
async def pipeline(settings: Settings, config: tuple[PlanBook, RateDeck], tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A pipeline whose output and DLQ topics are in-memory channels (agent tests, no broker)."""
    plans, rates = config
    pipe = build_pipeline(settings.with_(app_id=f"test-{uuid.uuid4().hex[:8]}", data_dir=tmp_path), plans, rates)
    taps: dict[str, object] = {}
    for name in list(pipe.topics):
        if name not in ("cdrs", "sip-registrations", "subscribers"):
            channel = pipe.app.channel(key_type=bytes, value_type=bytes)
            pipe.topics[name] = channel
            # a channel only delivers to iterators that exist when a message is sent
            taps[name] = channel.__aiter__()
    pipe.taps = taps  # type: ignore[attr-defined]
    pipe.app.finalize()
    pipe.app.conf.store = "memory://"
    pipe.app.flow_control.resume()
    yield pipe


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the integration tests of a session; always stopped."""
    with EmbeddedBroker() as embedded:
        yield embedded
