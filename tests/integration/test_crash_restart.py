"""Crashes: `kill -9` the only worker at three random points of a replay of a
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

from streams.topics import ALL_TOPICS
from streams.tools.embedded import create_topics
from streams.tools.replay import end_offsets, read_stream, replay, replay_external
from streams.settings import Settings
from tests.integration.test_restart_and_failover import _worker
from tests.brokers import Broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def generated_month(tmp: Path, users: int) -> list[Any]:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--users", str(users), "--month", "2026-11",
                           "--seed", "8", "--out", str(tmp)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_stream(tmp / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        tmp / "registrations.jsonl", "sip-registrations", "time")


def test_three_crashes_and_restarts_lose_and_double_nothing(broker: Broker, tmp_path: Path) -> None:
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
    # Four parts of the month, split at three random points (by event time). Each crash comes as
    # the next part starts to arrive, after a random delay of up to two seconds, so the worker dies
    # in the middle of its work with offsets it has not committed. (Triggering on the group's lag
    # raced: the lag counts only what was sent, and a fast worker takes it to 0 between two polls.)
    ordered = sorted(messages, key=lambda m: m.time_ms)
    cuts = sorted(rng.sample(range(len(ordered) // 8, len(ordered) * 7 // 8), 3))
    parts = [ordered[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(ordered)])]
    inputs = [settings.topic(t) for t in ("cdrs", "sip-registrations")]
    kills: list[float] = []

    async def crash_when_more_arrives(already: int, delay: float) -> None:
        deadline = time.monotonic() + 120
        while sum((await end_offsets(settings, inputs)).values()) <= already:
            if time.monotonic() > deadline:
                raise AssertionError("the next part never arrived")
            await asyncio.sleep(0.05)
        await asyncio.sleep(delay)
        workers[-1].send_signal(signal.SIGKILL)
        workers[-1].wait(timeout=10)
        kills.append(delay)
        workers.append(_worker(settings, data_dir))  # same settings, same (memory) store: recovery

    async def scenario() -> list[Any]:
        results = [await replay_external(settings, parts[0], timeout_s=400, quiet_s=4)]
        for part in parts[1:]:
            sent = sum((await end_offsets(settings, inputs)).values())
            killer = asyncio.create_task(crash_when_more_arrives(sent, rng.uniform(0, 2)))
            results.append(await replay_external(settings, part, timeout_s=400, quiet_s=4))
            assert killer.done(), "each crash must happen before its part is done"
            await killer
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    assert len(kills) == 3, f"killed {len(kills)} times"
    assert all(proc.returncode == -signal.SIGKILL for proc in workers[:3])
    # de-duplicated by id across the parts: a line emitted again after a restart is the same line
    lines: dict[str, str] = {}
    for part in results:
        for r in part.rebills:
            assert lines.setdefault(r["line_id"], r["amount"]) == r["amount"], r
    assert {a["alert_id"] for p in results for a in p.alerts} == {a["alert_id"] for a in reference.alerts}
    # every fraud alert but wangiri's inbound leg, whose count of subscribers per caller range is
    # shared by the users of all the partitions a worker reads (README, Fraud rules): what it
    # counted at an instant depends on how far each partition had been read then
    def per_user(alerts: list[dict[str, Any]]) -> dict[str, Any]:
        return {a["alert_id"]: a for a in alerts if a["rule_name"] != "wangiri_rings"}

    got = per_user([a for p in results for a in p.fraud_alerts])
    want = per_user(reference.fraud_alerts)

    def described(alerts: dict[str, Any], ids: set[str]) -> list[str]:
        return sorted(f"{alerts[i]['user']} {alerts[i]['rule']} {alerts[i]['level']} {alerts[i].get('window')} at "
                      f"{alerts[i].get('time')} observed {alerts[i].get('observed')}" for i in ids)

    assert set(got) == set(want), (f"fraud alerts lost: {described(want, set(want) - set(got))}; extra: "
                                   f"{described(got, set(got) - set(want))}; kills after {kills}")
    assert sorted(lines.items()) == sorted((r["line_id"], r["amount"]) for r in reference.rebills)
