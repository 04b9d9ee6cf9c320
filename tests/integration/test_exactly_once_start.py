"""``--processing-guarantee exactly_once`` at start: a broker that refuses Kafka transactions
(the embedded Tansu) stops the worker at once, with one line and exit 2; Apache Kafka passes the
check (the faults under exactly_once are in ``test_kafka_faults.py``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest

from streams.connect import check_transactions
from streams.tools.embedded import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.integration]


def test_a_broker_without_transactions_stops_an_exactly_once_worker_with_one_line(tansu: EmbeddedBroker) -> None:
    env = dict(os.environ, CDRWATCH_APP_ID=f"eos-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--broker", tansu.url,
                           "--processing-guarantee", "exactly_once", "--web-port", str(free_port())],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "exactly_once needs Kafka transactions" in lines[0] and tansu.url in lines[0], lines[0]
    assert took < 30, f"{took:.1f} s"


def test_the_environment_asks_for_exactly_once_too(tansu: EmbeddedBroker) -> None:
    env = dict(os.environ, CDRWATCH_APP_ID=f"eos-{uuid.uuid4().hex[:8]}", CDRWATCH_PROCESSING_GUARANTEE="exactly_once")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--broker", tansu.url,
                           "--web-port", str(free_port())],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "exactly_once needs Kafka transactions" in done.stderr, done.stderr[-2000:]


@pytest.mark.kafka
def test_apache_kafka_takes_a_transaction(kafka: KafkaCluster) -> None:
    asyncio.run(check_transactions(Settings(broker=kafka.url, app_id=f"eos-{uuid.uuid4().hex[:8]}")))
