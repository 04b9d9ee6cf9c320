"""Topic names, the dead-letter headers and the key of a user's month: one place for what every
producer, worker and tool must agree on."""

from __future__ import annotations

from typing import Any, Callable

# Events from switches and provisioning, keyed by user and co-partitioned (what `cdrwatch ingest`
# takes), and the analysts' verdicts on fraud alerts (what `cdrwatch console` writes).
EVENT_TOPICS = ("cdrs", "sip-registrations", "subscribers")
INPUT_TOPICS = EVENT_TOPICS + ("fraud-feedback",)
OUTPUT_TOPICS = ("fairuse-alerts", "rebilled-calls", "fraud-alerts", "account-actions")
DLQ_TOPICS = tuple(f"{t}-dlq" for t in INPUT_TOPICS)  # one dead-letter topic per input
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS + DLQ_TOPICS

# A dead letter's headers: what is wrong with it, and where it was read (topic/partition/offset,
# or the file and line, or the HTTP endpoint)
DLQ_REASON_HEADER = "cdrwatch-reason"
DLQ_SOURCE_HEADER = "cdrwatch-source"


def period_key(user: str, period: str) -> bytes:
    """The ``periods`` table's key of a user's month (``YYYY-MM``)."""
    return f"{user}|{period}".encode()


CHUNK_PREFIX = b"\x00log|"  # no user name starts with NUL (the input schemas refuse it)


def chunk_key(head: bytes, number: int) -> bytes:
    """The ``periods`` table's key of sealed chunk ``number`` of the month whose head record is at
    ``head`` (``streams.core.state.PeriodState``)."""
    return CHUNK_PREFIX + head + b"|" + str(number).encode()


def period_reader(table: Any, head: bytes) -> Callable[[int], bytes | None]:
    """The chunk reader ``PeriodState.decode`` needs, on a mapping of the ``periods`` table."""
    get = table.get
    return lambda number: get(chunk_key(head, number))


__all__ = ["ALL_TOPICS", "DLQ_REASON_HEADER", "DLQ_SOURCE_HEADER", "DLQ_TOPICS", "EVENT_TOPICS", "INPUT_TOPICS",
           "OUTPUT_TOPICS", "CHUNK_PREFIX", "chunk_key", "period_key", "period_reader"]
