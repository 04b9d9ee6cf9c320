"""A hacked account at night, through the embedded broker and a real worker: a new network
registers, twenty calls to high-cost destinations start within two minutes, costs climb. The
critical alert and the account action must come from the `start` events — before the first of those
calls' `end` is consumed — and the normal traffic around it must raise nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.agents.pipeline import Pipeline
from streams.tools.replay import InputMessage, _message, replay
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = pytest.mark.integration

NIGHT = datetime.fromisoformat("2026-11-03T03:00:00+01:00")  # a Tuesday, 3 a.m. in Paris
HIGH_COST = ["+5372345678", "+252612345678", "+870772345678", "+5378123456"]  # Cuba, Somalia, Inmarsat


def call_events(call_id: str, user: str, callee: str, start: datetime, talk: int, *, live: bool) -> list[dict[str, Any]]:
    base = {"call_id": call_id, "user": user, "customer": f"cust-{user}", "caller": "+33140000000",
            "callee": callee, "direction": "outbound", "start_time": start.isoformat()}
    end = base | {"event": "end", "answer_time": (start + timedelta(seconds=4)).isoformat(),
                  "end_time": (start + timedelta(seconds=4 + talk)).isoformat(), "billsec": talk,
                  "disposition": "ANSWERED"}
    return ([base | {"event": "start"}] if live else []) + [end]


def register(user: str, at: datetime, ip: str, agent: str, instance: str) -> dict[str, Any]:
    return {"user": user, "customer": f"cust-{user}", "contact": f"sip:{user}@{ip}:5060", "instance_id": instance,
            "user_agent": agent, "source_ip": ip, "expires": 3600, "time": at.isoformat()}


def scenario() -> tuple[list[InputMessage], set[str]]:
    cdrs: list[dict[str, Any]] = []
    regs: list[dict[str, Any]] = []
    office_day = NIGHT.replace(hour=9) - timedelta(days=1)
    for n in range(30):  # ordinary users: an office phone, a few daytime calls to French numbers
        user = f"office{n:02d}"
        regs.append(register(user, office_day, f"192.0.2.{10 + n}", "Yealink SIP-T46S 66.86.0.15", f"<urn:uuid:o{n}>"))
        for k in range(4):
            cdrs += call_events(f"{user}-{k}", user, f"+331450{n:02d}{k:03d}", office_day + timedelta(minutes=40 * k + n),
                                90 + 10 * k, live=k % 2 == 0)
    # the victim: a customer for weeks (past the learning period), its desk phone refreshes at night,
    # then someone registers its credentials elsewhere
    regs.append(register("victim", NIGHT - timedelta(days=20), "192.0.2.200", "Yealink SIP-T46S 66.86.0.15",
                         "<urn:uuid:desk>"))
    regs.append(register("victim", NIGHT - timedelta(minutes=10), "192.0.2.200", "Yealink SIP-T46S 66.86.0.15",
                         "<urn:uuid:desk>"))
    regs.append(register("victim", NIGHT - timedelta(minutes=5), "203.0.113.77", "Zoiper rv2.10.20.2", None))
    hacked = set()
    for k in range(20):  # twenty calls within two minutes, each lasting about 40 minutes
        call_id = f"hack-{k:02d}"
        hacked.add(call_id)
        cdrs += call_events(call_id, "victim", HIGH_COST[k % len(HIGH_COST)], NIGHT + timedelta(seconds=6 * k),
                            2400 + k, live=True)
    messages = [_message("cdrs", orjson.dumps(c), c, "start_time") for c in cdrs]
    messages += [_message("sip-registrations", orjson.dumps(r), r, "time") for r in regs]
    return messages, hacked


def test_a_hacked_account_is_stopped_before_its_calls_end(broker: Broker) -> None:
    messages, hacked = scenario()
    seen: list[tuple[str, str, list[str]]] = []  # (event, call_id, fraud levels emitted) in engine order

    class Spy:
        """The processor, the fraud levels of each CDR recorded (a compiled processor cannot be patched)."""

        def __init__(self, processor: Any) -> None:
            self.processor = processor

        def __getattr__(self, name: str) -> Any:
            return getattr(self.processor, name)

        def process(self, topic: str, message: Any, store: Any, out: Any) -> None:
            before = len(out.fraud_alerts)
            self.processor.process(topic, message, store, out)
            if topic == "cdrs":
                cdr = orjson.loads(message.value)
                seen.append((cdr["event"], cdr["call_id"], [a.level for a in out.fraud_alerts[before:]]))

    def spy(pipeline: Pipeline) -> None:
        assert pipeline.processor.fraud is not None, "the bundled plans configure fraud rules"
        pipeline.processor = Spy(pipeline.processor)

    result = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=180,
                                on_pipeline=spy))

    critical = [a for a in result.fraud_alerts if a["level"] == "critical"]
    assert critical, result.fraud_alerts
    assert {a["user"] for a in result.fraud_alerts} == {"victim"}, "normal traffic must raise no fraud alert"
    assert {a["rule"] for a in critical} >= {"high_risk_destination", "cost_burst"}
    assert {a["user"] for a in result.actions} == {"victim"}
    assert {a["action"] for a in result.actions} == {"restrict_to_emergency"}
    assert all(a["alert_id"] in {c["alert_id"] for c in critical} for a in result.actions)
    assert any(a["rule"] == "new_network" for a in result.fraud_alerts), [(a["rule"], a["level"], a["time"]) for a in result.fraud_alerts]

    # caught live: the first critical alert comes from a `start` event, before any hacked call's `end`
    first_critical = next(i for i, (_, _, levels) in enumerate(seen) if "critical" in levels)
    first_end = next(i for i, (event, call_id, _) in enumerate(seen) if event == "end" and call_id in hacked)
    assert seen[first_critical][0] == "start"
    assert first_critical < first_end
    # ... and at an event time within the two minutes the calls took to start
    first_time = min(datetime.fromisoformat(a["time"]) for a in critical)
    assert NIGHT <= first_time <= NIGHT + timedelta(minutes=2)

    # the fair-use side sees the same night: only the victim is in breach
    assert {a["user"] for a in result.alerts} == {"victim"}
    assert {a["rule"] for a in result.alerts} >= {"simultaneous_calls", "third_party_device"}
