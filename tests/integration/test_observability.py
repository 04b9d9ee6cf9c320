"""Metrics and web views on the embedded broker: exact counter values after a known stream (an
in-process replay, and two `cdrwatch worker` processes scraped over HTTP), the dashboard's PromQL
against what a worker really exports, and `/users/{user}/usage` answering from either worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from streams.agents.pipeline import Pipeline
from streams.topics import ALL_TOPICS, INPUT_TOPICS
from streams.tools.embedded import create_topics, free_port
from streams.tools.replay import InputMessage, produce, replay
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "cdrwatch.json"
PARTITIONS = 4

RATES = """prefix,destination,rate_per_minute
331,France Fixe,0.0150
336,France Mobile,0.0300
"""

PLANS = """default_plan = "minute"
timezone = "Europe/Paris"

[plans.minute]
included = ["France Fixe", "France Mobile"]
billing = "60/60"
max_distinct_numbers = 2
max_simultaneous_calls = 3
max_registered_devices = 2
max_calls_per_hour = 60
allowed_user_agents = ["^Yealink"]
pbx_user_agents = ["Asterisk"]

[plans.minute.multipliers]
distinct_numbers = 1
simultaneous_calls = 1
registered_devices = 1
third_party_device = 1
pbx_or_gateway = 4
autodialer = 4
"""

# ------------------------------------------------------------------------------ the stream

DAY = "2026-11-03"


def _t(hhmm: str, day: str = DAY) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00+01:00")


def end(call_id: str, user: str, callee: str, hhmm: str, billsec: int, day: str = DAY) -> dict[str, Any]:
    """An outbound `end` CDR answered 5 s after setup (unanswered when billsec is 0)."""
    t0 = _t(hhmm, day)
    answered = billsec > 0
    return {
        "event": "end", "call_id": call_id, "user": user, "customer": "acme", "caller": "0140000000",
        "callee": callee, "direction": "outbound", "start_time": t0.isoformat(),
        "answer_time": (t0 + timedelta(seconds=5)).isoformat() if answered else None,
        "end_time": (t0 + timedelta(seconds=5 + (billsec or 30))).isoformat(), "billsec": billsec,
        "disposition": "ANSWERED" if answered else "NO ANSWER",
    }


def start(call_id: str, user: str, callee: str, hhmm: str) -> dict[str, Any]:
    return {"event": "start", "call_id": call_id, "user": user, "customer": "acme", "caller": "0140000000",
            "callee": callee, "direction": "outbound", "start_time": _t(hhmm).isoformat()}


def register(user: str, device: str, hhmm: str, expires: int = 86400, agent: str = "Yealink SIP-T46S") -> dict[str, Any]:
    return {"user": user, "customer": "acme", "contact": f"sip:{user}@{device}.example.net", "instance_id": None,
            "user_agent": agent, "source_ip": "192.0.2.10", "expires": expires, "time": _t(hhmm).isoformat()}


def stream() -> list[InputMessage]:
    """The known stream, in sending order. Users land on every partition of 4 (murmur2)."""
    a2 = end("a2", "alice", "0145000002", "11:00", 90)
    r2 = register("carol", "c2", "10:01")
    messages: list[tuple[str, bytes | None, Any]] = [
        ("subscribers", b"dave", {"user": "dave", "customer": "acme", "plan": "minute"}),
        # alice: a third distinct number breaches distinct_numbers (limit 2); a2 comes twice
        ("cdrs", None, end("a1", "alice", "0145000001", "10:00", 60)),
        ("cdrs", None, a2),
        ("cdrs", None, end("a3", "alice", "0612345678", "12:00", 30)),
        ("cdrs", None, a2),
        # bob: b1 stays open, b2 starts and ends
        ("cdrs", None, start("b1", "bob", "0145000010", "10:00")),
        ("cdrs", None, start("b2", "bob", "0145000011", "10:05")),
        ("cdrs", None, end("b2", "bob", "0145000011", "10:05", 60)),
        # carol: a third device breaches registered_devices (limit 2); r2 twice; r1 unregisters
        ("sip-registrations", None, register("carol", "c1", "10:00")),
        ("sip-registrations", None, r2),
        ("sip-registrations", None, register("carol", "c3", "10:02")),
        ("sip-registrations", None, r2),
        ("sip-registrations", None, register("carol", "c1", "10:10", expires=0)),
        # dave: a PBX (x4) and one covered call
        ("sip-registrations", None, register("dave", "d1", "10:30", agent="Asterisk PBX 20.5.0")),
        ("cdrs", None, end("d1", "dave", "0145000020", "10:40", 60)),
        # erin: November, then October (late, still open), then September (too late: DLQ)
        ("cdrs", None, end("e1", "erin", "0145000030", "10:00", 0)),
        ("cdrs", None, end("e0", "erin", "0145000031", "10:00", 0, day="2026-10-31")),
        ("cdrs", None, end("e9", "erin", "0145000032", "10:00", 0, day="2026-09-15")),
        # frank's CDR under another key: re-keyed, then applied
        ("cdrs", b"wrong-key", end("f1", "frank", "0145000040", "10:50", 0)),
        # not a CDR: DLQ
        ("cdrs", b"erin", {"event": "end"}),
    ]
    out = []
    for n, (topic, key, payload) in enumerate(messages):
        if key is None:
            key = payload["user"].encode()
        out.append(InputMessage(topic, key, orjson.dumps(payload), float(n)))
    return out


USERS = ("alice", "bob", "carol", "dave", "erin", "frank")

EVENTS = {
    ("cdrs", "ok"): 9, ("cdrs", "duplicate"): 1, ("cdrs", "late"): 1, ("cdrs", "dlq"): 2, ("cdrs", "rekeyed"): 1,
    ("sip-registrations", "ok"): 5, ("sip-registrations", "duplicate"): 1,
    ("subscribers", "ok"): 1,
}
ALERTS = {"distinct_numbers": 1, "registered_devices": 1, "pbx_or_gateway": 1}
# alice: 60 s -> 1 min x 0.015 = 0.02 (up to the cent), 90 s -> 2 min = 0.03, mobile 30 s -> 0.03;
# dave: 1 min x 0.015 x 4 = 0.06
REBILLED = {"distinct_numbers": "0.08", "pbx_or_gateway": "0.06"}
APPLIED = 9 + 1 + 1 + 5 + 1  # ok, duplicate and late CDRs and registrations: each has an event-time lag
ACTIVE_CALLS = 1  # b1
ACTIVE_REGISTRATIONS = 3  # carol's c2 and c3, dave's d1


def test_the_stream_reaches_every_partition() -> None:
    assert {(murmur2(u.encode()) & 0x7FFFFFFF) % PARTITIONS for u in USERS} == set(range(PARTITIONS))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("observability")
    (root / "rates.csv").write_text(RATES)
    (root / "plans.toml").write_text(PLANS)
    return Settings(plans_path=root / "plans.toml", rates_path=root / "rates.csv", web_enabled=False,
                    partitions=PARTITIONS)


# ---------------------------------------------------------------------------- exposition


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): float(s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples that carry ``labels`` (over workers and other labels)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_label(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (n, ls), v in samples.items():
        if n == name:
            d = dict(ls)
            out[tuple(d[k] for k in labels)] += v
    return dict(out)


def nonzero(series: dict[Any, float]) -> dict[Any, float]:
    """Series that counted something (every rule's and every DLQ's exist from the start, at 0)."""
    return {k: v for k, v in series.items() if v}


def assert_exact_counts(samples: Samples) -> None:
    events = by_label(samples, "cdrwatch_events_total", "topic", "outcome")
    assert nonzero(events) == {k: float(v) for k, v in EVENTS.items()}
    assert {k for k in events if k[1] == "dlq"} == {(t, "dlq") for t in INPUT_TOPICS}
    assert nonzero(by_label(samples, "cdrwatch_alerts_total", "rule")) == {(k,): float(v) for k, v in ALERTS.items()}
    euros = nonzero(by_label(samples, "cdrwatch_rebilled_euros_total", "rule"))
    assert {k[0]: f"{v:.2f}" for k, v in euros.items()} == REBILLED
    assert total(samples, "cdrwatch_event_time_lag_seconds_count") == APPLIED
    # every event of the stream is older than a day: all in the +Inf bucket
    assert total(samples, "cdrwatch_event_time_lag_seconds_bucket", le="86400.0") == 0
    assert total(samples, "cdrwatch_active_calls") == ACTIVE_CALLS
    assert total(samples, "cdrwatch_active_registrations") == ACTIVE_REGISTRATIONS
    assert total(samples, "cdrwatch_fraud_alerts_total") == 0


def test_a_replay_counts_exactly(broker: Broker, config: Settings) -> None:
    pipelines: list[Pipeline] = []
    result = asyncio.run(replay(config, stream(), broker_url=broker.url, timeout_s=60, on_pipeline=pipelines.append))
    samples = parse(pipelines[0].metrics.exposition().decode())
    assert_exact_counts(samples)
    assert len(result.alerts) == sum(ALERTS.values())
    # Faust's own sensors share the registry: every input message was received by its consumer,
    # the re-keyed one twice
    assert total(samples, "faust_messages_received_total") == sum(EVENTS.values())


# ------------------------------------------------------------------------ two workers, HTTP


def http(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> tuple[int, Any]:
    status, body = http(url)
    return status, json.loads(body)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):  # not listening yet, or a half-started worker
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Cluster:
    settings: Settings
    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def scrape(self) -> Samples:
        merged: Samples = defaultdict(float)
        for url in self.urls:
            status, body = http(f"{url}/metrics")
            assert status == 200
            for key, v in parse(body.decode()).items():
                merged[key] += v
        return dict(merged)

    def assigned(self) -> list[set[int]]:
        return [set(get_json(f"{url}/healthz")[1]["partitions"].get("cdrs", [])) for url in self.urls]

    def diagnose(self) -> str:
        return "\n".join(f"--- {log}:\n" + log.read_text(errors="replace")[-3000:] for log in self.logs)


@pytest.fixture(scope="module")
def cluster(broker: Broker, config: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two `cdrwatch worker` processes (one consumer group), assigned before the stream is sent, so
    that no rebalance redelivers anything; the fixture returns once both have processed it all."""
    tag = uuid.uuid4().hex[:8]
    settings = config.with_(broker=broker.url, app_id=f"obs-{tag}", topic_prefix=f"obs-{tag}-")
    asyncio.run(create_topics(broker.bootstrap, [settings.topic(t) for t in ALL_TOPICS], PARTITIONS))
    root = tmp_path_factory.mktemp("workers")
    env = dict(os.environ, CDRWATCH_BROKER=settings.broker, CDRWATCH_APP_ID=settings.app_id,
               CDRWATCH_TOPIC_PREFIX=settings.topic_prefix, CDRWATCH_PARTITIONS=str(PARTITIONS),
               CDRWATCH_PLANS=str(settings.plans_path), CDRWATCH_RATES=str(settings.rates_path))
    cluster = Cluster(settings, [], [], [])
    try:
        for name in ("a", "b"):
            port = free_port()
            log = root / f"{name}.log"
            cluster.logs.append(log)
            cluster.urls.append(f"http://127.0.0.1:{port}")
            with open(log, "wb") as handle:
                cluster.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker", "--web-host", "127.0.0.1", "--web-port", str(port),
                     "--store", "memory://"],
                    env=env | {"CDRWATCH_DATA_DIR": str(root / name)}, stdout=handle, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                ))

        def both_assigned() -> bool:
            a, b = cluster.assigned()
            return bool(a) and bool(b) and not a & b and a | b == set(range(PARTITIONS))

        try:
            wait_for("both workers to share the partitions", both_assigned)
            asyncio.run(produce(settings, stream()))
            wait_for("both workers to process the stream",
                     lambda: total(cluster.scrape(), "cdrwatch_events_total") == sum(EVENTS.values()))
        except AssertionError:
            raise AssertionError(cluster.diagnose()) from None
        yield cluster
    finally:
        for proc in cluster.procs:
            proc.terminate()
        for proc in cluster.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_two_workers_scraped_over_http_count_exactly(cluster: Cluster) -> None:
    samples = cluster.scrape()
    assert_exact_counts(samples)
    # each worker counts its own partitions' events only
    per_worker = [total(parse(http(f"{url}/metrics")[1].decode()), "cdrwatch_events_total") for url in cluster.urls]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == sum(EVENTS.values())


def test_consumer_lag_per_partition_drops_to_zero(cluster: Cluster) -> None:
    inputs = {cluster.settings.topic(t) for t in INPUT_TOPICS}

    def lags() -> dict[tuple[str, str], float]:
        return by_label(cluster.scrape(), "cdrwatch_consumer_lag", "topic", "partition")  # type: ignore[return-value]

    wait_for("every input partition's lag to be reported and zero", lambda: (
        set(lags()) == {(t, str(p)) for t in inputs for p in range(PARTITIONS)} and not any(lags().values())),
        timeout_s=30)


# PromQL functions, aggregations and keywords: what is left is metric names
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}
# series Prometheus writes itself for every scrape target
_SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                  "scrape_series_added"}


def promql_metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"(?<![A-Za-z0-9_:])[0-9][A-Za-z0-9_.]*", "", text)  # numbers and durations (0.99, 5m)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue  # a function or an aggregation
        names.add(match.group())
    return names


def test_promql_metric_names() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{job="a",le!="1"}[5m]))) / sum without (a, b) (y_total)'
    ) == {"x_bucket", "y_total"}
    assert promql_metric_names('sum(up{job="cdrwatch"}) + on (i) group_left (j) z offset 5m') == {"up", "z"}


def exported_series(text: str) -> set[str]:
    """Every series name a scrape of ``text`` offers to PromQL, by metric family type: a counter
    ``x`` as ``x_total`` (and ``x_created``), a histogram as ``x_bucket``/``x_sum``/``x_count``, even
    when a labelled family has no sample yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "unknown": ("",)}
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + suffix for suffix in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def test_every_metric_of_the_dashboard_is_exported_by_a_worker(cluster: Cluster) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert len(exprs) >= 10 and any(n.endswith("_bucket") for n in used) and any(n.endswith("_total") for n in used)
    status, body = http(f"{cluster.urls[0]}/metrics")
    assert status == 200
    exported = exported_series(body.decode())
    missing = used - exported - _SCRAPE_SERIES
    assert not missing, f"the dashboard queries metrics no worker exports: {sorted(missing)}"


def test_usage_answers_the_same_from_either_worker(cluster: Cluster) -> None:
    answers = {}
    for user in USERS:
        got = [get_json(f"{url}/users/{user}/usage?period=2026-11") for url in cluster.urls]
        assert got[0] == got[1], f"{user}: the two workers disagree: {got}"
        status, body = got[0]
        assert status == 200, body
        answers[user] = body
    # each worker owns some of these users: half the answers were forwarded
    assert {a["worker"] for a in answers.values()} == set(cluster.urls)
    alice = answers["alice"]
    assert (alice["distinct_numbers"], alice["covered_calls"], alice["covered_seconds"]) == (3, 3, 180)
    assert alice["breaches"] == [{"rule": "distinct_numbers", "multiplier": 1, "time": "2026-11-03T12:00:00+01:00"}]
    assert (alice["rebilled_amount"], alice["limits"]["max_distinct_numbers"]) == ("0.08", 2)
    carol = answers["carol"]
    assert carol["peak_registered_devices"] == 3 and carol["rebilled_amount"] == "0.00"
    assert [b["rule"] for b in carol["breaches"]] == ["registered_devices"]
    dave = answers["dave"]
    assert (dave["multiplier"], dave["rebilled_amount"], dave["plan"]) == (4, "0.06", "minute")
    assert answers["bob"]["peak_simultaneous_calls"] == 2 and answers["bob"]["breaches"] == []
    assert answers["erin"]["periods"] == ["2026-10", "2026-11"]
    # without a period: the newest month; October is still open for erin
    for url in cluster.urls:
        assert get_json(f"{url}/users/alice/usage") == (200, alice)
        status, october = get_json(f"{url}/users/erin/usage?period=2026-10")
        assert status == 200 and october["period"] == "2026-10"


@pytest.mark.parametrize(
    "path, status, error",
    [
        ("/users/alice/usage?period=2026-13", 400, "period: expected a month as YYYY-MM"),
        ("/users/alice/usage?period=2026-11&user=bob", 400, "unknown parameter 'user'"),
        ("/users/mallory/usage?period=2026-11", 404, "unknown user 'mallory'"),
        ("/users/alice/usage?period=2026-08", 404, "no usage of user 'alice' in 2026-08"),
        ("/alerts?since=yesterday", 400, "since: not an RFC 3339 timestamp"),
        ("/alerts?since=2026-11-03T10:00:00", 400, "since: timestamp without a UTC offset"),
    ],
)
def test_views_refuse_bad_parameters_on_either_worker(cluster: Cluster, path: str, status: int, error: str) -> None:
    for url in cluster.urls:
        got, body = get_json(url + path)
        assert got == status and body["error"].startswith(error), (url, body)


def test_each_worker_lists_the_alerts_it_emitted(cluster: Cluster) -> None:
    seen: dict[str, str] = {}
    for url in cluster.urls:
        status, body = get_json(f"{url}/alerts")
        assert status == 200 and body["worker"] == url
        for entry in body["alerts"]:
            assert entry["alert"]["alert_id"] not in seen, "an alert listed by two workers"
            seen[entry["alert"]["alert_id"]] = entry["alert"]["rule"]
    assert sorted(seen.values()) == sorted(ALERTS)
    # `since` is processing time: nothing after now; an unescaped '+' of the offset still parses
    for url in cluster.urls:
        later = urllib.parse.quote("2099-01-01T00:00:00+01:00")
        assert get_json(f"{url}/alerts?since={later}")[1]["alerts"] == []
        status, body = get_json(f"{url}/alerts?since=2000-01-01T00:00:00+01:00")
        assert status == 200 and body["since"] == "1999-12-31T23:00:00.000+00:00"
