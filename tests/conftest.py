"""Shared fixtures: settings, config, a pipeline on the memory store, the embedded broker, and
Apache Kafka (one broker, or a cluster of three)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from streams.agents.pipeline import Pipeline, build_pipeline
from streams.topics import INPUT_TOPICS
from streams.core.plans import PlanBook
from streams.core.rates import RateDeck
from streams.tools.embedded import EmbeddedBroker
from streams.settings import load_plans_and_rates
from streams.settings import Settings
from tests.agents.sinks import RecordingProducer
from tests.brokers import Broker
from tests.kafka_cluster import KafkaCluster


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(store="memory://", web_enabled=False, partitions=4)


@pytest.fixture(scope="session")
def config(settings: Settings) -> tuple[PlanBook, RateDeck]:
    return load_plans_and_rates(settings)


@pytest.fixture()
async def pipeline(settings: Settings, config: tuple[PlanBook, RateDeck], tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A pipeline whose output and DLQ topics are in-memory channels and whose changelog records go
    to an in-process producer (agent tests, no broker): batches go through the worker's own path."""
    plans, rates = config
    pipe = build_pipeline(settings.with_(app_id=f"test-{uuid.uuid4().hex[:8]}", data_dir=tmp_path), plans, rates)
    taps: dict[str, object] = {}
    for name in list(pipe.topics):
        if name not in INPUT_TOPICS:
            channel = pipe.app.channel(key_type=bytes, value_type=bytes)
            pipe.topics[name] = channel
            # a channel only delivers to iterators that exist when a message is sent
            taps[name] = channel.__aiter__()
    pipe.taps = taps  # type: ignore[attr-defined]
    # the changelog writer's batches go to an in-process producer, acknowledged at once
    sink = RecordingProducer(acknowledge=True)
    pipe.writer._producer = lambda _tid: sink  # type: ignore[method-assign]
    pipe.changelog = sink  # type: ignore[attr-defined]
    pipe.app.finalize()
    pipe.app.conf.store = "memory://"
    pipe.app.flow_control.resume()
    yield pipe


@pytest.fixture(scope="session")
def tansu() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the integration tests of a session; always stopped."""
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.fixture(scope="session", params=["tansu", pytest.param("kafka", marks=pytest.mark.kafka)])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each integration test that takes ``broker`` runs twice: on the embedded Tansu broker and on
    Apache Kafka (one node). Tests of one broker's own behaviour take ``tansu`` or ``kafka``."""
    found: Broker = request.getfixturevalue(request.param)
    return found


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaCluster]:
    """One Apache Kafka broker (KRaft, deploy/kafka/) for the tests of a session; always stopped.
    The jars are fetched from Maven Central on first use (deploy/kafka/kafka.sh fetch)."""
    with KafkaCluster(nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Three Apache Kafka nodes, each broker and controller: replication factor 3,
    min.insync.replicas 2. Always stopped; a node a test leaves killed or stopped is started
    again after that test (``_kafka_cluster_whole``)."""
    with KafkaCluster(nodes=3) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _kafka_cluster_whole(request: pytest.FixtureRequest) -> Iterator[None]:
    """The next test gets all three nodes of ``kafka_cluster``, whatever this one did to them."""
    yield
    if "kafka_cluster" in request.fixturenames:
        cluster: KafkaCluster = request.getfixturevalue("kafka_cluster")
        if cluster.stopped_ids:
            cluster.start()
