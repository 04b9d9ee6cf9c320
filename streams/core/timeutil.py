"""Event times: RFC 3339 parsing, epoch milliseconds and calendar periods in a plan's timezone."""

from __future__ import annotations

import bisect
import re
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["SECOND_MS", "MINUTE_MS", "HOUR_MS", "DAY_MS", "check_period", "local_iso", "parse_rfc3339", "instant_us", "to_ms", "from_ms", "period_of", "shift_period"]


SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; an offset (or ``Z``) is required."""
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r} (add 'Z' or '+01:00')")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime) -> int:
    """Epoch milliseconds, exactly (``timestamp() * 1000`` loses one now and then to floats)."""
    return (value - _EPOCH) // _MS


_US = timedelta(microseconds=1)
_HOURS: dict[str, int] = {}  # "YYYY-MM-DDTHH" + offset -> epoch µs of that local hour
_DIGITS = frozenset("0123456789")


def instant_us(text: str) -> int:
    """An RFC 3339 timestamp as epoch microseconds (a datetime's own resolution: comparisons and
    differences are exactly those of the datetimes). Raises ValueError as ``parse_rfc3339`` does.

    The form switches write — whole seconds, ``Z`` or ``±HH:MM`` — is read from a cache of hour
    starts: two small integers and an addition instead of a regex, a datetime and a subtraction.
    Anything else takes ``parse_rfc3339``."""
    if len(text) in (20, 25) and text[13] == ":" and text[16] == ":" and text[19] in "Zz+-":
        mm, ss = text[14:16], text[17:19]
        if mm[0] in _DIGITS and mm[1] in _DIGITS and ss[0] in _DIGITS and ss[1] in _DIGITS and mm < "60" and ss < "60":
            key = text[:13] + text[19:]
            base = _HOURS.get(key)
            if base is None:
                base = (parse_rfc3339(f"{text[:13]}:00:00{text[19:]}") - _EPOCH) // _US  # validates the rest
                if len(_HOURS) >= 100_000:
                    _HOURS.clear()
                _HOURS[key] = base
            return base + (int(mm) * 60 + int(ss)) * 1_000_000
    return (parse_rfc3339(text) - _EPOCH) // _US


def from_ms(ms: int, tz: tzinfo = timezone.utc) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz)


_MONTHS: dict[tzinfo, tuple[list[int], list[str]]] = {}


def period_of(ms: int, tz: ZoneInfo) -> str:
    """The calendar month ``YYYY-MM`` of an instant, in the given zone."""
    months = _MONTHS.get(tz)
    if months is None:
        months = _MONTHS[tz] = _month_starts(tz)
    starts, names = months
    i = bisect.bisect_right(starts, ms) - 1
    if 0 <= i < len(names) - 1:
        return names[i]
    local = datetime.fromtimestamp(ms / 1000, tz)  # outside 2000-2100
    return f"{local.year:04d}-{local.month:02d}"


@lru_cache(maxsize=64)
def _month_starts(tz: ZoneInfo) -> tuple[list[int], list[str]]:
    """Epoch ms of every month start 2000-2100 in ``tz``: a period is then one bisect."""
    starts, names = [], []
    for year in range(2000, 2101):
        for month in range(1, 13):
            starts.append(to_ms(datetime(year, month, 1, tzinfo=tz)))
            names.append(f"{year:04d}-{month:02d}")
    return starts, names


@lru_cache(maxsize=4096)  # a handful of periods, asked about on every event
def shift_period(period: str, months: int) -> str:
    year, month = int(period[:4]), int(period[5:7])
    index = year * 12 + (month - 1) + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


_PERIOD = re.compile(r"20[0-9]{2}-(0[1-9]|1[0-2])")


def check_period(text: str) -> str:
    """``text`` when it is a month ``YYYY-MM`` of 2000-2099 (the years an event time may have), else
    a ValueError saying so: every flag, parameter and file field naming a month is checked here."""
    if not _PERIOD.fullmatch(text):
        raise ValueError(f"expected a month as YYYY-MM (2000-2099), got {text!r}")
    return text


def local_iso(ms: int, tz: tzinfo) -> str:
    """An instant as an output shows it: RFC 3339 in the zone, with milliseconds only when it has some."""
    return from_ms(ms, tz).isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
