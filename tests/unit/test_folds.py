"""The counters the rules keep in state, as folds: hand-computed sequences."""

from __future__ import annotations

from streams.core.folds import DayCount, Distinct, Peak, SameCalleeRun


def test_a_day_count_counts_its_calls_and_keeps_the_newest_start() -> None:
    acc = DayCount.initialize(500)
    for start in (500, 300, 900):
        DayCount.add(acc, start)
    assert DayCount.result(acc) == 3 and acc == [3, 900]


def test_a_run_breaks_on_another_callee_or_a_longer_gap() -> None:
    runs = SameCalleeRun(gap_ms=60)
    run = runs.add(None, 7, "c0", 0)
    run = runs.add(run, 7, "c1", 60)  # the gap is allowed to equal the limit
    assert runs.result(run) == 2 and run == [7, 2, "c0", 60]
    assert runs.add(run, 7, "c2", 121) == [7, 1, "c2", 121]  # 61 after the newest: a new run
    assert runs.add(run, 8, "c3", 80) == [8, 1, "c3", 80]  # another callee
    late = runs.add([7, 2, "c0", 60], 7, "c4", 10)  # an earlier start within the gap joins the run
    assert late == [7, 3, "c0", 60]


def test_distinct_and_peak() -> None:
    seen = Distinct.initialize()
    for value in (3, 1, 3, 2, 1):
        Distinct.add(seen, value)
    assert Distinct.result(seen) == 3
    peak = Peak.initialize()
    for value in (2, 5, 4):
        peak = Peak.add(peak, value)
    assert Peak.result(peak) == 5
