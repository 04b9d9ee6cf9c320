"""What the tests of real peers (Prometheus, Kamailio, SIPp, poppler, ``cdrwatch ingest``) share:
finding a program ``make`` installs, waiting for a peer, and reading back what reached a topic."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer

from streams.topics import ALL_TOPICS
from streams.tools.embedded import create_topics, free_port
from streams.tools.replay import end_offsets
from streams.settings import Settings
from tests.workers import start_worker


def tool(name: str, make_target: str) -> str:
    """The path of program ``name``; a clear failure when it is missing."""
    found = shutil.which(name)
    assert found, f"{name} is not installed: `make {make_target}` installs it (Debian's packages)"
    return found


def keep_screenshot(shot: Path) -> None:
    """A copy of a test's screenshot in ``$CDRWATCH_SCREENSHOTS``, when set (the README's pictures)."""
    target = os.environ.get("CDRWATCH_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop a test's peer processes: SIGTERM, then SIGKILL for one still there after 10 s."""
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_for(what: str, check: Callable[[], bool], why: Callable[[], str] = str, timeout_s: float = 60.0) -> None:
    """Until ``check()`` holds (a peer not answering yet counts as not yet); else fail with ``why()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{why()}")
        time.sleep(0.3)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


async def run_settings(broker_url: str, name: str, partitions: int) -> Settings:
    """Settings of an app and topics of their own (``name``-<tag>), the topics created."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker_url, app_id=f"{name}-{tag}", topic_prefix=f"{name}-{tag}-", partitions=partitions)
    await create_topics(settings.client_kwargs(), [settings.topic(t) for t in ALL_TOPICS], partitions)
    return settings


def assigned_worker(settings: Settings, directory: Path, workers: list[subprocess.Popen[bytes]],
                    why: Callable[[], str] | None = None) -> int:
    """A `cdrwatch worker` (in ``workers``, its log beside ``directory``) once it owns every
    partition; its web port."""
    port = free_port()
    workers.append(start_worker(settings, directory, web_port=port))
    log = directory.with_suffix(".log")
    wait_for("the worker to be assigned its partitions",
             lambda: len(get_json(f"http://127.0.0.1:{port}/healthz")["partitions"].get("cdrs", [])) == settings.partitions,
             why or (lambda: log.read_text(errors="replace") if log.exists() else ""))
    return port


async def topic_records(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` (the settings' prefix added), in the order they were produced."""
    ends = await end_offsets(settings, [settings.topic(topic)])
    if not any(ends.values()):  # (an aiokafka consumer stopped before any fetch can raise)
        return []
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **settings.client_kwargs())
    await consumer.start()
    got: list[Any] = []
    try:
        consumer.assign(list(ends))
        pending = {tp for tp, end in ends.items() if end > 0}
        async with asyncio.timeout(20):
            while pending:
                for recs in (await consumer.getmany(*pending, timeout_ms=300)).values():
                    got += recs
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return sorted(got, key=lambda r: (r.timestamp, r.partition, r.offset))
