"""`cdrwatch bench --peer --broker URL`: cdrwatch against the program a Python user would pick
instead, on equal work. One topic of generated valid CDRs (``bench.synthetic_stream``) on an Apache
Kafka is consumed, one after the other and each by its own process and consumer group, by (a) the
quix-streams peer (``peer_quix``: the fair-use rules, schema validation, RocksDB state with its
changelog), (b) a ``cdrwatch worker`` with the fraud rules off (the bundled plans without their
``[fraud]`` tables), on its default store (tables in memory, restored from their changelogs), then
the same on RocksDB tables, and (c) a ``cdrwatch worker`` with every rule. Each is timed from its
first record to every input offset committed (its group's committed offsets, polled), and its CPU
time over that span is read from /proc (what it cost, whatever else the machine runs). A worker's
first record is seen on its /metrics once its first batch is done: that batch is left out of its
figures (the CDRs timed are the rest)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ..settings import Settings, bundled_file
from ..topics import ALL_TOPICS
from .embedded import create_topics, free_port
from .workers import cpu_seconds

PEER_ALERTS = "peer-fairuse-alerts"  # the peer's output topics, beside cdrwatch's (same prefix)
PEER_DLQ = "peer-cdrs-dlq"

_FRAUD_TABLE = re.compile(r"^\[(plans\.[^.\]]+\.)?fraud[.\]]")


def fair_use_plans(path: Path, source: Path | None = None) -> Path:
    """``source`` (the bundled plans.toml) without its fraud tables (``[fraud…]`` and
    ``[plans.NAME.fraud…]``) at ``path``: a worker reading it runs the fair-use rules only."""
    kept, skipping = [], False
    for line in (source or bundled_file("plans.toml")).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("["):
            skipping = bool(_FRAUD_TABLE.match(line))
        if not skipping:
            kept.append(line)
    path.write_text("".join(kept), encoding="utf-8")
    return path


def start_peer(bootstrap: str, group: str, prefix: str, state_dir: Path, partitions: int,
               log_path: Path) -> subprocess.Popen[bytes]:
    """The quix-streams peer on ``prefix``'s cdrs, writing ``PEER_ALERTS`` and ``PEER_DLQ``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.tools.peer_quix", "--bootstrap", bootstrap, "--group", group,
             "--source", f"{prefix}cdrs", "--alerts", f"{prefix}{PEER_ALERTS}", "--dlq", f"{prefix}{PEER_DLQ}",
             "--state-dir", str(state_dir), "--partitions", str(partitions)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_cdrwatch(broker_url: str, app_id: str, prefix: str, data_dir: Path, partitions: int, log_path: Path,
                   *, plans: Path | None = None, store: str | None = None, web_port: int | None = None,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A ``cdrwatch worker`` as an operator runs it, ``plans`` its plans file, ``store`` its table
    store (default: the worker's own, tables in memory restored from their changelogs)."""
    environ = dict(os.environ, CDRWATCH_BROKER=broker_url, CDRWATCH_APP_ID=app_id, CDRWATCH_TOPIC_PREFIX=prefix,
                   CDRWATCH_DATA_DIR=str(data_dir), CDRWATCH_PARTITIONS=str(partitions))
    environ.update({"CDRWATCH_PLANS": str(plans)} if plans else {})
    environ.update({"CDRWATCH_STORE": store} if store else {})
    environ.update(env or {})
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(web_port or free_port())],
                                env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, topic: str, ends: Mapping[int, int], timeout_s: float,
                         proc: subprocess.Popen[bytes] | None = None, every_s: float = 0.05) -> float:
    """The monotonic instant at which ``group`` has committed ``ends`` on every partition of
    ``topic``; a RuntimeError when ``proc`` exits first or ``timeout_s`` passes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except KafkaError:  # no coordinator yet (a new broker makes its offsets topic on demand)
                offsets = {}
            done = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
            if all(done.get(p, 0) >= end for p, end in ends.items()):
                return time.monotonic()
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process {proc.pid} exited ({proc.returncode}) before committing {topic}")
            await asyncio.sleep(every_s)
        raise RuntimeError(f"group {group} did not commit {topic} to its end within {timeout_s:.0f} s")
    finally:
        await admin.close()


async def peer_first_record(log_path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """When the peer read its first record (the ``first-record`` line of its output)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(rb"^first-record ([0-9.]+)$", log_path.read_bytes(), re.MULTILINE)
        if match:
            return float(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the peer exited ({proc.returncode}): {log_path.read_text(errors='replace')[-2000:]}")
        await asyncio.sleep(0.01)
    raise RuntimeError("the peer read no record")


async def worker_first_record(web_port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[float, int]:
    """When a worker's /metrics first counts CDRs, and how many: the end of its first batch, which
    may hold thousands (the benchmark counts from there, those left out)."""
    url = f"http://127.0.0.1:{web_port}/metrics"
    pattern = re.compile(rb'^cdrwatch_events_total\{[^}]*topic="cdrs"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)

    def read() -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body
        except OSError:
            return b""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = await asyncio.to_thread(read)
        counted = sum(float(n) for n in pattern.findall(body))
        if counted > 0:
            return time.monotonic(), int(counted)
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode})")
        await asyncio.sleep(0.01)
    raise RuntimeError("the worker read no CDR")


# the quix peer; cdrwatch with the fraud rules off, on its default store (memory, changelogs) and on
# RocksDB (the peer's kind of state); cdrwatch with every rule
CONTENDERS = ("peer", "fairuse", "fairuse_rocksdb", "every_rule")


async def run_peer_bench(broker_url: str, users: int, cdrs: int, partitions: int,
                         report: Callable[[str], None]) -> dict[str, Any]:
    from .bench import _produce, compiled, synthetic_stream
    import tempfile

    bootstrap = Settings(broker=broker_url).bootstrap_servers()
    figures: dict[str, Any] = {"users": users, "cdrs": cdrs, "partitions": partitions, "broker": broker_url,
                               "quixstreams": version("quixstreams"), "cdrwatch": version("cdrwatch"),
                               "compiled": compiled()}
    report(f"generating {cdrs:,} CDRs for {users:,} users")
    stream = synthetic_stream(users, cdrs)
    tag = uuid.uuid4().hex[:6]
    prefix = f"peer-{tag}-"
    await create_topics(bootstrap, [prefix + t for t in (*ALL_TOPICS, PEER_ALERTS, PEER_DLQ)], partitions)
    report("producing the stream")
    await _produce(bootstrap, prefix + "cdrs", stream.cdrs)
    ends = await end_offsets(bootstrap, prefix + "cdrs", partitions)
    assert sum(ends.values()) == cdrs, ends
    with tempfile.TemporaryDirectory(prefix="cdrwatch-bench-peer-") as tmp:
        plans = fair_use_plans(Path(tmp) / "plans-fair-use.toml")
        for contender in CONTENDERS:
            where = Path(tmp) / contender
            where.mkdir()
            group, log_path = f"peer-{tag}-{contender}", where.with_suffix(".log")
            figures[f"{contender}_load"] = os.getloadavg()
            report(f"{contender} (load {os.getloadavg()[0]:.2f})")
            web_port = free_port()
            if contender == "peer":
                proc = start_peer(bootstrap, group, prefix, where, partitions, log_path)
            else:
                proc = start_cdrwatch(broker_url, group, prefix, where, partitions, log_path, web_port=web_port,
                                      plans=plans if contender.startswith("fairuse") else None,
                                      store="rocksdb://" if contender.endswith("rocksdb") else None)
            try:
                if contender == "peer":
                    t0, before = await peer_first_record(log_path, proc, 300), 0
                else:  # its first batch left out
                    t0, before = await worker_first_record(web_port, proc, 300)
                cpu0 = cpu_seconds(proc.pid)
                t1 = await wait_committed(bootstrap, group, prefix + "cdrs", ends, 1800, proc)
                cpu1 = cpu_seconds(proc.pid)
            except RuntimeError:
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            finally:
                stop(proc)
            figures[f"{contender}_cdr_per_s"] = (cdrs - before) / (t1 - t0)
            figures[f"{contender}_seconds"] = t1 - t0
            figures[f"{contender}_cdrs_timed"] = cdrs - before
            figures[f"{contender}_cpu_us_per_cdr"] = (cpu1 - cpu0) / (cdrs - before) * 1e6
    for contender in CONTENDERS[1:3]:
        figures[f"{contender}_vs_peer"] = figures[f"{contender}_cdr_per_s"] / figures["peer_cdr_per_s"]
        figures[f"{contender}_vs_peer_cpu"] = figures["peer_cpu_us_per_cdr"] / figures[f"{contender}_cpu_us_per_cdr"]
    return figures


def format_peer(f: Mapping[str, Any]) -> str:
    return "\n".join([
        f"stream: {f['cdrs']:,} CDRs, {f['users']:,} users, {f['partitions']} partitions ({f['broker']})",
        f"peer (quix-streams {f['quixstreams']}, fair-use rules) {f['peer_cdr_per_s']:,.0f} CDR/s; "
        f"cdrwatch fair-use only {f['fairuse_cdr_per_s']:,.0f} CDR/s "
        f"({f['fairuse_cdr_per_s']:,.0f}/{f['peer_cdr_per_s']:,.0f} = {f['fairuse_vs_peer']:.2f}); "
        f"cdrwatch every rule {f['every_rule_cdr_per_s']:,.0f} CDR/s",
        f"cdrwatch fair-use only on RocksDB tables {f['fairuse_rocksdb_cdr_per_s']:,.0f} CDR/s "
        f"({f['fairuse_rocksdb_vs_peer']:.2f}x the peer)",
        "CPU per CDR (the process, all threads): " + "; ".join(
            f"{c} {f[f'{c}_cpu_us_per_cdr']:.0f} µs" for c in CONTENDERS)
        + f" (peer/fair-use {f['fairuse_vs_peer_cpu']:.2f}, peer/fair-use on RocksDB {f['fairuse_rocksdb_vs_peer_cpu']:.2f})",
        "load averages (1, 5, 15 min) at each start: " + "; ".join(
            f"{c} {', '.join(f'{x:.2f}' for x in f[f'{c}_load'])}" for c in CONTENDERS),
        f"core compiled with mypyc: {'yes' if f['compiled'] else 'no (pure Python)'}",
    ])


__all__ = ["PEER_ALERTS", "PEER_DLQ", "fair_use_plans", "format_peer", "run_peer_bench", "start_cdrwatch",
           "start_peer", "stop", "wait_committed", "end_offsets"]
