"""The console's parts without a broker: filters, the records a verdict writes, a user's month day
by day, access, and the answers to bad requests."""

from __future__ import annotations

import base64
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.cli import main
from streams.codecs import decode_feedback, encode
from streams.console import BadRequest, Console, ConsoleConfig, Entry, Feed, chart_svg, matches, parse_filters, \
    timeline, verdict_records
from streams.core.schemas import validator
from streams.settings import Settings, authorized_caller

PARIS = ZoneInfo("Europe/Paris")
NOW_MS = 1_764_669_600_000  # 2025-12-02T10:00:00Z


def fraud_alert(**change: Any) -> dict[str, Any]:
    return {"alert_id": "a" * 32, "rule": "new_network", "rule_name": "new_network", "level": "critical",
            "user": "alice", "customer": "acme", "plan": "full-illimite", "window": "2026-11-05", "observed": 2,
            "threshold": 2, "unit": "networks", "time": "2026-11-05T09:00:00+01:00",
            "evidence": {"networks": ["198.51.100.0/24", "203.0.113.0/24"]}} | change


ACTION = {"action_id": "c" * 32, "action": "restrict_to_emergency", "user": "alice", "customer": "acme",
          "plan": "full-illimite", "rule": "new_network", "rule_name": "new_network", "alert_id": "a" * 32,
          "reason": "…", "time": "2026-11-05T09:00:00+01:00"}


# ------------------------------------------------------------------------------------ filters


def test_filters_match_on_every_field_given() -> None:
    entry = Entry(1, "fraud-alerts", fraud_alert())
    assert matches(entry, {})
    assert matches(entry, {"customer": "acme", "user": "alice", "rule": "new_network", "level": "critical",
                           "period": "2026-11", "topic": "fraud-alerts"})
    for miss in ({"user": "bob"}, {"level": "warning"}, {"period": "2026-10"}, {"topic": "fairuse-alerts"}):
        assert not matches(entry, miss), miss
    fair = Entry(2, "fairuse-alerts", {"alert_id": "x", "rule": "distinct_numbers", "period": "2026-11"})
    assert matches(fair, {"period": "2026-11", "rule": "distinct_numbers"})


@pytest.mark.parametrize(("query", "reason"), [
    ([("who", "x")], "unknown parameter 'who'"),
    ([("period", "2026-13")], "period: expected a month"),
    ([("level", "high")], "level: expected warning or critical"),
    ([("topic", "cdrs")], "topic: expected one of"),
    ([("user", "a"), ("user", "b")], "more than once"),
])
def test_a_bad_filter_says_what_is_wrong(query: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_filters(query)


def test_empty_filter_fields_filter_nothing() -> None:
    assert parse_filters([("user", ""), ("level", "")]) == {}


def test_the_live_view_s_rows_are_alerts_and_actions_unless_a_topic_is_asked() -> None:
    rows = {"topic": ""}
    assert matches(Entry(1, "fraud-alerts", fraud_alert()), rows)
    assert matches(Entry(2, "account-actions", ACTION), rows)
    assert not matches(Entry(3, "rebilled-calls", {"line_id": "l"}), rows)
    assert not matches(Entry(4, "fraud-feedback", {"feedback_id": "f"}), rows)
    assert matches(Entry(3, "rebilled-calls", {"line_id": "l"}), {"topic": "rebilled-calls"})


def test_what_the_feed_keeps_about_an_alert_goes_with_it() -> None:
    feed = Feed(keep=2)
    feed.add("fraud-alerts", fraud_alert())
    feed.add("account-actions", ACTION)
    feed.add("fairuse-alerts", {"alert_id": "f" * 32})
    assert "a" * 32 not in feed.actions and feed.alert("a" * 32) is None


def test_the_feed_keeps_each_record_once_and_the_newest_only() -> None:
    feed = Feed(keep=2)
    assert feed.add("fraud-alerts", fraud_alert()) is not None
    assert feed.add("fraud-alerts", fraud_alert()) is None  # a redelivered output: same id
    feed.add("account-actions", ACTION)
    feed.add("fairuse-alerts", {"alert_id": "f" * 32})
    assert [e.topic for e in feed.entries.values()] == ["account-actions", "fairuse-alerts"]


# ------------------------------------------------------------------------------------ verdicts


def test_a_false_positive_on_new_network_trusts_its_networks_and_mutes_the_rule() -> None:
    feedback, lift = verdict_records(fraud_alert(), ACTION, "false_positive", "ana", "her home router", NOW_MS, 24)
    assert lift is None
    assert feedback["trust_networks"] == ["198.51.100.0/24", "203.0.113.0/24"]
    assert feedback["suppress_until"] == "2025-12-03T10:00:00.000+00:00"
    assert (feedback["by"], feedback["reason"], feedback["time"]) == ("ana", "her home router",
                                                                      "2025-12-02T10:00:00.000+00:00")
    assert decode_feedback(encode(feedback)).mute_until_ms == NOW_MS + 24 * 3_600_000


def test_an_acknowledgement_changes_nothing_for_the_workers() -> None:
    feedback, _ = verdict_records(fraud_alert(), None, "acknowledge", "ana", "", NOW_MS, 24)
    assert (feedback["trust_networks"], feedback["suppress_until"]) == ([], None)


def test_a_verdict_id_depends_on_the_alert_and_the_kind_only() -> None:
    one, _ = verdict_records(fraud_alert(), None, "false_positive", "ana", "x", NOW_MS, 24)
    two, _ = verdict_records(fraud_alert(), None, "false_positive", "bob", "y", NOW_MS + 5000, 48)
    ack, _ = verdict_records(fraud_alert(), None, "acknowledge", "ana", "x", NOW_MS, 24)
    assert one["feedback_id"] == two["feedback_id"] != ack["feedback_id"]


def test_a_lift_undoes_the_alert_s_action_with_who_and_why() -> None:
    feedback, lift = verdict_records(fraud_alert(rule="calls_per_minute", rule_name="calls_per_minute"), ACTION,
                                     "lift", "ana", "customer called", NOW_MS, 24)
    assert feedback["trust_networks"] == []  # only new_network trusts networks
    assert lift is not None
    validator("account-actions")(lift)
    assert (lift["action"], lift["alert_id"], lift["reason"]) == (
        "lift", "a" * 32, "restrict_to_emergency lifted by ana: customer called")
    with pytest.raises(BadRequest, match="no account action to lift"):
        verdict_records(fraud_alert(), None, "lift", "ana", "", NOW_MS, 24)
    with pytest.raises(BadRequest, match="kind: expected one of"):
        verdict_records(fraud_alert(), None, "ignore", "ana", "", NOW_MS, 24)


# ------------------------------------------------------------------------------ the month chart


def cdr(call_id: str, start: str, end: str | None) -> dict[str, Any]:
    payload = {"event": "end" if end else "start", "call_id": call_id, "start_time": start}
    return payload | ({"end_time": end} if end else {})


def test_the_month_day_by_day_counts_calls_peaks_registrations_and_networks() -> None:
    """Three calls on 5 November (Paris): 09:00-09:10, 09:05-09:20 and a call still open from 09:15,
    its start event then its end read later; a REGISTER refresh and an unregister; a call at
    23:30 UTC on the 5th, which is the 6th in Paris."""
    cdrs = [cdr("a", "2026-11-05T09:00:00+01:00", "2026-11-05T09:10:00+01:00"),
            cdr("b", "2026-11-05T09:05:00+01:00", "2026-11-05T09:20:00+01:00"),
            cdr("c", "2026-11-05T09:15:00+01:00", None),
            cdr("d", "2026-11-05T23:30:00+00:00", "2026-11-05T23:31:00+00:00")]
    regs = [{"time": "2026-11-05T08:00:00+01:00", "expires": 3600, "source_ip": "192.0.2.10"},
            {"time": "2026-11-05T08:30:00+01:00", "expires": 3600, "source_ip": "198.51.100.7:5060"},
            {"time": "2026-11-05T18:00:00+01:00", "expires": 0, "source_ip": "203.0.113.1"}]
    days = timeline(cdrs, regs, "2026-11", PARIS)
    assert len(days) == 30
    fifth, sixth = days["2026-11-05"], days["2026-11-06"]
    assert (fifth.calls, fifth.peak, fifth.registrations) == (3, 2, 2)  # b and c overlap; a ended as c began
    assert fifth.networks == {"192.0.2.0/24", "198.51.100.0/24"}
    assert (sixth.calls, sixth.peak) == (1, 1)
    svg = chart_svg(days)
    assert svg.count("<rect") == 4 * 30 and "2026-11-05: 3 calls" in svg and "2026-11-05: 2 networks" in svg


# -------------------------------------------------------------------------------------- access


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_who_is_asking() -> None:
    assert authorized_caller("", None) == ""
    assert authorized_caller("t0k", basic("ana", "t0k")) == "ana"
    assert authorized_caller("t0k", "Bearer t0k") == "bearer"
    for refused in (None, basic("ana", "wrong"), "Bearer wrong", "Token t0k", "Basic %%%"):
        assert authorized_caller("t0k", refused) is None, refused


@pytest.fixture()
async def client() -> Any:
    console = Console(ConsoleConfig(Settings(), token="t0k"))
    console.feed.add("fraud-alerts", fraud_alert())
    console.feed.caught_up.set()
    async with TestClient(TestServer(console.app())) as c:
        yield c


async def test_the_console_asks_for_credentials_except_for_its_health(client: TestClient) -> None:
    assert (await client.get("/")).status == 401
    assert (await client.get("/", headers={"Authorization": basic("ana", "t0k")})).status == 200
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (orjson.dumps([1]), 400, "expected a JSON object"),
    (orjson.dumps({"alert_id": "a" * 32, "kind": "false_positive", "why": "x"}), 400, "unknown field(s): why"),
    (orjson.dumps({"alert_id": "a" * 32, "kind": "false_positive"}), 400, "reason: say why"),
    (orjson.dumps({"alert_id": "b" * 32, "kind": "acknowledge"}), 404, "no fraud alert"),
    (orjson.dumps({"alert_id": "a" * 32, "kind": "lift", "reason": "x"}), 400, "no account action to lift"),
])
async def test_a_bad_verdict_is_refused_with_its_reason(client: TestClient, body: bytes, status: int,
                                                        reason: str) -> None:
    answer = await client.post("/api/feedback", data=body, headers={
        "Authorization": basic("ana", "t0k"), "Content-Type": "application/json"})
    assert answer.status == status
    assert reason in (await answer.json())["error"]


async def test_no_verdict_is_taken_before_the_console_has_read_the_earlier_ones() -> None:
    console = Console(ConsoleConfig(Settings()))
    console.feed.add("fraud-alerts", fraud_alert())
    async with TestClient(TestServer(console.app())) as c:
        answer = await c.post("/api/feedback", json={"alert_id": "a" * 32, "kind": "acknowledge", "by": "ana"})
        assert answer.status == 503 and answer.headers["Retry-After"] == "2"


async def test_without_a_token_only_a_loopback_name_is_served() -> None:
    """A page of another site whose name was pointed at 127.0.0.1 (DNS rebinding) gets nothing."""
    async with TestClient(TestServer(Console(ConsoleConfig(Settings())).app())) as c:
        assert (await c.get("/api/events")).status == 200
        refused = await c.get("/api/events", headers={"Host": "evil.example:8089"})
        assert refused.status == 403 and "loopback name only" in await refused.text()
        assert (await c.get("/api/events", headers={"Host": "localhost:8089"})).status == 200


async def test_a_verdict_must_be_json_so_that_no_other_site_can_post_one(client: TestClient) -> None:
    answer = await client.post("/api/feedback", data="alert_id=x&kind=lift", headers={
        "Authorization": basic("ana", "t0k"), "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 400 and "expected a JSON body" in (await answer.json())["error"]


async def test_the_events_view_filters(client: TestClient) -> None:
    auth = {"Authorization": "Bearer t0k"}
    got = await (await client.get("/api/events?user=alice&level=critical", headers=auth)).json()
    assert [e["payload"]["alert_id"] for e in got["events"]] == ["a" * 32]
    assert (await (await client.get("/api/events?user=bob", headers=auth)).json())["events"] == []
    bad = await client.get("/api/events?period=11-2026", headers=auth)
    assert bad.status == 400 and "period" in (await bad.json())["error"]


def test_the_console_refuses_to_listen_beyond_loopback_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CDRWATCH_CONSOLE_TOKEN", raising=False)
    assert main(["console", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "set CDRWATCH_CONSOLE_TOKEN" in err and "Traceback" not in err
    assert main(["console", "--worker-url", "ftp://x"]) == 2
    assert "--worker-url: expected http://host:port" in capsys.readouterr().err
    assert main(["console", "--mute-hours", "1e9"]) == 2
    assert "--mute-hours: at most 8784" in capsys.readouterr().err
