"""The counters the rules keep in state, each a fold: ``initialize`` an accumulator, ``add`` values
to it, read its ``result``. The accumulators are the plain lists, sets and ints the state encodes,
so a fold changes nothing of the state's encoding."""

from __future__ import annotations

from typing import Any


class DayCount:
    """In-scope calls starting on one local day (total_calls_per_day): ``[count, newest start ms]``."""

    @staticmethod
    def initialize(start_ms: int) -> list[int]:
        return [0, start_ms]

    @staticmethod
    def add(acc: list[int], start_ms: int) -> None:
        acc[0] += 1
        if start_ms > acc[1]:
            acc[1] = start_ms

    @staticmethod
    def result(acc: list[int]) -> int:
        return acc[0]


class SameCalleeRun:
    """Calls in a row to one callee, each starting within ``gap_ms`` of the newest before it
    (sequential_calls): ``[callee hash, count, first call id, newest start ms]``. A call to another
    callee, or after a longer gap, starts a new run."""

    def __init__(self, gap_ms: int) -> None:
        self.gap_ms = gap_ms

    @staticmethod
    def initialize(callee_hash: int, call_id: str, start_ms: int) -> list[Any]:
        return [callee_hash, 0, call_id, start_ms]

    def add(self, acc: list[Any] | None, callee_hash: int, call_id: str, start_ms: int) -> list[Any]:
        """The run with this call in it: ``acc`` itself, or a new run."""
        if acc is None or acc[0] != callee_hash or abs(start_ms - acc[3]) > self.gap_ms:
            acc = self.initialize(callee_hash, call_id, start_ms)
        acc[1] += 1
        if start_ms > acc[3]:
            acc[3] = start_ms
        return acc

    @staticmethod
    def result(acc: list[Any]) -> int:
        return int(acc[1])


class Distinct:
    """Distinct values (the keyed hashes of a month's covered callees: distinct_numbers)."""

    @staticmethod
    def initialize() -> set[int]:
        return set()

    @staticmethod
    def add(acc: set[int], value: int) -> None:
        acc.add(value)

    @staticmethod
    def result(acc: set[int]) -> int:
        return len(acc)


class Peak:
    """The highest count seen (a month's peak of simultaneous calls, of registered devices)."""

    @staticmethod
    def initialize() -> int:
        return 0

    @staticmethod
    def add(acc: int, value: int) -> int:
        return value if value > acc else acc

    @staticmethod
    def result(acc: int) -> int:
        return acc
