"""Plans: the bundled plans.toml, schema and semantic errors, billing increments, User-Agent classes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

import streams
from streams.core.errors import ConfigError, PlansError
from streams.core.plans import Billing, load_plans, parse_plans
from streams.core.rates import load_rate_deck
from tests.factories import ASTERISK, MULTIPLIERS, YEALINK, ZOIPER, deck, plan_book, plans_data

DATA = Path(streams.__file__).parent / "data"

Mutation = Callable[[dict[str, Any]], None]


def _plan(data: dict[str, Any]) -> dict[str, Any]:
    plan: dict[str, Any] = data["plans"]["unlimited"]
    return plan


# ------------------------------------------------------------------------------- bundled file


def test_bundled_plans_load_against_bundled_deck() -> None:
    book = load_plans(DATA / "plans.toml", load_rate_deck(DATA / "rates.csv"))
    assert book.default_plan == "full-illimite"
    assert book.timezone == ZoneInfo("Europe/Paris")
    assert set(book.plans) == {"full-illimite", "pro-illimite", "fixe-illimite"}
    full = book.get(None)
    assert full.name == "full-illimite"
    assert (full.max_distinct_numbers, full.max_simultaneous_calls, full.max_registered_devices,
            full.max_calls_per_hour) == (150, 3, 3, 60)
    assert full.billing == Billing(60, 60)
    assert {"France Fixe", "France Mobile", "Royaume-Uni Fixe"} <= full.included
    assert full.multipliers["pbx_or_gateway"] == Decimal(4)
    assert full.multipliers["autodialer"] == Decimal(4)
    assert full.multipliers["distinct_numbers"] == Decimal(1)
    assert book.get("pro-illimite").billing == Billing(1, 1)
    assert book.get("fixe-illimite").billing == Billing(30, 30)
    assert book.get("fixe-illimite").included == {"France Fixe"}
    assert book.get("fixe-illimite").timezone == ZoneInfo("Europe/Paris")


def test_bundled_plans_load_without_a_deck() -> None:
    assert load_plans(DATA / "plans.toml").default_plan == "full-illimite"


def test_small_book() -> None:
    book = plan_book()
    plan = book.get(None)
    assert plan.name == "unlimited"
    assert book.get("per-second").billing == Billing(1, 1)
    assert plan.multipliers == {rule: Decimal(value) for rule, value in MULTIPLIERS.items()}
    assert all(isinstance(m, Decimal) for m in plan.multipliers.values())


def test_per_plan_timezone_overrides_book_timezone() -> None:
    data = plans_data()
    data["plans"]["per-second"]["timezone"] = "America/Cayenne"
    book = parse_plans(data, deck())
    assert book.get("per-second").timezone == ZoneInfo("America/Cayenne")
    assert book.get("unlimited").timezone == ZoneInfo("Europe/Paris")


# ------------------------------------------------------------------------------------ errors


def _drop(key: str) -> Mutation:
    return lambda d: _plan(d).pop(key)


def _set(key: str, value: Any) -> Mutation:
    return lambda d: _plan(d).__setitem__(key, value)


def _set_top(key: str, value: Any) -> Mutation:
    return lambda d: d.__setitem__(key, value)


def _drop_multiplier(rule: str) -> Mutation:
    return lambda d: _plan(d)["multipliers"].pop(rule)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        # missing keys
        (lambda d: d.pop("default_plan"), ["missing", "default_plan"]),
        (lambda d: d.pop("timezone"), ["missing", "timezone"]),
        (lambda d: d.pop("plans"), ["missing", "plans"]),
        (_drop("included"), ["missing", "included"]),
        (_drop("billing"), ["missing", "billing"]),
        (_drop("max_distinct_numbers"), ["missing", "max_distinct_numbers"]),
        (_drop("max_calls_per_hour"), ["missing", "max_calls_per_hour"]),
        (_drop("pbx_user_agents"), ["missing", "pbx_user_agents"]),
        (_drop("multipliers"), ["missing", "multipliers"]),
        (_drop_multiplier("autodialer"), ["missing", "autodialer"]),
        # wrong types / values
        (_set("max_distinct_numbers", "150"), ["max_distinct_numbers", "integer"]),
        (_set("max_simultaneous_calls", True), ["max_simultaneous_calls", "integer"]),
        (_set("max_registered_devices", -1), ["max_registered_devices"]),
        (_set("included", "France Fixe"), ["included", "array"]),
        (_set("allowed_user_agents", [1]), ["allowed_user_agents"]),
        (_set("multipliers", {**MULTIPLIERS, "pbx_or_gateway": "4"}), ["pbx_or_gateway", "number"]),
        (_set("multipliers", {**MULTIPLIERS, "autodialer": -1}), ["autodialer"]),
        (_set("max_calls_per_hour_typo", 60), ["max_calls_per_hour_typo"]),
        (_set_top("default_plan", 3), ["default_plan"]),
        (_set_top("plans", {}), ["plans"]),
        # bad billing strings
        (_set("billing", "60-60"), ["billing", "60-60"]),
        (_set("billing", "60/0"), ["billing", "60/0"]),
        (_set("billing", "60"), ["billing"]),
        (_set("billing", "per-second"), ["billing"]),
        (_set("billing", 60), ["billing"]),
        # unknown time zones
        (_set_top("timezone", "Europe/Pariss"), ["timezone", "Europe/Pariss"]),
        (_set_top("timezone", "CET+1"), ["timezone", "CET+1"]),
        (_set_top("timezone", "../etc/passwd"), ["timezone", "../etc/passwd"]),
        (_set_top("timezone", "Europe"), ["timezone", "Europe"]),
        (_set("timezone", "Mars/Olympus"), ["timezone", "Mars/Olympus"]),
        # bad regexes
        (_set("allowed_user_agents", ["^Yealink", "[unclosed"]), ["allowed_user_agents", "[unclosed", "regex"]),
        (_set("pbx_user_agents", ["(Asterisk"]), ["pbx_user_agents", "(Asterisk", "regex"]),
        # default plan not defined
        (_set_top("default_plan", "gold"), ["default_plan", "gold"]),
        # included destinations not in the deck
        (_set("included", ["France Fixe", "Atlantide Fixe"]), ["Atlantide Fixe", "rate deck"]),
        (_set("included", ["france fixe"]), ["france fixe", "rate deck"]),
    ],
    ids=[
        "no-default_plan", "no-timezone", "no-plans", "no-included", "no-billing", "no-max_distinct_numbers",
        "no-max_calls_per_hour", "no-pbx_user_agents", "no-multipliers", "no-autodialer-multiplier",
        "string-limit", "bool-limit", "negative-limit", "included-not-list", "regex-not-string",
        "string-multiplier", "negative-multiplier", "unknown-key", "default_plan-not-string", "no-plan",
        "billing-dash", "billing-zero-increment", "billing-one-number", "billing-word", "billing-int",
        "tz-typo", "tz-posix", "tz-relative-path", "tz-directory", "plan-tz-unknown",
        "bad-allowed-regex", "bad-pbx-regex", "default-plan-undefined", "included-unknown",
        "included-wrong-case",
    ],
)
def test_plan_errors_name_the_problem(mutate: Mutation, needles: list[str]) -> None:
    data = plans_data()
    mutate(data)
    with pytest.raises(PlansError) as info:
        parse_plans(data, deck(), source="my-plans.toml")
    message = str(info.value)
    assert message.startswith("my-plans.toml: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert isinstance(info.value, ConfigError)


def test_included_names_are_not_checked_without_a_deck() -> None:
    data = plans_data()
    _plan(data)["included"] = ["Atlantide Fixe"]
    assert parse_plans(data).get(None).included == {"Atlantide Fixe"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("default_plan = \n", "invalid TOML"),
        (b"\xff\xfe".decode("latin-1"), "UTF-8"),
    ],
)
def test_load_plans_file_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "plans.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(PlansError, match=needle):
        load_plans(path)


def test_load_plans_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlansError, match="not found"):
        load_plans(tmp_path / "absent.toml")


# ----------------------------------------------------------------------------------- billing

BILLSECS = [0, 1, 29, 30, 31, 59, 60, 61, 119, 120, 121]


@pytest.mark.parametrize(
    ("billing", "expected"),
    [
        ("60/60", [0, 60, 60, 60, 60, 60, 60, 120, 120, 120, 180]),
        ("1/1", [0, 1, 29, 30, 31, 59, 60, 61, 119, 120, 121]),
        ("60/1", [0, 60, 60, 60, 60, 60, 60, 61, 119, 120, 121]),
        ("30/30", [0, 30, 30, 30, 60, 60, 60, 90, 120, 120, 150]),
        ("0/60", [0, 60, 60, 60, 60, 60, 60, 120, 120, 120, 180]),
        ("30/6", [0, 30, 30, 30, 36, 60, 60, 66, 120, 120, 126]),
    ],
)
def test_billed_seconds(billing: str, expected: list[int]) -> None:
    data = plans_data()
    _plan(data)["billing"] = billing
    plan = parse_plans(data, deck()).get(None)
    assert str(plan.billing) == billing
    assert [plan.billing.billed_seconds(s) for s in BILLSECS] == expected


# ------------------------------------------------------------------------------ User-Agents


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (YEALINK, None),
        ("Yealink SIP-T54W 96.86.0.100", None),
        ("snomD785/10.1.54.13", None),
        ("Snom 720", None),
        (ZOIPER, "third_party_device"),
        ("MicroSIP/3.21.3", "third_party_device"),
        ("Linphone/5.2.0 (belle-sip/5.2.0)", "third_party_device"),
        ("", "third_party_device"),
        ("My Yealink SIP-T46S", "third_party_device"),  # allowed patterns are anchored
        ("Yealink W60B 77.85.0.20", "third_party_device"),  # not in this plan's allowed list
        (ASTERISK, "pbx_or_gateway"),
        ("FreeSWITCH-mod_sofia/1.10.9", "pbx_or_gateway"),
        ("3CXPhoneSystem 18.0.8.1023", "pbx_or_gateway"),
        # a PBX pattern wins over an allowed one
        ("Yealink SIP-T46S behind Asterisk", "pbx_or_gateway"),
        ("snom via 3CX", "pbx_or_gateway"),
    ],
)
def test_classify_user_agent(user_agent: str, expected: str | None) -> None:
    assert plan_book().get(None).classify_user_agent(user_agent) == expected


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("Yealink SIP-T46S 66.86.0.15", None),
        ("Yealink W60B 77.85.0.20", None),
        ("snomD785/10.1.54.13", None),
        ("Gigaset N510 IP PRO/42.250.00.000.000", None),
        ("PolycomVVX-VVX_411-UA/6.3.1.8427", None),
        ("Zoiper rv2.10.20.2", "third_party_device"),
        ("FPBX-16.0.40.7(18.20.0)", "pbx_or_gateway"),
        ("Grandstream UCM6302V1.3", "pbx_or_gateway"),
        ("Grandstream GXP2170 1.0.11.23", "third_party_device"),
        ("Mediant SW/v.7.20A.258.119", "pbx_or_gateway"),
    ],
)
def test_classify_user_agent_bundled(user_agent: str, expected: str | None) -> None:
    book = load_plans(DATA / "plans.toml")
    assert book.get("full-illimite").classify_user_agent(user_agent) == expected
