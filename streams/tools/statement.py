"""``cdrwatch statement``: a customer's monthly fair-use statement, in HTML and PDF, for the customer
and for a dispute — the terms make the monthly summary authoritative.

Built from what ``cdrwatch replay --out DIR`` writes: ``summary.parquet`` (a row per user-month:
counters, breaches, re-billed amount), ``rebills.jsonl`` (the re-bill lines) and, when present,
``alerts.jsonl`` (each breach's time and evidence), with the plans and rate deck that applied.
Per user: the counters against the plan's limits, each breach, the re-billed calls with their
amounts; then the customer's totals, a chart of the re-billed amounts, and the plan and the rates.
The amounts are the re-bill lines', summed as decimals; the statement refuses to be written when
they disagree with the summary's.

HTML from a Jinja2 template (autoescaped); PDF from the same HTML by WeasyPrint, which renders
HTML and CSS, inline SVG included, without a browser.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

from ..checks import input_file, output_dir, period
from ..core.errors import ConfigError
from ..core.plans import Plan, PlanBook
from ..core.rating import CENT
from ..jsonl import iter_jsonl

TEMPLATE = "statement.html.j2"


class StatementError(ConfigError):
    """Inputs that cannot make a statement (exit 2)."""


@dataclass
class UserStatement:
    user: str
    plan: Plan
    summary: dict[str, Any]
    breaches: list[dict[str, Any]] = field(default_factory=list)  # the fair-use alerts, in time order
    lines: list[dict[str, Any]] = field(default_factory=list)  # the re-bill lines, by call
    total: Decimal = Decimal("0.00")

    @property
    def counters(self) -> list[tuple[str, int, int]]:
        s, p = self.summary, self.plan
        return [("distinct numbers called", s["distinct_numbers"], p.max_distinct_numbers),
                ("simultaneous calls (peak)", s["peak_simultaneous_calls"], p.max_simultaneous_calls),
                ("registered devices (peak)", s["peak_registered_devices"], p.max_registered_devices)]


@dataclass
class Statement:
    customer: str
    period: str
    users: list[UserStatement]
    rates: list[tuple[str, Decimal]]  # destination, rate per minute: those the lines used
    generated: str
    total: Decimal = Decimal("0.00")
    currency: str = "EUR"

    @property
    def chart(self) -> list[tuple[str, Decimal, float]]:
        """(user, amount, bar width 0–1) for the users with re-billed calls."""
        billed = [(u.user, u.total) for u in self.users if u.total > 0]
        top = max((amount for _, amount in billed), default=Decimal(0))
        return [(user, amount, float(amount / top) if top else 0.0) for user, amount in billed]


def _by_user(path: Path, customer: str, month: str) -> dict[str, list[dict[str, Any]]]:
    """The records of a JSONL output file (re-bill lines, alerts) for ``customer`` and ``month``,
    per user."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with path.open("rb") as handle:
        for _line, _raw, data in iter_jsonl(handle, path, StatementError):
            if isinstance(data, dict) and data.get("customer") == customer and data.get("period") == month:
                found[data["user"]].append(data)
    return found


def build_statement(source: Path, customer: str, month: str, plans: PlanBook,
                    now: datetime | None = None) -> Statement:
    import pyarrow.parquet as pq

    summary_path, rebills_path, alerts_path = source / "summary.parquet", source / "rebills.jsonl", source / "alerts.jsonl"
    for path in (summary_path, rebills_path):
        if not path.is_file():
            raise StatementError(f"{path}: no such file (--from takes the folder `cdrwatch replay --out` wrote)")
    rows = [r for r in pq.read_table(summary_path).to_pylist() if r["customer"] == customer and r["period"] == month]
    if not rows:
        raise StatementError(f"no user of customer {customer!r} in {summary_path} for {month}")
    lines = _by_user(rebills_path, customer, month)
    alerts = _by_user(alerts_path, customer, month) if alerts_path.is_file() else {}
    users = []
    used: set[tuple[str, Decimal]] = set()  # the rates the lines were billed at
    for row in sorted(rows, key=lambda r: r["user"]):
        user = UserStatement(row["user"], plans.get(row["plan"]), row)
        user.breaches = sorted(alerts.get(row["user"], []), key=lambda a: (a["time"], a["rule"]))
        user.lines = sorted(lines.get(row["user"], []), key=lambda line: (line["call_id"], line["multiplier"]))
        user.total = amounts(user.lines)
        summarised = Decimal(row["rebilled_amount"]).quantize(CENT)
        if user.total != summarised:
            raise StatementError(f"{row['user']}: the re-bill lines sum to {user.total} {row['currency']}, the summary "
                                 f"says {summarised}: {rebills_path} and {summary_path} are not from the same run")
        used.update((line["destination"], Decimal(line["rate_per_minute"])) for line in user.lines)
        users.append(user)
    moment = now or datetime.now(timezone.utc)
    return Statement(customer, month, users, sorted(used),
                     moment.astimezone(plans.timezone).isoformat(timespec="seconds"),
                     sum((u.total for u in users), Decimal("0.00")))


def render_html(statement: Statement) -> str:
    import jinja2

    from .. import __version__

    env = jinja2.Environment(loader=jinja2.PackageLoader("streams", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(s=statement, version=__version__)


def write_statement(statement: Statement, out: Path) -> tuple[Path, Path]:
    import logging

    try:
        import weasyprint
    except OSError as exc:  # its system libraries are missing
        raise StatementError(f"the PDF renderer (WeasyPrint) needs Pango, which this machine lacks ({exc}); on Debian: "
                             "apt-get install libpango-1.0-0 libpangoft2-1.0-0") from None

    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # font-subsetting notices
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"statement-{_safe(statement.customer)}-{statement.period}"
    html_path, pdf_path = out / f"{stem}.html", out / f"{stem}.pdf"
    html = render_html(statement)
    html_path.write_text(html, encoding="utf-8")
    weasyprint.HTML(string=html, base_url=str(out)).write_pdf(pdf_path)
    return html_path, pdf_path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# --------------------------------------------------------------------------------------------
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "statement", description="Write a customer's monthly statement: per user the counters against the plan's limits, "
        "each breach with its time and evidence, the re-billed calls with their amounts; the customer's totals, a "
        "chart, and the plan and rates that applied. From the files `cdrwatch replay --out DIR` writes "
        "(summary.parquet, rebills.jsonl, alerts.jsonl). Amounts are the re-bill lines' to the cent.",
    )
    parser.add_argument("--customer", required=True, metavar="C", help="the customer (as in the records)")
    parser.add_argument("--period", required=True, type=period, metavar="YYYY-MM", help="the month")
    parser.add_argument("--from", dest="source", required=True, type=Path, metavar="DIR",
                        help="the folder of summary.parquet and rebills.jsonl (`cdrwatch replay --out`)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the HTML and PDF")
    parser.add_argument("--plans", type=Path, metavar="FILE", help="plans.toml (default: the bundled sample)")
    parser.add_argument("--rates", type=Path, metavar="FILE", help="rates.csv (default: the bundled sample)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..settings import load_plans_and_rates
    from ..settings import settings_from_env

    input_file(args.source, "--from", allow_dir=True)
    if not args.source.is_dir():
        raise StatementError(f"--from {args.source}: not a directory")
    output_dir(args.out, "--out")
    settings = settings_from_env()
    if args.plans:
        settings = settings.with_(plans_path=args.plans)
    if args.rates:
        settings = settings.with_(rates_path=args.rates)
    plans, _rates = load_plans_and_rates(settings)
    statement = build_statement(args.source, args.customer, args.period, plans)
    html, pdf = write_statement(statement, args.out)
    print(f"{statement.customer} {statement.period}: {len(statement.users)} users, re-billed "
          f"{statement.total} {statement.currency} → {html}, {pdf}")
    return 0


def amounts(lines: Iterable[dict[str, Any]]) -> Decimal:
    """The sum of re-bill lines' amounts, to the cent."""
    return sum((Decimal(line["amount"]) for line in lines), Decimal("0.00"))


__all__ = ["Statement", "UserStatement", "build_statement", "render_html", "write_statement", "register", "amounts"]
