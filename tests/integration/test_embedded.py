"""The embedded broker's lifecycle: it answers, creates topics, and never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.topics import ALL_TOPICS
from streams.tools.embedded import EmbeddedBroker, create_topics

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


async def test_broker_starts_creates_topics_and_stops() -> None:
    with EmbeddedBroker() as broker:
        assert broker.process is not None
        pid = broker.process.pid
        await create_topics(broker.bootstrap, ALL_TOPICS, partitions=2)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            assert set(ALL_TOPICS) <= set(await admin.list_topics())
        finally:
            await admin.close()
    assert _wait_dead(pid)


def test_broker_stops_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddedBroker() as broker:
            assert broker.process is not None
            pid = broker.process.pid
            raise RuntimeError("boom")
    assert _wait_dead(pid)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _start_cli_broker() -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--partitions", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    children = _children(proc.pid)
    assert len(children) == 1, children
    return proc, first, int(children[0])


def test_broker_command_prints_bootstrap_first_and_stops_on_ctrl_c() -> None:
    proc, first, tansu_pid = _start_cli_broker()
    assert first.startswith("127.0.0.1:") and first.split(":")[1].isdigit()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert _wait_dead(tansu_pid)


def test_broker_dies_with_a_killed_parent() -> None:
    proc, _, tansu_pid = _start_cli_broker()
    proc.kill()  # SIGKILL: no cleanup code runs in the parent
    proc.wait(timeout=10)
    assert _wait_dead(tansu_pid), "the Tansu process outlived its parent"
