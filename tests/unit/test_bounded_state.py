"""Bounded state: three consecutive months through the engine; the state of a
closed month is deleted, so what a worker holds stays flat instead of growing month after month."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from streams.core.state import MemoryStore
from tests.factories import end_cdr, engine, national, registration, start_cdr

USERS = 120
CALLS = 40  # per user and month


def month_of_traffic(year: int, month: int) -> list[object]:
    first = datetime(year, month, 2, 8, 0, tzinfo=timezone.utc)
    events: list[object] = []
    for u in range(USERS):
        user = f"u{u:03d}"
        events.append(registration(f"phone-{user}", first, user=user))
        for k in range(CALLS):
            t = first + timedelta(hours=12 * k, minutes=u % 50)
            events.append(end_cdr(f"{user}-{year}{month:02d}-{k}", t, duration=60 + k, callee=national(k),
                                  user=user))
        # a call whose `end` never comes: it must stop counting and must not keep state alive
        events.append(start_cdr(f"{user}-{year}{month:02d}-lost", first + timedelta(days=20), user=user))
    return events


def state_bytes(store: MemoryStore) -> int:
    return sum(len(s.encode()) for s in store.periods.values()) + sum(len(s.encode()) for s in store.users.values())


def test_three_months_keep_two_months_of_state() -> None:
    eng, store = engine(), MemoryStore()
    sizes = []
    for year, month in ((2026, 9), (2026, 10), (2026, 11)):
        for ev in month_of_traffic(year, month):
            outcome = eng.on_call(store, ev) if hasattr(ev, "call_id") else eng.on_registration(store, ev)
            assert outcome.status in {"ok", "duplicate"}
        sizes.append(state_bytes(store))
        months = {period for _, period in store.periods}
        assert len(months) <= 2, months
    assert {period for _, period in store.periods} == {"2026-10", "2026-11"}
    # September is gone: the third month costs what the second did, within 10 %
    assert sizes[2] <= sizes[1] * 1.10, sizes
    assert sizes[1] > sizes[0] * 1.5  # the second month did add a month of state (the check has teeth)
    per_user_month = sizes[2] / (USERS * 2)
    assert per_user_month < 8_000, per_user_month
