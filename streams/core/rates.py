"""The rate deck: ``prefix,destination,rate_per_minute`` rows and longest-prefix lookup."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable

from .errors import RateDeckError

HEADER = ["prefix", "destination", "rate_per_minute"]


@dataclass(frozen=True, slots=True)
class Rate:
    prefix: str
    destination: str
    rate_per_minute: Decimal


class RateDeck:
    def __init__(self, rates: Iterable[Rate]) -> None:
        self._by_prefix: dict[str, Rate] = {}
        for rate in rates:
            self._by_prefix[rate.prefix] = rate
        self._lengths = sorted({len(p) for p in self._by_prefix}, reverse=True)
        self.destinations = frozenset(r.destination for r in self._by_prefix.values())

    def __len__(self) -> int:
        return len(self._by_prefix)

    def rates(self) -> list[Rate]:
        return list(self._by_prefix.values())

    def by_prefix(self, prefix: str) -> Rate | None:
        return self._by_prefix.get(prefix)

    def lookup(self, digits: str) -> Rate | None:
        """The rate of the longest prefix of ``digits`` (E.164 digits), or None."""
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length <= len(digits):
                rate = by_prefix.get(digits[:length])
                if rate is not None:
                    return rate
        return None


def load_rate_deck(path: Path) -> RateDeck:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RateDeckError(f"{path}: rate deck not found") from None
    except UnicodeDecodeError as exc:
        raise RateDeckError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_rate_deck(text, source=str(path))


MAX_RATE = Decimal(1000)  # EUR per minute: anything above is a typo in the deck


def parse_rate_deck(text: str, *, source: str = "rates.csv") -> RateDeck:
    try:
        return _parse_rate_deck(text, source)
    except csv.Error as exc:
        raise RateDeckError(f"{source}: not a readable CSV file ({exc})") from None


def _parse_rate_deck(text: str, source: str) -> RateDeck:
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or [h.strip() for h in header] != HEADER:
        raise RateDeckError(f"{source}: line 1: header must be {','.join(HEADER)!r}, got {header!r}")
    rates: list[Rate] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise RateDeckError(f"{source}: line {line_no}: expected 3 columns, got {len(row)}")
        prefix, destination, raw_rate = (cell.strip() for cell in row)
        if not prefix.isdigit() or prefix.startswith("0"):
            raise RateDeckError(
                f"{source}: line {line_no}: prefix {prefix!r} must be E.164 digits without '+'"
            )
        if prefix in seen:
            raise RateDeckError(
                f"{source}: line {line_no}: prefix {prefix} already defined on line {seen[prefix]}"
            )
        if not destination:
            raise RateDeckError(f"{source}: line {line_no}: empty destination")
        try:
            rate = Decimal(raw_rate)
        except InvalidOperation:
            raise RateDeckError(
                f"{source}: line {line_no}: rate_per_minute {raw_rate!r} is not a decimal"
            ) from None
        if not rate.is_finite() or rate < 0 or rate > MAX_RATE:
            raise RateDeckError(
                f"{source}: line {line_no}: rate_per_minute must be between 0 and {MAX_RATE}, got {raw_rate[:40]}"
            )
        if len(prefix) > 15:
            raise RateDeckError(f"{source}: line {line_no}: prefix {prefix[:20]}… is longer than an E.164 number")
        seen[prefix] = line_no
        rates.append(Rate(prefix, destination, rate))
    if not rates:
        raise RateDeckError(f"{source}: no rates")
    return RateDeck(rates)
