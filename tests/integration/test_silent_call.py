"""A silent call through a real broker and a real worker: one answered call to a satellite number,
its `start` event sent, and nothing else from the user while it lasts. The worker's clock raises
`long_call` when each threshold is crossed, with that instant as the alert's time, and the account
action with the critical one, before the call's `end` exists: driven by the watermark of what the
worker has read (other users' traffic), or, once input is idle, by the wall clock."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.settings import Settings, bundled_file
from streams.tools.embedded import EmbeddedBroker
from streams.tools.replay import InputMessage, _message, replay
from tests.brokers import Broker

pytestmark = pytest.mark.integration

SATELLITE = "+870772345678"  # Inmarsat


def registration(user: str, at: datetime, ip: str) -> dict[str, Any]:
    return {"user": user, "customer": f"cust-{user}", "contact": f"sip:{user}@{ip}:5060",
            "instance_id": f"<urn:uuid:{user}>", "user_agent": "Yealink SIP-T46S 66.86.0.15",
            "source_ip": ip, "expires": 3600, "time": at.isoformat()}


def silent_call(start: datetime) -> list[InputMessage]:
    """The user ``quiet``, registered for weeks from its office, starts a call at ``start``."""
    regs = [registration("quiet", start - timedelta(days=20), "192.0.2.20"),
            registration("quiet", start - timedelta(minutes=30), "192.0.2.20")]
    call = {"event": "start", "call_id": "silent-1", "user": "quiet", "customer": "cust-quiet",
            "caller": "+33140000001", "callee": SATELLITE, "direction": "outbound", "start_time": start.isoformat()}
    return [*(_message("sip-registrations", orjson.dumps(r), r, "time") for r in regs),
            _message("cdrs", orjson.dumps(call), call, "start_time")]


def long_calls(fraud_alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((a for a in fraud_alerts if a["rule"] == "long_call"), key=lambda a: a["time"])


def test_a_silent_call_is_alarmed_as_other_traffic_moves_the_watermark(broker: Broker) -> None:
    """Another user's phone refreshes every 30 minutes for 5 hours: once the worker has read up to
    there on every partition, the call has lasted past 120 and 180 minutes."""
    start = datetime.fromisoformat("2026-11-10T20:00:00+01:00")
    others = [registration("busy", start + timedelta(minutes=30 * k), "198.51.100.7") for k in range(11)]
    messages = silent_call(start) + [_message("sip-registrations", orjson.dumps(r), r, "time") for r in others]

    result = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=120))

    alarms = long_calls(result.fraud_alerts)
    assert [(a["level"], a["observed"], a["window"]) for a in alarms] == [
        ("warning", 7201, "silent-1"), ("critical", 10801, "silent-1")]  # 120 and 180 minutes, passed by 1 s
    crossed = [datetime.fromisoformat(a["time"]) for a in alarms]
    assert crossed == [start + timedelta(minutes=120, seconds=1), start + timedelta(minutes=180, seconds=1)]
    assert all(a["evidence"]["in_progress"] and a["evidence"]["destination"] == "Satellite Inmarsat" for a in alarms)
    actions = [a for a in result.actions if a["alert_id"] == alarms[1]["alert_id"]]
    assert [(a["action"], datetime.fromisoformat(a["time"])) for a in actions] == [("restrict_to_emergency", crossed[1])]
    assert {a["user"] for a in result.fraud_alerts} == {"quiet"}


def test_a_silent_call_is_alarmed_on_the_wall_clock_when_input_is_idle(tansu: EmbeddedBroker, tmp_path: Path) -> None:
    """Live: the call starts now, nothing else comes. With long_call critical above 1 minute, the
    worker's clock — on the wall clock once input is idle — raises it 61 s after the start."""
    plans = tmp_path / "plans.toml"
    bundled = bundled_file("plans.toml").read_text()
    block = "[fraud.rules.long_call]\nwarning = 120\ncritical = 180\n"
    assert block in bundled
    plans.write_text(bundled.replace(block, "[fraud.rules.long_call]\ncritical = 1\n"))
    start = datetime.now(timezone.utc).replace(microsecond=0)
    began = time.monotonic()

    live_until = int((start + timedelta(seconds=66)).timestamp() * 1000)  # the worker stays up that long
    result = asyncio.run(replay(Settings(web_enabled=False, plans_path=plans), silent_call(start),
                                broker_url=tansu.url, timeout_s=150, live_until_ms=live_until))

    alarms = long_calls(result.fraud_alerts)
    assert [(a["level"], a["observed"], datetime.fromisoformat(a["time"])) for a in alarms] == [
        ("critical", 61, start + timedelta(seconds=61))]
    assert [a["action"] for a in result.actions if a["alert_id"] == alarms[0]["alert_id"]] == ["restrict_to_emergency"]
    assert time.monotonic() - began >= 55  # it came when the minute had passed, not before
