"""A silent call through a real broker and a real worker: one answered call to a satellite number,
its `start` event sent, and nothing else from the user while it lasts. The worker's clock — the
watermark of what it has read, then the wall clock once input is idle — raises `long_call` when
each threshold is crossed, with that instant as the alert's time, and the account action with the
critical one, before the call's `end` exists."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from streams.settings import Settings
from streams.tools.replay import _message, replay
from tests.brokers import Broker

pytestmark = pytest.mark.integration

SATELLITE = "+870772345678"  # Inmarsat


def test_a_silent_call_is_alarmed_when_it_crosses_each_threshold(broker: Broker) -> None:
    # the call began 3 h 10 min ago (whole seconds), on a line registered 20 days ago from its office
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3, minutes=10)
    office = {"user": "quiet", "customer": "acme", "contact": "sip:quiet@192.0.2.20:5060",
              "instance_id": "<urn:uuid:desk>", "user_agent": "Yealink SIP-T46S 66.86.0.15",
              "source_ip": "192.0.2.20", "expires": 3600}
    regs = [office | {"time": (start - timedelta(days=20)).isoformat()},
            office | {"time": (start - timedelta(minutes=30)).isoformat()}]
    call = {"event": "start", "call_id": "silent-1", "user": "quiet", "customer": "acme", "caller": "+33140000001",
            "callee": SATELLITE, "direction": "outbound", "start_time": start.isoformat()}
    messages = [_message("sip-registrations", orjson.dumps(r), r, "time") for r in regs]
    messages.append(_message("cdrs", orjson.dumps(call), call, "start_time"))

    result = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=broker.url, timeout_s=120))

    long_calls = sorted((a for a in result.fraud_alerts if a["rule"] == "long_call"), key=lambda a: a["time"])
    assert [(a["level"], a["observed"], a["window"]) for a in long_calls] == [
        ("warning", 7201, "silent-1"), ("critical", 10801, "silent-1")]  # 120 and 180 minutes, passed by 1 s
    crossed = [datetime.fromisoformat(a["time"]) for a in long_calls]
    assert crossed == [start + timedelta(minutes=120, seconds=1), start + timedelta(minutes=180, seconds=1)]
    assert all(a["evidence"]["in_progress"] and a["evidence"]["destination"] == "Satellite Inmarsat"
               for a in long_calls)
    critical = long_calls[1]
    actions = [a for a in result.actions if a["alert_id"] == critical["alert_id"]]
    assert [(a["action"], datetime.fromisoformat(a["time"])) for a in actions] == [
        ("restrict_to_emergency", crossed[1])]
    assert {a["user"] for a in result.fraud_alerts} == {"quiet"}
