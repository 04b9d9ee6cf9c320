"""A call's called number, worked out once for both engines: normalised, rated and hashed on
first use, so that a CDR that needs none of it pays for none of it."""

from __future__ import annotations

from .numbering import Number, NumberKind, normalise
from .rates import Rate, RateDeck
from .rating import number_hash


class Callee:
    """The ``callee`` of one CDR."""

    def __init__(self, raw: str, rates: RateDeck, hash_key: bytes) -> None:
        self.number: Number = normalise(raw)
        self._rates, self._hash_key = rates, hash_key
        self._rate: Rate | None = None
        self._rated = False
        self._hash = -1

    @property
    def is_e164(self) -> bool:
        return self.number.kind is NumberKind.E164

    def rate(self) -> Rate | None:
        """The rate-deck entry of the longest prefix of an E.164 number; None for other numbers."""
        if not self._rated:
            self._rate = self._rates.lookup(self.number.digits) if self.is_e164 else None
            self._rated = True
        return self._rate

    def hash(self) -> int:
        """The keyed hash of the number's digits: state never holds the number in clear."""
        if self._hash < 0:
            self._hash = number_hash(self.number.digits, self._hash_key)
        return self._hash
