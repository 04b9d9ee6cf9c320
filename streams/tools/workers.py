"""``cdrwatch worker`` processes started by a tool (the scale-out benchmark) or a test, as an operator
runs them: the run's settings in their environment, their output in a log file; and what the kernel
says of a process's CPU time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from ..settings import Settings
from .embedded import free_port


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


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (``/proc/PID/stat``, Linux)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def machine_cpu_seconds() -> tuple[float, float]:
    """The machine's (busy, total) CPU seconds since boot, summed over its cores (``/proc/stat``):
    what every process used, this run's and any other's."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - idle) / _TICKS, total / _TICKS
