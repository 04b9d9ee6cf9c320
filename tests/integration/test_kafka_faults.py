"""Faults on a three-node Apache Kafka cluster in the middle of a replay.

The broker that leads the most busy partitions (the traffic's input topics and the tables'
changelogs) is killed with SIGKILL while the input is flowing and started again a few seconds
later: once with one worker, once with two workers of which one is also killed with SIGKILL.
Every topic of the run has three replicas (min.insync.replicas 2), so the loss of one broker
loses no acknowledged record; whatever goes wrong is cdrwatch's.

Each run must end with exactly what an uninterrupted replay of the same input emits: the same
fair-use alerts, re-bill lines (id and amount), fraud alerts and account actions — every copy of
an id, re-emitted after a failover, the same payload — and the same DLQ records: each once when
only the broker died; after a worker's death, one it had written but not committed may be written
again by the survivor, the same record (same input offset, reason and bytes). And the tables must
end as the uninterrupted run's did: the same keys, each with the same state.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.topics import ALL_TOPICS, DLQ_TOPICS, OUTPUT_TOPICS, period_reader
from streams.codecs import decode_cdr, decode_registration
from streams.topics import DLQ_REASON_HEADER, EVENT_TOPICS
from streams.processor import build_processor
from streams.settings import load_plans_and_rates
from streams.core.state import CustomerState, FraudState, PeriodState
from streams.core.fraud import FraudEngine
from streams.core.errors import InvalidRecord
from streams.tools.embedded import create_topics
from streams.tools.generator import generate_month
from streams.tools.replay import (InputMessage, ReplayResult, committed_offsets, end_offsets, read_stream, replay,
                            run_offline)
from streams.settings import Settings
from tests.kafka_cluster import KafkaCluster
from tests.workers import start_worker, workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

USERS = 200  # a generated month of ~41,000 messages
PARTITIONS = 4
BROKEN = 12  # malformed messages mixed into the month: the DLQ must hold each of them, once
TABLES = ("periods", "users", "subscribers", "fraud")
# where the traffic goes: what the killed broker should lead as much of as possible
BUSY_TOPICS = ("cdrs", "sip-registrations")
BUSY_TABLES = ("periods", "users", "fraud")
OUTPUT_IDS = {"fairuse-alerts": "alert_id", "rebilled-calls": "line_id", "fraud-alerts": "alert_id",
              "account-actions": "action_id"}
# What of each output must equal the reference's, every copy of an id included, beyond the id: a
# fair-use alert whole; a re-bill line whole but its ``rule``, which names the fair-use rule that
# was seen breached first, and that depends on whether the user's registrations or CDRs were read
# first (the two topics are not read in step); a fraud alert and its account action by id alone,
# their time and evidence depending likewise on how far `cdrs` had been read when a registration
# arrived. Uninterrupted runs differ from each other in those fields too.
COMPARED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fairuse-alerts": lambda payload: payload,
    "rebilled-calls": lambda payload: {k: v for k, v in payload.items() if k != "rule"},
    "fraud-alerts": lambda payload: {"alert_id": payload["alert_id"]},
    "account-actions": lambda payload: {"action_id": payload["action_id"]},
}
SEND_S = 10.0  # the input is paced over this long, so that it is still flowing when the faults strike
BROKER_DOWN_S = 5.0
DONE_TIMEOUT_S = 180.0


# ---------------------------------------------------------------------------------------------
# The input and the uninterrupted reference
# ---------------------------------------------------------------------------------------------


def with_malformed(messages: list[InputMessage], count: int) -> list[InputMessage]:
    """``messages`` with ``count`` broken copies of some of them, spread over the month: a CDR with
    an unknown direction, a registration without its contact. Each keeps its user (key, hence its
    partition) and event time (hence its place in the replay), and is unique."""
    ordered = sorted(messages, key=lambda m: m.time_ms)
    broken = []
    for n in range(count):
        original = ordered[(n + 1) * len(ordered) // (count + 1)]
        data = orjson.loads(original.value)
        if original.topic == "cdrs":
            data |= {"call_id": f"broken-{n}", "direction": "sideways"}
            decode = decode_cdr
        else:
            data = {k: v for k, v in data.items() if k != "contact"} | {"user_agent": f"broken phone {n}"}
            decode = decode_registration
        value = orjson.dumps(data)
        with pytest.raises(InvalidRecord):
            decode(value)
        broken.append(InputMessage(original.topic, original.key, value, original.time_ms, f"broken {n}"))
    return messages + broken


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> list[InputMessage]:
    out = tmp_path_factory.mktemp("month")
    generate_month(out, users=USERS, month="2026-11", seed=8)
    messages = read_stream(out / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        out / "registrations.jsonl", "sip-registrations", "time")
    return with_malformed(messages, BROKEN)


Tables = dict[str, dict[bytes, bytes]]  # table → key → its last value


@pytest.fixture(scope="module")
def uninterrupted(kafka_cluster: KafkaCluster, month: list[InputMessage]) -> tuple[ReplayResult, Tables]:
    """An uninterrupted replay of the month (an in-process worker, nothing killed), checked against
    the engine without Kafka; its outputs, and its tables as they were at the end."""
    before = set(kafka_cluster.topics())
    pipelines: list[Any] = []
    result = asyncio.run(replay(Settings(web_enabled=False, partitions=PARTITIONS, replication_factor=3), month,
                                broker_url=kafka_cluster.url, timeout_s=300, on_pipeline=pipelines.append))
    (pipeline,) = pipelines
    tables = {name: dict(table.items()) for name, table in (
        ("periods", pipeline.periods), ("users", pipeline.users), ("subscribers", pipeline.subscribers),
        ("fraud", pipeline.fraud_table))}
    created = [t for t in kafka_cluster.topics() if t.startswith("replay-") and t not in before]
    assert len(created) >= len(ALL_TOPICS)
    for topic in created:  # replay creates its topics with the settings' replication factor
        assert {len(s.replicas) for s in kafka_cluster.partitions(topic).values()} == {3}, topic
    _store, offline = run_offline(Settings(web_enabled=False), month)
    assert result.counts == offline
    assert len(result.dlq) == offline[("cdrs", "dlq")] + offline[("sip-registrations", "dlq")] == BROKEN
    assert result.alerts and result.rebills and result.fraud_alerts and result.actions, \
        "the month must exercise every output"
    assert all(tables[t] for t in ("periods", "users", "fraud")), {t: len(v) for t, v in tables.items()}
    return result, tables


@pytest.fixture(scope="module")
def reference(uninterrupted: tuple[ReplayResult, Tables]) -> ReplayResult:
    return uninterrupted[0]


@pytest.fixture(scope="module")
def reference_tables(uninterrupted: tuple[ReplayResult, Tables]) -> Tables:
    return uninterrupted[1]


# ---------------------------------------------------------------------------------------------
# Workers, faults and the run
# ---------------------------------------------------------------------------------------------


def _worker(settings: Settings, directory: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A `cdrwatch worker` process, its tables replicated as the run's topics are."""
    directory.mkdir(parents=True, exist_ok=True)
    return start_worker(settings, directory, env={"CDRWATCH_LOG_LEVEL": "info", **env},
                        log_path=directory / "worker.log")


@dataclass
class Run:
    """One replay on the cluster into running workers, and what happened during it."""

    cluster: KafkaCluster
    settings: Settings
    directory: Path
    workers: list[subprocess.Popen[bytes]]
    env: dict[str, str] = field(default_factory=dict)  # the workers' environment beyond the run's settings
    killed: set[int] = field(default_factory=set)  # indices of the workers killed on purpose
    started: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return self.env.get("CDRWATCH_PROCESSING_GUARANTEE") == "exactly_once"

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.1f} s  {what}")

    def report(self) -> str:
        tails = []
        for n, proc in enumerate(self.workers):
            path = self.directory / f"worker-{n}" / "worker.log"
            lines = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
            tails.append(f"--- worker {n} (exit {proc.poll()})\n" + "\n".join(lines))
        return "\n".join(["timeline:", *self.timeline, *tails])

    def check_alive(self) -> None:
        for n, proc in enumerate(self.workers):
            if n not in self.killed and proc.poll() is not None:
                raise AssertionError(f"worker {n} died on its own (exit {proc.returncode})\n{self.report()}")


def start_run(cluster: KafkaCluster, directory: Path, procs: list[subprocess.Popen[bytes]], count: int,
              env: dict[str, str] | None = None) -> Run:
    """Topics of a fresh prefix, all with three replicas; ``count`` workers, up and in the group."""
    tag = uuid.uuid4().hex[:8]
    settings = cluster.settings(app_id=f"faults-{tag}", topic_prefix=f"faults-{tag}-", partitions=PARTITIONS)
    assert settings.replication_factor == 3
    asyncio.run(create_topics(settings.client_kwargs(), [settings.topic(t) for t in ALL_TOPICS], PARTITIONS,
                              replication_factor=settings.replication_factor))
    run = Run(cluster, settings, directory, procs, env=dict(env or {}))
    for n in range(count):
        procs.append(_worker(settings, directory / f"worker-{n}", run.env))
    changelogs = {f"{settings.app_id}-{t}-changelog" for t in TABLES}
    deadline = time.monotonic() + 120
    while True:
        run.check_alive()
        try:
            group = cluster.group(settings.app_id)
            if group.state == "Stable" and group.members == count and changelogs <= set(cluster.topics()):
                break
        except (KafkaError, OSError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the workers did not join their group and create their tables\n{run.report()}")
        time.sleep(0.5)
    run.note(f"{count} worker(s) in the group")
    return run


def run_topics(run: Run) -> list[str]:
    """Every topic of the run: inputs, outputs, DLQs, the tables' changelogs, Faust's own."""
    return [t for t in run.cluster.topics() if t.startswith(run.settings.topic_prefix)]


def assert_replicated(run: Run) -> None:
    topics = run_topics(run)
    expected = {run.settings.topic(t) for t in ALL_TOPICS} | {f"{run.settings.app_id}-{t}-changelog" for t in TABLES}
    assert expected <= set(topics), sorted(expected - set(topics))
    for topic in topics:
        replicas = {p: s.replicas for p, s in run.cluster.partitions(topic).items()}
        assert all(len(r) == 3 for r in replicas.values()), (topic, replicas)


def busiest_broker(run: Run) -> int:
    """The node leading the most input and changelog partitions of the traffic; among equals, the
    group's coordinator (its commits and rebalances move too)."""
    topics = [run.settings.topic(t) for t in BUSY_TOPICS] + [f"{run.settings.app_id}-{t}-changelog" for t in BUSY_TABLES]
    led = Counter(state.leader for topic in topics for state in run.cluster.partitions(topic).values())
    coordinator = run.cluster.coordinator(run.settings.app_id)
    node = max(run.cluster.node_ids, key=lambda n: (led[n], n == coordinator, -n))
    run.note(f"partitions led per broker {dict(sorted(led.items()))}, group coordinator {coordinator}: "
             f"broker {node} is the one to kill")
    return node


Fault = tuple[float, Callable[[], Awaitable[None]]]  # (fraction of the input sent, what happens then)


def broker_fault(run: Run, node: int, at: float) -> Fault:
    async def kill_and_restart() -> None:
        await asyncio.to_thread(run.cluster.kill, node)
        run.note(f"broker {node} killed (SIGKILL)")
        await asyncio.sleep(BROKER_DOWN_S)
        await asyncio.to_thread(run.cluster.start, node)
        run.note(f"broker {node} started again")

    return at, kill_and_restart


def worker_fault(run: Run, index: int, at: float, *, restart: bool = False) -> Fault:
    """Worker ``index`` killed with SIGKILL; with ``restart``, a new worker started in its place."""
    async def kill() -> None:
        while index >= len(run.workers):  # a worker an earlier fault is about to start
            await asyncio.sleep(0.1)
        run.killed.add(index)
        run.workers[index].send_signal(signal.SIGKILL)
        await asyncio.to_thread(run.workers[index].wait, 10)
        run.note(f"worker {index} killed (SIGKILL)")
        if restart:
            n = len(run.workers)
            run.workers.append(_worker(run.settings, run.directory / f"worker-{n}", run.env))
            run.note(f"worker {n} started in its place")

    return at, kill


async def send_with_faults(run: Run, ordered: list[InputMessage], faults: list[Fault]) -> None:
    """Send the input in event-time order, paced over ``SEND_S``; each fault starts once its fraction
    of the input has been acknowledged. The producer is idempotent: its retries across the
    leader change write nothing twice (the comparison is then cdrwatch's alone)."""
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=30000,
                                **run.settings.client_kwargs())
    await producer.start()
    waiting = sorted(faults, key=lambda f: f[0])
    striking: list[asyncio.Task[None]] = []
    chunk = 500
    began = time.monotonic()
    try:
        for first in range(0, len(ordered), chunk):
            while waiting and first >= waiting[0][0] * len(ordered):
                striking.append(asyncio.create_task(waiting.pop(0)[1]()))
                run.note(f"{first} of {len(ordered)} messages sent")
            sent = [await producer.send(run.settings.topic(m.topic), key=m.key, value=m.value)
                    for m in ordered[first:first + chunk]]
            await asyncio.gather(*sent)
            due = began + SEND_S * (first + chunk) / len(ordered) - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
    finally:
        await producer.stop()
    run.note(f"all {len(ordered)} messages sent")
    await asyncio.gather(*striking)


async def committed_and_end(settings: Settings) -> dict[TopicPartition, tuple[int | None, int]]:
    """Per input partition: the group's committed offset (None: none yet) and the end."""
    ends = await end_offsets(settings, [settings.topic(t) for t in EVENT_TOPICS])
    committed = await committed_offsets(settings, list(ends), request_timeout_ms=5000)
    return {tp: (committed[tp], end) for tp, end in ends.items()}


async def wait_done(run: Run, sent: int, quiet_s: float = 2.0) -> None:
    """Until the group has committed every input message and the outputs have stopped growing."""
    outputs = [run.settings.topic(t) for t in OUTPUT_TOPICS + DLQ_TOPICS]
    deadline = time.monotonic() + DONE_TIMEOUT_S
    offsets: dict[TopicPartition, tuple[int | None, int]] = {}
    last_outputs: dict[TopicPartition, int] | None = None
    quiet_since = time.monotonic()
    while True:
        run.check_alive()
        try:
            offsets = await committed_and_end(run.settings)
            out = await end_offsets(run.settings, outputs)
        except (KafkaError, OSError):
            out = None
        if out is not None:
            if out != last_outputs:
                last_outputs, quiet_since = out, time.monotonic()
            caught_up = all((done or 0) == end for done, end in offsets.values())
            if caught_up and time.monotonic() - quiet_since >= quiet_s:
                assert sum(end for _done, end in offsets.values()) == sent, "the input was written exactly once"
                run.note("every input message committed")
                return
        if time.monotonic() > deadline:
            behind = {f"{tp.topic[len(run.settings.topic_prefix):]}/{tp.partition}": f"committed {done}, end {end}"
                      for tp, (done, end) in sorted(offsets.items()) if (done or 0) != end}
            never = [p for p, text in behind.items() if text.startswith("committed None")]
            hint = (f" — partitions {never} were never committed: the surviving worker does not read them"
                    if never else "")
            raise AssertionError(f"not done after {DONE_TIMEOUT_S:.0f} s: behind {behind}{hint}\n{run.report()}")
        await asyncio.sleep(0.5)


@dataclass
class Outputs:
    """Everything on the output and DLQ topics: per output topic, id → payload (with how many
    extra copies of an id there were); the DLQ records, one entry per record."""

    by_id: dict[str, dict[str, dict[str, Any]]]
    copies: dict[str, int]  # records beyond the first of an id
    other_copies: dict[str, int]  # of those, with another payload than the first (in fields not compared)
    dlq: list[tuple[str, str, str, str]]  # input topic, partition/offset, reason, value
    tables: Tables = field(default_factory=dict)  # the tables' changelogs at the end (``read_tables``)


async def read_topics(run: Run, topics: list[str]) -> dict[TopicPartition, list[Any]]:
    """Every record of ``topics``; with exactly_once, as a ``read_committed`` consumer sees them
    (aborted transactions left out)."""
    ends = await end_offsets(run.settings, topics)
    isolation = "read_committed" if run.exactly_once else "read_uncommitted"
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", isolation_level=isolation,
                                **run.settings.client_kwargs())
    await consumer.start()
    records: dict[TopicPartition, list[Any]] = {tp: [] for tp in ends}
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        pending = {tp for tp, end in ends.items() if end > 0}
        async with asyncio.timeout(60):
            while pending:
                for tp, recs in (await consumer.getmany(*pending, timeout_ms=500)).items():
                    records[tp] += recs
                for tp in list(pending):  # past the end: the last records may be transaction markers
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
    finally:
        await consumer.stop()
    return records


async def read_tables(run: Run) -> Tables:
    """The tables as their changelogs leave them: each key's last value (a tombstone removes it)."""
    names = {f"{run.settings.app_id}-{t}-changelog": t for t in TABLES}
    tables: Tables = {t: {} for t in TABLES}
    for tp, recs in (await read_topics(run, list(names))).items():
        table = tables[names[tp.topic]]
        for rec in recs:
            if rec.value is None:
                table.pop(rec.key, None)
            else:
                table[rec.key] = rec.value
    return tables


def assert_same_tables(got: Tables, reference: Tables, run: Run) -> None:
    """Each table holds what the uninterrupted run's held at its end: the same keys, each with the
    same state (``comparable``)."""
    fraud = build_processor(Settings(), *load_plans_and_rates(Settings())).fraud
    assert fraud is not None
    for table in TABLES:
        want, have = per_user(reference[table]), per_user(got[table])
        if table == "fraud":
            assert customers(got[table]) == customers(reference[table]), "the customers' networks differ"
        lost, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        assert not lost and not extra, f"table {table}: keys lost {lost[:5]} ({len(lost)}), extra {extra[:5]} ({len(extra)})"
        differ = {}
        for key in want:
            a, b = comparable(table, key, reference[table], fraud), comparable(table, key, got[table], fraud)
            if a != b:
                differ[key] = "; ".join(f"{f}: {a.get(f)} → {b.get(f)}" for f in sorted({*a, *b}) if a.get(f) != b.get(f))
        assert not differ, (f"table {table}: other state than the uninterrupted run's for {len(differ)} of {len(want)} "
                            f"keys:\n" + "\n".join(f"{k!r}: {d[:600]}" for k, d in list(differ.items())[:5]) +
                            f"\n{run.report()}")
    run.note("tables equal the uninterrupted run's: " + ", ".join(f"{t} {len(got[t])} keys" for t in TABLES))


def per_user(table: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A table's records of users (keys starting with NUL are records shared by users)."""
    return {k: v for k, v in table.items() if not k.startswith(b"\x00")}


def customers(table: dict[bytes, bytes]) -> dict[str, tuple[int, list[str]]]:
    """Each customer's first event and networks, merged from its records (one per input partition,
    written by whichever of its users' events came first there, so that which partitions hold
    one, and their times, depend on the read order; the merge does not). Wangiri's per-range
    counts (the other shared records) depend on how far each partition had been read: left out."""
    merged: dict[str, tuple[int, set[str]]] = {}
    for key, raw in table.items():
        if key.startswith(b"\x00customer|"):
            name = key.decode().split("|", 2)[2]
            state = CustomerState.decode(raw)
            since, networks = merged.get(name, (state.since, set()))
            merged[name] = (min(since, state.since), networks | set(state.networks))
    return {name: (since, sorted(networks)) for name, (since, networks) in merged.items()}


def comparable(table: str, key: bytes, records: dict[bytes, bytes], fraud: FraudEngine) -> dict[str, Any]:
    """The value at ``key`` of a table (its ``records``) as the rules will read it from now on. Its
    encoding keeps the order in which calls and bindings were seen, which differs between runs (the
    topics are not read in step). A month is its head and sealed chunks, sealed where batches
    happened to end: it is read whole and encoded as one record. A fraud state is walked for what
    no further event can reach (``FraudEngine._prune``) only now and then, at times that depend on
    that order too, so both sides are pruned first."""
    raw = records[key]
    if table == "subscribers":
        return {"plan": raw}
    if table == "periods":
        month = PeriodState.decode(raw, period_reader(records, key))
        month.tail_calls = None
        return dict(orjson.loads(month.encode()))
    if table != "fraud":
        return dict(orjson.loads(raw))
    state = FraudState.decode(raw)
    state.prune_due = 0
    fraud._prune(state)
    fraud._prune_networks(state)
    return dict(orjson.loads(state.encode()))


async def read_outputs(run: Run) -> Outputs:
    """Every record of the outputs and DLQs (``read_topics``)."""
    records = await read_topics(run, [run.settings.topic(t) for t in OUTPUT_TOPICS + DLQ_TOPICS])
    prefix = run.settings.topic_prefix
    outputs = Outputs({t: {} for t in OUTPUT_TOPICS}, dict.fromkeys(OUTPUT_TOPICS, 0), dict.fromkeys(OUTPUT_TOPICS, 0), [])
    for tp, recs in records.items():
        base = tp.topic[len(prefix):]
        for rec in recs:
            if base in DLQ_TOPICS:
                headers = {k: v.decode() for k, v in rec.headers or ()}
                outputs.dlq.append(dlq_entry(base.removesuffix("-dlq"), headers.get("cdrwatch-source", ""),
                                             headers.get(DLQ_REASON_HEADER, ""), rec.value.decode()))
                continue
            payload = orjson.loads(rec.value)
            ident = payload[OUTPUT_IDS[base]]
            first = outputs.by_id[base].setdefault(ident, payload)
            if first is not payload:
                outputs.copies[base] += 1
                if payload != first:
                    outputs.other_copies[base] += 1
                    same = COMPARED[base]
                    assert same(payload) == same(first), f"{base} {ident} emitted twice: {diff(first, payload)}"
    return outputs


def dlq_entry(topic: str, source: str, reason: str, value: str) -> tuple[str, str, str, str]:
    """A DLQ record; its source (``<prefix><input topic>/<partition>/<offset>``) without the prefix,
    which differs from run to run."""
    full, partition, offset = source.rsplit("/", 2)
    assert full.endswith(topic), (topic, source)
    return topic, f"{partition}/{offset}", reason, value


def diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    return ", ".join(f"{k} {want.get(k)!r} → {got.get(k)!r}" for k in sorted({*want, *got}) if want.get(k) != got.get(k))


def shared_count(row: dict[str, Any]) -> bool:
    """An output of wangiri's inbound leg (or its action): its count of subscribers per caller
    range is shared by every partition a worker reads, so what it had counted at an instant
    depends on how far each partition had been read (README, Fraud rules)."""
    return row.get("rule_name") == "wangiri_rings"


def assert_same_outputs(got: Outputs, reference: ReplayResult, run: Run, *, redone: bool) -> None:
    """``redone``: a worker died, and the survivor redid what it had not committed."""
    want = {
        "fairuse-alerts": reference.alerts, "rebilled-calls": reference.rebills,
        "fraud-alerts": reference.fraud_alerts, "account-actions": reference.actions,
    }
    for topic, rows in want.items():
        expected = {row[OUTPUT_IDS[topic]]: row for row in rows if not shared_count(row)}
        received = {i: row for i, row in got.by_id[topic].items() if not shared_count(row)}
        lost = sorted(set(expected) - set(received))
        extra = sorted(set(received) - set(expected))
        assert not lost and not extra, f"{topic}: lost {lost[:10]} ({len(lost)}), extra {extra[:10]} ({len(extra)})"
        same = COMPARED[topic]
        changed = [i for i in expected if same(got.by_id[topic][i]) != same(expected[i])]
        assert not changed, f"{topic}: other payloads than the reference's for {len(changed)} ids: " + "; ".join(
            f"{i}: {diff(same(expected[i]), same(got.by_id[topic][i]))}" for i in changed[:5])
    lines = sorted((line_id, row["amount"]) for line_id, row in got.by_id["rebilled-calls"].items())
    assert lines == sorted((r["line_id"], r["amount"]) for r in reference.rebills)
    # the DLQ: the same records. A batch redone after a worker's crash writes its rejections again:
    # the same input (topic/partition/offset), reason and bytes, deduplicable like every output
    expected_dlq = sorted(dlq_entry(r["topic"], r["source"], r["reason"], r["value"]) for r in reference.dlq)
    assert sorted(set(got.dlq)) == expected_dlq, f"DLQ differs from the reference's\n{run.report()}"
    if not redone:  # the broker's loss alone redoes nothing: each rejection written once
        twice = sorted(entry[:3] for entry, n in Counter(got.dlq).items() if n > 1)
        assert sorted(got.dlq) == expected_dlq, f"DLQ records written twice: {twice}\n{run.report()}"
    run.note(f"outputs equal the reference's: {', '.join(f'{t} {len(v)}' for t, v in got.by_id.items())}, "
             f"DLQ {len(got.dlq)}; extra copies of an id {got.copies}, of which with another payload "
             f"{got.other_copies}")


def replay_with_faults(run: Run, month: list[InputMessage], faults: list[Fault]) -> Outputs:
    ordered = sorted(month, key=lambda m: m.time_ms)  # the reference's order (replay() sorts the same way)

    async def scenario() -> Outputs:
        await send_with_faults(run, ordered, faults)
        await wait_done(run, len(ordered))
        outputs = await read_outputs(run)
        outputs.tables = await read_tables(run)
        return outputs

    outputs = asyncio.run(scenario())
    assert_replicated(run)
    run.cluster.wait_in_sync(run_topics(run))  # the restarted broker has caught up
    return outputs


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_the_busiest_broker_killed_mid_replay_and_started_again(
    kafka_cluster: KafkaCluster, month: list[InputMessage], reference: ReplayResult, reference_tables: Tables,
    tmp_path: Path, workers: list[subprocess.Popen[bytes]],
) -> None:
    run = start_run(kafka_cluster, tmp_path, workers, count=1)
    node = busiest_broker(run)
    outputs = replay_with_faults(run, month, [broker_fault(run, node, at=0.3)])
    run.check_alive()
    assert_same_outputs(outputs, reference, run, redone=False)
    assert_same_tables(outputs.tables, reference_tables, run)
    print("\n" + "\n".join(run.timeline))


def test_a_worker_and_the_busiest_broker_killed_mid_replay(
    kafka_cluster: KafkaCluster, month: list[InputMessage], reference: ReplayResult, reference_tables: Tables,
    tmp_path: Path, workers: list[subprocess.Popen[bytes]],
) -> None:
    """Two workers share the partitions; the broker dies, and while it is away one worker dies too:
    the survivor takes over its partitions (their changelogs partly on the restarted broker)."""
    run = start_run(kafka_cluster, tmp_path, workers, count=2)
    node = busiest_broker(run)
    outputs = replay_with_faults(run, month, [broker_fault(run, node, at=0.3), worker_fault(run, 1, at=0.5)])
    assert workers[1].returncode == -signal.SIGKILL
    run.check_alive()
    assert_same_outputs(outputs, reference, run, redone=True)
    assert_same_tables(outputs.tables, reference_tables, run)
    print("\n" + "\n".join(run.timeline))


# ---------------------------------------------------------------------------------------------
# exactly_once: the same faults, and a read_committed consumer sees every output once
# ---------------------------------------------------------------------------------------------

EXACTLY_ONCE = {"CDRWATCH_PROCESSING_GUARANTEE": "exactly_once"}


def assert_each_output_once(outputs: Outputs, reference: ReplayResult, run: Run) -> None:
    """The reference's outputs, each id exactly once — no copy at all, not even an identical one —
    and each DLQ record once."""
    assert outputs.copies == dict.fromkeys(OUTPUT_TOPICS, 0), f"copies seen by read_committed: {outputs.copies}\n{run.report()}"
    assert_same_outputs(outputs, reference, run, redone=False)


def test_exactly_once_workers_killed_at_random_points_and_restarted(
    kafka_cluster: KafkaCluster, month: list[InputMessage], reference: ReplayResult, reference_tables: Tables,
    tmp_path: Path, workers: list[subprocess.Popen[bytes]],
) -> None:
    """Two workers share the partitions; three times, at random points of the input, one of them is
    killed with SIGKILL in the middle of its transactions and a new one started in its place."""
    run = start_run(kafka_cluster, tmp_path, workers, count=2, env=EXACTLY_ONCE)
    rng = random.Random(11)
    points = [start + rng.uniform(0, 0.1) for start in (0.15, 0.4, 0.65)]
    run.note(f"kills at {', '.join(f'{p:.0%}' for p in points)} of the input")
    faults = [worker_fault(run, victim, at, restart=True) for victim, at in zip((0, 1, 2), points)]
    outputs = replay_with_faults(run, month, faults)
    run.check_alive()
    assert_each_output_once(outputs, reference, run)
    assert_same_tables(outputs.tables, reference_tables, run)
    print("\n" + "\n".join(run.timeline))


def test_exactly_once_a_worker_and_the_busiest_broker_killed(
    kafka_cluster: KafkaCluster, month: list[InputMessage], reference: ReplayResult, reference_tables: Tables,
    tmp_path: Path, workers: list[subprocess.Popen[bytes]],
) -> None:
    run = start_run(kafka_cluster, tmp_path, workers, count=2, env=EXACTLY_ONCE)
    node = busiest_broker(run)
    outputs = replay_with_faults(run, month, [broker_fault(run, node, at=0.3),
                                              worker_fault(run, 1, at=0.5, restart=True)])
    run.check_alive()
    assert_each_output_once(outputs, reference, run)
    assert_same_tables(outputs.tables, reference_tables, run)
    print("\n" + "\n".join(run.timeline))
