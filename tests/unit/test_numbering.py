"""Number normalisation (README "Rules": numbers, emergency and short numbers)."""

from __future__ import annotations

import pytest

from streams.core.numbering import NumberKind, normalise

E164 = NumberKind.E164
EMERGENCY = NumberKind.EMERGENCY
UNKNOWN = NumberKind.UNKNOWN


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        # E.164 with '+'
        ("+33145678901", "33145678901"),
        ("+33612345678", "33612345678"),
        ("+442079460958", "442079460958"),
        ("+12025550143", "12025550143"),
        # international prefix 00
        ("0033145678901", "33145678901"),
        ("00442079460958", "442079460958"),
        # French national, 10 digits: 0X... -> 33X...
        ("0145678901", "33145678901"),
        ("0612345678", "33612345678"),
        ("0712345678", "33712345678"),
        ("0912345678", "33912345678"),
        ("0800123456", "33800123456"),
        # separators are stripped
        ("01 45 67 89 01", "33145678901"),
        ("01.45.67.89.01", "33145678901"),
        ("+33 6 12 34 56 78", "33612345678"),
        ("+33.6.12.34.56.78", "33612345678"),
        ("00 33 1 45 67 89 01", "33145678901"),
        (" 0145678901 ", "33145678901"),
        ("06-12-34-56-78", "33612345678"),
    ],
)
def test_e164_forms(raw: str, digits: str) -> None:
    number = normalise(raw)
    assert number.kind is E164
    assert number.digits == digits
    assert not number.is_emergency


@pytest.mark.parametrize(
    "formats",
    [
        ["+33145678901", "0033145678901", "0145678901", "01 45 67 89 01", "01.45.67.89.01", "+33 1 45 67 89 01"],
        ["+33712345678", "0033712345678", "0712345678", "07 12 34 56 78"],
    ],
)
def test_formats_of_one_number_agree(formats: list[str]) -> None:
    assert len({normalise(raw).digits for raw in formats}) == 1


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("15", "15"),
        ("17", "17"),
        ("18", "18"),
        ("112", "112"),
        ("114", "114"),
        ("115", "115"),
        ("119", "119"),
        ("191", "191"),
        ("196", "196"),
        ("197", "197"),
        ("116000", "116000"),
        ("116111", "116111"),
        ("116 123", "116123"),
        # behind +33 / 0033
        ("+3315", "15"),
        ("+33112", "112"),
        ("+33 112", "112"),
        ("003317", "17"),
        ("0033112", "112"),
        ("+33116000", "116000"),
        ("0033116006", "116006"),
    ],
)
def test_emergency_numbers(raw: str, digits: str) -> None:
    number = normalise(raw)
    assert number.kind is EMERGENCY
    assert number.is_emergency
    assert number.digits == digits


@pytest.mark.parametrize(
    "raw",
    [
        "anonymous",
        "Anonymous",
        "",
        "sip:bob@example.org",
        "sip:+33145678901@example.org",
        "3631",  # short service codes are not emergency numbers and not E.164
        "3900",
        "10",
        "1161234",  # 116 + 4 digits is not a 116xxx hotline
        "014567890",  # 9 national digits
        "01456789012",  # 11 national digits
        "+33abc",
        "+",
        "00",
    ],
)
def test_unknown_numbers(raw: str) -> None:
    number = normalise(raw)
    assert number.kind is UNKNOWN
    assert not number.is_emergency


def test_longer_number_starting_like_an_emergency_number_is_not_one() -> None:
    # +33 1 12 ... is a Paris number, not 112
    number = normalise("+33112345678")
    assert number.kind is E164
    assert number.digits == "33112345678"
