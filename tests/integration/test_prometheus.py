"""The dashboard and the alerting rules against a real Prometheus (Debian's ``prometheus``, which
``make test`` installs when it is missing).

A `cdrwatch worker` on the embedded broker takes a generated month, replayed over ≈ 15 s, while a
Prometheus scrapes it every second and evaluates ``deploy/prometheus/alerts.yml``. Then every
panel's PromQL of ``deploy/grafana/dashboards/cdrwatch.json`` goes through Prometheus' HTTP API and
must return data, and the rules must have evaluated without error, the critical-fraud one firing
(the month has critical fraud in it). ``promtool`` checks the rules and runs their unit tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from streams.tools.embedded import EmbeddedBroker, free_port
from streams.tools.generator import generate_month
from streams.tools.replay import InputMessage, read_stream, replay_external
from tests.peers import tool as peers_tool
from tests.peers import assigned_worker, get_json, run_settings, stop_processes, wait_for
from tests.workers import start_worker, workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cdrwatch.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
REPLAY_S = 15.0  # the month's event time is played over about this long


def tool(name: str) -> str:
    return peers_tool(name, "prometheus")


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", RULES.name], cwd=RULES.parent, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "alerts-test.yml"], cwd=RULES.parent, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a Prometheus scraping a worker's port every second (job ``cdrwatch``, as in
    ``deploy/prometheus/prometheus.yml``), with the shipped rules; returns its URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(worker_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: cdrwatch\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{worker_port}']\n")
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        wait_for("Prometheus to be ready", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
                 why=lambda: (tmp_path / "prometheus.log").read_text(errors="replace"))
        return url

    yield start
    stop_processes(procs)


def month(directory: Path) -> list[InputMessage]:
    generate_month(directory, users=200, month="2026-11", seed=8)
    return read_stream(directory / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        directory / "registrations.jsonl", "sip-registrations", "time")


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_every_panel_of_the_dashboard_returns_data_and_the_rules_evaluate(
    tansu: EmbeddedBroker, prometheus: Callable[[int], str], tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    settings = asyncio.run(run_settings(tansu.url, "prom", partitions=4))
    port = assigned_worker(settings, tmp_path / "worker", workers)
    url = prometheus(port)
    messages = month(tmp_path / "month")
    # the series at 0 before the first event (a counter first seen at 5 is no increase to PromQL)
    wait_for("Prometheus' first scrape of the worker",
             lambda: bool(query(url, 'cdrwatch_fraud_alerts_total{level="critical"} == 0')))
    span_ms = max(m.time_ms for m in messages) - min(m.time_ms for m in messages)
    result = asyncio.run(replay_external(settings, messages, speed=span_ms / 1000 / REPLAY_S, timeout_s=180))
    assert result.fraud_alerts and result.rebills and result.actions
    time.sleep(3)  # a few more scrapes and rule evaluations after the last event

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(panels) >= 10
    empty = [f"{title}: {expr}" for title, expr in panels if not query(url, expr)]
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert query(url, 'sum(up{job="cdrwatch"})')[0]["value"][1] == "1"
    processed = float(query(url, "sum(cdrwatch_events_total)")[0]["value"][1])
    assert processed == len(messages)

    groups = get_json(f"{url}/api/v1/rules")["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert len(rules) == 6, sorted(rules)
    assert all(rule["health"] == "ok" for rule in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    firing = {(a["labels"]["alertname"], a["labels"].get("rule")) for a in get_json(f"{url}/api/v1/alerts")["data"]["alerts"]
              if a["state"] == "firing"}
    critical = {f["rule"] for f in result.fraud_alerts if f["level"] == "critical"}
    assert critical and {("CdrwatchCriticalFraud", rule) for rule in critical} <= firing, (
        firing, query(url, 'increase(cdrwatch_fraud_alerts_total{level="critical"}[5m])'))
    assert not {name for name, _ in firing} & {"CdrwatchWorkerDown", "CdrwatchWorkerRestarting",
                                                 "CdrwatchChangelogWriteRefused"}, firing
