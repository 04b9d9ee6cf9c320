"""Per-minute rating of covered calls: billed seconds, amounts rounded up to the cent, line ids."""

from __future__ import annotations

import hashlib
from decimal import ROUND_CEILING, Context, Decimal

from .plans import Billing

CENT = Decimal("0.01")
_CONTEXT = Context(prec=34)


def call_amount(billed_seconds: int, rate_per_minute: Decimal, multiplier: Decimal) -> Decimal:
    """``billed_seconds / 60 × rate × multiplier``, rounded up to the next cent, as operators' terms price calls."""
    exact = _CONTEXT.divide(_CONTEXT.multiply(Decimal(billed_seconds) * rate_per_minute, multiplier), Decimal(60))
    return exact.quantize(CENT, rounding=ROUND_CEILING)


def rate_call(billsec: int, billing: Billing, rate_per_minute: Decimal, multiplier: Decimal) -> tuple[int, Decimal]:
    billed = billing.billed_seconds(billsec)
    return billed, call_amount(billed, rate_per_minute, multiplier)


def number_hash_key(secret: bytes) -> bytes:
    """The key of the called-number hashes: blake2b keys are at most 64 bytes, so a secret of any
    length is first hashed to one."""
    return hashlib.blake2b(secret, digest_size=64).digest()


def number_hash(digits: str, key: bytes) -> int:
    """Keyed hash of a called number (63 bits): state never holds the number in clear. blake2b's own
    keyed mode, a MAC like HMAC at a fraction of the cost."""
    digest = hashlib.blake2b(digits.encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def stable_id(*parts: str) -> str:
    """A deterministic id: the same parts give the same id on every worker and every replay."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
