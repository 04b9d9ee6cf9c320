"""Crashes (issue 8, part 3): `kill -9` the only worker at three random points of a replay of a
generated month, restart it each time; the outputs, de-duplicated by id, equal an uninterrupted run."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streams.agents.usage import ALL_TOPICS
from streams.embedded import EmbeddedBroker, create_topics
from streams.replay import group_lag, read_stream, replay, replay_external
from streams.settings import Settings
from tests.integration.test_restart_and_failover import _worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def generated_month(tmp: Path, users: int) -> list[Any]:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--users", str(users), "--month", "2026-11",
                           "--seed", "8", "--out", str(tmp)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_stream(tmp / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        tmp / "registrations.jsonl", "sip-registrations", "time")


def test_three_crashes_and_restarts_lose_and_double_nothing(broker: EmbeddedBroker, tmp_path: Path) -> None:
    messages = generated_month(tmp_path / "month", users=400)
    reference = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=300))
    assert reference.alerts and reference.rebills

    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, app_id=f"crash-{tag}", topic_prefix=f"crash-{tag}-",
                        web_enabled=False, partitions=4)
    asyncio.run(create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], 4))
    data_dir = tmp_path / "worker"
    workers = [_worker(settings, data_dir)]
    rng = random.Random(3)
    # three points, as the share of the input still to do, at least 15 % apart
    points = sorted((0.25 + 0.2 * k + rng.uniform(0, 0.1) for k in range(3)), reverse=True)
    kills: list[int] = []

    async def crash_three_times() -> None:
        inputs = [settings.topic(t) for t in ("cdrs", "sip-registrations")]
        deadline = time.monotonic() + 400
        while points and time.monotonic() < deadline:
            lag = await group_lag(settings, inputs)
            if lag == 0 and kills:
                return  # finished before the next point: the assertion below says so
            if 0 < lag <= points[0] * len(messages):
                workers[-1].send_signal(signal.SIGKILL)
                workers[-1].wait(timeout=10)
                kills.append(lag)
                points.pop(0)
                workers.append(_worker(settings, data_dir))  # same settings, same (memory) store: recovery
            await asyncio.sleep(0.1)

    async def scenario() -> Any:
        killer = asyncio.create_task(crash_three_times())
        result = await replay_external(settings, messages, timeout_s=400, quiet_s=4)
        await killer
        return result

    try:
        result = asyncio.run(scenario())
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    assert len(kills) == 3, f"killed at lags {kills}"
    assert all(proc.returncode == -signal.SIGKILL for proc in workers[:3])
    assert {a["alert_id"] for a in result.alerts} == {a["alert_id"] for a in reference.alerts}
    assert sorted((r["line_id"], r["amount"]) for r in result.rebills) == sorted(
        (r["line_id"], r["amount"]) for r in reference.rebills)
