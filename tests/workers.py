"""Worker processes for the integration tests: ``cdrwatch worker`` as an operator runs it, with
the run's settings in its environment, its output in a log file; killed at the end of the test."""

from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from streams.tools.workers import start_worker

__all__ = ["start_worker", "workers"]


@pytest.fixture()
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's worker processes (append them): killed and reaped when it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
