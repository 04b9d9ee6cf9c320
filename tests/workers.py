"""Worker processes for the integration tests: ``cdrwatch worker`` as an operator runs it, with
the run's settings in its environment, its output in a log file; killed at the end of the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from streams.tools.embedded import free_port
from streams.settings import Settings


def start_worker(settings: Settings, data_dir: Path, *, web_port: int | None = None,
                 env: Mapping[str, str] | None = None, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """A ``cdrwatch worker`` process of ``settings``' app and topics, its tables in ``data_dir``,
    its output in ``log_path`` (default: ``data_dir`` + ``.log``)."""
    environ = dict(os.environ, CDRWATCH_BROKER=settings.broker, CDRWATCH_APP_ID=settings.app_id,
                   CDRWATCH_TOPIC_PREFIX=settings.topic_prefix, CDRWATCH_DATA_DIR=str(data_dir),
                   CDRWATCH_PARTITIONS=str(settings.partitions),
                   CDRWATCH_REPLICATION_FACTOR=str(settings.replication_factor), **(env or {}))
    with open(log_path or data_dir.with_suffix(".log"), "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port",
                                 str(web_port or free_port())],
                                env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.fixture()
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's worker processes (append them): killed and reaped when it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
