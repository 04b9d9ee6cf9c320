"""The [fraud] section of plans.toml: the bundled sample, rule parsing, scopes, per-plan overrides, errors."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

import streams
from streams.core.errors import ConfigError, PlansError
from streams.core.fraud import FraudEngine
from streams.core.plans import (
    DEFAULT_ACTIONS,
    FRAUD_RULES,
    DestinationSet,
    FraudConfig,
    HourRange,
    PlanBook,
    TimeScope,
    load_plans,
    parse_plans,
)
from streams.core.rates import load_rate_deck, parse_rate_deck
from tests.factories import DECK_CSV, plans_data

DATA = Path(streams.__file__).parent / "data"
DECK = parse_rate_deck(DECK_CSV + "53,Cuba,1.2000\n252,Somalie,1.5000\n")
D = Decimal

Mutation = Callable[[dict[str, Any]], None]


def book(fraud: dict[str, Any] | None = None, plan_fraud: dict[str, Any] | None = None) -> PlanBook:
    data = plans_data(**({"fraud": fraud} if fraud is not None else {}))
    if plan_fraud is not None:
        data["plans"]["per-second"]["fraud"] = plan_fraud
    return parse_plans(data, DECK)


# ------------------------------------------------------------------------------- bundled file


def test_bundled_fraud_section() -> None:
    plans = load_plans(DATA / "plans.toml", load_rate_deck(DATA / "rates.csv"))
    full = plans.get("full-illimite").fraud
    rules = {rule.name: rule for rule in full.rules}
    assert set(FRAUD_RULES) - {"wangiri"} <= set(rules)  # wangiri: one rule per leg
    assert {r.kind for r in full.rules} == set(FRAUD_RULES)
    assert (rules["cost_burst"].warning, rules["cost_burst"].critical) == (D(20), D(50))
    night = rules["night_cost_burst"]
    assert night.kind == "cost_burst" and night.time.hours == (HourRange(22 * 60, 6 * 60),)
    assert rules["weekend_high_cost"].time.weekdays == {5, 6}
    assert rules["new_network"].days == 30
    assert rules["calls_per_minute"].action == "suspend_unlimited"
    assert rules["high_risk_destination"].action == "restrict_to_emergency"
    assert (rules["price_cap"].warning, rules["price_cap"].critical) == (None, D("1.00"))
    assert (rules["irsf_range"].prefix_digits, rules["irsf_range"].window_minutes) == (8, 60)
    assert (rules["irsf_range"].warning, rules["irsf_range"].critical) == (D(5), D(10))
    assert (rules["short_call_burst"].warning, rules["short_call_burst"].critical) == (D(100), D(200))
    assert rules["short_call_burst"].max_asr == D("0.15")
    assert rules["short_call_burst"].action == "suspend_unlimited"
    baseline = rules["destination_baseline"]
    assert (baseline.new_country_level, baseline.learning_days, baseline.warning, baseline.critical) == (
        "none", 14, D(30), D(80))
    rings, callback = rules["wangiri_rings"], rules["wangiri_callback"]
    assert (rings.kind, rings.leg, rings.warning, rings.critical, rings.ring_seconds) == ("wangiri", "inbound", D(20), None, 5)
    assert (callback.leg, callback.warning, callback.critical, callback.window_hours) == ("outbound", None, D(1), 24)
    assert callback.destinations is not None and callback.destinations == full.high_risk
    assert {"Cuba", "Somalie", "Satellite Inmarsat"} <= full.high_risk.names
    assert full.high_risk.prefixes == ("882", "883")
    assert full.directions == {"outbound"}
    assert plans.fraud == full  # plans without an override get the book's section
    fixe = plans.get("fixe-illimite").fraud
    fixe_rules = {rule.name: rule for rule in fixe.rules}
    assert (fixe_rules["total_calls_per_day"].warning, fixe_rules["total_calls_per_day"].critical) == (D(150), D(300))
    assert fixe.high_risk.names == full.high_risk.names | {"Royaume-Uni Numero Personnel"}
    assert FraudEngine(plans, load_rate_deck(DATA / "rates.csv")).enabled


def test_no_fraud_section_means_no_rules() -> None:
    plans = book()
    assert plans.fraud == FraudConfig()
    assert not plans.get(None).fraud
    assert not FraudEngine(plans, DECK).enabled


# -------------------------------------------------------------------------------------- rules


def test_rule_kind_defaults_to_the_table_name_and_action_to_the_kind_default() -> None:
    plans = book({
        "high_risk": ["Cuba", "+8816"],
        "rules": {
            "cost_burst": {"warning": 12.5, "critical": "40.10"},
            "night": {"kind": "cost_burst", "critical": 5, "action": "suspend_unlimited", "hours": "22:00-06:00"},
            "long_call": {"warning": 90},
            "high_risk_destination": {"critical": 3, "destinations": ["Cuba"]},
            "new_network": {"warning": 1, "critical": 2, "days": 7, "weekdays": ["sat", "sun"]},
        },
    })
    rules = {r.name: r for r in plans.get(None).fraud.rules}
    assert [r.name for r in plans.get(None).fraud.rules] == [
        "cost_burst", "night", "long_call", "high_risk_destination", "new_network"]
    assert (rules["cost_burst"].warning, rules["cost_burst"].critical) == (D("12.5"), D("40.10"))
    assert rules["cost_burst"].action == DEFAULT_ACTIONS["cost_burst"] == "restrict_to_emergency"
    assert (rules["night"].kind, rules["night"].warning, rules["night"].critical) == ("cost_burst", None, D(5))
    assert rules["night"].action == "suspend_unlimited"
    assert rules["long_call"].critical is None and rules["long_call"].warning == D(90)
    assert rules["high_risk_destination"].destinations == DestinationSet(frozenset({"Cuba"}), ())
    assert rules["cost_burst"].destinations is None  # no scope: every destination
    assert rules["new_network"].days == 7 and rules["new_network"].time.weekdays == {5, 6}
    assert plans.get(None).fraud.high_risk == DestinationSet(frozenset({"Cuba"}), ("8816",))


@pytest.mark.parametrize(
    ("hours", "inside", "outside"),
    [
        ("22:00-06:00", ["22:00", "23:59", "00:00", "05:59"], ["06:00", "21:59", "12:00"]),
        ("09:00-17:30", ["09:00", "17:29"], ["08:59", "17:30", "23:00"]),
        ("22:00-24:00", ["22:00", "23:59"], ["00:00", "21:59"]),
        ("00:00-01:00", ["00:00", "00:59"], ["01:00", "23:59"]),
        (["00:00-06:00", "20:00-21:00"], ["05:59", "20:30"], ["06:00", "21:00", "19:59"]),
    ],
)
def test_hour_ranges_are_half_open_and_may_wrap(hours: str | list[str], inside: list[str], outside: list[str]) -> None:
    plans = book({"rules": {"cost_burst": {"warning": 1, "hours": hours}}})
    scope = plans.get(None).fraud.rules[0].time

    def local(hhmm: str) -> datetime:  # 2026-03-04 is a Wednesday
        return datetime.fromisoformat(f"2026-03-04T{hhmm}:00+01:00")

    assert [scope.contains(local(t)) for t in inside] == [True] * len(inside)
    assert [scope.contains(local(t)) for t in outside] == [False] * len(outside)


def test_weekdays_and_hours_are_tested_on_the_same_local_instant() -> None:
    scope = TimeScope(hours=(HourRange(22 * 60, 6 * 60),), weekdays=frozenset({5}))  # Saturday nights
    utc = timezone.utc
    assert scope.contains(datetime(2026, 3, 7, 23, 0, tzinfo=utc))  # Saturday 23:00
    assert scope.contains(datetime(2026, 3, 7, 2, 0, tzinfo=utc))  # Saturday 02:00 (Friday's night)
    assert not scope.contains(datetime(2026, 3, 8, 2, 0, tzinfo=utc))  # Sunday 02:00
    assert not scope.contains(datetime(2026, 3, 7, 12, 0, tzinfo=utc))
    assert not TimeScope()  # no scope at all


def test_destination_sets() -> None:
    dests = DestinationSet(frozenset({"Cuba"}), ("8816", "44"))
    assert dests.matches("5371234567", "Cuba")
    assert dests.matches("881612345678", None)
    assert dests.matches("442079460958", "Royaume-Uni Fixe")
    assert not dests.matches("33145678901", "France Fixe")
    assert not DestinationSet()
    assert not DestinationSet().matches("53", "Cuba")


# --------------------------------------------------------------------------- per-plan override


def test_plan_section_adds_high_risk_and_replaces_adds_or_disables_rules_by_name() -> None:
    plans = book(
        {
            "high_risk": ["Cuba"],
            "rules": {
                "cost_burst": {"warning": 20, "critical": 50},
                "calls_per_minute": {"warning": 10, "critical": 20},
                "high_risk_destination": {"warning": 1},
            },
        },
        {
            "high_risk": ["Somalie", "+8816"],
            "rules": {
                "cost_burst": {"critical": 5},  # replaced as a whole
                "calls_per_minute": {"enabled": False},
                "night": {"kind": "long_call", "warning": 30, "hours": "22:00-06:00"},
            },
        },
    )
    base = {r.name: r for r in plans.get("unlimited").fraud.rules}
    own = {r.name: r for r in plans.get("per-second").fraud.rules}
    assert set(base) == {"cost_burst", "calls_per_minute", "high_risk_destination"}
    assert set(own) == {"cost_burst", "high_risk_destination", "night"}
    assert (own["cost_burst"].warning, own["cost_burst"].critical) == (None, D(5))
    assert (base["cost_burst"].warning, base["cost_burst"].critical) == (D(20), D(50))
    assert own["night"].kind == "long_call"
    assert plans.get("per-second").fraud.high_risk == DestinationSet(frozenset({"Cuba", "Somalie"}), ("8816",))
    assert plans.get("unlimited").fraud.high_risk == DestinationSet(frozenset({"Cuba"}), ())


def test_a_plan_may_disable_a_named_rule_of_any_kind() -> None:
    plans = book(
        {"rules": {"night": {"kind": "cost_burst", "warning": 1}}},
        {"rules": {"night": {"enabled": False}}},
    )
    assert [r.name for r in plans.get("unlimited").fraud.rules] == ["night"]
    assert plans.get("per-second").fraud.rules == ()


def test_destinations_are_not_checked_without_a_deck() -> None:
    data = plans_data(fraud={"high_risk": ["Atlantide"], "rules": {"high_risk_destination": {"warning": 1}}})
    assert parse_plans(data).get(None).fraud.high_risk.names == {"Atlantide"}


# ------------------------------------------------------------------------------------- errors


def _rule(spec: dict[str, Any], name: str = "cost_burst") -> Mutation:
    return lambda d: d.__setitem__("fraud", {"high_risk": ["Cuba"], "rules": {name: spec}})


def _plan_rule(spec: dict[str, Any], name: str = "cost_burst") -> Mutation:
    return lambda d: d["plans"]["per-second"].__setitem__("fraud", {"rules": {name: spec}})


def _fraud(section: dict[str, Any]) -> Mutation:
    return lambda d: d.__setitem__("fraud", section)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        # thresholds
        (_rule({}), ["[fraud.rules.cost_burst]", "warning or a critical"]),
        (_rule({"warning": 0}), ["[fraud.rules.cost_burst] warning", "above 0"]),
        (_rule({"critical": -5}), ["[fraud.rules.cost_burst] critical", "above 0"]),
        (_rule({"warning": "abc"}), ["[fraud.rules.cost_burst] warning", "'abc'", "decimal"]),
        (_rule({"warning": "NaN"}), ["[fraud.rules.cost_burst] warning", "NaN"]),
        (_rule({"warning": float("nan")}), ["[fraud.rules.cost_burst] warning", "nan"]),  # TOML has nan and inf
        (_rule({"critical": float("inf")}), ["[fraud.rules.cost_burst] critical", "inf"]),
        (_rule({"critical": float("nan")}, "long_call"), ["[fraud.rules.long_call] critical", "whole number"]),
        (_rule({"warning": "Infinity"}), ["[fraud.rules.cost_burst] warning", "Infinity"]),
        (_rule({"warning": "1e999999999"}), ["[fraud.rules.cost_burst] warning", "1e999999999", "largest"]),
        (_rule({"critical": 1e308}), ["[fraud.rules.cost_burst] critical", "largest"]),
        (_rule({"critical": "1e-999999"}), ["[fraud.rules.cost_burst] critical", "4 decimal places"]),
        (_rule({"critical": 0.00001}), ["[fraud.rules.cost_burst] critical", "4 decimal places"]),
        (_rule({"warning": True}), ["fraud.rules.cost_burst.warning", "True"]),
        (_rule({"warning": [1]}), ["fraud.rules.cost_burst.warning", "number or string"]),
        (_rule({"warning": 0}, "calls_per_minute"), ["[fraud.rules.calls_per_minute] warning", "at least 1"]),
        (_rule({"warning": 10.5}, "calls_per_minute"), ["[fraud.rules.calls_per_minute] warning", "whole number"]),
        (_rule({"critical": "10"}, "total_calls_per_day"), ["[fraud.rules.total_calls_per_day] critical", "whole"]),
        (_rule({"critical": 1.5}, "long_call"), ["[fraud.rules.long_call] critical", "minutes"]),
        (_rule({"critical": False}, "sequential_calls"), ["fraud.rules.sequential_calls.critical", "False"]),
        # warning above critical
        (_rule({"warning": 50, "critical": 20}), ["[fraud.rules.cost_burst]", "warning 50 is above critical 20"]),
        (_rule({"warning": "20.01", "critical": "20.00"}), ["warning 20.01 is above critical 20.00"]),
        (_rule({"warning": 6, "critical": 5}, "new_network"), ["[fraud.rules.new_network]", "above critical"]),
        (_plan_rule({"warning": 3, "critical": 2}), ["[plans.per-second.fraud.rules.cost_burst]", "above critical"]),
        # kinds and keys
        (_rule({"warning": 1}, "toll_fraud"), ["[fraud.rules.toll_fraud] kind", "'toll_fraud'"]),
        (_rule({"kind": "costburst", "warning": 1}, "x"), ["fraud.rules.x.kind", "costburst"]),
        (_rule({"warning": 1, "threshold": 3}), ["fraud.rules.cost_burst", "threshold"]),
        (_rule({"warning": 1}, "bad name"), ["fraud.rules", "bad name"]),
        (_rule({"warning": 1, "action": "block"}), ["fraud.rules.cost_burst.action", "block"]),
        (_rule({"warning": 1, "destinations": ["+53"]}, "new_network"), ["[fraud.rules.new_network] destinations"]),
        (_rule({"warning": 1, "days": 3}), ["[fraud.rules.cost_burst] days", "new_network"]),
        (_rule({"warning": 1, "days": 0}, "new_network"), ["fraud.rules.new_network.days"]),
        (_fraud({"rules": {}, "colour": "red"}), ["fraud", "colour"]),
        (_fraud({"directions": ["inbound"]}), ["fraud.directions", "inbound"]),
        (lambda d: d["plans"]["per-second"].__setitem__("fraud", {"directions": ["forwarded"]}),
         ["plans.per-second.fraud", "directions"]),
        # destinations
        (_rule({"warning": 1, "destinations": ["Atlantide"]}),
         ["fraud.rules.cost_burst.destinations", "not in the rate deck", "Atlantide", "'+'"]),
        (_rule({"warning": 1, "destinations": ["cuba"]}), ["fraud.rules.cost_burst.destinations", "cuba"]),
        (_rule({"warning": 1, "destinations": ["53"]}), ["fraud.rules.cost_burst.destinations", "53"]),
        (_rule({"warning": 1, "destinations": ["+053"]}), ["rules.cost_burst.destinations", "bad prefix", "+053"]),
        (_rule({"warning": 1, "destinations": ["+5 3"]}), ["bad prefix", "'+5 3'"]),
        (_rule({"warning": 1, "destinations": ["+"]}), ["bad prefix", "'+'"]),
        (_rule({"warning": 1, "destinations": ["+1234567890123456"]}), ["bad prefix"]),
        (_rule({"warning": 1, "destinations": []}, "x"), ["[fraud.rules.x] kind", "'x'"]),  # kind first
        (_fraud({"high_risk": ["Cuba", "Narnia"]}), ["fraud.high_risk", "Narnia", "rate deck"]),
        (lambda d: d["plans"]["per-second"].__setitem__("fraud", {"high_risk": ["Narnia"]}),
         ["plans.per-second.fraud.high_risk", "Narnia"]),
        (_fraud({"rules": {"high_risk_destination": {"warning": 1}}}),
         ["[plans.", "high_risk_destination", "needs a high_risk list"]),
        (_fraud({"high_risk": ["Cuba", "Cuba"]}), ["fraud.high_risk"]),
        # hours and weekdays
        (_rule({"warning": 1, "hours": "25:00-06:00"}), ["[fraud.rules.cost_burst] hours", "'25:00-06:00'"]),
        (_rule({"warning": 1, "hours": "22:00-06:60"}), ["hours", "'22:00-06:60'"]),
        (_rule({"warning": 1, "hours": "22:00-24:30"}), ["hours", "'22:00-24:30'"]),
        (_rule({"warning": 1, "hours": "24:00-06:00"}), ["hours", "'24:00-06:00'"]),
        (_rule({"warning": 1, "hours": "22:00-22:00"}), ["hours", "'22:00-22:00'", "start equals end"]),
        (_rule({"warning": 1, "hours": "00:00-24:00"}), ["hours", "'00:00-24:00'", "start equals end"]),
        (_rule({"warning": 1, "hours": "2200-0600"}), ["hours", "'2200-0600'", "HH:MM-HH:MM"]),
        (_rule({"warning": 1, "hours": "9:00-17:00"}), ["hours", "'9:00-17:00'"]),
        (_rule({"warning": 1, "hours": ["22:00-06:00", "nights"]}), ["hours", "'nights'"]),
        (_rule({"warning": 1, "hours": []}), ["fraud.rules.cost_burst.hours"]),
        (_rule({"warning": 1, "hours": 22}), ["fraud.rules.cost_burst.hours"]),
        (_rule({"warning": 1, "weekdays": ["monday"]}), ["fraud.rules.cost_burst.weekdays", "monday"]),
        (_rule({"warning": 1, "weekdays": []}), ["fraud.rules.cost_burst.weekdays"]),
    ],
)
def test_fraud_errors_name_the_key(mutate: Mutation, needles: list[str]) -> None:
    data = plans_data()
    mutate(data)
    with pytest.raises(PlansError) as info:
        parse_plans(data, DECK, source="my-plans.toml")
    message = str(info.value)
    assert message.startswith("my-plans.toml: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert isinstance(info.value, ConfigError)


def test_bad_bundled_like_file_is_refused_with_the_file_name(tmp_path: Path) -> None:
    text = (DATA / "plans.toml").read_text(encoding="utf-8")
    path = tmp_path / "plans.toml"
    path.write_text(text.replace('hours = "22:00-06:00"', 'hours = "22h-6h"'), encoding="utf-8")
    expected = r"plans.toml: \[fraud.rules.night_cost_burst\] hours: bad hour range '22h-6h'"
    with pytest.raises(PlansError, match=expected):
        load_plans(path, load_rate_deck(DATA / "rates.csv"))
