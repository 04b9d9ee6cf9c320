"""A busy month written as a worker writes it (the head record and its sealed chunks), then read
back from the records alone, as a restarted worker restores them: the same month, exactly."""

from __future__ import annotations

import pytest

from streams.agents.tables import TableCaches
from streams.core.fraud.engine import MAX_CALLS
from streams.core.state import LOG_CHUNK
from streams.processor import Outputs
from streams.tools.bench import MonthRun, dialler_calls
from streams.topics import CHUNK_PREFIX


def test_a_month_restored_from_its_log_is_the_month_held() -> None:
    run = MonthRun.start()
    events = dialler_calls("busy", 3_000, 600)
    run.feed(events)
    keys = list(run.tables["periods"].data)
    chunks = [k for k in keys if k.startswith(CHUNK_PREFIX)]
    assert len(chunks) >= 3_000 // LOG_CHUNK  # the calls and covered calls went into sealed chunks
    held = run.store().get_period("busy", "2026-11")
    restored = run.store(TableCaches()).get_period("busy", "2026-11")  # nothing cached: the records only
    assert held is not None and restored is not None and held is not restored
    assert restored == held and len(restored.calls) == 3_000 and len(restored.covered) == 3_000
    assert run.store(TableCaches()).get_fraud("busy") == run.store().get_fraud("busy")
    # the restored month goes on exactly as the held one does
    more = dialler_calls("busy", 3_100, 600)[3_000:]
    run.feed(more)
    assert run.store(TableCaches()).get_period("busy", "2026-11") == run.store().get_period("busy", "2026-11")


DIALLER_CALLS = 500_000  # one every 5 s: the whole month (29 days)
SLICE = 50_000


@pytest.mark.slow
def test_a_500000_call_month_writes_bounded_records_and_restarts_exactly() -> None:
    """An auto-dialler's month through every rule, written as a worker writes it: each tenth of
    the month writes as many bytes per CDR as the tenths before it, no record nears a size limit,
    every CDR is counted; then a worker restarted from the records alone (nothing cached, its
    users put back on the live rules' clock) holds the same states and sends the same alerts,
    re-bill lines and actions as the worker that went on."""
    run = MonthRun.start()
    per_cdr = []
    for first in range(0, DIALLER_CALLS, SLICE):
        written = run.sink.written
        run.feed(dialler_calls("dialler", SLICE, 5, first=first))
        per_cdr.append((run.sink.written - written) / SLICE)
    assert run.outcomes == {"ok": DIALLER_CALLS}, run.outcomes
    assert run.sink.largest < 64 * 1024, run.sink.largest  # far below any broker's record limit
    assert max(per_cdr[1:]) <= 1.1 * per_cdr[1], per_cdr  # bytes per CDR do not grow with the month
    month = run.store().get_period("dialler", "2026-11")
    fraud = run.store().get_fraud("dialler")
    assert month is not None and len(month.calls) == DIALLER_CALLS and len(month.numbers) == DIALLER_CALLS
    assert fraud is not None and len(fraud.calls) <= MAX_CALLS  # the fraud rules' calls stay bounded

    restarted = MonthRun.start(run.records())
    assert restarted.store().get_period("dialler", "2026-11") == month
    assert restarted.store().get_fraud("dialler") == fraud
    went_on, came_back = Outputs(), Outputs()
    rest = dialler_calls("dialler", 2_000, 5, first=DIALLER_CALLS)
    run.feed(rest, keep=went_on)
    restarted.feed(rest, keep=came_back)
    assert went_on.lines and went_on.fraud_alerts  # the month is re-billed and alerted on still
    for name in ("alerts", "lines", "fraud_alerts", "actions"):
        assert getattr(came_back, name) == getattr(went_on, name), name
    assert restarted.records() == run.records()
