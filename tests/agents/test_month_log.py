"""A busy month written as a worker writes it (the head record and its sealed chunks), then read
back from the records alone, as a restarted worker restores them: the same month, exactly."""

from __future__ import annotations

from streams.agents.tables import TableCaches
from streams.core.state import LOG_CHUNK
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
