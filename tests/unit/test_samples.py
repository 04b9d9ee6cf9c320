"""Invariants of the labelled sample stream (streams/samples.py) and of the bundled plans/rates.

The rules are re-implemented here by brute force, straight from the README's rules,
independently of streams.core: the sample's `expected` list must be exactly what they raise, and it
must stay so under both readings of the boundaries that could be read either way (is a binding
still active at time + expires? is a call at t + 60 min in the same window as a call at t?).
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.tools.samples import SampleStream, build_sample, write_jsonl, write_sample

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "streams" / "data"
BUNDLED = DATA / "sample"
BUNDLED_NORMAL_USERS = 200  # the bundled copy: write_sample(BUNDLED, normal_users=200)
MONTH = "2026-11"

RULES = ("distinct_numbers", "simultaneous_calls", "registered_devices", "third_party_device",
         "pbx_or_gateway", "autodialer")
ABUSERS = {
    "abuse-distinct": "distinct_numbers",
    "abuse-simultaneous": "simultaneous_calls",
    "abuse-devices": "registered_devices",
    "abuse-thirdparty": "third_party_device",
    "abuse-pbx": "pbx_or_gateway",
    "abuse-autodialer": "autodialer",
}
EDGES = ("edge-150", "edge-backtoback", "edge-unregister", "edge-rebind", "edge-expiry", "edge-60perhour")
EMERGENCY = {"15", "17", "18", "112", "114", "115", "119", "191", "196", "197"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")

START_KEYS = ["event", "call_id", "user", "customer", "caller", "callee", "direction", "start_time"]
END_KEYS = START_KEYS + ["answer_time", "end_time", "billsec", "disposition"]
REG_KEYS = ["user", "customer", "contact", "instance_id", "user_agent", "source_ip", "expires", "time"]


# ---------------------------------------------------------------------------------------------
# an independent reading of the README's rules


def normalise(raw: str) -> str | None:
    """E.164 digits per the README's rules, or None for emergency/short numbers."""
    if raw in EMERGENCY or re.fullmatch(r"116\d{3}", raw):
        return None
    if raw.startswith("+"):
        digits = raw[1:]
    elif raw.startswith("00"):
        digits = raw[2:]
    elif raw.startswith("0") and len(raw) == 10:
        digits = "33" + raw[1:]
    else:
        digits = raw
    assert digits.isdigit(), raw
    return digits


def load_rates() -> dict[str, tuple[str, Decimal]]:
    with (DATA / "rates.csv").open(encoding="utf-8", newline="") as f:
        return {r["prefix"]: (r["destination"], Decimal(r["rate_per_minute"])) for r in csv.DictReader(f)}


def destination(digits: str, rates: Mapping[str, tuple[str, Decimal]]) -> str | None:
    for n in range(len(digits), 0, -1):
        hit = rates.get(digits[:n])
        if hit is not None:
            return hit[0]
    return None


def load_plans() -> dict[str, Any]:
    with (DATA / "plans.toml").open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Call:
    call_id: str
    user: str
    direction: str
    callee: str
    start: datetime
    end: datetime
    billsec: int


def ts(text: object) -> datetime:
    assert isinstance(text, str)
    value = datetime.fromisoformat(text)
    assert value.utcoffset() is not None, text
    return value


def calls_by_user(sample: SampleStream) -> dict[str, list[Call]]:
    out: dict[str, list[Call]] = defaultdict(list)
    for e in sample.cdrs:
        if e["event"] == "end":
            billsec = e["billsec"]
            assert isinstance(billsec, int)
            out[str(e["user"])].append(Call(str(e["call_id"]), str(e["user"]), str(e["direction"]),
                                            str(e["callee"]), ts(e["start_time"]), ts(e["end_time"]), billsec))
    return out


def regs_by_user(sample: SampleStream) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in sample.registrations:
        out[str(r["user"])].append(r)
    return out


def period(t: datetime, tz: ZoneInfo) -> str:
    return t.astimezone(tz).strftime("%Y-%m")


def distinct_covered(calls: Iterable[Call], included: set[str], rates: Mapping[str, tuple[str, Decimal]],
                     tz: ZoneInfo) -> dict[str, set[str]]:
    per_period: dict[str, set[str]] = defaultdict(set)
    for c in calls:
        if c.direction != "outbound" or c.billsec <= 0:
            continue
        digits = normalise(c.callee)
        if digits is None or destination(digits, rates) not in included:
            continue
        per_period[period(c.start, tz)].add(digits)
    return per_period


def overlap_peaks(calls: Iterable[Call], *, closed: bool = False) -> list[tuple[datetime, int]]:
    """(instant, number of calls in progress) after every change; [start, end) unless closed."""
    points: list[tuple[datetime, int]] = []
    for c in calls:
        points += [(c.start, +1), (c.end, -1)]
    # at equal instants: half-open intervals release before they take; closed ones take first
    points.sort(key=lambda p: (p[0], -p[1] if closed else p[1]))
    level, out = 0, []
    for t, delta in points:
        level += delta
        out.append((t, level))
    return out


def binding_levels(regs: Iterable[Mapping[str, object]], *, inclusive_expiry: bool = False,
                   identity: Callable[[Mapping[str, object]], object] | None = None,
                   honour_expiry: bool = True, honour_unregister: bool = True) -> list[tuple[datetime, int]]:
    """(registration time, active bindings right after it) for each registration of one user."""
    key = identity or (lambda r: r["instance_id"] if r["instance_id"] is not None else r["contact"])
    active: dict[object, datetime | None] = {}
    out = []
    for r in regs:
        t = ts(r["time"])
        if honour_expiry:
            active = {k: exp for k, exp in active.items()
                      if exp is None or (t <= exp if inclusive_expiry else t < exp)}
        expires = r["expires"]
        assert isinstance(expires, int)
        if expires == 0 and honour_unregister:
            active.pop(key(r), None)
        elif expires > 0:
            active[key(r)] = t + timedelta(seconds=expires) if honour_expiry else None
        out.append((t, len(active)))
    return out


def max_calls_in_hour(starts: list[datetime], *, closed: bool = False) -> list[tuple[datetime, int]]:
    """(window end = a call's start, outbound calls started within the 60 minutes up to it)."""
    starts = sorted(starts)
    out, lo = [], 0
    for hi, t in enumerate(starts):
        while (starts[lo] < t - timedelta(hours=1)) if closed else (starts[lo] <= t - timedelta(hours=1)):
            lo += 1
        out.append((t, hi - lo + 1))
    return out


def classify(ua: str, plan: Mapping[str, Any]) -> str | None:
    if any(re.search(p, ua) for p in plan["pbx_user_agents"]):
        return "pbx_or_gateway"
    if any(re.search(p, ua) for p in plan["allowed_user_agents"]):
        return None
    return "third_party_device"


def reference_alerts(sample: SampleStream, *, lenient: bool) -> set[tuple[str, str, str]]:
    """The README's rules, by brute force, for users on the default plan.

    ``lenient`` reads the open boundaries the inclusive way (a binding is still active at
    time + expires; a 60-minute window is closed at both ends): more alerts, never fewer."""
    plans = load_plans()
    plan = plans["plans"][plans["default_plan"]]
    tz = ZoneInfo(plans["timezone"])
    rates = load_rates()
    included = set(plan["included"])
    alerts: set[tuple[str, str, str]] = set()
    for user, calls in calls_by_user(sample).items():
        for p, numbers in distinct_covered(calls, included, rates, tz).items():
            if len(numbers) > plan["max_distinct_numbers"]:
                alerts.add((user, p, "distinct_numbers"))
        for t, level in overlap_peaks(calls):
            if level > plan["max_simultaneous_calls"]:
                alerts.add((user, period(t, tz), "simultaneous_calls"))
        outbound = [c.start for c in calls if c.direction == "outbound"]
        for t, count in max_calls_in_hour(outbound, closed=lenient):
            if count > plan["max_calls_per_hour"]:
                alerts.add((user, period(t, tz), "autodialer"))
    for user, regs in regs_by_user(sample).items():
        for t, level in binding_levels(regs, inclusive_expiry=lenient):
            if level > plan["max_registered_devices"]:
                alerts.add((user, period(t, tz), "registered_devices"))
        for r in regs:
            rule = classify(str(r["user_agent"]), plan)
            if rule is not None:
                alerts.add((user, period(ts(r["time"]), tz), rule))
    return alerts


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def sample() -> SampleStream:
    return build_sample()


@pytest.fixture(scope="module")
def default_plan() -> dict[str, Any]:
    plans = load_plans()
    plan: dict[str, Any] = plans["plans"][plans["default_plan"]]
    return plan


PARIS = ZoneInfo("Europe/Paris")


# ---------------------------------------------------------------------------------------------
# determinism and formats


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a, b = build_sample(normal_users=15), build_sample(normal_users=15)
    assert a == b
    assert orjson.dumps(a.cdrs) == orjson.dumps(b.cdrs)
    assert build_sample(normal_users=15, seed=8).cdrs != a.cdrs


def test_special_users_do_not_depend_on_the_number_of_normal_users() -> None:
    small, big = build_sample(normal_users=2), build_sample(normal_users=25)

    def special(s: SampleStream) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        keep = set(ABUSERS) | set(EDGES)
        return ([e for e in s.cdrs if e["user"] in keep],
                [r for r in s.registrations if r["user"] in keep])

    assert special(small) == special(big)
    assert small.expected == big.expected


def test_other_months_and_bad_arguments() -> None:
    march = build_sample(normal_users=5, month="2027-03")  # DST starts 2027-03-28
    assert {p for _, p, _ in march.expected} == {"2027-03"}
    assert reference_alerts(march, lenient=False) == set(march.expected)
    assert reference_alerts(march, lenient=True) == set(march.expected)
    with pytest.raises(ValueError):
        build_sample(month="2026-13")
    with pytest.raises(ValueError):
        build_sample(normal_users=-1)


def test_payload_fields_and_types(sample: SampleStream) -> None:
    for e in sample.cdrs:
        if e["event"] == "start":
            assert list(e) == START_KEYS
        else:
            assert e["event"] == "end" and list(e) == END_KEYS
        for k in ("call_id", "user", "customer", "caller", "callee"):
            assert isinstance(e[k], str) and e[k]
        assert e["direction"] in ("outbound", "inbound", "forwarded")
        assert RFC3339.match(str(e["start_time"]))
        if e["event"] == "end":
            start, end = ts(e["start_time"]), ts(e["end_time"])
            assert RFC3339.match(str(e["end_time"]))
            billsec = e["billsec"]
            assert isinstance(billsec, int) and not isinstance(billsec, bool) and billsec >= 0
            assert e["disposition"] in ("ANSWERED", "NO ANSWER", "BUSY", "FAILED")
            if billsec > 0:
                assert e["disposition"] == "ANSWERED"
                answer = ts(e["answer_time"])
                assert RFC3339.match(str(e["answer_time"]))
                assert start <= answer < end
                assert (end - answer).total_seconds() == billsec
            else:
                assert e["answer_time"] is None and e["disposition"] != "ANSWERED"
                assert start < end
    for r in sample.registrations:
        assert list(r) == REG_KEYS
        for k in ("user", "customer", "contact", "user_agent", "source_ip"):
            assert isinstance(r[k], str) and r[k]
        assert str(r["contact"]).startswith("sip:")
        assert r["instance_id"] is None or str(r["instance_id"]).startswith("<urn:uuid:")
        expires = r["expires"]
        assert isinstance(expires, int) and not isinstance(expires, bool) and expires in (0, 3600)
        assert RFC3339.match(str(r["time"]))
    # JSON-serialisable exactly as they are, and `Z`-free offsets everywhere
    json.dumps(sample.cdrs)
    json.dumps(sample.registrations)


def test_business_times_are_paris_local_with_offset(sample: SampleStream) -> None:
    utc_written = set()
    for e in sample.cdrs:
        text = str(e["start_time"])
        if text.endswith("+00:00"):
            utc_written.add(e["user"])
        else:
            assert text.endswith(ts(text).astimezone(PARIS).strftime("%z")[:3] + ":00"), text
            assert text.endswith("+01:00")  # November: CET
    assert utc_written == {"edge-150"}


def test_streams_are_sorted_by_event_time(sample: SampleStream) -> None:
    def key(e: Mapping[str, object]) -> tuple[datetime, int]:
        return (ts(e["end_time"]), 0) if e["event"] == "end" else (ts(e["start_time"]), 1)

    keys = [key(e) for e in sample.cdrs]
    assert keys == sorted(keys)  # at equal instants an `end` precedes a `start`
    times = [ts(r["time"]) for r in sample.registrations]
    assert times == sorted(times)


def test_call_ids_unique_and_starts_match_their_end(sample: SampleStream) -> None:
    ends: dict[str, Mapping[str, object]] = {}
    seen_start: set[str] = set()
    for e in sample.cdrs:
        cid = str(e["call_id"])
        assert re.fullmatch(re.escape(str(e["user"])) + r"-\d{5}", cid)
        if e["event"] == "end":
            assert cid not in ends
            ends[cid] = e
        else:
            assert cid not in seen_start and cid not in ends  # a start comes once, before its end
            seen_start.add(cid)
    pending = {str(e["call_id"]): e for e in sample.cdrs if e["event"] == "start"}
    for cid, start in pending.items():
        assert {k: ends[cid][k] for k in START_KEYS[1:]} == {k: start[k] for k in START_KEYS[1:]}
    assert seen_start and len(seen_start) < len(ends)


# ---------------------------------------------------------------------------------------------
# the labels


def test_expected_is_exactly_what_the_rules_raise(sample: SampleStream) -> None:
    assert sample.expected == sorted((user, MONTH, rule) for user, rule in ABUSERS.items())
    assert reference_alerts(sample, lenient=False) == set(sample.expected)
    assert reference_alerts(sample, lenient=True) == set(sample.expected)


def metrics(sample: SampleStream, plan: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per user, the peak value of each rule's measure (third-party/PBX: registrations matching)."""
    rates, tz = load_rates(), PARIS
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RULES, 0))
    for user, calls in calls_by_user(sample).items():
        m = out[user]
        m["distinct_numbers"] = max(
            (len(v) for v in distinct_covered(calls, set(plan["included"]), rates, tz).values()), default=0)
        m["simultaneous_calls"] = max(level for _, level in overlap_peaks(calls))
        m["autodialer"] = max((n for _, n in max_calls_in_hour(
            [c.start for c in calls if c.direction == "outbound"], closed=True)), default=0)
    for user, regs in regs_by_user(sample).items():
        m = out[user]
        m["registered_devices"] = max(level for _, level in binding_levels(regs, inclusive_expiry=True))
        kinds = [classify(str(r["user_agent"]), plan) for r in regs]
        m["third_party_device"] = kinds.count("third_party_device")
        m["pbx_or_gateway"] = kinds.count("pbx_or_gateway")
    return out


def limits(plan: Mapping[str, Any]) -> dict[str, int]:
    return {
        "distinct_numbers": plan["max_distinct_numbers"],
        "simultaneous_calls": plan["max_simultaneous_calls"],
        "registered_devices": plan["max_registered_devices"],
        "autodialer": plan["max_calls_per_hour"],
        "third_party_device": 0,
        "pbx_or_gateway": 0,
    }


def test_each_abuser_exceeds_exactly_its_own_threshold(sample: SampleStream, default_plan: dict[str, Any]) -> None:
    m, lim = metrics(sample, default_plan), limits(default_plan)
    assert lim == {"distinct_numbers": 150, "simultaneous_calls": 3, "registered_devices": 3, "autodialer": 60,
                   "third_party_device": 0, "pbx_or_gateway": 0}
    for user, own in ABUSERS.items():
        for rule in RULES:
            assert (m[user][rule] > lim[rule]) == (rule == own), (user, rule, m[user][rule])
    assert m["abuse-distinct"]["distinct_numbers"] == 160
    assert m["abuse-simultaneous"]["simultaneous_calls"] == 4
    assert m["abuse-devices"]["registered_devices"] == 4
    assert m["abuse-autodialer"]["autodialer"] == 70
    assert m["abuse-thirdparty"]["third_party_device"] >= 1
    assert m["abuse-pbx"]["pbx_or_gateway"] >= 1
    # each abuser also has an operator-supplied phone
    for user in ABUSERS:
        assert any(classify(str(r["user_agent"]), default_plan) is None for r in regs_by_user(sample)[user])


def test_autodialer_burst_is_invisible_to_clock_hours(sample: SampleStream) -> None:
    starts = [c.start.astimezone(PARIS) for c in calls_by_user(sample)["abuse-autodialer"]
              if c.direction == "outbound"]
    per_clock_hour: dict[tuple[int, int], int] = defaultdict(int)
    for t in starts:
        per_clock_hour[(t.day, t.hour)] += 1
    assert max(per_clock_hour.values()) <= 60
    burst = sorted(t for t in starts if per_clock_hour[(t.day, t.hour)] > 10)
    assert len(burst) == 70 and burst[-1] - burst[0] < timedelta(minutes=50)
    calls = sorted(calls_by_user(sample)["abuse-autodialer"], key=lambda c: c.start)
    assert all(a.end <= b.start for a, b in zip(calls, calls[1:]))
    assert len({normalise(c.callee) for c in calls if c.start.astimezone(PARIS) in burst}) <= 40


def test_normal_users_stay_within_every_limit(sample: SampleStream, default_plan: dict[str, Any]) -> None:
    calls, regs = calls_by_user(sample), regs_by_user(sample)
    normal = sorted(u for u in calls if re.fullmatch(r"u\d{4}", u))
    assert len(normal) == 300
    customers = {str(e["customer"]) for e in sample.cdrs if str(e["user"]) in normal}
    assert 300 / 6 <= len(customers) < 300
    unanswered = total = 0
    for user in normal:
        mine = sorted(calls[user], key=lambda c: c.start)
        assert 10 <= len(mine) <= 61
        assert all(a.end <= b.start for a, b in zip(mine, mine[1:])), user  # back-to-back at most
        assert max(n for _, n in max_calls_in_hour([c.start for c in mine], closed=True)) <= 10
        assert max(len(v) for v in distinct_covered(mine, set(default_plan["included"]), load_rates(),
                                                    PARIS).values()) < 150
        assert len({normalise(c.callee) for c in mine if c.direction == "outbound"}) <= 40 + 3 + 1
        assert 1 <= max(level for _, level in binding_levels(regs[user], inclusive_expiry=True)) <= 2
        assert all(classify(str(r["user_agent"]), default_plan) is None for r in regs[user])
        assert len(regs[user]) <= 16
        assert {c.direction for c in mine} >= {"outbound"}
        for c in mine:
            local = c.start.astimezone(PARIS)
            assert local.weekday() < 5 and 8 <= local.hour < 22 and local.strftime("%Y-%m") == MONTH
        unanswered += sum(c.billsec == 0 for c in mine)
        total += len(mine)
    assert 0.18 < unanswered / total < 0.32
    directions = {c.direction for u in normal for c in calls[u]}
    assert directions == {"outbound", "inbound", "forwarded"}
    formats = {("+" if c.callee.startswith("+") else "00" if c.callee.startswith("00") else c.callee[:2])
               for u in normal for c in calls[u] if c.direction == "outbound"}
    assert {"+", "00", "01", "06"} <= formats
    assert len(sample.registrations) < 15 * len(regs)
    # the emergency call
    emergency = [c for c in calls["u0001"] if c.callee == "112"]
    assert len(emergency) == 1 and emergency[0].billsec > 0 and emergency[0].direction == "outbound"


def test_edge_cases_sit_at_the_limits_without_crossing(sample: SampleStream, default_plan: dict[str, Any]) -> None:
    calls, regs = calls_by_user(sample), regs_by_user(sample)
    rates, included = load_rates(), set(default_plan["included"])
    m = metrics(sample, default_plan)
    for user in EDGES:
        assert all(v <= lim for v, lim in zip((m[user][r] for r in RULES), (limits(default_plan)[r] for r in RULES)))

    # edge-150: exactly 150 in November (Paris); the 5 late calls written in UTC belong to December
    per_period = distinct_covered(calls["edge-150"], included, rates, PARIS)
    assert {p: len(v) for p, v in per_period.items()} == {MONTH: 150, "2026-12": 5}
    naive_utc = {normalise(c.callee) for c in calls["edge-150"]
                 if c.direction == "outbound" and c.billsec > 0 and c.start.strftime("%Y-%m") == MONTH}
    raw = {c.callee for c in calls["edge-150"] if c.direction == "outbound"}
    assert len(naive_utc - {None}) > 150 and len(raw) > 150  # a careless count would fire
    assert {"112", "15", "17", "18"} <= raw

    # edge-backtoback: 3 at once at most with [start, end); closed intervals would see 4
    bb = calls["edge-backtoback"]
    assert max(level for _, level in overlap_peaks(bb)) == 3
    assert max(level for _, level in overlap_peaks(bb, closed=True)) == 4
    ordered = sorted(bb, key=lambda c: c.start)
    assert sum(a.end == b.start for a, b in zip(ordered, ordered[1:])) >= 3

    # edge-unregister / edge-rebind / edge-expiry: 3 bindings, 4+ for a careless registrar
    def peak(user: str, **kw: Any) -> int:
        return max(level for _, level in binding_levels(regs[user], **kw))

    assert peak("edge-unregister") == 3 and peak("edge-unregister", honour_unregister=False) == 4
    assert peak("edge-rebind") == 3 and peak("edge-rebind", identity=lambda r: r["contact"]) == 4
    assert peak("edge-expiry") == 3 and peak("edge-expiry", honour_expiry=False) == 6

    # edge-60perhour: exactly 60 outbound call starts within one hour
    assert m["edge-60perhour"]["autodialer"] == 60


def test_every_callee_is_priced_by_the_rate_deck(sample: SampleStream) -> None:
    rates = load_rates()
    unpriced, emergency = set(), 0
    for e in sample.cdrs:
        for field in ("callee", "caller"):
            digits = normalise(str(e[field]))
            if digits is None:
                emergency += field == "callee"
                continue
            if destination(digits, rates) is None:
                unpriced.add(str(e[field]))
    assert not unpriced
    assert emergency > 0


# ---------------------------------------------------------------------------------------------
# plans.toml and rates.csv


def test_rate_deck_format() -> None:
    text = (DATA / "rates.csv").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "prefix,destination,rate_per_minute"
    rows = list(csv.reader(lines[1:]))
    prefixes = [r[0] for r in rows]
    assert prefixes == sorted(prefixes) and len(set(prefixes)) == len(prefixes)
    for prefix, dest, raw_rate in rows:
        assert prefix.isdigit() and not prefix.startswith("0") and dest.strip() == dest != ""
        assert re.fullmatch(r"\d+\.\d{4}", raw_rate)
    rates = load_rates()
    assert destination("33142685300", rates) == "France Fixe"
    assert destination("33612345678", rates) == "France Mobile"
    assert destination("33899123456", rates) == "France Premium"
    assert destination("262262123456", rates) == "Réunion Fixe"
    assert destination("442071234567", rates) == "Royaume-Uni Fixe"
    assert destination("447700900123", rates) == "Royaume-Uni Mobile"
    assert destination("4915112345678", rates) == "Allemagne Mobile"
    assert destination("18675550123", rates) == "Canada Territoires du Nord Fixe"
    assert destination("18765550123", rates) == "Jamaïque"
    assert destination("12125550123", rates) == "Etats-Unis Fixe"
    assert destination("870772001234", rates) == "Satellite Inmarsat"
    for dest, rate in rates.values():
        if dest.endswith("Fixe") and not dest.startswith(("Canada Territoires", "Mayotte", "Guyane")):
            assert Decimal("0.01") <= rate <= Decimal("0.05"), dest
        if dest.endswith("Mobile") and dest != "France Mobile":
            assert Decimal("0.03") <= rate <= Decimal("0.20"), dest
    for risky in ("Cuba", "Somalie", "Sierra Leone", "Satellite Inmarsat", "Guinée", "Tuvalu", "Nauru"):
        assert any(d == risky and Decimal("0.50") <= r <= Decimal("3.00") for d, r in rates.values())


def test_plans_reference_only_rate_deck_destinations() -> None:
    plans = load_plans()
    destinations = {d for d, _ in load_rates().values()}
    assert plans["default_plan"] == "full-illimite" and plans["timezone"] == "Europe/Paris"
    assert set(plans["plans"]) == {"full-illimite", "pro-illimite", "fixe-illimite"}
    for name, plan in plans["plans"].items():
        assert set(plan["included"]) <= destinations, (name, set(plan["included"]) - destinations)
        assert len(plan["included"]) == len(set(plan["included"]))
        assert set(plan["multipliers"]) == set(RULES)
        assert re.fullmatch(r"\d+/[1-9]\d*", plan["billing"])
        for pattern in plan["allowed_user_agents"] + plan["pbx_user_agents"]:
            re.compile(pattern)
        assert classify("Yealink SIP-T46S 66.86.0.15", plan) is None
        assert classify("Zoiper rv2.10.20.2", plan) == "third_party_device"
        assert classify("Asterisk PBX 18.20.0", plan) == "pbx_or_gateway"
    full = plans["plans"]["full-illimite"]
    assert {"France Fixe", "France Mobile", "Chine Mobile", "Thaïlande Mobile", "Réunion Fixe"} <= set(full["included"])
    assert (full["billing"], full["max_distinct_numbers"], full["max_simultaneous_calls"],
            full["max_registered_devices"], full["max_calls_per_hour"]) == ("60/60", 150, 3, 3, 60)
    assert full["multipliers"] == {"distinct_numbers": 1, "simultaneous_calls": 1, "registered_devices": 1,
                                   "third_party_device": 1, "pbx_or_gateway": 4, "autodialer": 4}
    assert plans["plans"]["pro-illimite"]["billing"] == "1/1"
    assert plans["plans"]["fixe-illimite"]["included"] == ["France Fixe"]
    assert plans["plans"]["fixe-illimite"]["billing"] == "30/30"


# ---------------------------------------------------------------------------------------------
# files


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_write_sample_round_trip(tmp_path: Path) -> None:
    written = write_sample(tmp_path / "out", normal_users=3)
    assert read_jsonl(tmp_path / "out" / "cdrs.jsonl") == written.cdrs
    assert read_jsonl(tmp_path / "out" / "registrations.jsonl") == written.registrations
    assert read_jsonl(tmp_path / "out" / "expected.jsonl") == [
        {"user": u, "period": p, "rule": r} for u, p, r in written.expected]
    assert write_jsonl(tmp_path / "empty.jsonl", []) == 0 and (tmp_path / "empty.jsonl").read_bytes() == b""


def test_bundled_copy_is_the_builder_output(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    write_sample(fresh, normal_users=BUNDLED_NORMAL_USERS)
    total = 0
    for name in ("cdrs.jsonl", "registrations.jsonl", "expected.jsonl"):
        bundled = (BUNDLED / name).read_bytes()
        assert bundled == (fresh / name).read_bytes(), f"{name}: regenerate with write_sample()"
        total += len(bundled)
    assert total < 3_200_000
