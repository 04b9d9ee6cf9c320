"""`cdrwatch evaluate` (streams/tools/evaluate.py): per-rule scoring of (user, period, rule) triples on
hand-made label/alert sets, the table, --strict exit codes and errors on bad files; fraud alerts and
account actions against fraud and target labels, every figure computed by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli import main
from streams.core.errors import ConfigError
from streams.tools.evaluate import (
    AccountAction,
    FraudAlert,
    FraudEvaluation,
    FraudLabel,
    evaluate,
    format_evaluation,
    format_fraud,
    read_actions,
    read_fraud_alerts,
    read_labels,
    read_triples,
    score_fraud,
)

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


# ------------------------------------------------------------------------------------------ fraud


def fraud(user: str, scenario: str, first_call: str, damage: str) -> dict[str, Any]:
    return {"user": user, "period": P, "scenario": scenario, "kind": "fraud", "first_call": first_call, "damage": damage}


def target(user: str, scenario: str) -> dict[str, Any]:
    return {"user": user, "period": P, "scenario": scenario, "kind": "target"}


def falert(alert_id: str, user: str, rule: str, level: str) -> dict[str, Any]:
    """A fraud-alerts payload (evaluate reads alert_id, user, rule, level and time)."""
    return {"alert_id": alert_id, "rule": rule, "rule_name": rule, "level": level, "user": user, "customer": "c1",
            "plan": "full-illimite", "window": "2026-11-05T10:00:00Z", "observed": 3, "threshold": 2,
            "unit": "calls", "time": "2026-11-05T10:05:00Z", "evidence": {}}


def action(action_id: str, user: str, kind: str, time: str) -> dict[str, Any]:
    return {"action_id": action_id, "action": kind, "user": user, "customer": "c1", "plan": "full-illimite",
            "rule": "cost_burst", "rule_name": "cost_burst", "alert_id": "0" * 32, "reason": "critical", "time": time}


def fraud_labels(rows: list[dict[str, Any]]) -> list[FraudLabel]:
    return [FraudLabel(r["user"], r["period"], r["scenario"], r["kind"], r.get("first_call"), r.get("damage"))
            for r in rows]


def action_of(user: str, time: str, kind: str = "restrict_to_emergency") -> AccountAction:
    return AccountAction(user, kind, time)


# 20 users: f1–f4 with injected fraud, t1 a target, h1 a fair-use label only, h2 and h3 honest users
# with fraud alerts, the 12 others never named. Lead times: f1 acted on at 10:10 (the earliest of its
# two actions), damage 10:30 → 20 min; f2 acted on at 10:15Z, damage 11:20+01:00 = 10:20Z → 5 min;
# f3 never acted on (missed); f4 acted on at 12:05, damage 12:00 (late).
MONTH_LABELS: list[Any] = [
    {"user": "h1", "period": P, "rule": "autodialer", "scenario": "phoning"},
    fraud("f1", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T10:30:00Z"),
    fraud("f2", "irsf", "2026-11-06T11:00:00+01:00", "2026-11-06T11:20:00+01:00"),
    fraud("f3", "irsf", "2026-11-07T08:00:00Z", "2026-11-07T09:00:00Z"),
    fraud("f4", "pbx_hack", "2026-11-08T11:00:00Z", "2026-11-08T12:00:00Z"),
    target("t1", "wangiri"),
]
MONTH_ALERTS: list[Any] = [
    falert("a1", "f1", "cost_burst", "warning"),
    falert("a2", "f1", "cost_burst", "critical"),
    falert("a3", "f2", "cost_burst", "critical"),
    falert("a4", "t1", "cost_burst", "warning"),  # a target with a warning: not an honest user
    falert("a5", "h2", "cost_burst", "warning"),
    falert("a6", "h3", "calls_per_minute", "critical"),  # an honest user with a critical
    falert("a7", "f4", "calls_per_minute", "warning"),
    falert("a1", "f1", "cost_burst", "warning"),  # a redelivery
]
MONTH_ACTIONS: list[Any] = [
    action("c1", "f1", "restrict_to_emergency", "2026-11-05T10:20:00Z"),
    action("c2", "f1", "suspend_unlimited", "2026-11-05T10:10:00Z"),
    action("c3", "f2", "restrict_to_emergency", "2026-11-06T10:15:00Z"),
    action("c4", "f4", "suspend_unlimited", "2026-11-08T12:05:00Z"),  # after the damage
    action("c5", "h3", "suspend_unlimited", "2026-11-09T08:00:00+01:00"),
    action("c6", "h3", "lift", "2026-11-09T09:00:00+01:00"),  # an analyst's lift: ignored
]


@pytest.fixture()
def month(tmp_path: Path) -> tuple[Path, Path]:
    """``(generate's directory, replay's directory)`` of the month above."""
    gen, rep = tmp_path / "month", tmp_path / "replay"
    gen.mkdir()
    rep.mkdir()
    write(gen / "labels.jsonl", MONTH_LABELS)
    (gen / "manifest.json").write_bytes(orjson.dumps({"users": 20, "customers": 5, "month": P, "seed": 1,
                                                      "scenarios": {}}))
    write(rep / "fraud-alerts.jsonl", MONTH_ALERTS)
    write(rep / "account-actions.jsonl", MONTH_ACTIONS)
    write(rep / "alerts.jsonl", [alert("h1", "autodialer")])
    return gen, rep


def score_month(month: tuple[Path, Path], users: int = 20) -> FraudEvaluation:
    gen, rep = month
    labels = read_labels(gen)
    alerts, dup_alerts = read_fraud_alerts(rep)
    actions, dup_actions = read_actions(rep)
    return score_fraud(labels.fraud, alerts, actions, users=users, fair_use_users=labels.fair_use_users,
                       duplicate_alerts=dup_alerts, duplicate_actions=dup_actions)


def test_labels_split_fair_use_triples_from_fraud_lines(month: tuple[Path, Path]) -> None:
    labels = read_labels(month[0])
    assert labels.triples == [("h1", P, "autodialer")]
    assert [(x.user, x.kind, x.scenario) for x in labels.fraud] == [
        ("f1", "fraud", "irsf"), ("f2", "fraud", "irsf"), ("f3", "fraud", "irsf"), ("f4", "fraud", "pbx_hack"),
        ("t1", "target", "wangiri")]
    assert read_triples(month[0], "labels", "labels.jsonl") == ([("h1", P, "autodialer")], 0)


def test_fraud_alerts_per_rule_kind_and_level(month: tuple[Path, Path]) -> None:
    ev = score_month(month)
    rows = {(s.rule, s.level): (s.alerts, s.users, s.fraud, s.target, s.honest, s.precision) for s in ev.alerts}
    assert rows == {
        ("cost_burst", "warning"): (3, 3, 1, 1, 1, 0.5),  # f1, t1 (left out of the precision), h2
        ("cost_burst", "critical"): (2, 2, 2, 0, 0, 1.0),
        ("calls_per_minute", "warning"): (1, 1, 1, 0, 0, 1.0),
        ("calls_per_minute", "critical"): (1, 1, 0, 0, 1, 0.0),
    }
    warning, critical = ev.totals
    assert (warning.alerts, warning.users, warning.fraud, warning.target, warning.honest) == (4, 4, 2, 1, 1)
    assert warning.precision == pytest.approx(2 / 3)
    assert (critical.alerts, critical.users, critical.fraud, critical.honest) == (3, 3, 2, 1)
    assert ev.duplicate_alerts == 1


def test_honest_population_and_what_reached_it(month: tuple[Path, Path]) -> None:
    ev = score_month(month)
    assert (ev.users, ev.fraud_users, ev.target_users, ev.honest, ev.fair_use_users) == (20, 4, 1, 15, 1)
    assert ev.honest_warned == ["h2", "h3"]  # h3 has only a critical: warned too
    assert ev.honest_critical == ["h3"]
    assert [(a.user, a.action) for a in ev.honest_actions] == [("h3", "suspend_unlimited")]
    assert ev.targets_acted_on == [] and ev.lifts == 1


def test_per_scenario_detection_late_missed_and_lead_times(month: tuple[Path, Path]) -> None:
    ev = score_month(month)
    got = {c.scenario: (c.labelled, c.targets, c.detected, c.late, c.missed, c.recall, c.lead_min, c.lead_median)
           for c in ev.scenarios}
    assert got["irsf"][:5] == (3, 0, 2, 0, 1)
    assert got["irsf"][5] == pytest.approx(2 / 3) and got["irsf"][6:] == (5.0, 12.5)
    assert got["pbx_hack"] == (1, 0, 0, 1, 0, 0.0, None, None)
    assert got["wangiri"] == (0, 1, 0, 0, 0, None, None, None)
    assert [(m.user, m.action) for m in ev.late] == [("f4", "2026-11-08T12:05:00Z")]
    assert [(m.user, m.action) for m in ev.missed] == [("f3", None)]
    overall = ev.overall
    assert (overall.labelled, overall.detected, overall.recall, overall.lead_median) == (4, 2, 0.5, 12.5)
    assert [(t.name, t.passed) for t in ev.targets] == [("a", False), ("b", False), ("c", False)]


def test_an_action_at_the_damage_itself_is_in_time() -> None:
    labels = fraud_labels([fraud("f1", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T10:30:00Z")])
    actions = [action_of("f1", "2026-11-05T11:30:00+01:00")]
    ev = score_fraud(labels, [], actions, users=10)
    assert (ev.scenarios[0].detected, ev.scenarios[0].late, ev.scenarios[0].lead_min) == (1, 0, 0.0)
    ev = score_fraud(labels, [], [action_of("f1", "2026-11-05T10:30:01Z")], users=10)
    assert (ev.scenarios[0].detected, ev.scenarios[0].late) == (0, 1)
    assert [(t.name, t.passed) for t in ev.targets] == [("a", True), ("b", True), ("c", False)]


@pytest.mark.parametrize(
    ("users", "warned", "passed"),
    [
        pytest.param(101, 1, True, id="1 of 100 honest: exactly 1 %"),
        pytest.param(101, 2, False, id="2 of 100 honest: 2 %"),
        pytest.param(100, 1, False, id="1 of 99 honest: above 1 %"),
        pytest.param(201, 2, True, id="2 of 200 honest: exactly 1 %"),
    ],
)
def test_the_1_percent_boundary_of_honest_users_warned(users: int, warned: int, passed: bool) -> None:
    labels = fraud_labels([fraud("f1", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T10:30:00Z")])
    alerts = [FraudAlert(f"h{i}", "cost_burst", "warning", "2026-11-05T10:05:00Z") for i in range(warned)]
    ev = score_fraud(labels, alerts, [action_of("f1", "2026-11-05T10:10:00Z")], users=users)
    assert ev.honest == users - 1
    assert [(t.name, t.passed) for t in ev.targets] == [("a", True), ("b", passed), ("c", True)]


def test_a_user_labelled_fraud_and_target_is_a_fraud_user() -> None:
    labels = fraud_labels([fraud("f1", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T10:30:00Z"),
                               target("f1", "wangiri"), target("t1", "wangiri")])
    ev = score_fraud(labels, [], [], users=5)
    assert (ev.fraud_users, ev.target_users, ev.honest) == (1, 1, 3)
    assert {c.scenario: c.targets for c in ev.scenarios} == {"irsf": 0, "wangiri": 1}


def test_a_population_smaller_than_the_users_named_is_an_error() -> None:
    labels = fraud_labels([target("t1", "wangiri")])
    with pytest.raises(ConfigError, match="a population of 2 users, but .* name 3 distinct users"):
        score_fraud(labels, [], [action_of("h1", "2026-11-05T10:10:00Z"), action_of("h2", "2026-11-05T10:10:00Z")],
                    users=2)


def test_format_fraud_shows_the_tables_the_lists_and_the_targets(month: tuple[Path, Path]) -> None:
    text = format_fraud(score_month(month), show=1)
    lines = text.splitlines()
    assert lines[0].split() == ["fraud", "rule", "level", "alerts", "users", "fraud", "target", "honest", "precision"]
    assert "cost_burst             warning        3      3      1       1       1      0.500" in lines
    assert next(line for line in lines if line.startswith("all rules") and "critical" in line).split()[-1] == "0.667"
    assert "honest population: 15 of 20 users (4 with injected fraud and 1 target(s) left out); 14 without any " \
           "label, 1 with fair-use labels" in text
    assert "honest users warned (any fraud alert): 2 (13.33 %)\n  h2\n  … and 1 more" in text
    assert "honest users with an account action: 1\n  h3 suspend_unlimited 2026-11-09T08:00:00+01:00" in text
    assert next(line for line in lines if line.startswith("irsf")).split() == \
        ["irsf", "3", "0", "2", "0.667", "0", "1", "5.0", "12.5"]
    assert next(line for line in lines if line.startswith("pbx_hack")).split() == \
        ["pbx_hack", "1", "0", "0", "0.000", "1", "0", "—", "—"]
    assert next(line for line in lines if line.startswith("all scenarios")).split()[2:] == \
        ["4", "1", "2", "0.500", "1", "1", "5.0", "12.5"]
    assert "late (acted on after the damage): 1\n  f4 pbx_hack action 2026-11-08T12:05:00Z, damage " \
           "2026-11-08T12:00:00Z" in text
    assert "missed (no account action): 1\n  f3 irsf damage 2026-11-07T09:00:00Z" in text
    assert "  FAIL (b) honest users warned ≤ 1 % of the honest population (2 of 15: 13.33 %)" in lines
    assert "  FAIL (c) every fraud user acted on before the damage, on every scenario (2 of 4)" in lines
    assert "note: 1 fraud alert line(s) repeated an alert_id (counted once)" in lines


@pytest.mark.parametrize(
    ("which", "row", "message"),
    [
        ("labels", {"user": "f9", "period": P, "scenario": "irsf", "kind": "fraud", "first_call": "2026-11-05T10:00:00Z"},
         r"labels.jsonl:7: missing field\(s\) damage"),
        ("labels", {"user": "f9", "period": P, "scenario": "irsf", "kind": "victim"},
         r"labels.jsonl:7: kind must be one of fraud, target, got 'victim'"),
        ("labels", fraud("f9", "irsf", "2026-11-05T10:00:00", "2026-11-05T10:30:00Z"),
         r"labels.jsonl:7: first_call: timestamp without a UTC offset"),
        ("labels", fraud("f9", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T09:30:00Z"),
         r"labels.jsonl:7: damage 2026-11-05T09:30:00Z is before first_call"),
        ("labels", target("t9", ""), r"labels.jsonl:7: scenario must be a non-empty string"),
        ("fraud-alerts", {**falert("a9", "h1", "cost_burst", "info")},
         r"fraud-alerts.jsonl:9: level must be warning or critical, got 'info'"),
        ("fraud-alerts", {k: v for k, v in falert("a9", "h1", "cost_burst", "warning").items() if k != "time"},
         r"fraud-alerts.jsonl:9: missing field\(s\) time"),
        ("account-actions", action("c9", "h1", "ban", "2026-11-05T10:00:00Z"),
         r"account-actions.jsonl:7: action must be one of restrict_to_emergency, suspend_unlimited, lift"),
        ("account-actions", action("c9", "h1", "lift", "yesterday"),
         r"account-actions.jsonl:7: time: not an RFC 3339 timestamp: 'yesterday'"),
    ],
)
def test_cli_exits_2_on_a_bad_fraud_line(which: str, row: dict[str, Any], message: str, month: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    gen, rep = month
    path = gen / "labels.jsonl" if which == "labels" else rep / f"{which}.jsonl"
    base = {"labels": MONTH_LABELS, "fraud-alerts": MONTH_ALERTS, "account-actions": MONTH_ACTIONS}[which]
    write(path, [*base, row])
    assert main(["evaluate", "--labels", str(gen), "--replay", str(rep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_cli_replay_scores_fair_use_and_fraud_and_strict_fails_on_the_targets(
    month: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gen, rep = month
    assert main(["evaluate", "--labels", str(gen / "labels.jsonl"), "--replay", str(rep)]) == 0
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("autodialer")).split()[-2:] == ["1.000", "1.000"]
    assert "honest population: 15 of 20 users" in out
    assert main(["evaluate", "--labels", str(gen), "--replay", str(rep), "--strict"]) == 1
    assert "strict: fraud target(s) (a), (b), (c) failed" in capsys.readouterr().out


def test_cli_strict_exits_0_when_every_fraud_target_passes(month: tuple[Path, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    gen, rep = month
    write(gen / "labels.jsonl", [fraud("f1", "irsf", "2026-11-05T10:00:00Z", "2026-11-05T10:30:00Z"),
                                 target("t1", "wangiri")])
    write(rep / "fraud-alerts.jsonl", [falert("a1", "f1", "cost_burst", "critical"),
                                       falert("a4", "t1", "cost_burst", "warning")])
    write(rep / "account-actions.jsonl", [action("c1", "f1", "restrict_to_emergency", "2026-11-05T10:20:00Z")])
    argv = ["evaluate", "--labels", str(gen), "--fraud-alerts", str(rep), "--actions", str(rep / "account-actions.jsonl"),
            "--strict"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  PASS (c) every fraud user acted on before the damage, on every scenario (1 of 1)" in out
    assert out.startswith("fraud rule ") and "distinct_numbers" not in out  # no fair-use table without --alerts
    write(rep / "fraud-alerts.jsonl", [falert("a1", "f1", "cost_burst", "critical"),
                                       falert("a5", "h2", "cost_burst", "warning")])  # 1 of 18 honest: above 1 %
    assert main(argv) == 1
    assert main([*argv, "--users", "102"]) == 0  # 1 of 100 honest
    assert "(1 of 100: 1.00 %)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fraud-alerts", "{rep}"], "--fraud-alerts and --actions go together"),
        (["--actions", "{rep}"], "--fraud-alerts and --actions go together"),
        ([], "nothing to score: give --alerts, --fraud-alerts with --actions, or --replay DIR"),
        (["--replay", "{rep}/alerts.jsonl"], "--replay {rep}/alerts.jsonl: not a directory"),
        (["--fraud-alerts", "{rep}", "--actions", "{rep}", "--rules", "autodialer"], "--rules selects fair-use rules"),
        (["--fraud-alerts", "{gen}", "--actions", "{rep}"], "fraud alerts {gen}/fraud-alerts.jsonl: no such file"),
    ],
)
def test_cli_exits_2_on_inconsistent_options(argv: list[str], message: str, month: tuple[Path, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    gen, rep = month
    names = {"gen": str(gen), "rep": str(rep)}
    assert main(["evaluate", "--labels", str(gen), *[a.format(**names) for a in argv]]) == 2
    assert message.format(**names) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "manifest {gen}/manifest.json: no such file (give the number of users with --users N)"),
        (b"{", "manifest {gen}/manifest.json: not JSON"),
        (b'{"users": 0}', "manifest {gen}/manifest.json: users must be a positive integer, got 0"),
        (b'{"month": "2026-11"}', "manifest {gen}/manifest.json: expected a JSON object with users"),
        (b'{"users": 7}', "a population of 7 users, but the labels, fraud alerts and actions name 8 distinct users"),
    ],
)
def test_cli_exits_2_on_a_missing_or_bad_manifest_unless_users_is_given(
    manifest: bytes | None, message: str, month: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gen, rep = month
    if manifest is None:
        (gen / "manifest.json").unlink()
    else:
        (gen / "manifest.json").write_bytes(manifest)
    assert main(["evaluate", "--labels", str(gen), "--replay", str(rep)]) == 2
    assert message.format(gen=gen) in capsys.readouterr().err
    assert main(["evaluate", "--labels", str(gen), "--replay", str(rep), "--users", "30"]) == 0
    assert "honest population: 25 of 30 users" in capsys.readouterr().out
