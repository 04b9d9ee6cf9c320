"""Scoring alerts against labels: the ``cdrwatch evaluate`` command.

Fair use: the unit is a ``(user, period, rule)`` triple: a label (``labels.jsonl`` from ``cdrwatch
generate``, or any JSONL of ``{user, period, rule}``) is a breach that must be alerted; an alert
(``alerts.jsonl`` from ``cdrwatch replay``, the ``fairuse-alerts`` payloads) is a breach that was.

Fraud: the unit is a user. A label line with ``kind: fraud`` is a user with injected fraud (its
``damage`` is the end of the first fraudulent call), one with ``kind: target`` a user who received
fraudulent traffic but did nothing wrong. Every other user of the month (``manifest.json`` beside
the labels gives their number, or ``--users``) is honest, fair-use labels included. The
``fraud-alerts`` are scored per (rule kind, level) by the users they name; the ``account-actions``
by whether the earliest one on a fraud user came no later than the damage, and by whether any
reached an honest user. Pure: reads files, no Kafka.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, Iterable, Iterator, Sequence

import orjson

from ..core.errors import ConfigError
from ..core.plans import FRAUD_RULES, RULES
from ..checks import positive_int
from ..core.timeutil import check_period, instant_us
from ..jsonl import read_jsonl

__all__ = [
    "AccountAction", "AlertScore", "EvaluateInputError", "Evaluation", "FraudAlert", "FraudEvaluation", "FraudLabel",
    "Labels", "RuleScore", "ScenarioScore", "Target", "Undetected", "evaluate", "format_evaluation", "format_fraud", "read_actions",
    "read_fraud_alerts", "read_labels", "read_manifest_users", "read_triples", "register", "score_fraud",
]

Triple = tuple[str, str, str]  # (user, period, rule)



class EvaluateInputError(ConfigError):
    """A labels or alerts file that cannot be scored (missing, not JSONL, fields missing)."""


@dataclass(frozen=True)
class RuleScore:
    rule: str
    labels: int
    alerts: int
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP); None when nothing was alerted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN); None when nothing was labelled."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def perfect(self) -> bool:
        return self.fp == 0 and self.fn == 0


@dataclass(frozen=True)
class Evaluation:
    rules: list[RuleScore]
    total: RuleScore
    false_positives: list[Triple]
    false_negatives: list[Triple]
    duplicate_labels: int = 0
    duplicate_alerts: int = 0

    @property
    def perfect(self) -> bool:
        """Precision and recall 1 (or undefined: nothing labelled and nothing alerted) for every rule."""
        return all(score.perfect for score in self.rules)


def _resolve(path: Path, what: str, default_name: str) -> Path:
    """``path``, or ``path/default_name`` for a directory; an error unless that is a file."""
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise EvaluateInputError(f"{what} {path}: no such file")
    return path


def _objects(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of ``path``; a line that is not a JSON
    object is an error naming it."""
    for line_no, _raw, data in read_jsonl(path, what, EvaluateInputError):
        if not isinstance(data, dict):
            raise EvaluateInputError(f"{path}:{line_no}: expected a JSON object, got {type(data).__name__}")
        yield line_no, data


def read_triples(path: Path, what: str, default_name: str) -> tuple[list[Triple], int]:
    """The ``(user, period, rule)`` of every JSON line of ``path`` (a directory means
    ``path/default_name``), and how many lines repeated an earlier triple. A line with a ``kind``
    (a fraud label) is not a triple and is skipped."""
    path = _resolve(path, what, default_name)
    triples: list[Triple] = []
    seen: set[Triple] = set()
    duplicates = 0
    for line_no, data in _objects(path, what):
        if "kind" in data:
            continue
        triple = _triple(data, path, line_no)
        if triple in seen:
            duplicates += 1
            continue
        seen.add(triple)
        triples.append(triple)
    return triples, duplicates


def _strings(data: dict[str, Any], keys: Iterable[str], path: Path, line_no: int) -> None:
    """An error unless every key is in ``data`` with a non-empty string."""
    keys = list(keys)
    missing = [k for k in keys if k not in data]
    if missing:
        raise EvaluateInputError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
    for key in keys:
        if not isinstance(data[key], str) or not data[key]:
            raise EvaluateInputError(f"{path}:{line_no}: {key} must be a non-empty string, got {data[key]!r}")


def _time_us(data: dict[str, Any], key: str, path: Path, line_no: int) -> int:
    try:
        return instant_us(data[key])
    except ValueError as exc:
        raise EvaluateInputError(f"{path}:{line_no}: {key}: {exc}") from None


def _triple(data: dict[str, Any], path: Path, line_no: int) -> Triple:
    _strings(data, ("user", "period", "rule"), path, line_no)
    try:
        check_period(data["period"])
    except ValueError as exc:
        raise EvaluateInputError(f"{path}:{line_no}: period: {exc}") from None
    return data["user"], data["period"], data["rule"]


def evaluate(labels: Iterable[Triple], alerts: Iterable[Triple], *, rules: Iterable[str] | None = None,
             duplicate_labels: int = 0, duplicate_alerts: int = 0) -> Evaluation:
    """Per-rule true/false positives and false negatives; ``rules`` restricts the scoring."""
    wanted = set(labels)
    got = set(alerts)
    if rules is not None:
        keep = set(rules)
        wanted = {t for t in wanted if t[2] in keep}
        got = {t for t in got if t[2] in keep}
        names = [r for r in RULES if r in keep] + sorted(keep - set(RULES))
    else:
        present = {t[2] for t in wanted | got}
        names = list(RULES) + sorted(present - set(RULES))
    scores = []
    for rule in names:
        w = {t for t in wanted if t[2] == rule}
        g = {t for t in got if t[2] == rule}
        scores.append(RuleScore(rule, len(w), len(g), len(w & g), len(g - w), len(w - g)))
    total = RuleScore(
        "all rules", len(wanted), len(got), sum(s.tp for s in scores), sum(s.fp for s in scores),
        sum(s.fn for s in scores),
    )
    return Evaluation(scores, total, sorted(got - wanted), sorted(wanted - got), duplicate_labels, duplicate_alerts)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_evaluation(ev: Evaluation, *, show: int = 20) -> str:
    """The per-rule table, then the mismatching triples (at most ``show`` of each kind)."""
    header = f"{'rule':<20} {'labels':>7} {'alerts':>7} {'TP':>6} {'FP':>6} {'FN':>6} {'precision':>10} {'recall':>8}"
    lines = [header, "-" * len(header)]
    for s in [*ev.rules, ev.total]:
        if s is ev.total:
            lines.append("-" * len(header))
        lines.append(
            f"{s.rule:<20} {s.labels:>7} {s.alerts:>7} {s.tp:>6} {s.fp:>6} {s.fn:>6} "
            f"{_ratio(s.precision):>10} {_ratio(s.recall):>8}"
        )
    for title, triples in (("false positives (alerted, not labelled)", ev.false_positives),
                           ("false negatives (labelled, not alerted)", ev.false_negatives)):
        if triples:
            lines.append(f"{title}: {len(triples)}")
            lines += [f"  {user} {period} {rule}" for user, period, rule in triples[:show]]
            if len(triples) > show:
                lines.append(f"  … and {len(triples) - show} more")
    if ev.duplicate_alerts:
        lines.append(f"note: {ev.duplicate_alerts} alert line(s) repeated a (user, period, rule) already alerted "
                     "(a rule alerts once per user and month)")
    if ev.duplicate_labels:
        lines.append(f"note: {ev.duplicate_labels} label line(s) repeated a triple (counted once)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# fraud

LEVELS = ("warning", "critical")
LABEL_KINDS = ("fraud", "target")
ACTIONS = ("restrict_to_emergency", "suspend_unlimited", "lift")
WARNED_SHARE_PERCENT = 1  # target (b): honest users warned, at most this share of the honest population


@dataclass(frozen=True)
class FraudLabel:
    """A ``kind: fraud`` line (a user with injected fraud; ``damage``: the end of its first
    fraudulent call) or a ``kind: target`` line (a user who received fraudulent traffic)."""

    user: str
    period: str
    scenario: str
    kind: str
    first_call: str | None = None
    damage: str | None = None

    @property
    def damage_us(self) -> int | None:
        return None if self.damage is None else instant_us(self.damage)


@dataclass(frozen=True)
class Labels:
    """Everything ``labels.jsonl`` holds: the fair-use triples and the fraud lines."""

    triples: list[Triple]
    fraud: list[FraudLabel]
    duplicate_triples: int = 0
    duplicate_fraud: int = 0

    @property
    def fair_use_users(self) -> frozenset[str]:
        return frozenset(t[0] for t in self.triples)


@dataclass(frozen=True)
class FraudAlert:
    user: str
    rule: str
    level: str
    time: str


@dataclass(frozen=True)
class AccountAction:
    user: str
    action: str
    time: str

    @property
    def time_us(self) -> int:
        return instant_us(self.time)


def read_labels(path: Path) -> Labels:
    """``labels.jsonl`` (or ``path/labels.jsonl``): lines without a ``kind`` are fair-use triples,
    lines with one fraud labels; repeated lines are counted and kept once."""
    path = _resolve(path, "labels", "labels.jsonl")
    triples: list[Triple] = []
    fraud: list[FraudLabel] = []
    seen_triples: set[Triple] = set()
    seen_fraud: set[tuple[str, str, str]] = set()
    dup_triples = dup_fraud = 0
    for line_no, data in _objects(path, "labels"):
        if "kind" not in data:
            triple = _triple(data, path, line_no)
            if triple in seen_triples:
                dup_triples += 1
            else:
                seen_triples.add(triple)
                triples.append(triple)
            continue
        label = _fraud_label(data, path, line_no)
        key = (label.user, label.scenario, label.kind)
        if key in seen_fraud:
            dup_fraud += 1
        else:
            seen_fraud.add(key)
            fraud.append(label)
    return Labels(triples, fraud, dup_triples, dup_fraud)


def _fraud_label(data: dict[str, Any], path: Path, line_no: int) -> FraudLabel:
    if data["kind"] not in LABEL_KINDS:
        raise EvaluateInputError(f"{path}:{line_no}: kind must be one of {', '.join(LABEL_KINDS)}, "
                                 f"got {data['kind']!r}")
    _strings(data, ("user", "period", "scenario"), path, line_no)
    try:
        check_period(data["period"])
    except ValueError as exc:
        raise EvaluateInputError(f"{path}:{line_no}: period: {exc}") from None
    if data["kind"] == "target":
        return FraudLabel(data["user"], data["period"], data["scenario"], "target")
    _strings(data, ("first_call", "damage"), path, line_no)
    first_call, damage = _time_us(data, "first_call", path, line_no), _time_us(data, "damage", path, line_no)
    if damage < first_call:
        raise EvaluateInputError(f"{path}:{line_no}: damage {data['damage']} is before first_call {data['first_call']}")
    return FraudLabel(data["user"], data["period"], data["scenario"], "fraud", data["first_call"], data["damage"])


def read_manifest_users(labels: Path) -> int:
    """``users`` of the ``manifest.json`` beside ``labels`` (a file, or the directory holding it)."""
    path = (labels if labels.is_dir() else labels.parent) / "manifest.json"
    if not path.is_file():
        raise EvaluateInputError(f"manifest {path}: no such file (give the number of users with --users N)")
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise EvaluateInputError(f"manifest {path}: cannot read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise EvaluateInputError(f"manifest {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or "users" not in data:
        raise EvaluateInputError(f"manifest {path}: expected a JSON object with users")
    users = data["users"]
    if not isinstance(users, int) or isinstance(users, bool) or users < 1:
        raise EvaluateInputError(f"manifest {path}: users must be a positive integer, got {users!r}")
    return users


def read_fraud_alerts(path: Path) -> tuple[list[FraudAlert], int]:
    """The ``fraud-alerts`` payloads of ``path`` (a directory: its fraud-alerts.jsonl), and how many
    lines repeated an ``alert_id`` already read (kept once)."""
    path = _resolve(path, "fraud alerts", "fraud-alerts.jsonl")
    alerts: list[FraudAlert] = []
    seen: set[str] = set()
    duplicates = 0
    for line_no, data in _objects(path, "fraud alerts"):
        _strings(data, ("user", "rule", "level", "time"), path, line_no)
        if data["level"] not in LEVELS:
            raise EvaluateInputError(f"{path}:{line_no}: level must be warning or critical, got {data['level']!r}")
        _time_us(data, "time", path, line_no)
        alert_id = data.get("alert_id")
        if isinstance(alert_id, str) and alert_id:
            if alert_id in seen:
                duplicates += 1
                continue
            seen.add(alert_id)
        alerts.append(FraudAlert(data["user"], data["rule"], data["level"], data["time"]))
    return alerts, duplicates


def read_actions(path: Path) -> tuple[list[AccountAction], int]:
    """The ``account-actions`` of ``path`` (a directory: its account-actions.jsonl), and how many
    lines repeated an ``action_id`` already read (kept once)."""
    path = _resolve(path, "actions", "account-actions.jsonl")
    actions: list[AccountAction] = []
    seen: set[str] = set()
    duplicates = 0
    for line_no, data in _objects(path, "actions"):
        _strings(data, ("user", "action", "time"), path, line_no)
        if data["action"] not in ACTIONS:
            raise EvaluateInputError(f"{path}:{line_no}: action must be one of {', '.join(ACTIONS)}, "
                                     f"got {data['action']!r}")
        _time_us(data, "time", path, line_no)
        action_id = data.get("action_id")
        if isinstance(action_id, str) and action_id:
            if action_id in seen:
                duplicates += 1
                continue
            seen.add(action_id)
        actions.append(AccountAction(data["user"], data["action"], data["time"]))
    return actions, duplicates


@dataclass(frozen=True)
class AlertScore:
    """The fraud alerts of one (rule kind, level): how many, and the distinct users they name."""

    rule: str
    level: str
    alerts: int
    users: int
    fraud: int
    target: int
    honest: int

    @property
    def precision(self) -> float | None:
        """Fraud users / (fraud + honest) users alerted, targets left out; None when neither."""
        return self.fraud / (self.fraud + self.honest) if self.fraud + self.honest else None


@dataclass(frozen=True)
class ScenarioScore:
    scenario: str
    labelled: int  # users with injected fraud
    targets: int
    detected: int  # earliest account action no later than the damage
    late: int  # earliest account action after the damage
    missed: int  # no account action
    lead_minutes: tuple[float, ...] = ()  # damage − earliest action, one per detected user

    @property
    def recall(self) -> float | None:
        return self.detected / self.labelled if self.labelled else None

    @property
    def lead_min(self) -> float | None:
        return min(self.lead_minutes) if self.lead_minutes else None

    @property
    def lead_median(self) -> float | None:
        return median(self.lead_minutes) if self.lead_minutes else None


@dataclass(frozen=True)
class Target:
    name: str
    passed: bool
    text: str


@dataclass(frozen=True)
class Undetected:
    """A fraud user acted on after the damage (``action`` is the earliest action's time) or not at all."""

    user: str
    scenario: str
    damage: str
    action: str | None


@dataclass(frozen=True)
class FraudEvaluation:
    alerts: list[AlertScore]
    totals: list[AlertScore]  # per level, all rule kinds
    users: int  # the whole population
    fraud_users: int
    target_users: int
    fair_use_users: int  # honest users with a fair-use label
    honest_warned: list[str]  # honest users with any fraud alert (warning or critical)
    honest_critical: list[str]
    honest_actions: list[AccountAction]  # the earliest account action of each honest user acted on
    targets_acted_on: list[str]
    scenarios: list[ScenarioScore]
    late: list[Undetected]
    missed: list[Undetected]
    targets: list[Target]
    duplicate_alerts: int = 0
    duplicate_actions: int = 0
    lifts: int = 0

    @property
    def honest(self) -> int:
        """Users without injected fraud and not targets."""
        return self.users - self.fraud_users - self.target_users

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    @property
    def overall(self) -> ScenarioScore:
        """Every scenario together (a target of two scenarios counted in each)."""
        c = self.scenarios
        return ScenarioScore("all scenarios", sum(s.labelled for s in c), sum(s.targets for s in c),
                             sum(s.detected for s in c), sum(s.late for s in c), sum(s.missed for s in c),
                             tuple(x for s in c for x in s.lead_minutes))


def score_fraud(labels: Sequence[FraudLabel], alerts: Iterable[FraudAlert], actions: Iterable[AccountAction], *,
                users: int, fair_use_users: Iterable[str] = (), duplicate_alerts: int = 0,
                duplicate_actions: int = 0) -> FraudEvaluation:
    """Fraud alerts and account actions against the fraud labels, in a population of ``users``.

    A user with a ``fraud`` label is a fraud user, one with only ``target`` labels a target, every
    other user honest. A ``lift`` undoes an action: it neither detects fraud nor counts against an
    honest user."""
    alerts, all_actions = list(alerts), list(actions)
    fraud_users = {lab.user for lab in labels if lab.kind == "fraud"}
    target_users = {lab.user for lab in labels if lab.kind == "target"} - fraud_users
    actions = [a for a in all_actions if a.action != "lift"]
    named = ({lab.user for lab in labels} | set(fair_use_users) | {a.user for a in alerts}
             | {a.user for a in all_actions})
    if len(named) > users:
        raise EvaluateInputError(f"a population of {users} users, but the labels, fraud alerts and actions name "
                                 f"{len(named)} distinct users (see --users and manifest.json)")

    def side(user: str) -> str:
        return "fraud" if user in fraud_users else "target" if user in target_users else "honest"

    def score(rule: str, level: str, chosen: list[FraudAlert]) -> AlertScore:
        alerted = {a.user for a in chosen}
        sides = [side(u) for u in alerted]
        return AlertScore(rule, level, len(chosen), len(alerted), sides.count("fraud"), sides.count("target"),
                          sides.count("honest"))

    present = {a.rule for a in alerts}
    kinds = [k for k in FRAUD_RULES if k in present] + sorted(present - set(FRAUD_RULES))
    rows = [score(k, lv, chosen) for k in kinds for lv in LEVELS
            if (chosen := [a for a in alerts if a.rule == k and a.level == lv])]
    totals = [score("all rules", lv, [a for a in alerts if a.level == lv]) for lv in LEVELS]

    earliest: dict[str, AccountAction] = {}
    for action in sorted(actions, key=lambda a: a.time_us):
        earliest.setdefault(action.user, action)
    honest_warned = sorted({a.user for a in alerts if side(a.user) == "honest"})
    honest_critical = sorted({a.user for a in alerts if a.level == "critical" and side(a.user) == "honest"})
    honest_actions = sorted((a for u, a in earliest.items() if side(u) == "honest"), key=lambda a: a.user)
    targets_acted_on = sorted(u for u in earliest if side(u) == "target")

    scenarios: list[ScenarioScore] = []
    late: list[Undetected] = []
    missed: list[Undetected] = []
    for name in sorted({lab.scenario for lab in labels}):
        fraud = sorted((lab for lab in labels if lab.scenario == name and lab.kind == "fraud"), key=lambda x: x.user)
        victims = {lab.user for lab in labels if lab.scenario == name and lab.kind == "target"} - fraud_users
        leads: list[float] = []
        n_late = n_missed = 0
        for lab in fraud:
            if lab.damage is None or lab.damage_us is None:
                raise ValueError(f"the fraud label of {lab.user} ({name}) has no damage time")
            first = earliest.get(lab.user)
            if first is None:
                n_missed += 1
                missed.append(Undetected(lab.user, name, lab.damage, None))
            elif first.time_us > lab.damage_us:
                n_late += 1
                late.append(Undetected(lab.user, name, lab.damage, first.time))
            else:
                leads.append((lab.damage_us - first.time_us) / 60_000_000)
        scenarios.append(ScenarioScore(name, len(fraud), len(victims), len(leads), n_late, n_missed, tuple(leads)))

    honest = users - len(fraud_users) - len(target_users)
    n_warned = len(honest_warned)
    share = f"{100 * n_warned / honest:.2f} %" if honest else "—"
    labelled = sum(s.labelled for s in scenarios)
    detected = sum(s.detected for s in scenarios)
    checks = [
        Target("a", not honest_actions and not honest_critical,
               f"no account action and no critical alert on an honest user "
               f"({len(honest_actions)} acted on, {len(honest_critical)} with a critical)"),
        Target("b", n_warned * 100 <= honest * WARNED_SHARE_PERCENT,
               f"honest users warned ≤ {WARNED_SHARE_PERCENT} % of the honest population "
               f"({n_warned} of {honest}: {share})"),
        Target("c", detected == labelled,
               f"every fraud user acted on before the damage, on every scenario ({detected} of {labelled})"),
    ]
    return FraudEvaluation(
        rows, totals, users, len(fraud_users), len(target_users), len(set(fair_use_users) - fraud_users - target_users),
        honest_warned, honest_critical, honest_actions, targets_acted_on, scenarios, late, missed, checks,
        duplicate_alerts, duplicate_actions, len(all_actions) - len(actions),
    )


def _minutes(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _capped(items: Sequence[str], show: int) -> list[str]:
    lines = [f"  {item}" for item in items[:show]]
    if len(items) > show:
        lines.append(f"  … and {len(items) - show} more")
    return lines


def _scenario_row(c: ScenarioScore) -> str:
    return (f"{c.scenario:<22} {c.labelled:>6} {c.targets:>7} {c.detected:>8} {_ratio(c.recall):>7} {c.late:>5} "
            f"{c.missed:>6} {_minutes(c.lead_min):>9} {_minutes(c.lead_median):>11}")


def format_fraud(ev: FraudEvaluation, *, show: int = 20) -> str:
    """The per-(rule kind, level) table, the honest population, the per-scenario table and the
    targets; lists at most ``show`` users of each kind."""
    header = (f"{'fraud rule':<22} {'level':<8} {'alerts':>7} {'users':>6} {'fraud':>6} {'target':>7} "
              f"{'honest':>7} {'precision':>10}")
    lines = [header, "-" * len(header)]
    for s in [*ev.alerts, *ev.totals]:
        if s is ev.totals[0]:
            lines.append("-" * len(header))
        lines.append(f"{s.rule:<22} {s.level:<8} {s.alerts:>7} {s.users:>6} {s.fraud:>6} {s.target:>7} "
                     f"{s.honest:>7} {_ratio(s.precision):>10}")
    honest = ev.honest

    def share(n: int) -> str:
        return f" ({100 * n / honest:.2f} %)" if honest else ""

    lines.append(f"honest population: {honest} of {ev.users} users ({ev.fraud_users} with injected fraud and "
                 f"{ev.target_users} target(s) left out); {honest - ev.fair_use_users} without any label, "
                 f"{ev.fair_use_users} with fair-use labels")
    lines.append(f"honest users warned (any fraud alert): {len(ev.honest_warned)}{share(len(ev.honest_warned))}")
    lines += _capped(ev.honest_warned, show)
    lines.append(f"honest users with a critical alert: {len(ev.honest_critical)}")
    lines += _capped(ev.honest_critical, show)
    lines.append(f"honest users with an account action: {len(ev.honest_actions)}")
    lines += _capped([f"{a.user} {a.action} {a.time}" for a in ev.honest_actions], show)
    if ev.targets_acted_on:
        lines.append(f"targets with an account action: {len(ev.targets_acted_on)}")
        lines += _capped(ev.targets_acted_on, show)
    lines.append("")
    header = (f"{'scenario':<22} {'fraud':>6} {'targets':>7} {'detected':>8} {'recall':>7} {'late':>5} "
              f"{'missed':>6} {'lead min':>9} {'lead median':>11}")
    lines += [header, "-" * len(header)]
    rows = [_scenario_row(c) for c in ev.scenarios]
    if len(ev.scenarios) > 1:
        rows += ["-" * len(header), _scenario_row(ev.overall)]
    lines += rows
    if not ev.scenarios:
        lines.append("(no fraud labels)")
    lines.append("(lead: damage − earliest account action, in minutes; detected: that action no later than the damage)")
    if ev.late:
        lines.append(f"late (acted on after the damage): {len(ev.late)}")
        lines += _capped([f"{m.user} {m.scenario} action {m.action}, damage {m.damage}" for m in ev.late], show)
    if ev.missed:
        lines.append(f"missed (no account action): {len(ev.missed)}")
        lines += _capped([f"{m.user} {m.scenario} damage {m.damage}" for m in ev.missed], show)
    lines.append("")
    lines.append("targets:")
    lines += [f"  {'PASS' if t.passed else 'FAIL'} ({t.name}) {t.text}" for t in ev.targets]
    if ev.duplicate_alerts:
        lines.append(f"note: {ev.duplicate_alerts} fraud alert line(s) repeated an alert_id (counted once)")
    if ev.duplicate_actions:
        lines.append(f"note: {ev.duplicate_actions} action line(s) repeated an action_id (counted once)")
    if ev.lifts:
        lines.append(f"note: {ev.lifts} lift action(s) ignored (a lift undoes an action)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate", description="Score alerts against labels (DIR/labels.jsonl from `cdrwatch generate`). Fair use "
        "(--alerts, e.g. DIR/alerts.jsonl from `cdrwatch replay`): per rule, true positives, false positives, "
        "false negatives, precision and recall, where a (user, period, rule) triple is the unit. Fraud "
        "(--fraud-alerts and --actions, e.g. DIR/fraud-alerts.jsonl and DIR/account-actions.jsonl): per rule "
        "kind and level, the users alerted and the precision fraud / (fraud + honest) users, targets left out; "
        "the honest users (every user of the manifest.json beside the labels, or of --users, without a fraud "
        "or target label) warned, with a critical alert, acted on; per scenario, the fraud users whose earliest "
        "account action came no later than the damage (recall), late and missed ones, and the lead time; "
        "then the targets: (a) no action and no critical on an honest user, (b) honest users warned (any "
        "fraud alert) at most 1 % of the honest population, (c) every fraud user acted on before the "
        "damage. A lift action is ignored. A ratio shows '—' when undefined. Exit 0; with --strict, exit 1 "
        "when any fair-use rule's precision or recall is below 1 or any fraud target fails.",
    )
    parser.add_argument("--labels", type=Path, required=True, metavar="F",
                        help="labels.jsonl: fair-use {user, period, rule} and fraud {user, period, scenario, kind…} "
                        "lines (a directory: its labels.jsonl)")
    parser.add_argument("--alerts", type=Path, metavar="F",
                        help="JSONL of fairuse-alerts payloads (a directory: its alerts.jsonl)")
    parser.add_argument("--fraud-alerts", type=Path, metavar="F",
                        help="JSONL of fraud-alerts payloads (a directory: its fraud-alerts.jsonl); needs --actions")
    parser.add_argument("--actions", type=Path, metavar="F",
                        help="JSONL of account-actions payloads (a directory: its account-actions.jsonl)")
    parser.add_argument("--replay", type=Path, metavar="DIR",
                        help="`cdrwatch replay --out DIR`: its alerts.jsonl, fraud-alerts.jsonl and "
                        "account-actions.jsonl, unless given on their own")
    parser.add_argument("--users", type=positive_int, metavar="N",
                        help="the number of users of the month (default: users of the manifest.json beside the labels)")
    parser.add_argument("--rules", metavar="R[,R…]", help="score only these fair-use rules (comma-separated)")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="list at most N users or mismatches of each kind (20)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 unless precision and recall are 1 for every fair-use rule and every fraud target passes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    replay: Path | None = args.replay
    if replay is not None and not replay.is_dir():
        raise EvaluateInputError(f"--replay {replay}: not a directory")
    fair_path: Path | None = args.alerts or (replay / "alerts.jsonl" if replay else None)
    fraud_path: Path | None = args.fraud_alerts or (replay / "fraud-alerts.jsonl" if replay else None)
    actions_path: Path | None = args.actions or (replay / "account-actions.jsonl" if replay else None)
    if fair_path is None and fraud_path is None and actions_path is None:
        raise EvaluateInputError("nothing to score: give --alerts, --fraud-alerts with --actions, or --replay DIR")
    if (fraud_path is None) != (actions_path is None):
        raise EvaluateInputError("--fraud-alerts and --actions go together (or give --replay DIR)")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    if rules is not None and fair_path is None:
        raise EvaluateInputError("--rules selects fair-use rules: it needs --alerts (or --replay DIR)")
    unknown = [r for r in rules or () if r not in RULES]
    if unknown or rules == []:
        what = f"unknown rule {', '.join(map(repr, unknown))}" if unknown else "no rule given"
        raise EvaluateInputError(f"--rules: {what} (the rules: {', '.join(RULES)})")
    labels = read_labels(args.labels)
    show = max(0, args.show)
    failing: list[str] = []
    if fair_path is not None:
        alerts, dup_alerts = read_triples(fair_path, "alerts", "alerts.jsonl")
        ev = evaluate(labels.triples, alerts, rules=rules, duplicate_labels=labels.duplicate_triples,
                      duplicate_alerts=dup_alerts)
        print(format_evaluation(ev, show=show))
        if not ev.perfect:
            failing.append("precision or recall below 1 for " + ", ".join(s.rule for s in ev.rules if not s.perfect))
    if fraud_path is not None and actions_path is not None:
        users = args.users or read_manifest_users(args.labels)
        fraud_alerts, dup_fraud = read_fraud_alerts(fraud_path)
        actions, dup_actions = read_actions(actions_path)
        fev = score_fraud(labels.fraud, fraud_alerts, actions, users=users, fair_use_users=labels.fair_use_users,
                          duplicate_alerts=dup_fraud, duplicate_actions=dup_actions)
        if fair_path is not None:
            print()
        print(format_fraud(fev, show=show))
        if labels.duplicate_fraud:
            print(f"note: {labels.duplicate_fraud} fraud label line(s) repeated a (user, scenario, kind) (counted once)")
        if not fev.passed:
            failing.append("fraud target(s) " + ", ".join(f"({t.name})" for t in fev.targets if not t.passed) + " failed")
    if args.strict and failing:
        print("strict: " + "; ".join(failing))
        return 1
    return 0
