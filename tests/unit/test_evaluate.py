"""`cdrwatch evaluate` (streams/evaluate.py): per-rule scoring of (user, period, rule) triples on
hand-made label/alert sets, the table, --strict exit codes and errors on bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli import main
from streams.core.errors import ConfigError
from streams.tools.evaluate import evaluate, format_evaluation, read_triples

P = "2026-11"


def write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def alert(user: str, rule: str, period: str = P) -> dict[str, Any]:
    """A fairuse-alerts payload (evaluate reads only user, period and rule)."""
    return {"alert_id": f"id-{user}-{rule}", "rule": rule, "user": user, "customer": "c1", "plan": "full-illimite",
            "period": period, "observed": 4, "limit": 3, "multiplier": 1, "time": f"{period}-10T10:00:00+01:00",
            "evidence": {}}


# (labels, alerts, {rule: (tp, fp, fn, precision, recall)})
CASES = [
    pytest.param(
        [("a", P, "autodialer"), ("b", P, "distinct_numbers")],
        [("a", P, "autodialer"), ("b", P, "distinct_numbers")],
        {"autodialer": (1, 0, 0, 1.0, 1.0), "distinct_numbers": (1, 0, 0, 1.0, 1.0), "pbx_or_gateway": (0, 0, 0, None, None)},
        id="perfect",
    ),
    pytest.param(
        [("a", P, "autodialer"), ("b", P, "autodialer"), ("c", P, "autodialer"), ("d", P, "autodialer")],
        [("a", P, "autodialer"), ("b", P, "autodialer"), ("e", P, "autodialer")],
        {"autodialer": (2, 1, 2, 2 / 3, 0.5)},
        id="mixed",
    ),
    pytest.param(
        [("a", P, "simultaneous_calls")],
        [("a", "2026-12", "simultaneous_calls")],
        {"simultaneous_calls": (0, 1, 1, 0.0, 0.0)},
        id="the period is part of the unit",
    ),
    pytest.param(
        [("a", P, "simultaneous_calls")],
        [("a", P, "autodialer")],
        {"simultaneous_calls": (0, 0, 1, None, 0.0), "autodialer": (0, 1, 0, 0.0, None)},
        id="the rule is part of the unit",
    ),
    pytest.param(
        [], [("z", P, "velocity")], {"velocity": (0, 1, 0, 0.0, None)}, id="a rule outside the fair-use set",
    ),
]


@pytest.mark.parametrize(("labels", "alerts", "expected"), CASES)
def test_per_rule_scores(labels: list[tuple[str, str, str]], alerts: list[tuple[str, str, str]],
                         expected: dict[str, tuple[int, int, int, float | None, float | None]]) -> None:
    ev = evaluate(labels, alerts)
    scores = {s.rule: s for s in ev.rules}
    for rule, (tp, fp, fn, precision, recall) in expected.items():
        s = scores[rule]
        assert (s.tp, s.fp, s.fn) == (tp, fp, fn), rule
        assert s.precision == pytest.approx(precision) if precision is not None else s.precision is None
        assert s.recall == pytest.approx(recall) if recall is not None else s.recall is None
    assert ev.total.tp == sum(s.tp for s in ev.rules)
    assert ev.perfect == all(fp == fn == 0 for _, fp, fn, _, _ in expected.values())


def test_the_six_fair_use_rules_are_always_listed_in_order() -> None:
    ev = evaluate([], [])
    assert [s.rule for s in ev.rules] == ["distinct_numbers", "simultaneous_calls", "registered_devices",
                                          "third_party_device", "pbx_or_gateway", "autodialer"]
    assert ev.perfect


def test_rules_restricts_the_scoring() -> None:
    ev = evaluate([("a", P, "autodialer"), ("b", P, "registered_devices")], [("a", P, "autodialer")],
                  rules=["autodialer"])
    assert [s.rule for s in ev.rules] == ["autodialer"] and ev.perfect


def test_format_shows_the_table_and_the_mismatches() -> None:
    ev = evaluate([("a", P, "autodialer"), ("b", P, "autodialer")], [("a", P, "autodialer"), ("c", P, "autodialer")])
    text = format_evaluation(ev)
    lines = text.splitlines()
    assert lines[0].split() == ["rule", "labels", "alerts", "TP", "FP", "FN", "precision", "recall"]
    row = next(line for line in lines if line.startswith("autodialer"))
    assert row.split() == ["autodialer", "2", "2", "1", "1", "1", "0.500", "0.500"]
    assert next(line for line in lines if line.startswith("pbx_or_gateway")).split()[-2:] == ["—", "—"]
    assert "false positives (alerted, not labelled): 1\n  c 2026-11 autodialer" in text
    assert "false negatives (labelled, not alerted): 1\n  b 2026-11 autodialer" in text


def test_format_caps_the_mismatch_lists() -> None:
    ev = evaluate([], [(f"u{i}", P, "autodialer") for i in range(30)])
    text = format_evaluation(ev, show=5)
    assert "… and 25 more" in text
    assert text.count(" 2026-11 autodialer") == 5


def test_read_triples_counts_repeats_and_accepts_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "alerts.jsonl", [alert("a", "autodialer"), alert("a", "autodialer"), b"", alert("b", "autodialer")])
    triples, duplicates = read_triples(tmp_path, "alerts", "alerts.jsonl")
    assert triples == [("a", P, "autodialer"), ("b", P, "autodialer")] and duplicates == 1


def test_read_triples_skips_the_fraud_lines_of_generated_labels(tmp_path: Path) -> None:
    write(tmp_path / "labels.jsonl", [
        {"user": "a", "period": P, "rule": "autodialer", "scenario": "short_call_burst"},
        {"user": "a", "period": P, "scenario": "short_call_burst", "kind": "fraud",
         "first_call": "2026-11-20T03:00:00+01:00", "damage": "2026-11-20T03:00:09+01:00"},
        {"user": "b", "period": P, "scenario": "wangiri", "kind": "target"},
    ])
    assert read_triples(tmp_path, "labels", "labels.jsonl") == ([("a", P, "autodialer")], 0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([b"{not json"], r"labels.jsonl:1: not a JSON line"),
        ([{"user": "a", "period": P, "rule": "autodialer"}, [1, 2]], r"labels.jsonl:2: expected a JSON object, got list"),
        ([{"user": "a", "rule": "autodialer"}], r"labels.jsonl:1: missing field\(s\) period"),
        ([{"user": "", "period": P, "rule": "autodialer"}], r"labels.jsonl:1: user must be a non-empty string"),
        ([{"user": "a", "period": "2026-13", "rule": "autodialer"}], r"labels.jsonl:1: period: expected a month as YYYY-MM"),
    ],
)
def test_malformed_files_are_config_errors_naming_the_line(rows: list[Any], message: str, tmp_path: Path) -> None:
    write(tmp_path / "labels.jsonl", rows)
    with pytest.raises(ConfigError, match=message):
        read_triples(tmp_path / "labels.jsonl", "labels", "labels.jsonl")


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    labels = write(tmp_path / "labels.jsonl", [
        {"user": "a", "period": P, "rule": "autodialer", "scenario": "phoning"},
        {"user": "b", "period": P, "rule": "pbx_or_gateway", "scenario": "gateway"},
    ])
    alerts = write(tmp_path / "alerts.jsonl", [alert("b", "pbx_or_gateway"), alert("a", "autodialer")])
    return labels, alerts


def test_cli_strict_exits_0_when_perfect(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    labels, alerts = files
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--strict"]) == 0
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("all rules")).split()[-2:] == ["1.000", "1.000"]


def test_cli_strict_exits_1_below_1_and_plain_mode_exits_0(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    labels, alerts = files
    write(alerts, [alert("b", "pbx_or_gateway"), alert("a", "autodialer"), alert("c", "third_party_device"),
                   alert("a", "autodialer")])
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 0
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "strict: precision or recall below 1 for third_party_device" in out
    assert "note: 1 alert line(s) repeated" in out
    write(alerts, [alert("b", "pbx_or_gateway")])  # a missed alert: recall < 1
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--strict"]) == 1
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--strict", "--rules",
                 "pbx_or_gateway"]) == 0


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("alerts", None, "alerts {}: no such file"),
        ("labels", b"{\"user\": \"a\"}\n", "{}:1: missing field(s) period, rule"),
        ("alerts", b"\n\nnot json\n", "{}:3: not a JSON line"),
    ],
)
def test_cli_exits_2_on_a_missing_or_malformed_file(
    which: str, content: bytes | None, message: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    labels, alerts = files
    target = alerts if which == "alerts" else labels
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 2
    assert message.format(target) in capsys.readouterr().err
