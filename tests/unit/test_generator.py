"""`cdrwatch generate` (streams/generator.py): determinism, traffic profile, payload contract, and
labels that are exactly the alerts of the rules engine (run_offline, no broker)."""

from __future__ import annotations

import functools
import ipaddress
import os
import statistics
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli import main
from streams.codecs import decode_cdr, decode_registration
from streams.settings import load_plans_and_rates
from streams.core.errors import ConfigError
from streams.core.numbering import NumberKind, normalise
from streams.core.timeutil import parse_rfc3339
from streams.tools.generator import (
    ALL_SCENARIOS,
    FRAUD_SCENARIOS,
    DECT_UAS,
    DIALLER_UA,
    FRAUD_UAS,
    GATEWAY_UAS,
    PBX_UAS,
    SCENARIOS,
    SOFTPHONE_UAS,
    SUPPLIED_UAS,
    GenerateSummary,
    _Clock,
    french_holidays,
    generate_month,
)
from streams.tools.replay import read_stream, run_offline
from streams.settings import Settings

MONTH = "2026-11"
USERS = 300
Triple = tuple[str, str, str]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def engine_alerts(out: Path, ext: str = "jsonl") -> tuple[set[Triple], dict[tuple[str, str], int]]:
    """Every (user, period, rule) the rules engine raises on the generated files (no broker)."""
    messages = read_stream(out / f"cdrs.{ext}", "cdrs", "start_time") + read_stream(
        out / f"registrations.{ext}", "sip-registrations", "time")
    store, counts = run_offline(Settings(), messages)
    alerts = {(user, period, rule) for (user, period), state in store.periods.items() for rule in state.breaches}
    return alerts, counts


def label_set(summary: GenerateSummary) -> set[Triple]:
    return {(label["user"], label["period"], label["rule"]) for label in summary.labels if "rule" in label}


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateSummary, Path]:
    out = tmp_path_factory.mktemp("generated")
    return generate_month(out, users=USERS, month=MONTH, seed=7), out


@pytest.fixture(scope="module")
def cdrs(month: tuple[GenerateSummary, Path]) -> list[dict[str, Any]]:
    return read_jsonl(month[1] / "cdrs.jsonl")


@pytest.fixture(scope="module")
def ends(cdrs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in cdrs if row["event"] == "end"]


@pytest.fixture(scope="module")
def registrations(month: tuple[GenerateSummary, Path]) -> list[dict[str, Any]]:
    return read_jsonl(month[1] / "registrations.jsonl")


@pytest.fixture(scope="module")
def normal_users(month: tuple[GenerateSummary, Path]) -> set[str]:
    abusers = {user for users in month[0].scenarios.values() for user in users}
    return {f"u{i:05d}" for i in range(1, USERS + 1)} - abusers


# ------------------------------------------------------------------------------------------
# labels == what the engine raises


@pytest.mark.parametrize(
    ("month_text", "seed", "users"),
    [
        (MONTH, 7, USERS),  # the module's month
        ("2026-03", 3, 140),  # DST starts on the 29th
        ("2026-05", 5, 120),  # four public holidays
    ],
)
def test_labels_are_exactly_the_alerts_of_the_rules_engine(
    month_text: str, seed: int, users: int, month: tuple[GenerateSummary, Path], tmp_path: Path
) -> None:
    if (month_text, seed, users) == (MONTH, 7, USERS):
        summary, out = month
    else:
        out = tmp_path
        summary = generate_month(out, users=users, month=month_text, seed=seed)
    alerts, counts = engine_alerts(out)
    labels = label_set(summary)
    assert labels, "every run injects abuse"
    assert alerts - labels == set(), "false positives: a normal user or an extra rule tripped"
    assert labels - alerts == set(), "false negatives: an injected abuse went unnoticed"
    assert counts.get(("cdrs", "dlq"), 0) == 0 and counts.get(("sip-registrations", "dlq"), 0) == 0
    assert counts.get(("cdrs", "duplicate"), 0) == 0


def test_every_scenario_is_injected_with_its_rules(month: tuple[GenerateSummary, Path]) -> None:
    summary, _ = month
    assert set(summary.scenarios) == {s.name for s in ALL_SCENARIOS}
    for scenario in ALL_SCENARIOS:
        for user in summary.scenarios[scenario.name]:
            rules = {label["rule"] for label in summary.labels if label["user"] == user and "rule" in label}
            assert rules == set(scenario.rules), (scenario.name, user)
    assert all(label["period"] == MONTH for label in summary.labels)


def test_no_abuse_means_no_labels_and_no_alerts(tmp_path: Path) -> None:
    summary = generate_month(tmp_path, users=60, month=MONTH, seed=11, abuse_scale=0)
    assert summary.labels == [] and summary.scenarios == {}
    assert engine_alerts(tmp_path)[0] == set()


# ------------------------------------------------------------------------------------------
# determinism


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    a = generate_month(tmp_path / "a", users=40, month=MONTH, seed=5)
    b = generate_month(tmp_path / "b", users=40, month=MONTH, seed=5)
    c = generate_month(tmp_path / "c", users=40, month=MONTH, seed=6)
    for name in ("cdrs.jsonl", "registrations.jsonl", "labels.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "cdrs.jsonl").read_bytes() != (tmp_path / "c" / "cdrs.jsonl").read_bytes()
    assert (a.calls, a.registrations) == (b.calls, b.registrations)
    assert c.labels != a.labels or c.calls != a.calls


# ------------------------------------------------------------------------------------------
# the payload contract


def test_every_event_is_a_valid_payload_in_event_time_order(
    cdrs: list[dict[str, Any]], registrations: list[dict[str, Any]]
) -> None:
    times = []
    for row in cdrs:
        ev = decode_cdr(orjson.dumps(row))
        times.append(ev.start_ms if ev.event == "start" else ev.end_ms)
        assert set(row) == ({"event", "call_id", "user", "customer", "caller", "callee", "direction", "start_time"}
                            | ({"answer_time", "end_time", "billsec", "disposition"} if ev.is_end else set()))
    assert times == sorted(times)
    reg_times = [decode_registration(orjson.dumps(row)).time_ms for row in registrations]
    assert reg_times == sorted(reg_times)


def test_call_ids_are_unique_and_every_start_has_its_end(cdrs: list[dict[str, Any]]) -> None:
    ends = Counter(row["call_id"] for row in cdrs if row["event"] == "end")
    starts = Counter(row["call_id"] for row in cdrs if row["event"] == "start")
    assert max(ends.values()) == 1 and max(starts.values()) == 1
    assert set(starts) <= set(ends)
    assert 0.1 < len(starts) / len(ends) < 0.35


def test_every_call_starts_inside_the_month(ends: list[dict[str, Any]], registrations: list[dict[str, Any]]) -> None:
    assert {row["start_time"][:7] for row in ends} == {MONTH}
    assert {row["time"][:7] for row in registrations} == {MONTH}
    assert {row["start_time"][19:] for row in ends} == {"+01:00"}  # November in Paris


# ------------------------------------------------------------------------------------------
# traffic profile


def _local(row: dict[str, Any]) -> datetime:
    return parse_rfc3339(row["start_time"])


def test_about_a_quarter_of_calls_are_not_answered(ends: list[dict[str, Any]], normal_users: set[str]) -> None:
    mine = [r for r in ends if r["user"] in normal_users]
    dispositions = Counter(r["disposition"] for r in mine)
    unanswered = 1 - dispositions["ANSWERED"] / len(mine)
    assert 0.2 < unanswered < 0.32
    assert dispositions["NO ANSWER"] > dispositions["BUSY"] > dispositions["FAILED"] > 0


def test_business_hours_and_weekly_profile(ends: list[dict[str, Any]], normal_users: set[str]) -> None:
    mine = [_local(r) for r in ends if r["user"] in normal_users]
    holidays = french_holidays(2026)
    workdays = [t for t in mine if t.weekday() < 5 and t.date() not in holidays]
    office = sum(1 for t in workdays if 8 <= t.hour < 19) / len(workdays)
    assert office > 0.85
    lunch = Counter(t.hour for t in workdays)
    assert lunch[12] < lunch[10] / 1.5 and lunch[13] < lunch[15] / 1.5  # the lunch dip
    per_day: dict[date, int] = Counter(t.date() for t in mine)
    weekday_mean = statistics.mean(n for d, n in per_day.items() if d.weekday() < 5 and d not in holidays)
    weekend_mean = statistics.mean(per_day.get(date(2026, 11, d), 0) for d in (1, 7, 8, 14, 15, 21, 22, 28, 29))
    assert weekend_mean < weekday_mean * 0.2
    assert per_day.get(date(2026, 11, 11), 0) < weekday_mean * 0.2  # Armistice Day


def test_durations_are_heavy_tailed(ends: list[dict[str, Any]]) -> None:
    talk = sorted(r["billsec"] for r in ends if r["billsec"] > 0)
    median = talk[len(talk) // 2]
    assert 50 <= median <= 130
    assert talk[int(len(talk) * 0.99)] > 8 * median
    assert statistics.mean(talk) > 1.5 * median


def test_destination_mix(ends: list[dict[str, Any]], normal_users: set[str]) -> None:
    outbound = [r["callee"] for r in ends if r["direction"] == "outbound" and r["user"] in normal_users]
    kinds = Counter()
    for callee in outbound:
        number = normalise(callee)
        if number.kind is NumberKind.EMERGENCY:
            kinds["emergency"] += 1
        elif number.digits.startswith(("3389", "3381", "3382")):
            kinds["premium"] += 1
        elif number.digits.startswith(("33800", "33805")):
            kinds["toll-free"] += 1
        elif number.digits.startswith(("336", "337")):
            kinds["mobile"] += 1
        elif number.digits.startswith("33"):
            kinds["fixed"] += 1
        else:
            kinds["international"] += 1
    share = {k: v / len(outbound) for k, v in kinds.items()}
    assert share["fixed"] > 0.3 and share["mobile"] > 0.25
    assert 0.01 < share["international"] < 0.12
    assert 0 < share["premium"] < 0.02 and 0 < share["toll-free"] < 0.02 and 0 < share["emergency"] < 0.01
    formats = Counter("+33" if c.startswith("+33") else "0033" if c.startswith("0033") else c[:1] for c in outbound)
    assert formats["0"] and formats["+33"] and formats["0033"]  # the same numbers in every format


def test_address_books_have_popular_contacts(ends: list[dict[str, Any]], normal_users: set[str]) -> None:
    by_user: dict[str, Counter[str]] = defaultdict(Counter)
    for r in ends:
        if r["direction"] == "outbound" and r["user"] in normal_users:
            by_user[r["user"]][normalise(r["callee"]).digits] += 1
    busy = [c for c in by_user.values() if sum(c.values()) >= 30]
    assert len(busy) > 50
    top_share = statistics.mean(c.most_common(1)[0][1] / sum(c.values()) for c in busy)
    assert top_share > 0.12
    assert max(len(c) for c in by_user.values()) <= 140  # the cap that keeps normal users legal


def test_phones_are_supplied_and_re_register(registrations: list[dict[str, Any]], normal_users: set[str]) -> None:
    plans, _ = load_plans_and_rates(Settings())
    plan = plans.get(None)
    mine = [r for r in registrations if r["user"] in normal_users]
    assert {plan.classify_user_agent(r["user_agent"]) for r in mine} == {None}
    per_binding = Counter((r["user"], r["instance_id"] or r["contact"]) for r in mine if r["expires"] > 0)
    assert statistics.median(per_binding.values()) >= 10  # periodic refreshes all month
    assert any(r["expires"] == 0 for r in mine)  # some phones unregister when switched off
    assert len({r["user_agent"].split("/")[0].split(" ")[0] for r in mine}) >= 4
    devices = Counter(u for u, _ in per_binding)
    assert max(devices.values()) <= 3 and Counter(devices.values())[2] > 0


@pytest.mark.parametrize(
    ("agents", "rule"),
    [
        (SUPPLIED_UAS + DECT_UAS, None),
        (SOFTPHONE_UAS + FRAUD_UAS, "third_party_device"),
        (GATEWAY_UAS + PBX_UAS + (DIALLER_UA,), "pbx_or_gateway"),
    ],
)
def test_user_agents_fall_in_the_intended_class_of_the_default_plan(agents: tuple[str, ...], rule: str | None) -> None:
    plan = load_plans_and_rates(Settings())[0].get(None)
    assert {ua: plan.classify_user_agent(ua) for ua in agents} == {ua: rule for ua in agents}


# ------------------------------------------------------------------------------------------
# networks: office sites, homes, bindings


def _bindings(rows: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(start, end, identity) of each binding a user's registrations keep up, in time order."""
    intervals: list[tuple[int, int, str]] = []
    current: dict[str, list[int]] = {}
    for row in rows:
        at = parse_rfc3339(row["time"]).timestamp()
        key = row["instance_id"] or row["contact"]
        if key in current and current[key][1] > at:
            current[key][1] = int(at + row["expires"]) if row["expires"] else int(at)
            if row["expires"] == 0:
                intervals.append((current[key][0], current[key][1], key))
                del current[key]
            continue
        if key in current:
            intervals.append((current[key][0], current[key][1], key))
            del current[key]
        if row["expires"]:
            current[key] = [int(at), int(at + row["expires"])]
    intervals += [(s, e, k) for k, (s, e) in current.items()]
    return sorted(intervals)


def _max_overlap(intervals: list[tuple[int, int, str]]) -> int:
    points = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    count = peak = 0
    for _, delta in points:
        count += delta
        peak = max(peak, count)
    return peak


def _by_user(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row["user"]].append(row)
    return out


def test_office_sites_are_public_stable_and_shared_within_a_customer(
    registrations: list[dict[str, Any]], normal_users: set[str]
) -> None:
    mine = [r for r in registrations if r["user"] in normal_users]
    addresses: dict[str, set[str]] = defaultdict(set)  # /24 -> addresses
    customers: dict[str, set[str]] = defaultdict(set)  # /24 -> customers
    users: dict[str, set[str]] = defaultdict(set)  # address -> users
    for r in mine:
        ip = ipaddress.IPv4Address(r["source_ip"])
        assert ip.is_global and ip not in ipaddress.IPv4Network("100.64.0.0/10"), r["source_ip"]
        network = r["source_ip"].rsplit(".", 1)[0]
        addresses[network].add(r["source_ip"])
        customers[network].add(r["customer"])
        users[r["source_ip"]].add(r["user"])
    assert max(len(a) for a in addresses.values()) == 1  # one stable address per /24, all month
    assert max(len(c) for c in customers.values()) == 1  # a site (or home) belongs to one customer
    shared = [ip for ip, who in users.items() if len(who) >= 3]
    assert len(shared) >= 5  # colleagues register from the same office address
    per_user = Counter(u for u, _ in {(r["user"], r["source_ip"]) for r in mine})
    assert max(per_user.values()) <= 3  # at most two office sites and a home
    assert Counter(per_user.values())[2] > 0
    per_customer: dict[str, set[str]] = defaultdict(set)
    for r in mine:
        per_customer[r["customer"]].add(r["source_ip"])
    assert any(len(ips) >= 2 for ips in per_customer.values())  # multi-site customers


def test_honest_users_keep_at_most_three_bindings_and_never_register_beside_a_live_one_from_a_new_network(
    registrations: list[dict[str, Any]], normal_users: set[str]
) -> None:
    rows = _by_user([r for r in registrations if r["user"] in normal_users])
    assert max(_max_overlap(_bindings(mine)) for mine in rows.values()) <= 3
    assert any(_max_overlap(_bindings(mine)) == 3 for mine in rows.values())
    home_evenings = 0
    for mine in rows.values():
        seen: dict[str, float] = {}
        up: dict[str, float] = {}  # identity -> binding end
        for r in mine:
            at = parse_rfc3339(r["time"]).timestamp()
            key = r["instance_id"] or r["contact"]
            network = r["source_ip"].rsplit(".", 1)[0]
            if r["expires"]:
                others = [k for k, end in up.items() if k != key and end > at]
                if network not in seen or seen[network] < at - 30 * 86400:
                    assert not others, (r["user"], r["time"], network)
                elif others and len({x["source_ip"] for x in mine}) > 1:
                    home_evenings += 1
                seen[network] = at
            up[key] = at + r["expires"]
    assert home_evenings > 0  # the network is known: registering beside a live binding is fine


def test_nights_are_quiet(ends: list[dict[str, Any]], normal_users: set[str], month: tuple[GenerateSummary, Path]) -> None:
    targets = set(month[0].targets.get("wangiri", []))
    night = [r for r in ends if r["user"] in normal_users - targets and not 6 <= _local(r).hour < 23]
    assert len(night) < 0.002 * len(ends)


# ------------------------------------------------------------------------------------------
# fraud scenarios

HIGH_RISK = {"Cuba", "Guinée", "Iles Cook", "Nauru", "Sao Tomé-et-Principe", "Satellite Inmarsat", "Satellite Iridium",
             "Sierra Leone", "Somalie", "Tuvalu", "France Premium", "Lettonie Premium"}


@functools.cache
def _rates() -> Any:
    return load_plans_and_rates(Settings())[1]


@functools.cache
def _destination(number: str) -> str | None:
    rates = _rates()
    rate = rates.lookup(normalise(number).digits)
    return None if rate is None else rate.destination


def fraud_labels(summary: GenerateSummary) -> dict[str, dict[str, str]]:
    return {label["user"]: label for label in summary.labels if label.get("kind") == "fraud"}


def test_high_risk_destinations_are_in_the_bundled_plan() -> None:
    plans = (Path(__file__).parents[2] / "streams" / "data" / "plans.toml").read_text()
    assert all(f'"{name}"' in plans for name in HIGH_RISK)


def test_every_fraud_scenario_is_labelled_with_its_first_call(
    month: tuple[GenerateSummary, Path], cdrs: list[dict[str, Any]]
) -> None:
    summary, _ = month
    labels = fraud_labels(summary)
    assert {label["scenario"] for label in labels.values()} == {s.name for s in FRAUD_SCENARIOS}
    for scenario in FRAUD_SCENARIOS:
        assert set(summary.scenarios[scenario.name]) == {u for u, lb in labels.items() if lb["scenario"] == scenario.name}
    assert set(labels) & {u for users in summary.targets.values() for u in users} == set()
    assert all(set(lb) == {"user", "period", "scenario", "kind", "first_call", "damage"} for lb in labels.values())
    starts = {row["call_id"] for row in cdrs if row["event"] == "start"}
    for user, label in labels.items():
        first, damage = parse_rfc3339(label["first_call"]), parse_rfc3339(label["damage"])
        assert first < damage and first.day >= 16 and label["period"] == MONTH
        mine = [r for r in cdrs if r["user"] == user and r["event"] == "end"]
        risky = sorted((r for r in mine if r["direction"] == "outbound" and _destination(r["callee"]) in HIGH_RISK),
                       key=lambda r: parse_rfc3339(r["start_time"]))
        assert risky, user
        # the first call to a high-risk destination starts the label, the first answered one's end is
        # its damage, and every one sends a start
        answered = [r for r in risky if r["billsec"] > 0]
        assert (risky[0]["start_time"], answered[0]["end_time"]) == (label["first_call"], label["damage"]), user
        assert all(r["call_id"] in starts for r in risky), user
    targets = set(summary.targets["wangiri"])
    assert 40 <= len(targets) + len(summary.scenarios["wangiri"]) <= 80 * len(summary.scenarios["wangiri"])
    assert all(label["kind"] == "target" and set(label) == {"user", "period", "scenario", "kind"}
               for label in summary.labels if label["user"] in targets)


def _calls_of(cdrs: list[dict[str, Any]], summary: GenerateSummary, scenario: str) -> dict[str, list[dict[str, Any]]]:
    users = set(summary.scenarios[scenario])
    return _by_user([r for r in cdrs if r["user"] in users and r["event"] == "end"])


def _epoch(text: str) -> float:
    return parse_rfc3339(text).timestamp()


def test_silent_call_lasts_five_hours_alone(month: tuple[GenerateSummary, Path], cdrs: list[dict[str, Any]]) -> None:
    summary, _ = month
    labels = fraud_labels(summary)
    for user in summary.scenarios["silent_call"]:
        start, end = _epoch(labels[user]["first_call"]), _epoch(labels[user]["damage"])
        mine = [r for r in cdrs if r["user"] == user]
        call = next(r for r in mine if r["event"] == "end" and _epoch(r["start_time"]) == start)
        assert call["billsec"] == 5 * 3600 and call["disposition"] == "ANSWERED"
        assert _destination(call["callee"]) in {"Satellite Inmarsat", "Satellite Iridium"}
        assert parse_rfc3339(call["start_time"]).hour == 20
        others = [r for r in mine if r["call_id"] != call["call_id"]
                  and (start <= _epoch(r["start_time"]) <= end or start <= _epoch(r.get("end_time") or r["start_time"]) <= end)]
        assert others == []
        assert sum(1 for r in mine if r["call_id"] == call["call_id"]) == 2  # its start and its end


def test_fraud_shapes(month: tuple[GenerateSummary, Path], cdrs: list[dict[str, Any]],
                      registrations: list[dict[str, Any]]) -> None:
    summary, _ = month
    labels = fraud_labels(summary)
    for user, calls in _calls_of(cdrs, summary, "irsf").items():
        first = _epoch(labels[user]["first_call"])
        burst = [r for r in calls if first <= _epoch(r["start_time"]) < first + 3600 and r["direction"] == "outbound"]
        numbers = {normalise(r["callee"]).digits for r in burst}
        assert 61 <= len(numbers) == len(burst) <= 120
        shared = len(os.path.commonprefix(sorted(numbers)))
        assert 8 <= shared <= 9 and {len(n) for n in numbers} == {len(next(iter(numbers)))}
        assert 3 <= len(next(iter(numbers))) - shared <= 4
        assert all(60 <= r["billsec"] <= 600 for r in burst)
    for user, calls in _calls_of(cdrs, summary, "short_call_burst").items():
        first = _epoch(labels[user]["first_call"])
        burst = [r for r in calls if first <= _epoch(r["start_time"]) < first + 3600]
        assert 150 <= len(burst) == len({normalise(r["callee"]).digits for r in burst}) <= 300
        answered = [r for r in burst if r["billsec"] > 0]
        assert 0 < len(answered) < 0.1 * len(burst) and all(r["billsec"] <= 6 for r in answered)
    for user, calls in _calls_of(cdrs, summary, "traffic_pumping").items():
        pumped = [r for r in calls if _destination(r["callee"]) in HIGH_RISK]
        assert 2 <= len({normalise(r["callee"]).digits for r in pumped}) <= 5 and len(pumped) >= 8
        assert all(1200 <= r["billsec"] <= 3600 for r in pumped)
    for user, calls in _calls_of(cdrs, summary, "wangiri").items():
        back = next(r for r in calls if _epoch(r["start_time"]) == _epoch(labels[user]["first_call"]))
        ring = [r for r in calls if r["direction"] == "inbound" and normalise(r["caller"]).digits
                == normalise(back["callee"]).digits]
        assert len(ring) == 1 and ring[0]["disposition"] == "NO ANSWER" and ring[0]["billsec"] == 0
        assert 3600 <= _epoch(back["start_time"]) - _epoch(ring[0]["end_time"]) <= 6 * 3600
        assert 180 <= back["billsec"] <= 900
    rung = [r for r in cdrs if r["event"] == "end" and r["user"] in set(summary.targets["wangiri"])
            and r["direction"] == "inbound" and _destination(r["caller"]) in HIGH_RISK]
    assert {r["user"] for r in rung} == set(summary.targets["wangiri"])
    assert all(r["disposition"] == "NO ANSWER" and 1 <= _epoch(r["end_time"]) - _epoch(r["start_time"]) <= 3 for r in rung)
    regs = _by_user(registrations)
    for user in summary.scenarios["hacked_account"]:
        first = _epoch(labels[user]["first_call"])
        assert 1 <= parse_rfc3339(labels[user]["first_call"]).hour < 4
        before = {r["source_ip"].rsplit(".", 1)[0] for r in regs[user] if _epoch(r["time"]) < first - 3 * 3600}
        night = [r for r in regs[user] if first - 3600 <= _epoch(r["time"]) < first]
        new = {r["source_ip"].rsplit(".", 1)[0] for r in night} - before
        assert len(new) == 2 and all(r["user_agent"] in FRAUD_UAS for r in night if r["source_ip"].rsplit(".", 1)[0] in new)
    for user in summary.scenarios["hacked_pbx"]:
        assert len({r["source_ip"] for r in regs[user]}) == 1  # the PBX's own network, all month
        assert {r["user_agent"] for r in regs[user]} <= set(PBX_UAS)


def test_the_manifest_lists_every_scenario(month: tuple[GenerateSummary, Path]) -> None:
    summary, out = month
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["users"] == USERS and manifest["month"] == MONTH and manifest["seed"] == 7
    assert manifest["customers"] == summary.customers
    assert manifest["scenarios"] == summary.scenarios
    assert set(manifest["scenarios"]) == {s.name for s in SCENARIOS} | {s.name for s in FRAUD_SCENARIOS}
    assert out / "manifest.json" in summary.files


# ------------------------------------------------------------------------------------------
# calendar, clock, Parquet, errors


def test_french_holidays() -> None:
    assert {date(2026, 4, 6), date(2026, 5, 14), date(2026, 5, 25), date(2026, 11, 11)} <= french_holidays(2026)
    assert date(2027, 3, 29) in french_holidays(2027)  # Easter Monday 2027


def test_clock_follows_daylight_saving_time() -> None:
    from zoneinfo import ZoneInfo

    clock = _Clock(ZoneInfo("Europe/Paris"))
    before = int(datetime.fromisoformat("2026-10-25T00:59:59+00:00").timestamp())
    assert clock(before) == "2026-10-25T02:59:59+02:00"
    assert clock(before + 1) == "2026-10-25T02:00:00+01:00"
    assert clock(int(datetime.fromisoformat("2026-12-31T23:30:00+00:00").timestamp())) == "2027-01-01T00:30:00+01:00"


def test_parquet_output_is_typed_and_replays_without_rejects(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    generate_month(tmp_path / "pq", users=40, month=MONTH, seed=9, fmt="parquet")
    generate_month(tmp_path / "js", users=40, month=MONTH, seed=9)
    table = pq.read_table(tmp_path / "pq" / "cdrs.parquet")
    assert str(table.schema.field("billsec").type) == "int64"
    assert str(table.schema.field("start_time").type) == "string"
    assert str(pq.read_table(tmp_path / "pq" / "registrations.parquet").schema.field("expires").type) == "int64"
    ends_js = [r for r in read_jsonl(tmp_path / "js" / "cdrs.jsonl") if r["event"] == "end"]
    assert table.to_pylist() == ends_js  # the same end events, typed; no start events (see --help)
    regs = pq.read_table(tmp_path / "pq" / "registrations.parquet").to_pylist()
    assert regs == read_jsonl(tmp_path / "js" / "registrations.jsonl")
    assert (tmp_path / "pq" / "labels.jsonl").read_bytes() == (tmp_path / "js" / "labels.jsonl").read_bytes()
    # what `cdrwatch replay` sends: every row is a valid payload (no DLQ)
    for message in read_stream(tmp_path / "pq" / "cdrs.parquet", "cdrs", "start_time"):
        decode_cdr(message.value)
    for message in read_stream(tmp_path / "pq" / "registrations.parquet", "sip-registrations", "time"):
        decode_registration(message.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": 0}, "--users: expected at least 1"),
        ({"month": "2026-13"}, "--month: expected a month as YYYY-MM"),
        ({"month": "Nov 2026"}, "--month: expected a month as YYYY-MM"),
        ({"fmt": "csv"}, "--format: expected jsonl or parquet"),
        ({"timezone": "Mars/Olympus_Mons"}, "--timezone: unknown time zone"),
        ({"abuse_scale": -1.0}, "--abuse-scale: expected >= 0"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    args: dict[str, Any] = {"users": 10, "month": MONTH, **kwargs}
    with pytest.raises(ConfigError, match=message):
        generate_month(tmp_path, **args)


def test_cli_generate_prints_a_summary_and_exits_2_on_a_bad_month(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--users", "30", "--month", MONTH, "--seed", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "generated 2026-11 for 30 users" in out and "labels:" in out
    assert (tmp_path / "labels.jsonl").is_file()
    assert main(["generate", "--users", "30", "--month", "2026-00", "--out", str(tmp_path)]) == 2
    assert "--month: expected a month as YYYY-MM" in capsys.readouterr().err
