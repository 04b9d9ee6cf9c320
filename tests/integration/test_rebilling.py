"""Re-billing through the embedded broker and a real worker, with hand-computed amounts, and the
monthly summary: the worker's Parquet file equals the offline engine's and the lines' sums."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from streams.tools.replay import InputMessage, _message, replay, run_offline
from streams.settings import load_plans_and_rates
from streams.core.summary import summary_rows
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = pytest.mark.integration

RATES = """prefix,destination,rate_per_minute
331,France Fixe,0.0150
336,France Mobile,0.0300
3389,France Premium,0.9000
44,Royaume-Uni Fixe,0.0200
"""

PLAN = """
included = ["France Fixe", "France Mobile", "Royaume-Uni Fixe"]
billing = "{billing}"
max_distinct_numbers = {distinct}
max_simultaneous_calls = 1
max_registered_devices = 3
max_calls_per_hour = 60
allowed_user_agents = ["^Yealink"]
pbx_user_agents = ["Asterisk"]
[plans.{name}.multipliers]
distinct_numbers = 1
simultaneous_calls = 1
registered_devices = 1
third_party_device = 1
pbx_or_gateway = 4
autodialer = 4
"""


@pytest.fixture(scope="module")
def rebill_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("config")
    (root / "rates.csv").write_text(RATES)
    plans = 'default_plan = "minute"\ntimezone = "Europe/Paris"\n'
    plans += "[plans.minute]" + PLAN.format(billing="60/60", distinct=2, name="minute")
    plans += "[plans.second]" + PLAN.format(billing="1/1", distinct=100, name="second")
    (root / "plans.toml").write_text(plans)
    return Settings(plans_path=root / "plans.toml", rates_path=root / "rates.csv", web_enabled=False, partitions=2)


def call(call_id: str, user: str, callee: str, start: str, billsec: int, *, direction: str = "outbound",
         talk: int | None = None) -> dict[str, Any]:
    """An `end` CDR answered 5 s after `start` (10:00 style times on 2026-11-03 unless a date is given)."""
    day = "2026-11-03" if "T" not in start else ""
    begin = f"{day}T{start}:00+01:00" if day else start
    t0 = datetime.fromisoformat(begin)
    answered = billsec > 0
    end = t0 + timedelta(seconds=5 + (talk if talk is not None else billsec))
    return {
        "event": "end", "call_id": call_id, "user": user, "customer": "acme", "caller": "0140000000",
        "callee": callee, "direction": direction, "start_time": t0.isoformat(),
        "answer_time": (t0 + timedelta(seconds=5)).isoformat() if answered else None,
        "end_time": end.isoformat(), "billsec": billsec, "disposition": "ANSWERED" if answered else "NO ANSWER",
    }


def scenario() -> list[InputMessage]:
    cdrs = [
        # alice, plan "minute" (60/60): two covered calls, then uncovered ones, then the 3rd distinct number
        call("a0", "alice", "0145000001", "2026-10-15T10:00:00+02:00", 60),  # October: another period
        call("a1", "alice", "0145000001", "10:00", 61),         # 120 s x 0.015 -> 0.03 ; at 4x 0.12
        call("a2", "alice", "+33645000002", "10:10", 30),       # 60 s x 0.030 -> 0.03 ; at 4x 0.12
        call("a3", "alice", "0145000099", "10:20", 100, direction="inbound"),
        call("a4", "alice", "0145000098", "10:30", 0, talk=20),  # not answered
        call("a5", "alice", "112", "10:40", 60),                # emergency
        call("a6", "alice", "0899000000", "10:50", 60),         # premium: not included
        call("a7", "alice", "0145000004", "11:00", 119),        # 3rd distinct number: breach (x1)
        call("a8", "alice", "0145000001", "11:10", 1),          # 60 s -> 0.015 -> 0.02 ; at 4x 0.06
        call("a9", "alice", "00336450000 09".replace(" ", ""), "14:00", 90),  # after the PBX: 0.24 at 4x
        # bob, plan "second" (1/1) from his subscriber record: two overlapping calls breach (limit 1)
        call("b1", "bob", "+33145000001", "09:00", 61),         # 61/60 x 0.015 = 0.01525 -> 0.02
        call("b2", "bob", "0033645000002", "09:10", 7),          # 7/60 x 0.03 = 0.0035 -> 0.01
        call("b3", "bob", "0145000010", "09:20", 20),           # 20/60 x 0.015 = 0.005 -> 0.01
        call("b4", "bob", "+442071234567", "09:20", 600),       # overlaps b3; 600/60 x 0.02 = 0.20
        # carol: nothing wrong, nothing billed
        call("c1", "carol", "0145000001", "09:00", 300),
        call("c2", "carol", "0645000001", "09:30", 300),
    ]
    registrations = [
        {"user": "alice", "customer": "acme", "contact": "sip:alice@198.51.100.7", "instance_id": None,
         "user_agent": "Asterisk PBX 20.1", "source_ip": "198.51.100.7", "expires": 3600,
         "time": "2026-11-03T12:00:00+01:00"},
        {"user": "carol", "customer": "acme", "contact": "sip:carol@198.51.100.8", "instance_id": None,
         "user_agent": "Yealink SIP-T46S", "source_ip": "198.51.100.8", "expires": 3600,
         "time": "2026-11-03T08:00:00+01:00"},
    ]
    subscribers = [{"user": "bob", "customer": "acme", "plan": "second"}]
    return (
        [_message("subscribers", orjson.dumps(s), s, "") for s in subscribers]
        + [_message("cdrs", orjson.dumps(c), c, "start_time") for c in cdrs]
        + [_message("sip-registrations", orjson.dumps(r), r, "time") for r in registrations]
    )


EXPECTED_PER_CALL = {
    "a1": Decimal("0.12"), "a2": Decimal("0.12"), "a7": Decimal("0.12"), "a8": Decimal("0.06"),
    "a9": Decimal("0.24"),
    "b1": Decimal("0.02"), "b2": Decimal("0.01"), "b3": Decimal("0.01"), "b4": Decimal("0.20"),
}


@pytest.fixture(scope="module")
def replayed(broker: Broker, rebill_settings: Settings) -> tuple[Any, Any]:
    first = asyncio.run(replay(rebill_settings, scenario(), broker_url=broker.url, timeout_s=120))
    second = asyncio.run(replay(rebill_settings, scenario(), broker_url=broker.url, timeout_s=120))
    return first, second


def per_call(lines: list[dict[str, Any]]) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for line in lines:
        sums[line["call_id"]] = sums.get(line["call_id"], Decimal(0)) + Decimal(line["amount"])
    return sums


def test_each_call_is_billed_exactly_the_hand_computed_amount(replayed: tuple[Any, Any]) -> None:
    first, _ = replayed
    assert per_call(first.rebills) == EXPECTED_PER_CALL
    assert {(a["user"], a["rule"]) for a in first.alerts} == {
        ("alice", "distinct_numbers"), ("alice", "pbx_or_gateway"), ("bob", "simultaneous_calls"),
    }
    for line in first.rebills:
        assert Decimal(line["amount"]) > 0
        assert line["period"] == "2026-11"
    alice_max = max(line["multiplier"] for line in first.rebills if line["user"] == "alice")
    assert alice_max == 4
    bob = {line["call_id"]: line for line in first.rebills if line["user"] == "bob"}
    assert bob["b1"]["billed_seconds"] == 61 and bob["b1"]["rate_per_minute"] == "0.0150"
    assert bob["b4"]["destination"] == "Royaume-Uni Fixe"


def test_replaying_the_same_input_twice_gives_the_same_lines(replayed: tuple[Any, Any]) -> None:
    first, second = replayed
    lines = {(r["line_id"], r["amount"]) for r in first.rebills}
    assert lines == {(r["line_id"], r["amount"]) for r in second.rebills}
    assert len(lines) == len(first.rebills)
    assert {a["alert_id"] for a in first.alerts} == {a["alert_id"] for a in second.alerts}


def test_summary_from_the_worker_equals_the_offline_engine_and_the_lines(
    replayed: tuple[Any, Any], rebill_settings: Settings, tmp_path: Path
) -> None:
    first, _ = replayed
    plans, rates = load_plans_and_rates(rebill_settings)
    store, _counts = run_offline(rebill_settings, scenario())
    offline = summary_rows([(u, p, s) for (u, p), s in store.periods.items()], plans, rates)
    assert first.summary == offline
    by_user = {(r.user, r.period): r for r in first.summary}
    assert by_user[("alice", "2026-11")].rebilled_amount == Decimal("0.66")
    assert by_user[("alice", "2026-11")].rules_breached == ("distinct_numbers", "pbx_or_gateway")
    assert by_user[("alice", "2026-10")].rebilled_amount == Decimal("0")
    assert by_user[("bob", "2026-11")].rebilled_amount == Decimal("0.24")
    assert by_user[("bob", "2026-11")].plan == "second"
    assert by_user[("bob", "2026-11")].peak_simultaneous_calls == 2
    assert by_user[("carol", "2026-11")].covered_calls == 2
    assert by_user[("carol", "2026-11")].covered_minutes == Decimal("10.00")

    first.write(tmp_path)
    table = pq.read_table(tmp_path / "summary.parquet")
    assert str(table.schema.field("rebilled_amount").type) == "decimal128(14, 2)"
    assert str(table.schema.field("first_breach_at").type) == "timestamp[ms, tz=Europe/Paris]"
    rows = {(r["user"], r["period"]): r for r in table.to_pylist()}
    assert rows[("alice", "2026-11")]["rebilled_amount"] == Decimal("0.66")
    assert rows[("alice", "2026-11")]["first_breach_at"].isoformat() == "2026-11-03T11:00:00+01:00"
