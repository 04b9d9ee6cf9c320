"""Events from a real switch, end to end: Kamailio (Debian's 5.6, as registrar and proxy, with
deploy/kamailio/cdrwatch.cfg) posts every REGISTER it saves and every dialog's start and end to
`cdrwatch ingest`, which produces them to the embedded broker, where a `cdrwatch worker` applies
the rules. SIPp user agents do the SIP: four devices of one user register, a PBX registers for
another, a device refreshes and one unregisters, and a third user places five concurrent calls to
a SIPp UAS that answers, holds 4 s and gets the caller's BYE. ``make test`` installs Kamailio and
SIPp (``make kamailio``) when they are missing. Loopback only; about 30 s."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from streams.tools.embedded import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.peers import tool as peers_tool
from tests.peers import assigned_worker, get_json, run_settings, topic_records, wait_for
from tests.workers import start_worker, workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
SIPP = ROOT / "tests" / "data" / "sipp"
TOKEN = "kamailio-ingest-token"
HOLD_S = 4  # call.xml's pause between the ACK and the BYE

ALICE = [  # four desk phones: one more than the plan allows
    ("10.1.1.11:5060", "4f0c6a52-0001-4e0f-9c1b-000000000001"),
    ("10.1.1.12:5060", "4f0c6a52-0002-4e0f-9c1b-000000000002"),
    ("10.1.1.13:5060", "4f0c6a52-0003-4e0f-9c1b-000000000003"),
    ("10.1.1.14:5060", "4f0c6a52-0004-4e0f-9c1b-000000000004"),
]
DESK_PHONE = "Yealink SIP-T46U 108.86.0.45"
PBX = "FPBX-16.0.40.7(18.20.0)"


def tool(name: str) -> str:
    return peers_tool(name, "kamailio")


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in asyncio.run(topic_records(settings, topic))]


class Processes:
    """The test's peers, each logging to a file; all stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        with open(self.directory / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=env, cwd=cwd)

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in sorted(self.procs) + ["worker"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture()
def peers(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.stop()


def sipp(peers: Processes, name: str, kamailio: int, scenario: str, lines: list[str], *options: str) -> None:
    """Run a SIPp client scenario to its end: one call per injection line."""
    inject = peers.directory / f"{name}.csv"
    inject.write_text("SEQUENTIAL\n" + "\n".join(lines) + "\n")
    done = subprocess.run([tool("sipp"), f"127.0.0.1:{kamailio}", "-sf", str(SIPP / scenario), "-inf", str(inject),
                           "-m", str(len(lines)), "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
                           "-timeout", "30s", "-timeout_error", *options],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"SIPp {name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{peers.logs()}"


@pytest.mark.parametrize("transport", ["http_client", "evapi"])
def test_kamailio_events_reach_the_worker_through_ingest(
    tansu: EmbeddedBroker, peers: Processes, tmp_path: Path, workers: list[subprocess.Popen[bytes]], transport: str,
) -> None:
    settings = asyncio.run(run_settings(tansu.url, "kam", partitions=2))
    web = assigned_worker(settings, tmp_path / "worker", workers, peers.logs)
    ingest = free_port()
    env = dict(os.environ, CDRWATCH_BROKER=settings.broker, CDRWATCH_TOPIC_PREFIX=settings.topic_prefix,
               CDRWATCH_INGEST_TOKEN=TOKEN)
    sip, gateway, evapi = free_port(), free_port(), free_port()
    if transport == "evapi":  # Kamailio listens; ingest connects to it
        events = ["-A", f'CDRWATCH_EVAPI="127.0.0.1:{evapi}"']
        extra = ["--evapi", f"127.0.0.1:{evapi}"]
    else:
        events = ["-A", f'CDRWATCH_INGEST="http://127.0.0.1:{ingest}/kamailio/event"',
                  "-A", f'CDRWATCH_AUTH="Authorization: Bearer {TOKEN}"']
        extra = []
    peers.start("kamailio", [tool("kamailio"), "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(tmp_path),
                             "-A", f"SIP_PORT={sip}", "-A", f'GATEWAY="sip:127.0.0.1:{gateway}"', *events])
    peers.start("ingest", [sys.executable, "-m", "streams.cli", "ingest", "--port", str(ingest), *extra], env=env)
    peers.start("uas", [tool("sipp"), "-sf", str(SIPP / "uas.xml"), "-i", "127.0.0.1", "-p", str(gateway), "-nostdin"])
    wait_for("ingest to answer", lambda: get_json(f"http://127.0.0.1:{ingest}/healthz")["status"] == "ok", peers.logs)
    wait_for("Kamailio to listen", lambda: "Listening on" in peers.log("kamailio"), peers.logs)
    if transport == "evapi":
        wait_for("ingest to connect to evapi", lambda: f'cdrwatch_ingest_evapi_connected{{peer="127.0.0.1:{evapi}"}} 1.0'
                 in urllib.request.urlopen(f"http://127.0.0.1:{ingest}/metrics", timeout=5).read().decode(), peers.logs)
    began = time.time()

    sipp(peers, "alice", sip, "register.xml", [f"alice;{contact};{instance};3600;{DESK_PHONE}" for contact, instance in ALICE])
    sipp(peers, "bob", sip, "register.xml", [f"bob;192.0.2.50:5060;7d3e9b10-0000-4c1a-8f00-0000000000b0;1800;{PBX}"])
    sipp(peers, "alice-again", sip, "register.xml", [  # a refresh, and a device leaving
        f"alice;{ALICE[0][0]};{ALICE[0][1]};3600;{DESK_PHONE}", f"alice;{ALICE[3][0]};{ALICE[3][1]};0;{DESK_PHONE}"])
    sipp(peers, "carol", sip, "call.xml", [f"carol;06123456{n:02d}" for n in range(5)], "-l", "5", "-r", "50")
    expected_events = 4 + 1 + 2 + 5 * 2

    def processed() -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=5).read().decode()
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("cdrwatch_events_total{"))

    wait_for(f"the worker to apply the {expected_events} events", lambda: processed() == expected_events, peers.logs)

    # the registrations as Kamailio saved them
    registrations = read_topic(settings, "sip-registrations")
    got = [(r["user"], r["contact"], r["instance_id"], r["user_agent"], r["expires"]) for r in registrations]
    assert sorted(got) == sorted(
        [("alice", f"sip:alice@{c}", f"<urn:uuid:{i}>", DESK_PHONE, 3600) for c, i in ALICE]
        + [("bob", "sip:bob@192.0.2.50:5060", "<urn:uuid:7d3e9b10-0000-4c1a-8f00-0000000000b0>", PBX, 1800)]
        + [("alice", f"sip:alice@{ALICE[0][0]}", f"<urn:uuid:{ALICE[0][1]}>", DESK_PHONE, 3600),
           ("alice", f"sip:alice@{ALICE[3][0]}", f"<urn:uuid:{ALICE[3][1]}>", DESK_PHONE, 0)]), got
    assert {r["source_ip"] for r in registrations} == {"127.0.0.1"}
    assert all(began - 1 <= datetime.fromisoformat(r["time"]).timestamp() <= time.time() for r in registrations)

    # each call: a start when it was answered, an end after the caller's BYE, the dialog's times
    cdrs = read_topic(settings, "cdrs")
    calls: dict[str, dict[str, dict[str, Any]]] = {}
    for cdr in cdrs:
        calls.setdefault(cdr["call_id"], {})[cdr["event"]] = cdr
    assert len(calls) == 5 and all(set(events) == {"start", "end"} for events in calls.values()), cdrs
    assert sorted(c["end"]["callee"] for c in calls.values()) == [f"06123456{n:02d}" for n in range(5)]
    for events in calls.values():
        start, end = events["start"], events["end"]
        assert (end["user"], end["caller"], end["direction"], end["disposition"]) == ("carol", "carol", "outbound", "ANSWERED")
        assert start["start_time"] == end["start_time"]
        invite, answer, hangup = (datetime.fromisoformat(end[k]).timestamp() for k in ("start_time", "answer_time", "end_time"))
        assert began <= invite <= answer <= hangup <= time.time()
        assert end["billsec"] in (HOLD_S, HOLD_S + 1) and abs(hangup - answer - HOLD_S) < 1.5, end

    # the worker's verdicts: exactly these fair-use alerts
    alerts = read_topic(settings, "fairuse-alerts")
    assert sorted((a["user"], a["rule"]) for a in alerts) == [
        ("alice", "registered_devices"), ("bob", "pbx_or_gateway"), ("carol", "simultaneous_calls")], alerts
    by_rule = {a["rule"]: a for a in alerts}
    assert (by_rule["registered_devices"]["observed"], by_rule["simultaneous_calls"]["observed"]) == (4, 4)
    assert Counter(r["user"] for r in read_topic(settings, "rebilled-calls")) <= Counter({"carol": 5})
    assert read_topic(settings, "cdrs-dlq") == [] and read_topic(settings, "sip-registrations-dlq") == []
    assert "cdrwatch ingest answered" not in peers.log("kamailio")
