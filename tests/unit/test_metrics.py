"""Metric names, types and labels; the live-activity gauges and the consumer-lag collector; the web
views' parameter checks and answers. No broker: fakes for the consumer, dicts for the tables."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from faust.sensors.prometheus import PrometheusMonitor
from prometheus_client.parser import text_string_to_metric_families

from streams.agents.pipeline import build_pipeline
from streams.settings import load_plans_and_rates
from streams.core.records import Alert, RebillLine
from streams.core.state import MemoryStore
from streams.metrics import EVENT_TIME_LAG_BUCKETS, FAUST_PREFIX, ConsumerLagCollector, LiveActivity, Metrics
from streams.settings import Settings
from streams.web import AlertRing, alerts_view, format_endpoints, health_view, parse_since, usage_view

from tests import factories as f

HOUR = 3600


def families(metrics: Metrics) -> dict[str, Any]:
    return {fam.name: fam for fam in text_string_to_metric_families(metrics.exposition().decode())}


def value(metrics: Metrics, sample: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


def alert(rule: str = "distinct_numbers") -> Alert:
    return Alert(alert_id=f"id-{rule}", rule=rule, user="alice", customer="acme", plan="unlimited",
                 period="2026-03", observed=151, limit=150, multiplier=Decimal(1), time="2026-03-02T09:00:00+01:00",
                 evidence={})


def line(rule: str, amount: str, call_id: str = "c1") -> RebillLine:
    return RebillLine(line_id=f"l-{call_id}-{rule}", call_id=call_id, user="alice", customer="acme", period="2026-03",
                      rule=rule, destination="France Fixe", billsec=60, billed_seconds=60,
                      rate_per_minute=Decimal("0.0150"), multiplier=Decimal(1), amount=Decimal(amount))


@dataclass
class FraudAlertStub:
    rule: str
    level: str


# -------------------------------------------------------------------------- names and labels


def test_domain_metrics_names_types_and_labels() -> None:
    metrics = Metrics()
    metrics.event("cdrs", "ok")
    metrics.alert(alert())
    metrics.fraud_alert(FraudAlertStub("cost_burst", "critical"))
    metrics.rebill(line("distinct_numbers", "0.02"))
    metrics.applied(f.end_cdr("c1", f.at(0)), "ok", ("cdrs", 0), now_s=f.ms(f.at(90)) / 1000)
    fams = families(metrics)
    expected = {
        "cdrwatch_events": ("counter", {"topic", "outcome"}),
        "cdrwatch_alerts": ("counter", {"rule"}),
        "cdrwatch_fraud_alerts": ("counter", {"rule", "level"}),
        "cdrwatch_rebilled_euros": ("counter", {"rule"}),
        "cdrwatch_event_time_lag_seconds": ("histogram", {"le"}),
        "cdrwatch_active_calls": ("gauge", set()),
        "cdrwatch_active_registrations": ("gauge", set()),
        "cdrwatch_consumer_lag": ("gauge", set()),  # no consumer: a family without samples
        "cdrwatch_changelog_write_failures": ("counter", set()),  # none yet: no sample
        "process_start_time_seconds": ("gauge", set()),
    }
    for name, (kind, labels) in expected.items():
        assert fams[name].type == kind, name
        assert {k for s in fams[name].samples if not s.name.endswith("_created") for k in s.labels} == labels, name
    assert all(name.startswith(("cdrwatch_", "process_")) for name in fams), "no Faust sensor before install()"
    buckets = [float(s.labels["le"]) for s in fams["cdrwatch_event_time_lag_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets == [*EVENT_TIME_LAG_BUCKETS, float("inf")]


def test_known_series_exist_at_zero_before_their_first_event() -> None:
    """PromQL's increase() sees no increase in a counter that first appears at 1: the first alert
    of a rule would never reach the dashboard nor fire an alerting rule."""
    metrics = Metrics()
    metrics.declare(["cdrs", "sip-registrations"])
    fams = families(metrics)

    def zeros(name: str) -> set[tuple[str, ...]]:
        return {tuple(sorted(s.labels.values())) for s in fams[name].samples
                if s.name.endswith("_total") and s.value == 0}

    assert zeros("cdrwatch_events") == {("cdrs", "dlq"), ("dlq", "sip-registrations")}
    assert ("autodialer",) in zeros("cdrwatch_alerts") and len(zeros("cdrwatch_alerts")) == 6
    assert ("critical", "new_network") in zeros("cdrwatch_fraud_alerts") and len(zeros("cdrwatch_fraud_alerts")) == 24  # 12 kinds x 2 levels
    assert len(zeros("cdrwatch_rebilled_euros")) == 6
    assert metrics.counts == {}  # what the replays compare: events only


def test_a_refused_changelog_write_is_counted_by_table() -> None:
    pipeline = build_pipeline(Settings(web_enabled=False, app_id="cl-failures"), *load_plans_and_rates(Settings()))
    pipeline.app.crash = lambda exc: asyncio.sleep(0)  # type: ignore[method-assign]  # not started

    async def refused() -> None:
        pipeline._changelog_failed("cl-failures-periods-changelog/3", RuntimeError("MessageSizeTooLarge"))
        await asyncio.sleep(0)

    asyncio.run(refused())
    fams = families(pipeline.metrics)
    assert [(s.labels, s.value) for s in fams["cdrwatch_changelog_write_failures"].samples
            if s.name.endswith("_total")] == [({"table": "periods"}, 1.0)]
    assert isinstance(pipeline.failure, RuntimeError)


def test_counters_count_exactly() -> None:
    metrics = Metrics()
    for topic, outcome in [("cdrs", "ok")] * 3 + [("cdrs", "dlq"), ("sip-registrations", "duplicate")]:
        metrics.event(topic, outcome)
    metrics.alert(alert("distinct_numbers"))
    metrics.alert(alert("pbx_or_gateway"))
    metrics.alert(alert("pbx_or_gateway"))
    metrics.fraud_alert(FraudAlertStub("long_call", "warning"))
    for amount in ("0.02", "0.03", "0.03"):
        metrics.rebill(line("distinct_numbers", amount))
    assert value(metrics, "cdrwatch_events_total", topic="cdrs", outcome="ok") == 3
    assert value(metrics, "cdrwatch_events_total", topic="cdrs", outcome="dlq") == 1
    metrics.event("cdrs", "late", 4)  # a batch's count at once
    assert value(metrics, "cdrwatch_events_total", topic="sip-registrations", outcome="duplicate") == 1
    assert value(metrics, "cdrwatch_events_total", topic="cdrs", outcome="late") == 4
    assert metrics.counts == {("cdrs", "ok"): 3, ("cdrs", "dlq"): 1, ("sip-registrations", "duplicate"): 1,
                              ("cdrs", "late"): 4}
    assert value(metrics, "cdrwatch_alerts_total", rule="pbx_or_gateway") == 2
    assert value(metrics, "cdrwatch_fraud_alerts_total", rule="long_call", level="warning") == 1
    assert value(metrics, "cdrwatch_rebilled_euros_total", rule="distinct_numbers") == pytest.approx(0.08)


def test_money_is_exposed_to_the_cent() -> None:
    metrics = Metrics()
    for amount in ("5.51", "5.51", "5.51", "0.10", "0.20"):
        metrics.rebill(line("pbx_or_gateway", amount))
    text = metrics.exposition().decode()
    assert 'cdrwatch_rebilled_euros_total{rule="pbx_or_gateway"} 16.83' in text.splitlines()  # float sums: 16.830000000000002


def test_two_pipelines_in_one_process_have_their_own_registries() -> None:
    one, two = Metrics(), Metrics()
    one.event("cdrs", "ok")
    assert value(one, "cdrwatch_events_total", topic="cdrs", outcome="ok") == 1
    assert value(two, "cdrwatch_events_total", topic="cdrs", outcome="ok") is None


@pytest.mark.parametrize(
    "event_at, now_at, lag",
    [
        (0, 30, 30.0),  # an end CDR 30 s after it ended
        (0, 0, 0.0),
        (60, 0, 0.0),  # an event from the future (clock skew) counts as no lag
    ],
)
def test_event_time_lag_is_processing_time_minus_event_time(event_at: int, now_at: int, lag: float) -> None:
    metrics = Metrics()
    # an end CDR's event time is its end_time: start 60 s earlier
    cdr = f.end_cdr("c1", f.at(event_at - 60), duration=60)
    metrics.applied(cdr, "ok", ("cdrs", 0), now_s=f.ms(f.at(now_at)) / 1000)
    assert value(metrics, "cdrwatch_event_time_lag_seconds_count") == 1
    assert value(metrics, "cdrwatch_event_time_lag_seconds_sum") == pytest.approx(lag)


def test_install_puts_faust_sensors_in_the_same_registry_and_serves_one_metrics_page() -> None:
    settings = Settings(web_enabled=False, app_id="metrics-unit")
    pipeline = build_pipeline(settings, f.plan_book(), f.deck())
    names = set(families(pipeline.metrics))
    assert f"{FAUST_PREFIX}_messages_received" in names and "cdrwatch_events" in names
    assert isinstance(pipeline.app.monitor, PrometheusMonitor)
    routes = [(r.method, r.resource.canonical) for r in pipeline.app.web.web_app.router.routes()
              if r.resource is not None]
    for path in ("/metrics", "/healthz", "/users/{user}/usage", "/alerts"):
        assert [m for m, p in routes if p == path and m == "GET"] == ["GET"], path
    with pytest.raises(RuntimeError):
        pipeline.metrics.install(pipeline.app)


# ---------------------------------------------------------------------------- live activity

CDRS0, CDRS1, REGS0 = ("cdrs", 0), ("cdrs", 1), ("sip-registrations", 0)


def activity() -> LiveActivity:
    return LiveActivity(max_call_ms=4 * HOUR * 1000)


@pytest.mark.parametrize(
    "steps, calls",
    [
        ([("start", "c1", 0, "ok")], 1),
        ([("start", "c1", 0, "ok"), ("end", "c1", 0, "ok")], 0),
        ([("start", "c1", 0, "ok"), ("start", "c1", 0, "duplicate")], 1),
        ([("start", "c1", 0, "ok"), ("start", "c2", 60, "ok"), ("end", "c2", 60, "ok")], 1),
        # an end before its start: the late start is a duplicate for the engine, and stays closed
        ([("end", "c1", 0, "ok"), ("start", "c1", 0, "duplicate")], 0),
        # a start without its end stops counting after the maximum call duration (event time)
        ([("start", "c1", 0, "ok"), *[("end", f"c{9 + i}", 4 * HOUR, "ok") for i in range(3)]], 0),
        ([("start", "c1", 0, "ok"), ("end", "c9", HOUR, "ok"), ("end", "c10", 4 * HOUR - 120, "ok")], 1),
        # a rejected (too late) or dead-lettered event changes nothing
        ([("start", "c1", 0, "dlq")], 0),
    ],
)
def test_active_calls(steps: list[tuple[str, str, int, str]], calls: int) -> None:
    live = activity()
    for kind, call_id, t, outcome in steps:
        # `end` events: a 60 s call that ends at t
        ev = f.start_cdr(call_id, f.at(t)) if kind == "start" else f.end_cdr(call_id, f.at(t - 60))
        live.apply(ev, outcome, CDRS0)
    assert live.active_calls() == calls


@pytest.mark.parametrize(
    "steps, active",
    [
        ([("a", 0, 3600)], 1),
        ([("a", 0, 3600), ("b", 10, 3600), ("c", 20, 3600)], 3),
        ([("a", 0, 3600), ("a", 60, 3600)], 1),  # a refresh is the same binding
        ([("a", 0, 3600), ("a", 60, 0)], 0),  # unregister
        ([("a", 0, 60), ("b", 120, 3600)], 1),  # a expired by b's time
        ([("a", 60, 3600), ("a", 0, 0)], 1),  # an older unregister does not remove a newer REGISTER
    ],
)
def test_active_registrations(steps: list[tuple[str, int, int]], active: int) -> None:
    live = activity()
    for binding, t, expires in steps:
        live.apply(f.registration(binding, f.at(t), expires=expires), "ok", REGS0)
    assert live.active_registrations() == active


def test_activity_is_judged_on_each_partitions_own_clock_and_dropped_when_a_partition_goes() -> None:
    live = activity()
    live.apply(f.start_cdr("c1", f.at(0)), "ok", CDRS0)
    live.apply(f.start_cdr("c2", f.at(0), user="bob"), "ok", CDRS1)
    # partition 1 moves 5 h on: its call has expired, partition 0's has not
    for hour in (1, 2, 3, 4, 5):
        live.apply(f.end_cdr(f"c{hour + 2}", f.at(hour * HOUR - 60), user="bob"), "ok", CDRS1)
    assert live.active_calls() == 1
    live.keep_partitions({CDRS1})
    assert live.active_calls() == 0 and CDRS0 not in live.clocks


def test_a_lone_event_far_ahead_does_not_move_the_clock_three_in_a_row_do() -> None:
    live = activity()
    live.apply(f.start_cdr("c1", f.at(0)), "ok", CDRS0)
    live.apply(f.end_cdr("typo", f.at(10 * 365 * 24 * HOUR)), "ok", CDRS0)  # a mistyped year
    live.apply(f.start_cdr("c2", f.at(60)), "ok", CDRS0)
    assert live.active_calls() == 2
    # a replay moving to next week: the clock follows after three events
    for n in range(3):
        live.apply(f.start_cdr(f"next{n}", f.at(7 * 24 * HOUR + n)), "ok", CDRS0)
    assert live.clocks[CDRS0] == f.ms(f.at(7 * 24 * HOUR + 2))
    assert live.active_calls() == 3


# ------------------------------------------------------------------------------ consumer lag


@dataclass
class FakeChannel:
    topics: tuple[str, ...]


@dataclass
class FakeAgent:
    channel: FakeChannel


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    highwaters: dict[TP, int | None]
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]


@dataclass
class FakeApp:
    _consumer: FakeConsumer | None
    agents: dict[str, FakeAgent] = field(default_factory=lambda: {"cdrs": FakeAgent(FakeChannel(("p-cdrs",)))})


def test_consumer_lag_is_highwater_minus_committed_for_the_agents_partitions() -> None:
    consumer = FakeConsumer(
        highwaters={TP("p-cdrs", 0): 120, TP("p-cdrs", 1): 7, TP("p-cdrs", 2): None, TP("p-cdrs", 3): 5,
                    TP("app-periods-changelog", 0): 900},
        _committed_offset={TP("p-cdrs", 0): 100, TP("p-cdrs", 1): 7, TP("p-cdrs", 3): None},
    )
    collector = ConsumerLagCollector(FakeApp(consumer))  # type: ignore[arg-type]
    # partition 2: no fetch answered yet (unknown); partition 3: nothing committed yet
    assert collector.lags() == {("p-cdrs", 0): 20, ("p-cdrs", 1): 0, ("p-cdrs", 3): 5}
    [fam] = list(collector.collect())
    assert fam.name == "cdrwatch_consumer_lag" and fam.type == "gauge"
    assert {(s.labels["topic"], s.labels["partition"], s.value) for s in fam.samples} == {
        ("p-cdrs", "0", 20), ("p-cdrs", "1", 0), ("p-cdrs", "3", 5)}


def test_consumer_lag_without_a_consumer_is_empty() -> None:
    assert ConsumerLagCollector(FakeApp(None)).lags() == {}  # type: ignore[arg-type]
    assert ConsumerLagCollector().lags() == {}


# ----------------------------------------------------------------------------------- views


def tables(events: list[Any]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """Run events through the engine and encode the states as the worker's tables hold them."""
    store = MemoryStore()
    f.feed(events, f.engine(), store)
    users = {u.encode(): s.encode() for u, s in store.users.items()}
    periods = {f"{u}|{p}".encode(): s.encode() for (u, p), s in store.periods.items()}
    return users, periods


def breaching_month() -> list[Any]:
    """alice, March 2026 (T0 = 09:00 in Paris): 151 distinct covered numbers, one call every 2 minutes,
    the 151st at 14:00; an inbound call overlaps the first; then a PBX registers at 15:40."""
    calls = [f.end_cdr(f"c{i}", f.at(120 * i), duration=61, callee=f.national(i)) for i in range(151)]
    inbound = f.end_cdr("in1", f.at(30), duration=60, direction="inbound")
    return [*calls, inbound, f.registration("pbx", f.at(400 * 60), user_agent=f.ASTERISK)]


@pytest.mark.parametrize(
    "query, reason",
    [
        ([("period", "2026-13")], "period: expected a month as YYYY-MM"),
        ([("period", "2026-3")], "period: expected a month as YYYY-MM"),
        ([("period", "03-2026")], "period: expected a month as YYYY-MM"),
        ([("period", "2026-03-01")], "period: expected a month as YYYY-MM"),
        ([("period", "")], "period: expected a month as YYYY-MM"),
        ([("period", "1999-12")], "period: expected a month as YYYY-MM (2000-2099)"),
        ([("month", "2026-03")], "unknown parameter 'month' (allowed: period)"),
        ([("period", "2026-03"), ("period", "2026-04")], "parameter 'period' given more than once"),
    ],
)
def test_usage_view_rejects_bad_parameters(query: list[tuple[str, str]], reason: str) -> None:
    users, periods = tables(breaching_month())
    status, body = usage_view("alice", query, users, periods, f.plan_book(), f.deck())
    assert status == 400
    assert body["error"].startswith(reason), body


def test_usage_view_unknown_user_and_unknown_month_are_404() -> None:
    users, periods = tables(breaching_month())
    status, body = usage_view("mallory", [], users, periods, f.plan_book(), f.deck())
    assert (status, body["user"]) == (404, "mallory") and "unknown user" in body["error"]
    status, body = usage_view("alice", [("period", "2026-01")], users, periods, f.plan_book(), f.deck())
    assert status == 404 and body["periods"] == ["2026-03"] and "2026-01" in body["error"]


def test_usage_view_answers_counters_limits_breaches_and_the_rebilled_amount() -> None:
    users, periods = tables(breaching_month())
    status, body = usage_view("alice", [("period", "2026-03")], users, periods, f.plan_book(), f.deck(),
                              worker="http://127.0.0.1:6066")
    assert status == 200
    # 151 calls of 61 s, 60/60 billing: 2 minutes each at 0.0150 = 0.03, x4 after the PBX: 0.12
    assert body == {
        "user": "alice", "customer": "acme", "period": "2026-03", "plan": "unlimited", "timezone": "Europe/Paris",
        "distinct_numbers": 151, "peak_simultaneous_calls": 2, "peak_registered_devices": 1,
        "covered_calls": 151, "covered_seconds": 151 * 61, "covered_minutes": "153.52",
        "limits": {"max_distinct_numbers": 150, "max_simultaneous_calls": 3, "max_registered_devices": 3,
                   "max_calls_per_hour": 60},
        "breaches": [
            {"rule": "distinct_numbers", "multiplier": 1, "time": "2026-03-02T14:00:00+01:00"},
            {"rule": "pbx_or_gateway", "multiplier": 4, "time": "2026-03-02T15:40:00+01:00"},
        ],
        "multiplier": 4, "rebilled_amount": str(Decimal("0.12") * 151), "currency": "EUR",
        "periods": ["2026-03"], "worker": "http://127.0.0.1:6066",
    }
    # no period: the user's newest month
    assert usage_view("alice", [], users, periods, f.plan_book(), f.deck(), worker="http://127.0.0.1:6066") == (
        200, body)
    orjson.dumps(body)  # JSON-serialisable as is


def test_usage_view_of_a_user_without_breach_bills_nothing() -> None:
    users, periods = tables([f.end_cdr("c1", f.at(0), duration=30, user="bob")])
    status, body = usage_view("bob", [], users, periods, f.plan_book(), f.deck())
    assert status == 200
    assert (body["breaches"], body["multiplier"], body["rebilled_amount"]) == ([], 0, "0.00")
    assert (body["covered_calls"], body["covered_seconds"], body["covered_minutes"]) == (1, 30, "0.50")


@pytest.mark.parametrize(
    "since, ms",
    [
        ("2026-03-02T09:00:00+01:00", f.ms(f.at(0))),
        ("2026-03-02T08:00:00Z", f.ms(f.at(0))),
        ("2026-03-02T09:00:00 01:00", f.ms(f.at(0))),  # '+' decoded as a space from a query string
        ("2026-03-02T08:00:00.250Z", f.ms(f.at(0.25))),
    ],
)
def test_since_accepts_rfc3339(since: str, ms: int) -> None:
    assert parse_since(since) == ms


@pytest.mark.parametrize(
    "query, reason",
    [
        ([("since", "yesterday")], "since: not an RFC 3339 timestamp"),
        ([("since", "2026-03-02T09:00:00")], "since: timestamp without a UTC offset"),
        ([("since", "2026-03-02")], "since: not an RFC 3339 timestamp"),
        ([("limit", "10")], "unknown parameter 'limit' (allowed: since)"),
        ([("since", "2026-03-02T09:00:00Z"), ("since", "2026-03-02T09:00:00Z")], "parameter 'since' given more"),
    ],
)
def test_alerts_view_rejects_bad_parameters(query: list[tuple[str, str]], reason: str) -> None:
    status, body = alerts_view(query, AlertRing())
    assert status == 400 and body["error"].startswith(reason), body


def test_alert_ring_keeps_the_last_alerts_of_this_worker_once_each() -> None:
    clock = iter(range(0, 100_000, 1000))
    ring = AlertRing(size=3, wall_ms=lambda: next(clock))
    payloads = [{"alert_id": f"a{i}", "rule": "distinct_numbers"} for i in range(5)]
    ring.record("fairuse-alerts", payloads[0])
    ring.record("fairuse-alerts", payloads[0])  # redelivered: the same alert
    ring.record("rebilled-calls", {"line_id": "x"})  # not an alert
    for p in payloads[1:4]:
        ring.record("fairuse-alerts", p)
    ring.record("fraud-alerts", payloads[4] | {"level": "critical"})
    assert [p["alert_id"] for _, _, p in ring.since(None)] == ["a2", "a3", "a4"]
    ring.record("fairuse-alerts", payloads[0])  # evicted earlier: recorded again
    status, body = alerts_view([("since", "1970-01-01T00:00:04Z")], ring, worker="http://w1")
    assert status == 200
    assert [(a["topic"], a["alert"]["alert_id"], a["emitted_at"]) for a in body["alerts"]] == [
        ("fraud-alerts", "a4", "1970-01-01T00:00:04.000+00:00"),
        ("fairuse-alerts", "a0", "1970-01-01T00:00:05.000+00:00"),
    ]
    assert body["worker"] == "http://w1" and "this worker" in body["scope"]
    assert body["since"] == "1970-01-01T00:00:04.000+00:00"


def test_health_view_and_endpoints() -> None:
    assert health_view("http://w1", {"cdrs": [0, 1]}, 7) == (
        200, {"status": "ok", "worker": "http://w1", "partitions": {"cdrs": [0, 1]}, "processed": 7})
    text = format_endpoints("127.0.0.1", 6066)
    for path in ("/metrics", "/healthz", "/users/{user}/usage?period=YYYY-MM", "/alerts?since=RFC3339"):
        assert f"http://127.0.0.1:6066{path}" in text


def test_the_cached_faust_sensor_counts_as_faust_does() -> None:
    from faust.sensors.prometheus import FaustMetrics
    from faust.types import TP as FaustTP
    from prometheus_client import CollectorRegistry, generate_latest

    from streams.agents.batching import cached_prometheus_monitor as _cached_prometheus_monitor

    @dataclass
    class Table:
        name: str

    @dataclass
    class Message:
        tp: FaustTP
        offset: int

    def drive(monitor: Any) -> None:
        for n in range(3):
            monitor.on_table_get(Table("periods"), b"k")
            monitor.on_table_set(Table("users"), b"k", b"v")
            tp = FaustTP("cdrs", n % 2)
            monitor.on_message_in(tp, n, Message(tp, n))
        monitor.on_table_del(Table("users"), b"k")
        monitor._clear_partition_related_metrics()  # a rebalance: per-partition series start again
        monitor.on_message_in(FaustTP("cdrs", 1), 7, Message(FaustTP("cdrs", 1), 7))

    texts = []
    for cls in (PrometheusMonitor, _cached_prometheus_monitor()):
        registry = CollectorRegistry()
        drive(cls(metrics=FaustMetrics.create(registry, FAUST_PREFIX)))
        texts.append({(s.name, frozenset(s.labels.items()), s.value)
                      for fam in text_string_to_metric_families(generate_latest(registry).decode())
                      for s in fam.samples if not s.name.endswith("_created")})
    assert texts[0] == texts[1]
    assert ("faust_table_operations_total", frozenset({("table", "table.periods"), ("operation", "keys_retrieved")}),
            3.0) in texts[1]


def test_a_batch_reported_once_per_partition_counts_as_one_call_per_message() -> None:
    from faust.sensors.prometheus import FaustMetrics
    from faust.types import TP as FaustTP
    from prometheus_client import CollectorRegistry, generate_latest

    from streams.agents.batching import _report
    from streams.agents.batching import cached_prometheus_monitor as _cached_prometheus_monitor

    @dataclass
    class Message:
        tp: FaustTP
        offset: int

    batch = [Message(FaustTP("cdrs", n % 3), 10 + n) for n in range(10)]
    texts, monitors = [], []
    for batched in (False, True):
        registry = CollectorRegistry()
        monitor = _cached_prometheus_monitor()(metrics=FaustMetrics.create(registry, FAUST_PREFIX))
        if batched:
            _report([monitor], batch, "in")
            before = monitor.messages_active
            _report([monitor], batch, "out")
        else:
            for m in batch:
                monitor.on_message_in(m.tp, m.offset, m)
            before = monitor.messages_active
            for m in batch:
                monitor.on_message_out(m.tp, m.offset, m)
        monitors.append((before, monitor.messages_active, monitor.messages_received_total,
                         dict(monitor.messages_received_by_topic), dict(monitor.tp_read_offsets)))
        texts.append({(s.name, frozenset(s.labels.items()), s.value)
                      for fam in text_string_to_metric_families(generate_latest(registry).decode())
                      for s in fam.samples if not s.name.endswith("_created")})
    assert texts[0] == texts[1]
    assert monitors[0] == monitors[1] == (10, 0, 10, {"cdrs": 10}, {
        FaustTP("cdrs", 0): 19, FaustTP("cdrs", 1): 17, FaustTP("cdrs", 2): 18})


def test_the_lag_histogram_counts_each_value_in_its_inclusive_bucket() -> None:
    metrics = Metrics()
    for lag in (0.0, 0.1, 0.10001, 86400.0, 86400.5):
        metrics.event_time_lag.observe(lag)
    assert value(metrics, "cdrwatch_event_time_lag_seconds_bucket", le="0.1") == 2  # le: less or equal
    assert value(metrics, "cdrwatch_event_time_lag_seconds_bucket", le="0.5") == 3
    assert value(metrics, "cdrwatch_event_time_lag_seconds_bucket", le="86400.0") == 4
    assert value(metrics, "cdrwatch_event_time_lag_seconds_bucket", le="+Inf") == 5
    assert value(metrics, "cdrwatch_event_time_lag_seconds_count") == 5
    assert value(metrics, "cdrwatch_event_time_lag_seconds_sum") == pytest.approx(172800.60001)
