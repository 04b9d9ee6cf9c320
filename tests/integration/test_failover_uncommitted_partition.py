"""Failover onto a partition that has no committed offset yet.

A worker is killed; before the survivor takes its partitions over, records land in one of them
that nobody has read or committed. The survivor must read them.

What used to go wrong: the survivor's fetch in flight when the group starts rebalancing waits for
the new assignment and returns its first records while the flow is still stopped (every partition
paused, tables not yet recovered). The consumer drops them and seeks every partition back to its
committed offset — which leaves a partition without one where that fetch left it, past the
dropped records: never read, never committed, the lag stuck, a replay that never completes.

Faust's ``stream_recovery_delay`` (``STREAM_RECOVERY_DELAY``, 1 s here) holds the flow stopped a
moment after the assignment, as a slower start of the recovery does, so that the fetch returns
inside that window on every run. The test only needs a broker with ``url`` and ``bootstrap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from streams.topics import ALL_TOPICS
from streams.tools.embedded import create_topics, free_port
from streams.tools.replay import committed_offsets, end_offsets, read_stream
from streams.settings import Settings, bundled_file
from tests.brokers import Broker
from tests.workers import start_worker, workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
BURST = 95  # registrations that arrive in the orphaned partition (the operator saw lags of 91-97)
SESSION_TIMEOUT_S = 6  # the least Apache Kafka accepts by default: a quicker failover
RECOVERY_DELAY_S = 1.0
STEADY_EVERY_S = 0.25  # one CDR per partition this often: the workers' fetches keep returning


def partition_of(key: bytes) -> int:
    """Where the default partitioner puts ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def users_by_partition() -> dict[int, str]:
    users: dict[int, str] = {}
    n = 0
    while len(users) < PARTITIONS:
        users.setdefault(partition_of(f"steady{n}".encode()), f"steady{n}")
        n += 1
    return users


def steady_cdr(user: str, n: int) -> bytes:
    """The ``n``-th call of ``user``, one a minute from 1 November 08:00."""
    hour, minute = 8 + n // 60, n % 60
    start = f"2026-11-01T{hour:02d}:{minute:02d}:00+01:00"
    return orjson.dumps({
        "event": "end", "call_id": f"{user}-{n}", "user": user, "customer": "acme", "caller": "0140000000",
        "callee": "0145000000", "direction": "outbound", "start_time": start,
        "answer_time": start.replace(":00+", ":05+"), "end_time": start.replace(":00+", ":40+"),
        "billsec": 35, "disposition": "ANSWERED",
    })


def _worker(settings: Settings, data_dir: Path, web_port: int) -> subprocess.Popen[bytes]:
    return start_worker(settings, data_dir, web_port=web_port,
                        env={"CDRWATCH_SESSION_TIMEOUT": str(SESSION_TIMEOUT_S),
                             "STREAM_RECOVERY_DELAY": str(RECOVERY_DELAY_S)})


async def health(port: int) -> dict[str, Any]:
    """A worker's /healthz, or {} while it does not answer."""
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]
    try:
        return await asyncio.to_thread(get)
    except OSError:
        return {}


async def failover_onto_an_uncommitted_partition(broker: Broker, tmp_path: Path,
                                                 workers: list[subprocess.Popen[bytes]]) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, app_id=f"uncommitted-{tag}", topic_prefix=f"uncommitted-{tag}-",
                        web_enabled=False, partitions=PARTITIONS)
    await create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], PARTITIONS)
    ports = [free_port(), free_port()]
    for name, port in zip("ab", ports):
        workers.append(_worker(settings, tmp_path / name, port))
    survivor, victim = 0, 1
    cdrs, registrations = settings.topic("cdrs"), settings.topic("sip-registrations")

    producer = AIOKafkaProducer(linger_ms=5, **settings.client_kwargs())
    await producer.start()
    stop = asyncio.Event()

    async def steady() -> None:
        """CDRs into every partition, so that input is flowing when the worker is killed, and the
        survivor's fetches keep returning until its partitions are taken away."""
        users = users_by_partition()
        n = 0
        while not stop.is_set():
            sent = [await producer.send(cdrs, key=user.encode(), value=steady_cdr(user, n), partition=p)
                    for p, user in users.items()]
            await asyncio.gather(*sent)
            n += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), STEADY_EVERY_S)

    feeder = asyncio.create_task(steady())
    try:
        # 1. Both workers have joined and read input: each owns half the partitions.
        deadline = time.monotonic() + 45
        while True:
            assert all(w.poll() is None for w in workers), "a worker died on its own"
            views = [await health(port) for port in ports]
            owned = [set(v.get("partitions", {}).get("sip-registrations", [])) for v in views]
            if (all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == set(range(PARTITIONS))
                    and all(v.get("processed", 0) > 0 for v in views)):
                break
            assert time.monotonic() < deadline, f"the two workers never shared the input: {views}"
            await asyncio.sleep(0.2)
        orphan = TopicPartition(registrations, min(owned[victim]))

        # 2. The victim dies; records arrive in one of its partitions that nobody has read.
        workers[victim].send_signal(signal.SIGKILL)
        regs = [m for m in read_stream(bundled_file("sample") / "registrations.jsonl", "sip-registrations", "time")
                if m.key is not None and partition_of(m.key) == orphan.partition][:BURST]
        assert len(regs) == BURST
        await asyncio.gather(*[await producer.send(registrations, key=m.key, value=m.value, partition=orphan.partition)
                               for m in regs])
        while (await end_offsets(settings, [registrations])).get(orphan, 0) < BURST:
            await asyncio.sleep(0.1)
        assert (await committed_offsets(settings, [orphan]))[orphan] is None, "the partition must have no committed offset"
        cdrs_of_victim = TopicPartition(cdrs, orphan.partition)
        sent_to_victim = (await end_offsets(settings, [cdrs]))[cdrs_of_victim]

        # 3. The survivor takes over every partition and reads what the victim left: the CDRs of
        #    the same partition number (they were committed before) and the orphaned registrations.
        deadline = time.monotonic() + 45
        while True:
            assert workers[survivor].poll() is None, "the survivor died"
            view = await health(ports[survivor])
            took_over = set(view.get("partitions", {}).get("sip-registrations", [])) == set(range(PARTITIONS))
            offsets = await committed_offsets(settings, [cdrs_of_victim, orphan])
            if took_over and (offsets[cdrs_of_victim] or 0) >= sent_to_victim:
                break
            assert time.monotonic() < deadline, f"the survivor never took over: {view}, committed {offsets}"
            await asyncio.sleep(0.2)
        # it read the CDRs fetched with the registrations: a few commit intervals for those
        grace = time.monotonic() + 5
        while (offsets := await committed_offsets(settings, [orphan]))[orphan] != BURST and time.monotonic() < grace:
            await asyncio.sleep(0.2)
        assert offsets[orphan] == BURST, (
            f"the survivor never read {orphan.topic}/{orphan.partition}: committed offset {offsets[orphan]}, "
            f"{BURST} records there")
        assert workers[victim].poll() == -signal.SIGKILL
    finally:
        stop.set()
        await feeder
        await producer.stop()


def test_a_survivor_reads_the_partitions_that_had_no_committed_offset(
    broker: Broker, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    asyncio.run(failover_onto_an_uncommitted_partition(broker, tmp_path, workers))
