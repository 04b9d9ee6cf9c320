"""Number normalisation: what a signalled number is, as E.164 digits, per the README's rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

# French emergency and social short numbers: never counted, never billed (116xxx: EU hotlines).
# the ones people dial most, in a fixed order (generated traffic draws from it)
DIALLED_EMERGENCY = ("112", "15", "17", "18", "115", "119")
EMERGENCY_NUMBERS = frozenset(DIALLED_EMERGENCY) | {"114", "191", "196", "197"}
_HOTLINE_116 = re.compile(r"116\d{3}")
_SEPARATORS = re.compile(r"[\s.\-()/]")


class NumberKind(Enum):
    E164 = "e164"
    EMERGENCY = "emergency"
    UNKNOWN = "unknown"  # anonymous, SIP URIs, other short codes: never covered


@dataclass(frozen=True, slots=True)
class Number:
    kind: NumberKind
    digits: str  # E.164 digits without '+' for E164; the cleaned input otherwise

    @property
    def is_emergency(self) -> bool:
        return self.kind is NumberKind.EMERGENCY


def _is_emergency(digits: str) -> bool:
    return digits in EMERGENCY_NUMBERS or bool(_HOTLINE_116.fullmatch(digits))


@lru_cache(maxsize=1 << 16)  # callees repeat (address books), and every rule asks again
def normalise(raw: str) -> Number:
    """Classify and normalise a number as signalled.

    ``+CC…`` and ``00CC…`` become their digits; a 10-digit French national ``0X…`` becomes ``33X…``;
    a bare 8–15 digit string not starting with 0 is taken as E.164 already. Emergency and short
    numbers are recognised in national form and behind ``+33``/``0033``.
    """
    cleaned = _SEPARATORS.sub("", raw)
    if cleaned.startswith("+"):
        digits = cleaned[1:]
    elif cleaned.startswith("00"):
        digits = cleaned[2:]
    elif cleaned.startswith("0") and len(cleaned) == 10 and cleaned.isdigit():
        digits = "33" + cleaned[1:]
    else:
        if cleaned.isdigit() and _is_emergency(cleaned):
            return Number(NumberKind.EMERGENCY, cleaned)
        if cleaned.isdigit() and 8 <= len(cleaned) <= 15 and not cleaned.startswith("0"):
            return Number(NumberKind.E164, cleaned)
        return Number(NumberKind.UNKNOWN, cleaned)
    if not digits.isdigit():
        return Number(NumberKind.UNKNOWN, cleaned)
    if digits.startswith("33") and _is_emergency(digits[2:]):
        return Number(NumberKind.EMERGENCY, digits[2:])
    if not 3 <= len(digits) <= 15 or digits.startswith("0"):
        return Number(NumberKind.UNKNOWN, cleaned)
    return Number(NumberKind.E164, digits)
