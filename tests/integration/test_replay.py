"""`cdrwatch replay` and `cdrwatch run` end to end: a real broker (embedded, or Apache Kafka), a real
worker, files out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.tools.embedded import free_port
from streams.settings import bundled_file

pytestmark = pytest.mark.integration

SAMPLE = bundled_file("sample")


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def cdrwatch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module", params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def sample_replay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample replayed by the command: through its own embedded broker, and through Apache Kafka
    (``--broker``, topics prefixed for the run)."""
    out = tmp_path_factory.mktemp("replay")
    where = ["--broker", request.getfixturevalue("kafka").url] if request.param == "kafka" else []
    done = cdrwatch("replay", "--cdrs", str(SAMPLE / "cdrs.jsonl"),
                    "--registrations", str(SAMPLE / "registrations.jsonl"), "--out", str(out), *where)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_replay_of_the_sample_raises_exactly_the_expected_alerts(sample_replay: Path) -> None:
    expected = {(e["user"], e["period"], e["rule"]) for e in read_jsonl(SAMPLE / "expected.jsonl")}
    alerts = read_jsonl(sample_replay / "alerts.jsonl")
    got = [(a["user"], a["period"], a["rule"]) for a in alerts]
    assert len(got) == len(set(got)), "an alert was emitted twice"
    assert set(got) == expected
    normal_users = {str(line["user"]) for line in read_jsonl(SAMPLE / "cdrs.jsonl")} - {u for u, _, _ in expected}
    assert len(normal_users) >= 200


def test_replay_alerts_carry_the_contract_fields(sample_replay: Path) -> None:
    for alert in read_jsonl(sample_replay / "alerts.jsonl"):
        assert set(alert) == {"alert_id", "rule", "user", "customer", "plan", "period", "observed", "limit",
                              "multiplier", "time", "evidence"}
        assert alert["observed"] > alert["limit"]  # type: ignore[operator]
    by_rule = {a["rule"]: a for a in read_jsonl(sample_replay / "alerts.jsonl")}
    assert by_rule["distinct_numbers"]["observed"] == 151
    assert by_rule["simultaneous_calls"]["observed"] == 4
    assert by_rule["registered_devices"]["observed"] == 4
    assert by_rule["autodialer"]["observed"] == 61
    assert by_rule["pbx_or_gateway"]["multiplier"] == 4


def test_replay_writes_no_dlq_for_a_clean_stream(sample_replay: Path) -> None:
    assert read_jsonl(sample_replay / "dlq.jsonl") == []
    assert (sample_replay / "rebills.jsonl").exists()


def test_replay_rejects_a_missing_file_with_exit_2(tmp_path: Path) -> None:
    done = cdrwatch("replay", "--cdrs", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "nope.jsonl: no such file" in done.stderr


def test_replay_rejects_a_non_json_line_with_its_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "cdrs.jsonl"
    bad.write_text('{"event": "end"}\nthis is not json\n')
    done = cdrwatch("replay", "--cdrs", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "cdrs.jsonl:2: not a JSON line" in done.stderr


def test_replay_rejects_a_bad_plans_file(tmp_path: Path) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text('default_plan = "x"\ntimezone = "Europe/Paris"\n[plans.x]\nincluded = []\n')
    done = cdrwatch("replay", "--cdrs", str(SAMPLE / "cdrs.jsonl"), "--plans", str(plans), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "plans.x: missing required field(s): allowed_user_agents, billing," in done.stderr


def test_run_replays_the_sample_prints_alerts_and_exits(tmp_path: Path) -> None:
    done = cdrwatch("run", "--exit-when-done", "--web-port", str(free_port()), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("ALERT")]
    assert len(printed) == len(read_jsonl(SAMPLE / "expected.jsonl"))
    assert "embedded broker on 127.0.0.1:" in done.stdout
