"""`cdrwatch console` in a real browser (Debian's Chromium, driven by Playwright), against a real
`cdrwatch worker` on the embedded broker.

The analyst's path, clicked through: the page is open before anything happens; a burst of calls
makes the worker raise a critical fraud alert, which arrives on the page live; the analyst marks it
a false positive and lifts its account action; the worker reads the verdict and its next decision
honours it (the same burst an hour later raises nothing for that user, while a user without a
verdict is alerted again). Then the user's page: counters from the worker, the month's chart, the
alerts with their evidence.

Screenshots go to the test's directory, and to ``$CDRWATCH_SCREENSHOTS`` when set (the README's
pictures are made so).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.tools.embedded import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.peers import (
    assigned_worker,
    get_json,
    keep_screenshot,
    run_settings,
    stop_processes,
    tool,
    topic_records,
    wait_for,
)
from tests.workers import workers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration]

TOKEN = "s3cret-console-token"
ANALYST = "ana"
BURST = 20  # calls_per_minute: warning at 10 calls within 60 s, critical at 20 (the bundled rules)


def burst(user: str, first: datetime, tag: str) -> list[dict[str, Any]]:
    """``BURST`` answered 40-second calls to distinct French numbers, set up 3 s apart."""
    calls = []
    for i in range(BURST):
        start = first + timedelta(seconds=3 * i)
        calls.append({
            "event": "end", "call_id": f"{user}-{tag}-{i}", "user": user, "customer": "acme", "caller": user,
            "callee": f"01450{i:05d}", "direction": "outbound", "start_time": start.isoformat(),
            "answer_time": (start + timedelta(seconds=2)).isoformat(),
            "end_time": (start + timedelta(seconds=42)).isoformat(), "billsec": 40, "disposition": "ANSWERED",
        })
    return calls


def register(user: str, at: datetime, ip: str, device: str) -> dict[str, Any]:
    return {"user": user, "customer": "acme", "contact": f"sip:{user}@{ip}:5060", "instance_id": f"<urn:uuid:{device}>",
            "user_agent": "Yealink SIP-T46S 66.86.0.15", "source_ip": ip, "expires": 3600, "time": at.isoformat()}


async def send(settings: Settings, topic: str, payloads: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(acks="all", **settings.client_kwargs())
    await producer.start()
    try:
        for p in payloads:
            await producer.send_and_wait(settings.topic(topic), orjson.dumps(p), key=p["user"].encode())
    finally:
        await producer.stop()


def metric(port: int, topic: str, outcome: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = f'cdrwatch_events_total{{outcome="{outcome}",topic="{topic}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


@pytest.fixture()
def console(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, worker_port: int) -> tuple[str, Path]:
        port = free_port()
        log = tmp_path / "console.log"
        env = dict(os.environ, CDRWATCH_BROKER=settings.broker, CDRWATCH_TOPIC_PREFIX=settings.topic_prefix,
                   CDRWATCH_PARTITIONS=str(settings.partitions), CDRWATCH_CONSOLE_TOKEN=TOKEN)
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "console", "--port", str(port), "--worker-url",
                 f"http://127.0.0.1:{worker_port}"], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        wait_for("the console to read its topics", lambda: get_json(f"{url}/healthz")["caught_up"],
                 lambda: log.read_text(errors="replace"))
        return url, log

    yield start
    stop_processes(procs)


async def fraud_alerts(settings: Settings, user: str) -> list[tuple[str, str]]:
    return sorted((r["rule_name"], r["level"]) for r in (orjson.loads(m.value) for m in
                  await topic_records(settings, "fraud-alerts")) if r["user"] == user)


async def test_an_alert_arrives_live_the_analyst_marks_it_false_positive_and_the_worker_honours_it(
    tansu: EmbeddedBroker, tmp_path: Path, workers: list[subprocess.Popen[bytes]], console: Any,
) -> None:
    from playwright.async_api import async_playwright, expect

    settings = await run_settings(tansu.url, "console", partitions=2)
    worker_port = assigned_worker(settings, tmp_path / "worker", workers)
    url, log = console(settings, worker_port)
    now = datetime.now(timezone.utc).replace(microsecond=0)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=tool("chromium", "chromium"), args=["--no-sandbox"])
        context = await browser.new_context(http_credentials={"username": ANALYST, "password": TOKEN},
                                            viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await page.goto(f"{url}/")
        await expect(page.locator("#state")).to_have_text("live", timeout=20_000)
        assert await page.locator("#rows tr").count() == 0

        # the burst: both users, 90 minutes ago; the page is already open
        await send(settings, "sip-registrations", [register(u, now - timedelta(hours=2), "192.0.2.10", "desk")
                                                   for u in ("mallory", "control")])
        await send(settings, "cdrs", burst("mallory", now - timedelta(minutes=90), "a")
                   + burst("control", now - timedelta(minutes=90), "a"))
        critical = page.locator("#rows tr[data-alert-id]", has_text="mallory").filter(has_text="fraud critical")
        await expect(critical).to_have_count(1, timeout=30_000)  # live, without a reload
        await expect(critical).to_contain_text("calls_per_minute")
        await expect(critical).to_contain_text("suspend_unlimited")
        shot = tmp_path / "console-live.png"
        await page.screenshot(path=str(shot))
        keep_screenshot(shot)

        # the analyst: a false positive, then the account action lifted
        await critical.get_by_role("button", name="false positive").click()
        await page.fill("#verdict-reason", "a call-centre campaign booked with the customer")
        await page.click("#verdict-send")
        await expect(critical.locator(".status")).to_contain_text("false positive")
        await critical.get_by_role("button", name="lift suspend_unlimited").click()
        await page.fill("#verdict-reason", "customer called: legitimate campaign")
        await page.click("#verdict-send")
        await expect(critical.locator(".status")).to_contain_text("(lifted)")
        shot = tmp_path / "console-verdict.png"
        await page.screenshot(path=str(shot))
        keep_screenshot(shot)

        feedback = [orjson.loads(m.value) for m in await topic_records(settings, "fraud-feedback")]
        assert sorted((f["kind"], f["user"], f["rule_name"], f["by"]) for f in feedback) == [
            ("false_positive", "mallory", "calls_per_minute", ANALYST), ("lift", "mallory", "calls_per_minute", ANALYST)]
        lifts = [r for r in (orjson.loads(m.value) for m in await topic_records(settings, "account-actions"))
                 if r["action"] == "lift"]
        assert [(r["user"], r["alert_id"]) for r in lifts] == [("mallory", feedback[0]["alert_id"])]
        assert "lifted by ana" in lifts[0]["reason"]

        # the same verdict again: nothing more is sent (its id is a hash of the alert and the kind)
        again = await page.request.post(f"{url}/api/feedback", data={
            "alert_id": feedback[0]["alert_id"], "kind": "false_positive", "reason": "once more"})
        assert again.status == 200 and (await again.json())["sent"] is False
        assert len(await topic_records(settings, "fraud-feedback")) == 2

        # the worker has read both verdicts: the same burst an hour later
        wait_for("the worker to apply the verdicts", lambda: metric(worker_port, "fraud-feedback", "ok") == 2,
                 lambda: (tmp_path / "worker.log").read_text(errors="replace"))
        await send(settings, "cdrs", burst("mallory", now - timedelta(minutes=20), "b")
                   + burst("control", now - timedelta(minutes=20), "b"))
        wait_for("the worker to apply the second burst", lambda: metric(worker_port, "cdrs", "ok") == 4 * BURST)
        assert await fraud_alerts(settings, "control") == [("calls_per_minute", "critical")] * 2 + [
            ("calls_per_minute", "warning")] * 2, "without a verdict, the second burst is alerted again"
        assert await fraud_alerts(settings, "mallory") == [("calls_per_minute", "critical"),
                                                           ("calls_per_minute", "warning")], "the verdict is honoured"

        # the user's page: counters from the worker, the chart, the alerts with their evidence
        alert = next(r for r in (orjson.loads(m.value) for m in await topic_records(settings, "fraud-alerts"))
                     if r["user"] == "mallory")
        await page.goto(f"{url}/users/mallory?period={alert['time'][:7]}")
        await expect(page.locator("#counters")).to_contain_text("simultaneous calls (peak)")
        assert await page.locator("svg.chart rect").count() >= 28 * 4
        titles = await page.locator("svg.chart title").all_text_contents()
        assert sum(int(t.split(": ")[1].split()[0]) for t in titles if t.endswith(" calls")) == 2 * BURST
        assert max(int(t.split(": ")[1].split()[0]) for t in titles if t.endswith("(peak)")) == 14  # 40 s calls 3 s apart
        await expect(page.locator("#alerts")).to_contain_text("calls_per_minute")
        await expect(page.locator("#alerts")).to_contain_text("false_positive, lift")
        amounts = [Decimal(r["amount"]) for r in (orjson.loads(m.value) for m in
                   await topic_records(settings, "rebilled-calls")) if r["user"] == "mallory"]
        assert amounts, "mallory's simultaneous calls are re-billed"
        await expect(page.locator("#rebill-total")).to_have_text(f"{sum(amounts)} EUR")
        shot = tmp_path / "console-user.png"
        await page.screenshot(path=str(shot), full_page=True)
        keep_screenshot(shot)
        assert problems == [], problems
        await browser.close()
    assert "Traceback" not in log.read_text(errors="replace")
