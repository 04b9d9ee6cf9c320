"""Files for billing and QA: the monthly summary as Parquet (typed) or CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.summary import SummaryRow

MONEY = pa.decimal128(14, 2)


def summary_schema(timezone: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("customer", pa.string(), nullable=False),
            pa.field("user", pa.string(), nullable=False),
            pa.field("period", pa.string(), nullable=False),
            pa.field("plan", pa.string(), nullable=False),
            pa.field("distinct_numbers", pa.int32(), nullable=False),
            pa.field("peak_simultaneous_calls", pa.int32(), nullable=False),
            pa.field("peak_registered_devices", pa.int32(), nullable=False),
            pa.field("rules_breached", pa.list_(pa.string()), nullable=False),
            pa.field("multiplier", pa.decimal128(6, 2), nullable=False),
            pa.field("first_breach_at", pa.timestamp("ms", tz=timezone), nullable=True),
            pa.field("covered_calls", pa.int32(), nullable=False),
            pa.field("covered_seconds", pa.int64(), nullable=False),
            pa.field("covered_minutes", MONEY, nullable=False),
            pa.field("rebilled_amount", MONEY, nullable=False),
            pa.field("currency", pa.string(), nullable=False),
        ],
        metadata={b"cdrwatch": b"monthly fair-use summary, one row per (customer, user, period)"},
    )


def summary_table(rows: Iterable[SummaryRow], timezone: str) -> pa.Table:
    schema = summary_schema(timezone)
    rows = list(rows)
    columns = {name: [getattr(r, name) for r in rows] for name in schema.names}
    columns["rules_breached"] = [list(r.rules_breached) for r in rows]
    return pa.Table.from_pydict(columns, schema=schema)


def write_summary(rows: Iterable[SummaryRow], path: Path, timezone: str) -> int:
    table = summary_table(rows, timezone)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.schema.names)
            for row in table.to_pylist():
                row["rules_breached"] = ";".join(row["rules_breached"])
                writer.writerow(row.values())
    else:
        pq.write_table(table, path)
    return int(table.num_rows)
