"""The benchmark's latency probe end to end: a paced producer in another process, a worker, one
alert per 50 CDRs, each timed from its breaching CDR."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.tools.bench import measure_latency
from tests.brokers import Broker

pytestmark = pytest.mark.integration


def test_every_breaching_cdr_is_timed_to_its_alert(tansu: Broker, tmp_path: Path) -> None:
    latencies = asyncio.run(measure_latency(tansu.bootstrap, 2, tmp_path, rate=200.0, seconds=2.0))
    assert len(latencies) == 8  # 400 CDRs: 8 groups of 50, each with one breaching 4th call
    assert all(0 < ms < 5_000 for ms in latencies), latencies
