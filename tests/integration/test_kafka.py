"""Apache Kafka itself (deploy/kafka/): one broker and a cluster of three answer, hold the settings of
deploy/kafka/broker.env, survive the loss of a partition leader, take the production topic layout
from deploy/kafka/create-topics.sh, and run a real cdrwatch worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from streams.tools.embedded import create_topics
from streams.settings import bundled_file
from tests.kafka_cluster import KAFKA_SH, KafkaCluster
from tests.unit.test_deploy import CREATE_TOPICS, DAY_MS, DLQ_TOPICS, INPUT_TOPICS, OUTPUT_TOPICS

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SAMPLE = bundled_file("sample")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's effective configuration, as the brokers report it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {res[3]: {entry[0]: entry[1] for entry in res[4]} for res in response.resources}


async def broker_configs(bootstrap: str, node_id: int, names: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node_id), dict.fromkeys(names))]
        )
    finally:
        await admin.close()
    return {entry[0]: entry[1] for res in response.resources for entry in res[4]}


# ---------------------------------------------------------------------------------------------
# One broker
# ---------------------------------------------------------------------------------------------


async def test_one_broker_produces_consumes_and_commits(kafka: KafkaCluster) -> None:
    topic, group = unique("smoke"), unique("smoke-group")
    await create_topics(kafka.bootstrap, [topic], partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, key=b"user-%d" % i, value=b"%d" % i) for i in range(50)]
    finally:
        await producer.stop()
    assert {m.partition for m in sent} == {0, 1, 2}, "keys spread over the partitions"

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        received: list[bytes] = []
        async with asyncio.timeout(30):
            while len(received) < 50:
                batches = await consumer.getmany(timeout_ms=1000)
                received += [record.value for records in batches.values() for record in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(received, key=int) == [b"%d" % i for i in range(50)]

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    ends: dict[int, int] = {}
    for m in sent:
        ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == ends


async def test_one_broker_runs_with_the_settings_of_broker_env(kafka: KafkaCluster) -> None:
    configs = await broker_configs(kafka.bootstrap, 1, ["auto.create.topics.enable", "group.initial.rebalance.delay.ms",
                                                        "offsets.topic.replication.factor", "min.insync.replicas"])
    assert configs == {"auto.create.topics.enable": "false", "group.initial.rebalance.delay.ms": "0",
                       "offsets.topic.replication.factor": "1", "min.insync.replicas": "1"}
    # and so a producer cannot create a topic by writing to it
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.send_and_wait(unique("typo"), b"x")
    finally:
        await producer.stop()


@pytest.mark.slow
def test_create_topics_sh_lays_out_the_production_topics(kafka: KafkaCluster) -> None:
    """The script the topics-init service runs, with the same tool from the jars of deploy/kafka/.

    It creates the unprefixed production topic names on the session's broker: other tests there
    use topics of their own (a prefix, as `cdrwatch replay --broker` does)."""
    env = {**os.environ, "KAFKA_TOPICS": f"bash {KAFKA_SH} topics", "BOOTSTRAP_SERVER": kafka.bootstrap,
           "CDRWATCH_PARTITIONS": "3", "CDRWATCH_REPLICATION_FACTOR": "1"}
    done = subprocess.run(["bash", str(CREATE_TOPICS)], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    all_topics = sorted({*INPUT_TOPICS, *OUTPUT_TOPICS, *DLQ_TOPICS})
    assert f"create-topics: {len(all_topics)} topics ready on {kafka.bootstrap}" in done.stdout

    for topic in all_topics:
        partitions = kafka.partitions(topic)
        assert sorted(partitions) == [0, 1, 2], topic
        assert all(state.replicas == (1,) for state in partitions.values()), topic
    configs = asyncio.run(topic_configs(kafka.bootstrap, all_topics))
    for topic in ("cdrs", "sip-registrations", *DLQ_TOPICS):
        assert configs[topic]["retention.ms"] == str(40 * DAY_MS), topic
        assert configs[topic]["cleanup.policy"] == "delete", topic
    for topic in OUTPUT_TOPICS:
        assert configs[topic]["retention.ms"] == str(400 * DAY_MS), topic
    assert configs["subscribers"]["cleanup.policy"] == "compact"

    # kafka-configs.sh from the same jars sees the compacted topic's own setting
    described = subprocess.run(
        ["bash", str(KAFKA_SH), "configs", "--bootstrap-server", kafka.bootstrap, "--describe",
         "--entity-type", "topics", "--entity-name", "subscribers"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert described.returncode == 0, described.stderr
    assert "cleanup.policy=compact" in described.stdout

    # Run again, as every `docker compose up` does, with another partition count: the creations
    # of existing topics pass (--if-not-exists), nothing changes, and the mismatch of the inputs,
    # read from the real tool's --describe, stops it.
    again = subprocess.run(["bash", str(CREATE_TOPICS)], env={**env, "CDRWATCH_PARTITIONS": "4"}, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert again.returncode != 0
    assert "cdrs has 3 partitions, CDRWATCH_PARTITIONS is 4" in again.stderr
    assert "warning: fraud-alerts has 3 partitions, not 4" in again.stderr
    assert sorted(kafka.partitions("cdrs")) == [0, 1, 2]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def replay_sample(broker_url: str, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--broker", broker_url,
         "--cdrs", str(SAMPLE / "cdrs.jsonl"), "--registrations", str(SAMPLE / "registrations.jsonl"),
         "--out", str(out), "--timeout", "240"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, **env},
        check=False,
    )


@pytest.mark.slow
def test_a_worker_on_kafka_raises_exactly_the_expected_alerts(kafka: KafkaCluster, tmp_path: Path) -> None:
    """`cdrwatch replay --broker`: Faust's consumer group, changelogs and commits on Apache Kafka."""
    done = replay_sample(kafka.url, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {(e["user"], e["period"], e["rule"]) for e in read_jsonl(SAMPLE / "expected.jsonl")}
    got = [(a["user"], a["period"], a["rule"]) for a in read_jsonl(tmp_path / "alerts.jsonl")]
    assert len(got) == len(set(got)), "an alert was emitted twice"
    assert set(got) == expected
    assert read_jsonl(tmp_path / "dlq.jsonl") == []


# ---------------------------------------------------------------------------------------------
# Three nodes
# ---------------------------------------------------------------------------------------------


async def produce_all(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    """Every value acknowledged by all in-sync replicas (at least min.insync.replicas of them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=5000)
    await producer.start()
    try:
        async with asyncio.timeout(60):
            for value in values:
                await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def read_partition(bootstrap: str, topic: str, partition: int, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < count:
                batches = await consumer.getmany(tp, timeout_ms=1000)
                values += [record.value for record in batches.get(tp, [])]
        return values
    finally:
        await consumer.stop()


def test_cluster_replicates_three_times_with_two_in_sync(kafka_cluster: KafkaCluster) -> None:
    topic = unique("replicated")
    asyncio.run(create_topics(kafka_cluster.bootstrap, [topic], partitions=3, replication_factor=3))
    kafka_cluster.wait_in_sync([topic])
    assert all(len(state.replicas) == 3 for state in kafka_cluster.partitions(topic).values())
    configs = asyncio.run(topic_configs(kafka_cluster.bootstrap, [topic]))[topic]
    assert configs["min.insync.replicas"] == "2"
    for node_id in kafka_cluster.node_ids:
        broker = asyncio.run(broker_configs(kafka_cluster.bootstrap, node_id, ["offsets.topic.replication.factor",
                                                                               "default.replication.factor"]))
        assert broker == {"offsets.topic.replication.factor": "3", "default.replication.factor": "3"}


def test_cluster_survives_the_loss_of_a_partition_leader(kafka_cluster: KafkaCluster) -> None:
    topic = unique("failover")
    asyncio.run(create_topics(kafka_cluster.bootstrap, [topic], partitions=3, replication_factor=3))
    kafka_cluster.wait_in_sync([topic])
    before = [b"before-%d" % i for i in range(20)]
    asyncio.run(produce_all(kafka_cluster.bootstrap, topic, before))

    leader = kafka_cluster.leader(topic, 0)
    kafka_cluster.kill(leader)
    # acks=all goes on at once: the producer retries until the controller has fenced the dead
    # node and moved the leadership to an in-sync replica (two are left: min.insync.replicas)
    after = [b"after-%d" % i for i in range(20)]
    asyncio.run(produce_all(kafka_cluster.bootstrap, topic, after))
    new_leader = kafka_cluster.wait_leader(topic, 0, not_on=leader)
    assert new_leader != leader
    state = kafka_cluster.partitions(topic)[0]
    assert leader not in state.isr and len(state.isr) == 2

    kafka_cluster.start(leader)  # same ports, same data
    kafka_cluster.wait_in_sync([topic])
    # back in sync: it has caught up with what was written while it was down
    assert leader in kafka_cluster.partitions(topic)[0].isr
    assert asyncio.run(read_partition(kafka_cluster.bootstrap, topic, 0, 40)) == before + after


@pytest.mark.slow
def test_a_worker_on_the_cluster_replicates_its_tables(kafka_cluster: KafkaCluster, tmp_path: Path) -> None:
    """The same run on three nodes, tables replicated as production would set it
    (CDRWATCH_REPLICATION_FACTOR): the changelogs Faust creates get three replicas."""
    done = replay_sample(kafka_cluster.url, tmp_path, CDRWATCH_REPLICATION_FACTOR=str(kafka_cluster.replication_factor))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {(e["user"], e["period"], e["rule"]) for e in read_jsonl(SAMPLE / "expected.jsonl")}
    assert {(a["user"], a["period"], a["rule"]) for a in read_jsonl(tmp_path / "alerts.jsonl")} == expected

    async def changelogs() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith("cdrwatch-replay-") and t.endswith("-changelog")]
        finally:
            await admin.close()

    topics = asyncio.run(changelogs())
    assert topics
    for topic in topics:
        assert all(len(state.replicas) == 3 for state in kafka_cluster.partitions(topic).values()), topic
