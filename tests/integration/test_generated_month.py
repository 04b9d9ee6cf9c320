"""A generated month through the real pipeline: `cdrwatch generate`, then `cdrwatch replay` on the
embedded broker with a real worker, then `cdrwatch evaluate --strict` — every label alerted, nothing
else (the issue's ≥ 5,000-user run, at a size that fits the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration

USERS = 300
MONTH = "2026-11"


def cdrwatch(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("month")
    done = cdrwatch("generate", "--users", str(USERS), "--month", MONTH, "--seed", "42", "--out", str(data))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path_factory.mktemp("replay")
    done = cdrwatch("replay", "--cdrs", str(data / "cdrs.jsonl"), "--registrations", str(data / "registrations.jsonl"),
                    "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return data, out


def test_evaluate_strict_passes_on_a_replayed_generated_month(replayed: tuple[Path, Path]) -> None:
    data, out = replayed
    done = cdrwatch("evaluate", "--labels", str(data / "labels.jsonl"), "--alerts", str(out / "alerts.jsonl"),
                    "--strict", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    total = next(line for line in done.stdout.splitlines() if line.startswith("all rules")).split()
    assert total[-2:] == ["1.000", "1.000"]
    labels = read_jsonl(data / "labels.jsonl")
    rules = {str(label["rule"]) for label in labels if "rule" in label}
    assert rules == {"distinct_numbers", "simultaneous_calls", "registered_devices", "third_party_device",
                     "pbx_or_gateway", "autodialer"}
    # the fraud lines are left out of the fair-use score, and every fraud scenario has its own
    frauds = {str(label["scenario"]) for label in labels if label.get("kind") == "fraud"}
    assert frauds == {"hacked_account", "hacked_pbx", "irsf", "wangiri", "silent_call", "short_call_burst",
                      "traffic_pumping"}


def test_the_generated_month_is_clean_input(replayed: tuple[Path, Path]) -> None:
    _, out = replayed
    assert read_jsonl(out / "dlq.jsonl") == []
    alerts = read_jsonl(out / "alerts.jsonl")
    assert len({(a["user"], a["period"], a["rule"]) for a in alerts}) == len(alerts)
    assert read_jsonl(out / "rebills.jsonl")  # breaching users' covered calls are re-billed
