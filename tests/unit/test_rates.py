"""Rate deck: parsing with line-numbered errors, longest-prefix lookup, the bundled deck."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import streams
from streams.core.errors import ConfigError, RateDeckError
from streams.core.rates import load_rate_deck, parse_rate_deck
from tests.factories import DECK_CSV, deck

BUNDLED = Path(streams.__file__).parent / "data" / "rates.csv"
HEADER = "prefix,destination,rate_per_minute\n"


@pytest.mark.parametrize(
    ("digits", "prefix", "destination", "rate"),
    [
        ("33145678901", "331", "France Fixe", "0.0150"),
        ("33612345678", "336", "France Mobile", "0.0133"),
        ("33899123456", "338", "France Special", "0.1200"),
        # 447 beats 44, and 44 still matches what 447 does not
        ("447700900123", "447", "Royaume-Uni Mobile", "0.0500"),
        ("442079460958", "44", "Royaume-Uni Fixe", "0.0200"),
        ("12025550143", "1", "Etats-Unis Fixe", "0.0100"),
        ("1", "1", "Etats-Unis Fixe", "0.0100"),
        ("44", "44", "Royaume-Uni Fixe", "0.0200"),
    ],
)
def test_longest_prefix_wins(digits: str, prefix: str, destination: str, rate: str) -> None:
    found = deck().lookup(digits)
    assert found is not None
    assert (found.prefix, found.destination, found.rate_per_minute) == (prefix, destination, Decimal(rate))
    assert isinstance(found.rate_per_minute, Decimal)


@pytest.mark.parametrize("digits", ["", "3", "33", "330123456", "4", "999123456", "2612345678"])
def test_no_match_is_none(digits: str) -> None:
    assert deck().lookup(digits) is None


def test_longest_prefix_independent_of_row_order() -> None:
    text = HEADER + "4470,Personnel,0.5000\n44,UK,0.0200\n447,Mobile,0.0500\n"
    rates = parse_rate_deck(text)
    assert rates.lookup("447012345678").destination == "Personnel"  # type: ignore[union-attr]
    assert rates.lookup("447712345678").destination == "Mobile"  # type: ignore[union-attr]
    assert rates.lookup("442012345678").destination == "UK"  # type: ignore[union-attr]


def test_small_deck_size_and_destinations() -> None:
    rates = deck()
    assert len(rates) == len(DECK_CSV.strip().splitlines()) - 1 == 12
    assert rates.destinations == {
        "Etats-Unis Fixe", "France Fixe", "France Mobile", "France Special",
        "Royaume-Uni Fixe", "Royaume-Uni Mobile",
    }


def test_blank_lines_and_spaces_are_tolerated() -> None:
    rates = parse_rate_deck(HEADER + "\n 33 , France , 0.0100 \n\n,,\n")
    assert len(rates) == 1
    found = rates.lookup("33145678901")
    assert found is not None and found.destination == "France" and found.rate_per_minute == Decimal("0.01")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("", ["line 1", "header"]),
        ("prefix;destination;rate_per_minute\n33,France,0.01\n", ["line 1", "header"]),
        ("prefix,destination,rate\n33,France,0.01\n", ["line 1", "header"]),
        ("destination,prefix,rate_per_minute\nFrance,33,0.01\n", ["line 1", "header"]),
        (HEADER, ["no rates"]),
        (HEADER + "33,France,0.01\n44,UK,0.02\n33,France bis,0.03\n", ["line 4", "33", "line 2"]),
        (HEADER + "33,France,0.01\n+44,UK,0.02\n", ["line 3", "+44"]),
        (HEADER + "33,France,0.01\n0044,UK,0.02\n", ["line 3", "0044"]),
        (HEADER + "3x3,France,0.01\n", ["line 2", "3x3"]),
        (HEADER + ",France,0.01\n", ["line 2", "prefix"]),
        (HEADER + "33,France,0.01\n44,UK,abc\n", ["line 3", "abc", "decimal"]),
        (HEADER + "33,France,0.01\n44,UK,0;02\n", ["line 3", "0;02"]),
        (HEADER + "33,France,\n", ["line 2", "decimal"]),
        (HEADER + "33,France,-0.01\n", ["line 2", "-0.01"]),
        (HEADER + "33,France,NaN\n", ["line 2", "NaN"]),
        (HEADER + "33,France,Infinity\n", ["line 2", "Infinity"]),
        (HEADER + "33,France\n", ["line 2", "3 columns", "got 2"]),
        (HEADER + "33,France,0.01,extra\n", ["line 2", "3 columns", "got 4"]),
        (HEADER + "33,France,0.01\n44,,0.02\n", ["line 3", "destination"]),
    ],
    ids=[
        "empty-file", "semicolons", "wrong-header-name", "header-order", "header-only", "duplicate-prefix",
        "plus-prefix", "zero-prefix", "non-digit-prefix", "empty-prefix", "bad-decimal", "bad-decimal-2",
        "empty-rate", "negative-rate", "nan-rate", "infinite-rate", "two-columns", "four-columns",
        "empty-destination",
    ],
)
def test_parse_errors(text: str, needles: list[str]) -> None:
    with pytest.raises(RateDeckError) as info:
        parse_rate_deck(text, source="deck.csv")
    message = str(info.value)
    assert message.startswith("deck.csv: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert isinstance(info.value, ConfigError)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RateDeckError, match="not found"):
        load_rate_deck(tmp_path / "nope.csv")


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "33,Fran\xe7e,0.01\n").encode("latin-1"))
    with pytest.raises(RateDeckError, match="UTF-8"):
        load_rate_deck(path)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "33,France,-1\n", encoding="utf-8")
    with pytest.raises(RateDeckError, match=r"bad\.csv: line 2"):
        load_rate_deck(path)


def test_bundled_deck_loads() -> None:
    rows = [line for line in BUNDLED.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    rates = load_rate_deck(BUNDLED)
    assert len(rates) == len(rows)


@pytest.mark.parametrize(
    ("digits", "destination", "rate"),
    [
        # values read off streams/data/rates.csv
        ("33145678901", "France Fixe", "0.0100"),
        ("33612345678", "France Mobile", "0.0250"),
        ("33800123456", "France Numero Vert", "0.0000"),
        ("33806123456", "France Banalise", "0.0150"),
        ("33899123456", "France Premium", "0.9000"),
        ("442079460958", "Royaume-Uni Fixe", "0.0100"),
        ("447012345678", "Royaume-Uni Numero Personnel", "0.5000"),
        ("12045551234", "Canada Fixe", "0.0100"),
        ("12425551234", "Bahamas", "0.2000"),
        ("12025550143", "Etats-Unis Fixe", "0.0100"),
        ("262262123456", "Réunion Fixe", "0.0300"),
    ],
)
def test_bundled_deck_lookups(digits: str, destination: str, rate: str) -> None:
    found = load_rate_deck(BUNDLED).lookup(digits)
    assert found is not None
    assert (found.destination, found.rate_per_minute) == (destination, Decimal(rate))
