"""Scoring fair-use alerts against labels, per rule: the ``cdrwatch evaluate`` command.

The unit is a ``(user, period, rule)`` triple: a label (``labels.jsonl`` from ``cdrwatch generate``,
or any JSONL of ``{user, period, rule}``) is a breach that must be alerted; an alert
(``alerts.jsonl`` from ``cdrwatch replay``, the ``fairuse-alerts`` payloads) is a breach that was.
Pure: reads two files, no Kafka.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import ConfigError
from ..core.plans import RULES
from ..core.timeutil import check_period
from ..jsonl import iter_jsonl

__all__ = ["EvaluateInputError", "Evaluation", "RuleScore", "evaluate", "format_evaluation", "read_triples", "register"]

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


def read_triples(path: Path, what: str, default_name: str) -> tuple[list[Triple], int]:
    """The ``(user, period, rule)`` of every JSON line of ``path`` (a directory means
    ``path/default_name``), and how many lines repeated an earlier triple."""
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise EvaluateInputError(f"{what} {path}: no such file")
    triples: list[Triple] = []
    seen: set[Triple] = set()
    duplicates = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise EvaluateInputError(f"{what} {path}: cannot read ({exc.strerror})") from None
    with handle:
        for line_no, _raw, data in iter_jsonl(handle, path, EvaluateInputError):
            if isinstance(data, dict) and "kind" in data and "rule" not in data:
                continue  # a fraud label of `cdrwatch generate` (fraud or target): not a fair-use alert
            triple = _triple(data, path, line_no)
            if triple in seen:
                duplicates += 1
                continue
            seen.add(triple)
            triples.append(triple)
    return triples, duplicates


def _triple(data: Any, path: Path, line_no: int) -> Triple:
    if not isinstance(data, dict):
        raise EvaluateInputError(f"{path}:{line_no}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("user", "period", "rule") if k not in data]
    if missing:
        raise EvaluateInputError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
    for key in ("user", "period", "rule"):
        if not isinstance(data[key], str) or not data[key]:
            raise EvaluateInputError(f"{path}:{line_no}: {key} must be a non-empty string, got {data[key]!r}")
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
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate", description="Compare alerts (e.g. DIR/alerts.jsonl from `cdrwatch replay`) with labels (e.g. "
        "DIR/labels.jsonl from `cdrwatch generate`): per rule, true positives, false positives, false "
        "negatives, precision and recall, where a (user, period, rule) triple is the unit. Precision or "
        "recall shows '—' when undefined (nothing alerted / nothing labelled). Exit 0; with --strict, exit 1 "
        "when any rule's precision or recall is below 1.",
    )
    parser.add_argument("--labels", type=Path, required=True, metavar="F",
                        help="JSONL of {user, period, rule} (a directory: its labels.jsonl)")
    parser.add_argument("--alerts", type=Path, required=True, metavar="F",
                        help="JSONL of fairuse-alerts payloads (a directory: its alerts.jsonl)")
    parser.add_argument("--rules", metavar="R[,R…]", help="score only these rules (comma-separated)")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="list at most N mismatches of each kind (20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless precision and recall are 1 for every rule")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    labels, dup_labels = read_triples(args.labels, "labels", "labels.jsonl")
    alerts, dup_alerts = read_triples(args.alerts, "alerts", "alerts.jsonl")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    unknown = [r for r in rules or () if r not in RULES]
    if unknown or rules == []:
        what = f"unknown rule {', '.join(map(repr, unknown))}" if unknown else "no rule given"
        raise EvaluateInputError(f"--rules: {what} (the rules: {', '.join(RULES)})")
    ev = evaluate(labels, alerts, rules=rules, duplicate_labels=dup_labels, duplicate_alerts=dup_alerts)
    print(format_evaluation(ev, show=max(0, args.show)))
    if args.strict and not ev.perfect:
        failing = ", ".join(s.rule for s in ev.rules if not s.perfect)
        print(f"strict: precision or recall below 1 for {failing}")
        return 1
    return 0
