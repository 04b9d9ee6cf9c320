"""Rating: billed seconds, amounts rounded up to the cent in Decimal, deterministic ids."""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams.core.plans import Billing
from streams.core.rating import call_amount, rate_call, stable_id

D = Decimal


@pytest.mark.parametrize(
    ("billed_seconds", "rate", "multiplier", "expected"),
    [
        (120, "0.0150", "1", "0.03"),  # 2 min x 0.015 = 0.03 exactly
        (120, "0.0150", "4", "0.12"),
        (60, "0.0133", "1", "0.02"),  # 0.0133 -> 0.02
        (60, "0.0133", "4", "0.06"),  # 0.0532 -> 0.06
        (1, "0.0133", "1", "0.01"),  # 0.000221... -> 0.01
        (61, "0.0133", "1", "0.02"),  # 0.0135216... -> 0.02
        (61, "0.0133", "4", "0.06"),  # 0.0540866... -> 0.06
        (180, "0.0150", "1", "0.05"),  # 0.045 -> 0.05
        (180, "0.0150", "4", "0.18"),
        (60, "0.0100", "1", "0.01"),  # exact cent: no rounding up
        (60, "0.0101", "1", "0.02"),
        (60, "0.07", "1", "0.07"),  # a float would give 0.07000000000000001 -> 0.08
        (180, "0.1", "1", "0.30"),  # a float would give 0.30000000000000004 -> 0.31
        (20, "0.0300", "1", "0.01"),  # 1/3 min x 0.03 = 0.01 exactly
        (20, "0.0301", "1", "0.02"),
        (60, "0.0150", "2.5", "0.04"),  # 0.0375 -> 0.04
        (3600, "0.9000", "4", "216.00"),
        (0, "0.0150", "4", "0.00"),
        (120, "0.0000", "4", "0.00"),
        (60, "0.0150", "0", "0.00"),
    ],
)
def test_call_amount_rounds_up_to_the_cent(billed_seconds: int, rate: str, multiplier: str, expected: str) -> None:
    amount = call_amount(billed_seconds, D(rate), D(multiplier))
    assert isinstance(amount, Decimal)
    assert amount == D(expected)
    assert str(amount) == expected  # two places, as in the payload


@pytest.mark.parametrize(
    ("billsec", "billing", "rate", "multiplier", "billed", "amount"),
    [
        (61, Billing(60, 60), "0.0150", "1", 120, "0.03"),
        (61, Billing(60, 60), "0.0150", "4", 120, "0.12"),
        (1, Billing(1, 1), "0.0133", "1", 1, "0.01"),
        (1, Billing(60, 60), "0.0133", "1", 60, "0.02"),
        (59, Billing(60, 60), "0.0133", "1", 60, "0.02"),
        (125, Billing(60, 60), "0.0150", "1", 180, "0.05"),
        (125, Billing(60, 60), "0.0150", "4", 180, "0.18"),
        (61, Billing(1, 1), "0.0133", "4", 61, "0.06"),
        (31, Billing(30, 30), "0.0150", "1", 60, "0.02"),  # 0.015 -> 0.02
        (0, Billing(60, 60), "0.0150", "4", 0, "0.00"),
        (3599, Billing(60, 1), "0.0200", "1", 3599, "1.20"),  # 1.1996666... -> 1.20
    ],
)
def test_rate_call(billsec: int, billing: Billing, rate: str, multiplier: str, billed: int, amount: str) -> None:
    got_billed, got_amount = rate_call(billsec, billing, D(rate), D(multiplier))
    assert got_billed == billed
    assert got_amount == D(amount)
    assert isinstance(got_amount, Decimal)


def test_amount_never_below_exact_value() -> None:
    # every per-second amount of 1..600 s at 0.0133 is >= the exact value and < it + 1 cent
    for seconds in range(1, 601):
        exact = D(seconds) * D("0.0133") / D(60)
        amount = call_amount(seconds, D("0.0133"), D(1))
        assert exact <= amount < exact + D("0.01"), seconds


def test_stable_id_is_deterministic() -> None:
    first = stable_id("line", "alice", "2026-03", "call-1", "4")
    assert first == stable_id("line", "alice", "2026-03", "call-1", "4")
    assert len(first) == 32
    assert all(c in "0123456789abcdef" for c in first)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("line", "alice", "2026-03", "call-1", "4"), ("line", "alice", "2026-03", "call-1", "1")),
        (("alert", "alice", "2026-03", "autodialer"), ("alert", "alice", "2026-04", "autodialer")),
        (("alert", "alice", "2026-03", "autodialer"), ("alert", "bob", "2026-03", "autodialer")),
        (("ab", "c"), ("a", "bc")),  # parts are separated, not concatenated
    ],
)
def test_stable_id_distinguishes_parts(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert stable_id(*a) != stable_id(*b)
