"""Synthetic, labelled months of hosted-telephony traffic: the ``cdrwatch generate`` command.

``generate_month()`` writes ``cdrs``, ``sip-registrations`` (JSONL or Parquet), ``labels.jsonl``
and ``manifest.json`` for N users and one calendar month, streaming day by day so that memory stays
flat however many users are asked for.

Ordinary users follow a business-hours and weekly profile (French public holidays included, quiet
nights), make heavy-tailed calls (log-normal, median ~80 s), about a quarter unanswered, mostly to a
personal address book with a few popular contacts, with a little international, premium, toll-free
and emergency traffic; their operator-supplied phones (real User-Agent strings) register each
working morning from an office site of their customer (1-3 sites, each a stable public address in
a /24 of its own; some users work at two sites) and refresh before expiry; about a fifth also have
a supplied phone at home, on some evenings and weekends. By construction they never breach a rule
of the bundled default plan: at most 3 lines, at most 140 different numbers dialled, at most 50
outbound calls in any hour, at most 3 phones with stable binding identities; and they never
register from a network new to them while another of their bindings is up.

Abuse is injected per scenario (``SCENARIOS``): one per fair-use rule, plus a call centre and an
office PBX. Fraud is injected per ``FRAUD_SCENARIOS`` from the 16th of the month: a hacked account,
a hacked PBX, IRSF, wangiri, a silent call, a short-call burst, traffic pumping; every fraudulent
call sends a ``start`` event. Each scenario's ``rules`` are exactly the fair-use alerts the engine
must raise for that user (``labels.jsonl``), guaranteed by the shape of the injected traffic (see
the ``_setup_*`` functions); a fraud adds a ``kind`` "fraud" line with its first call's start
(``first_call``) and the end of its first answered call (``damage``: the first money lost), and a wangiri's rung users who do not call back a ``kind``
"target" line.

Everything derives from the seed through per-user ``random.Random`` instances: the same arguments
give byte-identical files. Pure: no Kafka, no Faust.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import time
from calendar import monthrange
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ..codecs import cdr_payload, registration_payload
from ..core.errors import ConfigError
from ..core.numbering import DIALLED_EMERGENCY
from ..core.timeutil import check_period
from ..checks import output_dir

__all__ = [
    "ALL_SCENARIOS",
    "FRAUD_SCENARIOS",
    "SCENARIOS",
    "GenerateSummary",
    "Scenario",
    "format_generate",
    "generate_month",
    "register",
]

DEFAULT_TIMEZONE = "Europe/Paris"
HOUR = 3600
DAY = 86400

# Limits that keep ordinary users clear of the default plan (150 / 3 / 3 / 60) with a margin.
NORMAL_MAX_DIALLED = 140
NORMAL_MAX_PER_HOUR = 50

# --------------------------------------------------------------------------------------------
# user agents (checked against the bundled plans.toml in tests/unit/test_generator.py)

SUPPLIED_UAS: tuple[str, ...] = (
    "Yealink SIP-T46U 108.86.0.45",
    "Yealink SIP-T54W 96.86.0.70",
    "Yealink SIP-T57W 97.86.0.70",
    "Yealink SIP-T31P 124.86.0.40",
    "Yealink SIP-T33G 124.86.0.75",
    "Yealink SIP-T43U 108.86.0.20",
    "Yealink W60B 77.85.0.20",
    "Yealink W70B 146.85.0.35",
    "snomD785/10.1.54.13",
    "snomD735/10.1.73.16",
    "snomD717/10.1.73.16",
    "Gigaset N510 IP PRO/42.250.00.000.000",
    "Gigaset N670 IP PRO/70.112.00.000.000",
    "PolycomVVX-VVX_411-UA/6.3.1.8427",
    "PolycomVVX-VVX_450-UA/6.4.3.5156",
)
# multi-handset DECT bases: one binding, several calls at once
DECT_UAS: tuple[str, ...] = (
    "Yealink W60B 77.85.0.20",
    "Yealink W70B 146.85.0.35",
    "Gigaset N670 IP PRO/70.112.00.000.000",
)
SOFTPHONE_UAS: tuple[str, ...] = (
    "Zoiper rv2.10.20.2",
    "Linphone-Desktop/5.2.6 (Ubuntu 22.04.4 LTS) Linphone/5.3.0 (belle-sip/5.3.0)",
    "LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.47",
    "MicroSIP/3.21.4",
    "Bria 6 release 6.6.2 stamp 113463",
    "Acrobits Groundwire/6.4.3 (iPhone)",
)
FRAUD_UAS: tuple[str, ...] = (
    "eyeBeam release 1011d stamp 40820",
    "Zoiper rev.11619",
    "sipcli/v1.8",
    "pplsip",
)
GATEWAY_UAS: tuple[str, ...] = (
    "Cisco-SIPGateway/IOS-15.6.3.M",
    "Patton SN4141 5BIS EUI 00A0BA0C1D2E R6.T 2021-03-01 SIP M5T SIP Stack/4.2.18.21",
    "Mediant 800B/v.7.20A.260.045",
)
PBX_UAS: tuple[str, ...] = (
    "3CX Phone System 18.0.9.20",
    "FPBX-16.0.40.7(18.20.0)",
    "Asterisk PBX 20.5.2",
    "FreeSWITCH-mod_sofia/1.10.11-release~64bit",
    "Yeastar P-Series PBX 37.12.0.38",
    "Grandstream UCM6302V1.3A 1.0.11.10",
)
DIALLER_UA = "Asterisk PBX 16.30.0-vici"

# --------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: float  # share of the users (at least one user each when there are enough users)
    rules: tuple[str, ...]  # exactly the alerts the engine must raise for such a user
    description: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("prospector", 0.003, ("distinct_numbers",),
             "a salesperson calling 12-16 new numbers every working day, answered, one line"),
    Scenario("shared_line", 0.003, ("simultaneous_calls",),
             "an office sharing one account on a DECT base: up to 5 calls at once"),
    Scenario("many_phones", 0.003, ("registered_devices",),
             "4-6 supplied desk phones registered on one account at the same time"),
    Scenario("softphone", 0.003, ("third_party_device",),
             "a desk phone plus a softphone (Zoiper, Linphone, Bria…) on a laptop or mobile"),
    Scenario("gateway", 0.003, ("pbx_or_gateway",),
             "a GSM/ISDN gateway or SBC (Patton, AudioCodes, Cisco) registered instead of a phone"),
    Scenario("phoning", 0.003, ("autodialer",),
             "2-4 phoning sessions of 68-85 calls in 50 minutes from a power dialler, one line"),
    Scenario("call_centre", 0.001, ("distinct_numbers", "simultaneous_calls", "pbx_or_gateway", "autodialer"),
             "4-6 agents behind a predictive dialler (Asterisk/VICIdial) on one account, 2 campaign mornings"),
    Scenario("office_pbx", 0.002, ("simultaneous_calls", "pbx_or_gateway"),
             "an office IP-PBX (3CX, FreePBX, Yeastar…) carrying 10-20 people's calls on one account"),
)
# Toll fraud and its relatives, each on ~0.1 % of the users (at least one each): on a day from the
# 16th, once a fortnight of ordinary traffic has been seen; every fraudulent call sends a `start`
# event. ``rules`` are, as above, exactly the fair-use alerts the shape of the traffic raises.
FRAUD_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("hacked_account", 0.001, ("simultaneous_calls", "third_party_device"),
             "credentials stolen from a desk-phone user: one night an attacker registers from 2 new "
             "foreign networks and 4-6 channels dial high-risk international numbers for 2-3 hours"),
    Scenario("hacked_pbx", 0.001, ("simultaneous_calls", "pbx_or_gateway"),
             "an office IP-PBX compromised: one night, from its usual network, 4-8 parallel calls to "
             "high-risk destinations for 2-4 hours"),
    Scenario("irsf", 0.001, ("simultaneous_calls", "autodialer"),
             "international revenue share: 61-120 numbers of one high-risk range (same first 8-9 digits) "
             "within an hour, on 4-6 channels, 1-10 minutes each"),
    Scenario("wangiri", 0.001, (),
             "one-ring calls from a high-risk range to 40-80 subscribers within 20 minutes; the 2-3 who "
             "call back are the victims (the others are labelled targets)"),
    Scenario("silent_call", 0.001, (),
             "one answered call to a satellite number (Inmarsat, Iridium) lasting 5 hours, from 20:00"),
    Scenario("short_call_burst", 0.001, ("autodialer",),
             "150-300 attempts within an hour to distinct high-risk numbers, under 10 % answered, 1-6 s"),
    Scenario("traffic_pumping", 0.001, (),
             "the same 2-5 premium-rate numbers (Allemagne Premium, Lettonie Premium) called back to "
             "back, 20-60 minutes each, on 1-2 lines, for a day or two"),
)
ALL_SCENARIOS: tuple[Scenario, ...] = SCENARIOS + FRAUD_SCENARIOS
_FRAUD_NAMES = frozenset(s.name for s in FRAUD_SCENARIOS)
_SCENARIO_BY_NAME = {s.name: s for s in ALL_SCENARIOS}

# --------------------------------------------------------------------------------------------
# calendar


_HOURS_WORK = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 1.8, 5.5, 9.5, 11.5, 10.5,
               5.5, 6.0, 9.5, 10.5, 9.5, 6.5, 3.2, 1.5, 0.9, 0.6, 0.35, 0.05)
_HOURS_WEEKEND = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.8, 2.5, 5.0, 7.5, 8.0,
                  6.0, 5.0, 5.5, 6.0, 6.0, 5.5, 5.0, 4.0, 3.0, 2.0, 1.0, 0.1)
_CUM_WORK = tuple(itertools.accumulate(_HOURS_WORK))
_CUM_WEEKEND = tuple(itertools.accumulate(_HOURS_WEEKEND))
_DAY_FACTOR = {0: 1.0, 1: 1.05, 2: 0.95, 3: 1.0, 4: 0.85, 5: 0.12, 6: 0.05}
_HOLIDAY_FACTOR = 0.06


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


def french_holidays(year: int) -> frozenset[date]:
    easter = _easter(year)
    fixed = [(1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25)]
    moving = [easter + timedelta(days=n) for n in (1, 39, 50)]  # Easter Monday, Ascension, Whit Monday
    return frozenset([date(year, m, d) for m, d in fixed] + moving)


@dataclass(frozen=True)
class _Day:
    index: int  # 1-based day of the month
    date: date
    kind: str  # "work" | "saturday" | "sunday" | "holiday"
    factor: float  # share of a weekday's traffic
    hour_ts: tuple[int, ...]  # epoch seconds of each local hour 00..23
    start: int  # epoch of local midnight
    end: int  # epoch of the next local midnight

    @property
    def is_work(self) -> bool:
        return self.kind == "work"

    def at(self, sec: int) -> int:
        """Epoch seconds of ``sec`` seconds after local midnight (wall clock)."""
        if sec >= DAY:
            return self.end + sec - DAY
        if sec < 0:
            return self.start + sec
        return self.hour_ts[sec // HOUR] + sec % HOUR


def _month_days(year: int, month: int, tz: ZoneInfo) -> list[_Day]:
    holidays = french_holidays(year)
    days = []
    last = monthrange(year, month)[1]
    for d in range(1, last + 1):
        when = date(year, month, d)
        hour_ts = tuple(int(datetime(year, month, d, h, tzinfo=tz).timestamp()) for h in range(24))
        nxt = when + timedelta(days=1)
        end = int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp())
        if when in holidays:
            kind, factor = "holiday", _HOLIDAY_FACTOR
        elif when.weekday() == 5:
            kind, factor = "saturday", _DAY_FACTOR[5]
        elif when.weekday() == 6:
            kind, factor = "sunday", _DAY_FACTOR[6]
        else:
            kind, factor = "work", _DAY_FACTOR[when.weekday()]
        days.append(_Day(d, when, kind, factor, hour_ts, hour_ts[0], end))
    return days


class _Clock:
    """RFC 3339 rendering of epoch seconds in one zone, cached per UTC hour (fast, DST-exact)."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._offsets: dict[int, tuple[int, str]] = {}
        self._dates: dict[int, str] = {}

    def __call__(self, ts: int) -> str:
        bucket = ts // HOUR
        cached = self._offsets.get(bucket)
        if cached is None:
            offset = datetime.fromtimestamp(bucket * HOUR, self.tz).utcoffset()
            seconds = int(offset.total_seconds()) if offset is not None else 0
            sign = "+" if seconds >= 0 else "-"
            hh, mm = divmod(abs(seconds) // 60, 60)
            cached = (seconds, f"{sign}{hh:02d}:{mm:02d}")
            self._offsets[bucket] = cached
        offset_s, suffix = cached
        days, rem = divmod(ts + offset_s, DAY)
        day_text = self._dates.get(days)
        if day_text is None:
            day_text = (date(1970, 1, 1) + timedelta(days=days)).isoformat()
            self._dates[days] = day_text
        h, rem = divmod(rem, HOUR)
        m, s = divmod(rem, 60)
        return f"{day_text}T{h:02d}:{m:02d}:{s:02d}{suffix}"


# --------------------------------------------------------------------------------------------
# numbers (canonical form: French national "0X…" or international "+CC…"; short codes as is)

_INTL_INCLUDED = (  # destinations of the default plan's `included` list
    ("+4420", 8), ("+44161", 7), ("+4930", 8), ("+4989", 8), ("+3491", 7), ("+1212", 7),
    ("+3531", 7), ("+3120", 7),
)
_INTL_OTHER = (  # outside the plan: billed, never covered (Morocco is not in the deck at all)
    ("+3222", 6), ("+4122", 7), ("+447", 9), ("+3461", 7), ("+39333", 7), ("+2126", 8), ("+4915", 9),
)
_PREMIUM_INTL = (  # toll-fraud favourites, all outside the plan
    ("+2526", 7), ("+535", 7), ("+8707", 8), ("+2327", 7), ("+22462", 7), ("+37190", 6), ("+6889", 4),
    ("+6745", 4), ("+2399", 6),
)
# ranges of one fraud each, all high-risk in the bundled plans.toml (Sierra Leone, Cuba, Guinée,
# Lettonie Premium, Iridium, Inmarsat): numbers sharing a long prefix
_IRSF_RANGES = (("+23276", 6), ("+23277", 6), ("+22462", 7), ("+37190", 6), ("+8816", 8))  # 11-12 digits
_WANGIRI_RANGES = (("+23276", 6), ("+23230", 6), ("+22462", 7), ("+535", 7))
_SATELLITE = (("+8707", 8), ("+8816", 8))
_PUMPING = (("+49900", 6), ("+37190", 6))  # Allemagne Premium, Lettonie Premium


def _digits(rng: random.Random, n: int) -> str:
    return f"{rng.randrange(10 ** n):0{n}d}" if n else ""


def french_fixed(rng: random.Random) -> str:
    """A French geographic or VoIP number in national form (01–05, 09)."""
    return f"0{rng.choice('123459')}{_digits(rng, 8)}"


def french_mobile(rng: random.Random) -> str:
    """A French mobile number in national form (06, 073–079)."""
    if rng.random() < 0.8:
        return f"06{_digits(rng, 8)}"
    return f"07{rng.randint(3, 9)}{_digits(rng, 7)}"


def _from_table(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    prefix, n = rng.choice(table)
    return prefix + _digits(rng, n)


def _one_off(rng: random.Random, premium: bool = True) -> str:
    """A number outside the address book: mostly French, a little of everything else (no France
    Premium 0899 without ``premium``: a shared-cost 0810 instead)."""
    x = rng.random()
    if x < 0.46:
        return french_mobile(rng)
    if x < 0.86:
        return french_fixed(rng)
    if x < 0.90:
        return f"0800{_digits(rng, 6)}" if rng.random() < 0.7 else f"0805{_digits(rng, 6)}"
    if x < 0.93:
        if rng.random() < 0.6 or not premium:
            return f"081{_digits(rng, 7)}"
        return f"0899{_digits(rng, 6)}"
    if x < 0.965:
        return _from_table(rng, _INTL_INCLUDED)
    return _from_table(rng, _INTL_OTHER)


def signalled(number: str, rng: random.Random) -> str:
    """The canonical number as a switch would signal it: 0X…, +33X… or 0033X…; +CC… or 00CC…."""
    if len(number) <= 6 or number.startswith("00"):
        return number
    if number.startswith("+"):
        return number if rng.random() < 0.8 else "00" + number[1:]
    x = rng.random()
    if x < 0.55:
        return number
    if x < 0.9:
        return "+33" + number[1:]
    return "0033" + number[1:]


# --------------------------------------------------------------------------------------------
# users


@dataclass
class _Device:
    user_agent: str
    instance_id: str | None
    lan: str
    port: int
    transport: str
    source_ip: str
    expires: int
    refresh: float  # share of `expires` after which it re-registers
    nat_rebind: bool  # a new NAT port each session (only with an instance_id: same binding)
    unregisters: float  # probability of an expires=0 at the end of a session

    def contact(self, user: str) -> str:
        return f"sip:{user}@{self.lan}:{self.port};transport={self.transport}"


@dataclass
class _Call:
    start: int
    ring: int
    talk: int  # 0 = not answered
    disposition: str
    direction: str
    other: str  # the far end, as signalled
    with_start: bool
    fraud: bool = False  # part of a fraud scenario (the first one is the label's first_call)


@dataclass
class _User:
    index: int
    name: str
    customer: str
    did: str
    rng: random.Random
    scenario: Scenario | None
    activity: float  # mean calls on a weekday
    lines: list[int]  # busy-until per line
    book: list[str]
    book_cum: list[float]
    devices: list[_Device]
    forward_to: str
    dialled: set[str] = field(default_factory=set)
    max_dialled: int | None = NORMAL_MAX_DIALLED
    out_starts: deque[int] = field(default_factory=deque)
    max_per_hour: int | None = NORMAL_MAX_PER_HOUR
    last_start: int = 0
    presence: float = 0.93  # chance of being at work on a working day
    blocked: list[tuple[int, int]] = field(default_factory=list)  # no ordinary call may touch these
    bursts: dict[int, list[Callable[["_Generator", "_User", _Day], None]]] = field(default_factory=dict)
    always_on: list[_Device] = field(default_factory=list)  # trunks/PBX: registered all month
    prospects: list[str] = field(default_factory=list)
    quota: int = 0  # prospector: new numbers a working day
    calls: int = 0
    sites: list[str] = field(default_factory=list)  # office addresses: the usual one, maybe a second
    second_days: frozenset[int] = frozenset()  # weekdays at the second site
    home: _Device | None = None  # a supplied phone at home, some evenings and weekends
    home_evenings: float = 0.0  # chance of a home session on a working day's evening
    networks: dict[str, int] = field(default_factory=dict)  # /24 -> last registration from it
    bound: dict[int, tuple[int, int]] = field(default_factory=dict)  # device -> its last binding
    premium: bool = True  # ordinary traffic may dial France Premium (0899)
    first_fraud: tuple[int, int] | None = None  # (start, end) of the first answered fraudulent call
    first_attempt: int | None = None  # start of the first fraudulent call, answered or not
    target_of: str | None = None  # rung by a fraud without falling for it (wangiri)

    def set_book(self, book: list[str], cum: list[float]) -> None:
        """The address book; its numbers count towards the dialled-numbers cap from the start."""
        self.book, self.book_cum = book, cum
        self.dialled = set(book)

    def pick_book(self) -> str:
        x = self.rng.random() * self.book_cum[-1]
        return self.book[bisect.bisect_right(self.book_cum, x)]

    def dial(self, number: str) -> str:
        """``number`` if the user may still dial a new number, else one from the address book."""
        if self.max_dialled is None or number in self.dialled:
            return number
        if len(self.dialled) >= self.max_dialled:
            return self.pick_book()
        self.dialled.add(number)
        return number


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _talk(rng: random.Random, mu: float = 4.4, sigma: float = 1.15, cap: int = 7200) -> int:
    """Heavy-tailed answered duration in seconds (log-normal; median e^mu)."""
    return max(1, min(cap, int(rng.lognormvariate(mu, sigma))))


def _outcome(rng: random.Random, answered: float = 0.75) -> tuple[int, int, str]:
    """(ring seconds, talk seconds, disposition); about a quarter of calls are not answered."""
    if rng.random() < answered:
        return rng.randint(2, 22), _talk(rng), "ANSWERED"
    x = rng.random()
    if x < 0.68:
        return rng.randint(12, 40), 0, "NO ANSWER"
    if x < 0.88:
        return rng.randint(1, 6), 0, "BUSY"
    return rng.randint(0, 4), 0, "FAILED"


def _call_id(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# First octets of public IPv4 space held by French business and residential ISPs (no private,
# shared 100.64/10 or documentation ranges): each office site and each home gets a /24 of its own.
_BUSINESS_OCTETS = (62, 80, 81, 82, 193, 194, 195, 212, 213, 217)
_HOME_OCTETS = (2, 5, 37, 78, 86, 88, 90, 92, 109, 176)
# hosting networks abroad that attackers register from
_ATTACKER_NETWORKS = ("45.134.26", "185.53.88", "91.92.109", "193.42.33", "5.188.62", "141.98.10")


def _network(address: str) -> str:
    """The /24 of an IPv4 address (``a.b.c``)."""
    return address.rsplit(".", 1)[0]


def _device(rng: random.Random, user_agent: str, *, expires: int | None = None, instance: bool | None = None,
            source_ip: str | None = None) -> _Device:
    with_instance = rng.random() < 0.7 if instance is None else instance
    instance_id = None
    if with_instance:
        h = f"{rng.getrandbits(128):032x}"
        instance_id = f"<urn:uuid:{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}>"
    if expires is None:
        # real phones refresh every 10-60 min; 1-8 h keeps replays fast with the same semantics
        expires = rng.choices((14400, 28800), (0.4, 0.6))[0]
    tls = rng.random() < 0.15
    return _Device(
        user_agent=user_agent,
        instance_id=instance_id,
        lan=f"192.168.{rng.randint(0, 20)}.{rng.randint(10, 250)}",
        port=5061 if tls else rng.choice((5060, 5060, 5062, 5064)),
        transport="tls" if tls else "udp",
        source_ip=source_ip or "",  # the office site's address, set day by day
        expires=expires,
        refresh=rng.uniform(0.85, 0.95),
        nat_rebind=with_instance and rng.random() < 0.3,
        unregisters=rng.choice((0.0, 0.3, 0.8)),
    )


def _book(rng: random.Random, size: int) -> tuple[list[str], list[float]]:
    seen: set[str] = set()
    book: list[str] = []
    while len(book) < size:
        x = rng.random()
        if x < 0.5:
            number = french_fixed(rng)
        elif x < 0.92:
            number = french_mobile(rng)
        elif x < 0.97:
            number = _from_table(rng, _INTL_INCLUDED)
        else:
            number = _from_table(rng, _INTL_OTHER)
        if number not in seen:
            seen.add(number)
            book.append(number)
    weights = [1.0 / (i + 1) ** 1.1 for i in range(size)]  # a few popular contacts
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    return book, cum


# --------------------------------------------------------------------------------------------
# output sinks


class _Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> int: ...
    def close(self) -> None: ...


class _JsonlSink:
    def __init__(self, path: Path) -> None:
        self.handle = path.open("wb")

    def write(self, rows: list[dict[str, Any]]) -> int:
        self.handle.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        return len(rows)

    def close(self) -> None:
        self.handle.close()


class _ParquetSink:
    """One row group per day; strings throughout, times as RFC 3339 text (the JSON payload as is).

    ``cdrs`` keeps only ``end`` events: a Parquet row cannot leave out the columns a ``start``
    event does not have, and ``replay`` would send their nulls, which the ``cdrs`` schema refuses."""

    def __init__(self, path: Path, columns: list[tuple[str, str]], *, ends_only: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        kinds = {"string": pa.string(), "int": pa.int64()}
        self.pa = pa
        self.schema = pa.schema([pa.field(name, kinds[kind]) for name, kind in columns])
        self.names = [name for name, _ in columns]
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.ends_only = ends_only

    def write(self, rows: list[dict[str, Any]]) -> int:
        if self.ends_only:
            rows = [row for row in rows if row["event"] == "end"]
        if rows:
            data = {name: [row.get(name) for row in rows] for name in self.names}
            self.writer.write_table(self.pa.Table.from_pydict(data, schema=self.schema))
        return len(rows)

    def close(self) -> None:
        self.writer.close()


CDR_COLUMNS = [
    ("event", "string"), ("call_id", "string"), ("user", "string"), ("customer", "string"),
    ("caller", "string"), ("callee", "string"), ("direction", "string"), ("start_time", "string"),
    ("answer_time", "string"), ("end_time", "string"), ("billsec", "int"), ("disposition", "string"),
]
REGISTRATION_COLUMNS = [
    ("user", "string"), ("customer", "string"), ("contact", "string"), ("instance_id", "string"),
    ("user_agent", "string"), ("source_ip", "string"), ("expires", "int"), ("time", "string"),
]


# --------------------------------------------------------------------------------------------
# the generator


@dataclass
class GenerateSummary:
    users: int
    customers: int
    month: str
    seed: int
    format: str
    calls: int
    cdr_events: int
    registrations: int
    labels: list[dict[str, str]]
    scenarios: dict[str, list[str]]  # scenario -> users
    targets: dict[str, list[str]]  # fraud scenario -> users rung by it who did not fall for it
    files: list[Path]
    seconds: float


class _Generator:
    def __init__(self, *, users: int, year: int, month: int, seed: int, tz: ZoneInfo, abuse_scale: float) -> None:
        self.seed = seed
        self.tz = tz
        self.period = f"{year:04d}-{month:02d}"
        self.days = _month_days(year, month, tz)
        self.work_days = [d for d in self.days if d.is_work]
        # bursts stay clear of the month's edges, so every breach instant is inside the period
        self.burst_days = [d for d in self.work_days if 3 <= d.index <= len(self.days) - 3] or self.work_days
        # frauds wait for a fortnight of ordinary traffic (a detector's learning period)
        self.fraud_days = [d for d in self.days if 16 <= d.index <= len(self.days) - 3]
        self.used_networks: set[str] = set(_ATTACKER_NETWORKS)  # no office or home among them
        self.month_end = self.days[-1].end
        self.clock = _Clock(tz)
        self.cdrs: list[tuple[int, int, int, dict[str, Any]]] = []
        self.regs: list[tuple[int, int, dict[str, Any]]] = []
        self.seq = 0
        self.calls = 0
        self.users = self._population(users, abuse_scale)

    # ---- population ------------------------------------------------------------------------

    def _population(self, count: int, abuse_scale: float) -> list[_User]:
        width = max(5, len(str(count)))
        roles: list[Scenario | None] = [None] * count
        order = list(range(count))
        random.Random(f"cdrwatch-generate:{self.seed}:roles").shuffle(order)
        taken = 0
        for scenario in ALL_SCENARIOS:
            if abuse_scale <= 0:
                break
            if scenario.name == "wangiri":  # picked among ordinary users once all exist
                continue
            n = max(1, round(count * scenario.rate * abuse_scale))
            for i in order[taken:taken + n]:
                roles[i] = scenario
            taken = min(count, taken + n)
        crng = random.Random(f"cdrwatch-generate:{self.seed}:customers")
        users, customer_no, left = [], 0, 0
        sites: list[str] = []
        for i in range(count):
            if left == 0:
                customer_no += 1
                left = min(int(crng.paretovariate(1.2)), 40)
                sites = self._sites(customer_no, left)
            left -= 1
            rng = random.Random(f"cdrwatch-generate:{self.seed}:user:{i}")
            user = self._user(i, f"u{i + 1:0{width}d}", f"C{customer_no:0{width}d}", rng, roles[i], sites)
            users.append(user)
        self.customers = customer_no
        if abuse_scale > 0:
            _wangiri(self, users, count, abuse_scale)
        return users

    def address(self, rng: random.Random, octets: tuple[int, ...]) -> str:
        """A public IPv4 address in a /24 no other site or home uses."""
        while True:
            network = f"{rng.choice(octets)}.{rng.randrange(256)}.{rng.randrange(256)}"
            if network not in self.used_networks:
                self.used_networks.add(network)
                return f"{network}.{rng.randint(1, 254)}"

    def _sites(self, customer_no: int, size: int) -> list[str]:
        """A customer's office sites (1-3 by its size), each with one stable public address."""
        rng = random.Random(f"cdrwatch-generate:{self.seed}:customer:{customer_no}")
        if size <= 2:
            n = 1
        elif size < 10:
            n = rng.choices((1, 2), (0.7, 0.3))[0]
        else:
            n = rng.choices((1, 2, 3), (0.4, 0.4, 0.2))[0]
        return [self.address(rng, _BUSINESS_OCTETS) for _ in range(n)]

    def _user(self, i: int, name: str, customer: str, rng: random.Random, scenario: Scenario | None,
              sites: list[str]) -> _User:
        size = max(5, min(90, int(rng.lognormvariate(3.2, 0.55))))
        book, cum = _book(rng, size)
        n_devices = rng.choices((1, 2, 3), (0.6, 0.32, 0.08))[0]
        devices = [_device(rng, rng.choice(SUPPLIED_UAS)) for _ in range(n_devices)]
        lines = n_devices if n_devices > 1 else (2 if rng.random() < 0.3 else 1)  # call waiting, transfers
        user = _User(
            index=i, name=name, customer=customer, did=f"+3397{i:07d}", rng=rng, scenario=scenario,
            activity=max(0.3, min(14.0, rng.lognormvariate(1.0, 0.6))),
            lines=[0] * lines, book=book, book_cum=cum, devices=devices,
            forward_to="+33" + french_mobile(rng)[1:], dialled=set(book),
        )
        # the office site of the desk phones; ~15 % of a multi-site customer's staff also work
        # at a second site on 1-2 weekdays
        user.sites = [rng.choices(sites, (6, 3, 1)[:len(sites)])[0]]
        if len(sites) > 1 and rng.random() < 0.15:
            user.sites.append(rng.choice([s for s in sites if s != user.sites[0]]))
            user.second_days = frozenset(rng.sample(range(5), rng.randint(1, 2)))
        # ~20 % have a supplied phone at home too (3 bindings at most with the desk phones)
        if scenario is None and n_devices <= 2 and rng.random() < 0.2:
            user.home = _device(rng, rng.choice(SUPPLIED_UAS), expires=3600, instance=True,
                                source_ip=self.address(rng, _HOME_OCTETS))
            user.home_evenings = rng.uniform(0.1, 0.35)
        if scenario is not None:
            _SETUP[scenario.name](self, user)
        return user

    # ---- events ----------------------------------------------------------------------------

    def emit_call(self, u: _User, call: _Call) -> None:
        rng = u.rng
        start = call.start
        answer = start + call.ring if call.talk > 0 else None
        end = start + call.ring + call.talk
        if call.direction == "outbound":
            caller, callee = u.did, call.other
        elif call.direction == "inbound":
            caller, callee = call.other, u.did
        else:  # forwarded: the original caller, to the user's forwarding target
            caller, callee = call.other, u.forward_to
        self.seq += 1
        clock = self.clock
        call_id, start_time = _call_id(rng), clock(start)
        if call.with_start and end > start:  # a zero-length call has no live `start` worth sending
            self.cdrs.append((start, 1, self.seq, cdr_payload("start", call_id, u.name, u.customer, caller, callee,
                                                              call.direction, start_time)))
        self.cdrs.append((end, 0, self.seq, cdr_payload(
            "end", call_id, u.name, u.customer, caller, callee, call.direction, start_time,
            None if answer is None else clock(answer), clock(end), call.talk, call.disposition)))
        if call.fraud and (u.first_attempt is None or start < u.first_attempt):
            u.first_attempt = start
        # the damage begins with the first answered call (an unanswered attempt costs nothing)
        if call.fraud and call.talk > 0 and (u.first_fraud is None or start < u.first_fraud[0]):
            u.first_fraud = (start, end)
        u.calls += 1
        self.calls += 1

    def emit_registration(self, u: _User, dev: _Device, at: int, expires: int) -> None:
        self.seq += 1
        self.regs.append((at, self.seq, registration_payload(
            u.name, u.customer, dev.contact(u.name), dev.instance_id, dev.user_agent, dev.source_ip, expires,
            self.clock(at))))

    def session(self, u: _User, dev: _Device, on: int, off: int, *, guard: bool = True) -> None:
        """A device switched on at ``on``, refreshing before expiry until ``off``.

        ``guard``: a first registration from a network (none from it for 29 days) waits until no
        other binding of the user is up, as when a phone moves with its owner; an honest user
        never looks like a stranger registering beside a live binding (the fraud rule new_network)."""
        rng = u.rng
        if dev.nat_rebind:
            dev.port = rng.randint(1024, 65535)
        off = min(off, self.month_end - 60)
        key = id(dev)
        network = _network(dev.source_ip)
        if guard:
            seen = u.networks.get(network)
            if seen is None or seen < on - 29 * DAY:
                while True:
                    up = [e for k, (s, e) in u.bound.items() if k != key and s <= on < e]
                    if not up:
                        break
                    on = max(up)
                if on >= off:
                    return
        at = last = on
        while at < off:
            self.emit_registration(u, dev, at, dev.expires)
            last = at
            at += max(60, int(dev.expires * dev.refresh * rng.uniform(0.97, 1.0)))
        until = last + dev.expires
        if rng.random() < dev.unregisters and off > on:
            self.emit_registration(u, dev, off, 0)
            until = off
        if off > on:
            u.bound[key] = (on, until)
            u.networks[network] = max(u.networks.get(network, 0), last)

    def home_hours(self, u: _User, day: _Day) -> tuple[int, int] | None:
        """When the phone at home is on: some working days' evenings (until 23:00 at the latest),
        half the weekend and holiday days."""
        rng = u.rng
        if day.is_work:
            if rng.random() >= u.home_evenings:
                return None
            on = day.at(rng.randint(19 * HOUR, 21 * HOUR + 1800))
            return on, min(day.at(23 * HOUR), on + rng.randint(1800, 2 * HOUR))
        if rng.random() >= 0.5:
            return None
        on = day.at(rng.randint(9 * HOUR, 18 * HOUR))
        return on, min(day.at(22 * HOUR), on + rng.randint(HOUR, 4 * HOUR))

    # ---- ordinary traffic -------------------------------------------------------------------

    def place(self, u: _User, day: _Day, call: _Call) -> bool:
        """Put ``call`` on a free line, no earlier than asked, within the user's hourly cap;
        False (dropped) when it no longer starts on ``day`` or touches a blocked window."""
        rng = u.rng
        start = max(call.start, u.last_start)
        outbound = call.direction == "outbound"
        while True:
            moved = False
            if outbound and u.max_per_hour is not None:
                window = u.out_starts
                while window and window[0] <= start - HOUR:
                    window.popleft()
                if len(window) >= u.max_per_hour:
                    start = window[0] + HOUR
                    moved = True
            line = min(range(len(u.lines)), key=u.lines.__getitem__)
            if u.lines[line] > start:
                start = u.lines[line] + rng.randint(10, 240)
                moved = True
            if not moved:
                break
        end = start + call.ring + call.talk
        if start >= day.end or any(a < end and start < b for a, b in u.blocked):
            return False
        call.start = start
        u.lines[line] = end
        u.last_start = start
        if outbound and u.max_per_hour is not None:
            u.out_starts.append(start)
        self.emit_call(u, call)
        return True

    def ordinary_calls(self, u: _User, day: _Day, count: int, *, fixed: list[_Call] | None = None) -> tuple[int, int]:
        """``count`` calls of the user's everyday traffic on ``day`` (plus ``fixed`` ones, placed
        the same way); returns (first start, last end) of the placed calls, or (0, 0)."""
        rng = u.rng
        cum = _CUM_WORK if day.is_work else _CUM_WEEKEND
        calls: list[_Call] = list(fixed or ())
        for _ in range(count):
            hour = bisect.bisect_right(cum, rng.random() * cum[-1])
            start = day.at(min(hour, 23) * HOUR + rng.randrange(HOUR))
            ring, talk, disposition = _outcome(rng)
            x = rng.random()
            if x < 0.62:
                direction = "outbound"
                if rng.random() < 0.002:
                    other = rng.choice(DIALLED_EMERGENCY)
                    ring, talk, disposition = rng.randint(1, 4), _talk(rng, 4.8, 0.6, 1800), "ANSWERED"
                elif rng.random() < 0.85:
                    other = signalled(u.pick_book(), rng)
                else:
                    other = signalled(u.dial(_one_off(rng, u.premium)), rng)
            elif x < 0.97:
                direction = "inbound"
                y = rng.random()
                if y < 0.55:
                    other = signalled(u.pick_book(), rng)
                elif y < 0.96:
                    other = signalled(french_mobile(rng) if rng.random() < 0.5 else french_fixed(rng), rng)
                else:
                    other = "anonymous"
            else:
                direction = "forwarded"
                other = signalled(french_mobile(rng) if rng.random() < 0.5 else french_fixed(rng), rng)
            calls.append(_Call(start, ring, talk, disposition, direction, other, rng.random() < 0.2))
        calls.sort(key=lambda c: c.start)
        first = last = 0
        for call in calls:
            if self.place(u, day, call):
                first = first or call.start
                last = max(last, call.start + call.ring + call.talk)
        return first, last

    def day_of(self, u: _User, day: _Day) -> None:
        rng = u.rng
        for burst in u.bursts.get(day.index, ()):
            burst(self, u, day)
        count = min(_poisson(rng, u.activity * day.factor), int(u.activity * 3) + 5)
        fixed = self.prospect_calls(u, day) if u.quota and day.is_work else None
        first, last = self.ordinary_calls(u, day, count, fixed=fixed)
        present = rng.random() < (u.presence if day.is_work else 0.08) or first > 0
        devices = u.devices + ([u.home] if u.home is not None else [])
        sessions: list[tuple[int, int, int]] = []  # (on, index in devices, off)
        if present and u.devices:
            second = len(u.sites) > 1 and day.date.weekday() in u.second_days
            site = u.sites[1] if second else u.sites[0]
            for n, dev in enumerate(u.devices):
                on = day.at(rng.randint(7 * HOUR, 9 * HOUR + 1800))
                off = day.at(rng.randint(17 * HOUR + 1800, 19 * HOUR + 1800))
                if first:  # (never before midnight: the previous day is written already)
                    on = max(day.start, min(on, first - rng.randint(300, 1800)))
                    off = max(off, last + rng.randint(300, 1800))
                dev.source_ip = site
                sessions.append((on, n, off))
        if u.home is not None:
            hours = self.home_hours(u, day)
            if hours is not None:
                sessions.append((hours[0], len(devices) - 1, hours[1]))
        for on, n, off in sorted(sessions):  # in time order: a network's first registration decides
            self.session(u, devices[n], on, off)

    def prospect_calls(self, u: _User, day: _Day) -> list[_Call]:
        """The prospector's new numbers of the day: answered calls spread over business hours."""
        rng = u.rng
        calls = []
        for _ in range(u.quota):
            number = french_mobile(rng) if rng.random() < 0.55 else french_fixed(rng)
            sec = rng.choice((9, 10, 11, 14, 15, 16)) * HOUR + rng.randrange(HOUR)
            calls.append(_Call(day.at(sec), rng.randint(3, 15), _talk(rng, 4.9, 0.8, 2400), "ANSWERED",
                               "outbound", signalled(number, rng), rng.random() < 0.2))
        return calls

    # ---- output ----------------------------------------------------------------------------

    def run(self, cdr_sink: _Sink, reg_sink: _Sink) -> tuple[int, int]:
        pending_cdrs: list[tuple[int, int, int, dict[str, Any]]] = []
        pending_regs: list[tuple[int, int, dict[str, Any]]] = []
        n_cdrs = n_regs = 0
        for day in self.days:
            self.cdrs, self.regs = pending_cdrs, pending_regs
            for user in self.users:
                if day.index == 1:
                    for dev in user.always_on:
                        dev.source_ip = user.sites[0]
                        self.session(user, dev, day.at(user.rng.randrange(2 * HOUR)), self.month_end)
                self.day_of(user, day)
            final = day is self.days[-1]
            # at equal instants an `end` goes before a `start` (intervals are [start, end))
            self.cdrs.sort(key=lambda e: (e[0], e[1], e[2]))
            self.regs.sort(key=lambda e: (e[0], e[1]))
            cut = len(self.cdrs) if final else bisect.bisect_left(self.cdrs, (day.end,), key=lambda e: (e[0],))
            n_cdrs += cdr_sink.write([e[3] for e in self.cdrs[:cut]])
            pending_cdrs = self.cdrs[cut:]
            cut = len(self.regs) if final else bisect.bisect_left(self.regs, (day.end,), key=lambda e: (e[0],))
            n_regs += reg_sink.write([e[2] for e in self.regs[:cut]])
            pending_regs = self.regs[cut:]
        return n_cdrs, n_regs

    def labels(self) -> list[dict[str, str]]:
        """Fair-use lines ``{user, period, rule, scenario}``, one per alert the user must raise;
        then for a fraud, ``kind`` "fraud" with the first fraudulent call's start (``first_call``)
        and the end of the first answered one (``damage``: where money starts to be lost), or ``kind`` "target" for a user rung by it who did not fall for it."""
        out = []
        for user in self.users:
            if user.scenario is not None:
                for rule in user.scenario.rules:
                    out.append({"user": user.name, "period": self.period, "rule": rule,
                                "scenario": user.scenario.name})
                if user.scenario.name in _FRAUD_NAMES and user.first_fraud is not None:
                    start = user.first_attempt if user.first_attempt is not None else user.first_fraud[0]
                    out.append({"user": user.name, "period": self.period, "scenario": user.scenario.name,
                                "kind": "fraud", "first_call": self.clock(start),
                                "damage": self.clock(user.first_fraud[1])})
            elif user.target_of is not None:
                out.append({"user": user.name, "period": self.period, "scenario": user.target_of, "kind": "target"})
        return out


# --------------------------------------------------------------------------------------------
# scenarios: the shape of each abuse, and why it raises exactly its rules


def _burst_window(u: _User, start: int, end: int) -> None:
    """Keep ordinary calls an hour clear of an injected burst: its counts stay its own."""
    u.blocked.append((start - HOUR, end + HOUR))


def _setup_prospector(g: _Generator, u: _User) -> None:
    """12-16 answered calls to new French numbers every working day (>= 17 working days in any
    month, so >= 204 distinct covered numbers); one line; about 30 calls a day at most."""
    u.quota = u.rng.randint(12, 16)
    u.max_dialled = None
    u.activity = min(u.activity, 8.0)
    u.lines = [0]
    u.presence = 1.0


def _setup_shared_line(g: _Generator, u: _User) -> None:
    """A DECT base (one binding) shared by an office: 5 lines, and on one day a peak of 4-5 calls
    started within 2 minutes and lasting at least 5 minutes."""
    rng = u.rng
    u.devices = [_device(rng, rng.choice(DECT_UAS), instance=True)]
    u.lines = [0] * 5
    u.activity = rng.uniform(10, 18)
    day = rng.choice(g.burst_days)
    base = day.at(rng.choice((10, 11, 15)) * HOUR + rng.randrange(1800))
    n = rng.randint(4, 5)
    _burst_window(u, base, base + 2 * HOUR)

    def peak(g: _Generator, u: _User, day: _Day) -> None:
        for k in range(n):
            other = signalled(u.pick_book(), rng)
            direction = "outbound" if k % 2 == 0 else "inbound"
            g.emit_call(u, _Call(base + k * rng.randint(10, 30), rng.randint(3, 10), rng.randint(300, 1500),
                                 "ANSWERED", direction, other, rng.random() < 0.5))

    u.bursts.setdefault(day.index, []).append(peak)


def _setup_many_phones(g: _Generator, u: _User) -> None:
    """4-6 supplied phones, each present on every working day from ~09:30 to ~17:30 at least:
    more than 3 bindings active at once on the first working day; calls on at most 3 lines."""
    rng = u.rng
    u.devices = [_device(rng, rng.choice(SUPPLIED_UAS), expires=rng.choice((3600, 7200))) for _ in range(rng.randint(4, 6))]
    u.lines = [0] * 2
    u.presence = 1.0


def _setup_softphone(g: _Generator, u: _User) -> None:
    """A supplied desk phone, and a softphone (with +sip.instance: one binding) used some evenings
    and weekends from a mobile network; 2 bindings at most."""
    rng = u.rng
    u.devices = [_device(rng, rng.choice(SUPPLIED_UAS))]
    soft = _device(rng, rng.choice(SOFTPHONE_UAS), expires=900, instance=True)
    soft.nat_rebind = True
    days = rng.sample(g.days, rng.randint(4, 9))
    for day in days:
        def evening(g: _Generator, u: _User, day: _Day, soft: _Device = soft) -> None:
            on = day.at(rng.randint(18 * HOUR, 21 * HOUR))
            soft.source_ip = f"100.{rng.randint(64, 127)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            g.session(u, soft, on, on + rng.randint(1800, 3 * HOUR), guard=False)
        u.bursts.setdefault(day.index, []).append(evening)


def _setup_gateway(g: _Generator, u: _User) -> None:
    """A gateway registered all month instead of a phone; ordinary traffic on at most 3 lines."""
    rng = u.rng
    u.devices = []
    u.always_on = [_device(rng, rng.choice(GATEWAY_UAS), expires=3600, instance=False)]
    u.lines = [0] * rng.randint(2, 3)
    u.activity = rng.uniform(4, 10)


def _setup_phoning(g: _Generator, u: _User) -> None:
    """2-4 sessions, each of 68-85 outbound calls started within 50 minutes on one line (each call
    ends before the next starts): > 60 in an hour, never > 1 at once. Prospects come from a list
    of 60-90 numbers within the user's 140-number cap: no distinct_numbers breach."""
    rng = u.rng
    u.lines = [0] * 2
    u.prospects = [french_mobile(rng) if rng.random() < 0.5 else french_fixed(rng) for _ in range(rng.randint(60, 90))]
    for day in rng.sample(g.burst_days, min(len(g.burst_days), rng.randint(2, 4))):
        base = day.at(rng.choice((10, 14, 15)) * HOUR + rng.randrange(900))
        n = rng.randint(68, 85)
        step = 3000 // (n - 1)
        _burst_window(u, base, base + 3000 + step)

        def session(g: _Generator, u: _User, day: _Day, base: int = base, n: int = n, step: int = step) -> None:
            for k in range(n):
                start = base + k * step
                x = rng.random()
                if x < 0.2:  # answered, hung up quickly
                    ring = rng.randint(3, 8)
                    call = _Call(start, ring, rng.randint(3, step - ring - 2), "ANSWERED", "outbound", "", False)
                elif x < 0.85:
                    call = _Call(start, min(step - 2, rng.randint(12, 25)), 0, "NO ANSWER", "outbound", "", False)
                else:
                    call = _Call(start, rng.randint(1, 4), 0, "BUSY", "outbound", "", False)
                call.other = signalled(u.dial(rng.choice(u.prospects)), rng)
                call.with_start = rng.random() < 0.3
                g.emit_call(u, call)

        u.bursts.setdefault(day.index, []).append(session)


def _setup_call_centre(g: _Generator, u: _User) -> None:
    """4-6 agents behind a predictive dialler (an Asterisk UA: pbx_or_gateway), a 50-minute session
    on each of 2 campaign mornings. All agents start within 3 s and first calls ring >= 8 s: > 3
    at once. A call cycle is <= 155 s (ring <= 25, talk <= 120, wrap-up <= 15): >= 23 calls an hour
    per agent, > 60 together. A new prospect each call, 30 % answered, with extra sessions on the
    last morning until >= 170 distinct numbers answered: distinct_numbers."""
    rng = u.rng
    u.devices = []
    u.always_on = [_device(rng, DIALLER_UA, expires=3600, instance=False)]
    u.activity = rng.uniform(2, 6)  # agents' own few calls outside campaigns
    u.max_dialled = None
    agents = rng.randint(4, 6)
    state = {"answered": 0}
    days = sorted(rng.sample(g.burst_days, 2), key=lambda d: d.index)
    for n, day in enumerate(days):
        base = day.at(9 * HOUR + 1800 + rng.randrange(900))
        _burst_window(u, base, base + 4 * HOUR)

        def campaign(g: _Generator, u: _User, day: _Day, base: int = base, final: bool = n == 1) -> None:
            session_start = base
            while True:
                session_end = session_start + 50 * 60
                for agent in range(agents):
                    t = session_start + rng.randint(0, 3)
                    first = True
                    while t < session_end:
                        x = rng.random()
                        if x < 0.3:
                            ring, talk, disp = rng.randint(8 if first else 3, 20), _talk(rng, 3.6, 0.6, 120), "ANSWERED"
                        elif x < 0.9:
                            ring, talk, disp = rng.randint(8 if first else 10, 25), 0, "NO ANSWER"
                        else:
                            ring, talk, disp = rng.randint(8 if first else 1, 10), 0, "BUSY"
                        number = french_mobile(rng) if rng.random() < 0.6 else french_fixed(rng)
                        if talk:
                            state["answered"] += 1  # prospects are fresh numbers (a repeat is ~1e-8)
                        g.emit_call(u, _Call(t, ring, talk, disp, "outbound", signalled(number, rng),
                                             rng.random() < 0.3))
                        t += ring + talk + rng.randint(2, 15)
                        first = False
                if not final or state["answered"] >= 170:
                    break
                session_start = session_end + 600

        u.bursts.setdefault(day.index, []).append(campaign)


def _setup_office_pbx(g: _Generator, u: _User) -> None:
    """An office PBX registered all month (pbx_or_gateway) with up to 8 lines, and one day a busy
    moment with 5-6 calls at once (simultaneous_calls). Within the 140-number and 50-an-hour caps."""
    rng = u.rng
    u.devices = []
    u.always_on = [_device(rng, rng.choice(PBX_UAS), expires=3600, instance=False)]
    u.lines = [0] * 8
    u.activity = rng.uniform(20, 40)
    u.set_book(*_book(rng, rng.randint(60, 90)))
    day = rng.choice(g.burst_days)
    base = day.at(rng.choice((10, 14, 16)) * HOUR + rng.randrange(1800))
    n = rng.randint(5, 6)
    _burst_window(u, base, base + 2 * HOUR)

    def busy(g: _Generator, u: _User, day: _Day) -> None:
        for k in range(n):
            direction = "inbound" if k % 3 == 2 else "outbound"
            g.emit_call(u, _Call(base + k * rng.randint(5, 20), rng.randint(3, 9), rng.randint(400, 1800),
                                 "ANSWERED", direction, signalled(u.pick_book(), rng), rng.random() < 0.5))

    u.bursts.setdefault(day.index, []).append(busy)


# ---- frauds: every fraudulent call sends its `start` event; ordinary calls keep an hour clear


def _channels(g: _Generator, u: _User, base: int, stop: int, channels: int, talk: tuple[int, int],
              number: Callable[[], str]) -> None:
    """``channels`` lines all busy within a minute of ``base``, answered calls back to back until
    ``stop``, each lasting ``talk`` seconds."""
    rng = u.rng
    for _ in range(channels):
        t = base + rng.randint(0, 60)
        while t < stop:
            ring = rng.randint(3, 10)
            call = _Call(t, ring, rng.randint(*talk), "ANSWERED", "outbound", signalled(number(), rng), True, True)
            g.emit_call(u, call)
            t += call.ring + call.talk + rng.randint(1, 30)


def _setup_hacked_account(g: _Generator, u: _User) -> None:
    """An ordinary user whose desk phone stays registered all month from the office (one binding).
    One night between 01:00 and 04:00 an attacker registers from 2 foreign networks within an
    hour (a FRAUD_UAS user agent: third_party_device; 3 bindings in all), then 4-6 channels, all
    busy within a minute (simultaneous_calls), dial high-risk numbers for 2-3 hours. Every call
    lasts >= 7 minutes: <= 9 starts per channel per hour, <= 54 in all (no autodialer); none is
    covered (no distinct_numbers)."""
    rng = u.rng
    u.devices = []
    u.always_on = [_device(rng, rng.choice(SUPPLIED_UAS), expires=3600)]
    u.lines = u.lines[:2]
    u.premium = False
    day = rng.choice(g.fraud_days)
    first_reg = day.at(HOUR + rng.randrange(HOUR))
    second_reg = first_reg + rng.randint(600, 2400)
    base = second_reg + rng.randint(120, 600)
    stop = base + rng.randint(2 * HOUR, 3 * HOUR)
    channels = rng.randint(4, 6)
    _burst_window(u, first_reg, stop + 1900)
    attackers = [_device(rng, rng.choice(FRAUD_UAS), expires=1800, instance=False,
                         source_ip=f"{network}.{rng.randint(1, 254)}")
                 for network in rng.sample(_ATTACKER_NETWORKS, 2)]

    def night(g: _Generator, u: _User, day: _Day) -> None:
        for dev, at in zip(attackers, (first_reg, second_reg)):
            while at < stop:
                g.emit_registration(u, dev, at, dev.expires)
                at += int(dev.expires * dev.refresh)
        _channels(g, u, base, stop, channels, (420, 1800), lambda: _from_table(rng, _PREMIUM_INTL))

    u.bursts.setdefault(day.index, []).append(night)


def _setup_hacked_pbx(g: _Generator, u: _User) -> None:
    """An office PBX registered all month from its site (pbx_or_gateway), ordinary traffic on 3
    lines. One night from 00:30-01:30, through the PBX itself (no new registration), 4-8
    parallel calls to high-risk destinations (simultaneous_calls) for 2-4 hours, each >= 10
    minutes: <= 6 starts per channel per hour, <= 48 in all."""
    rng = u.rng
    u.devices = []
    u.always_on = [_device(rng, rng.choice(PBX_UAS), expires=3600, instance=False)]
    u.lines = [0] * 3
    u.activity = rng.uniform(8, 20)
    u.set_book(*_book(rng, rng.randint(60, 90)))
    u.premium = False
    day = rng.choice(g.fraud_days)
    base = day.at(1800 + rng.randrange(HOUR))
    stop = base + rng.randint(2 * HOUR, 4 * HOUR)
    channels = rng.randint(4, 8)
    _burst_window(u, base, stop + 2500)

    def night(g: _Generator, u: _User, day: _Day) -> None:
        _channels(g, u, base, stop, channels, (600, 2400), lambda: _from_table(rng, _PREMIUM_INTL))

    u.bursts.setdefault(day.index, []).append(night)


def _setup_irsf(g: _Generator, u: _User) -> None:
    """61-120 distinct numbers of one high-risk range sharing their first 8-9 digits, dialled on
    4-6 channels within 3,330 s (> 60 starts in an hour: autodialer), every channel busy within
    30 s of the start for >= 60 s (simultaneous_calls); answered, 1-10 minutes each."""
    rng = u.rng
    u.premium = False
    day = rng.choice(g.fraud_days)
    base = day.at(rng.choice((1, 2, 3, 22)) * HOUR + rng.randrange(1800))
    channels = rng.randint(4, 6)
    total = rng.randint(61, 120)
    prefix, n = rng.choice(_IRSF_RANGES)
    vary = 3 if len(prefix) - 1 + n <= 11 else rng.choice((3, 4))
    head = prefix + _digits(rng, n - vary)
    numbers = [f"{head}{k:0{vary}d}" for k in rng.sample(range(10 ** vary), total)]
    _burst_window(u, base, base + HOUR)

    def pump(g: _Generator, u: _User, day: _Day) -> None:
        todo = iter(numbers)
        for c in range(channels):
            count = total // channels + (1 if c < total % channels else 0)
            budget = 3300 // count  # seconds per call, ring and hang-up included
            t = base + rng.randint(0, 30)
            for _ in range(count):
                ring, gap = rng.randint(2, 8), rng.randint(1, 5)
                talk = rng.randint(60, max(60, min(600, budget - ring - gap)))
                g.emit_call(u, _Call(t, ring, talk, "ANSWERED", "outbound", signalled(next(todo), rng), True, True))
                t += ring + talk + gap

    u.bursts.setdefault(day.index, []).append(pump)


def _setup_silent_call(g: _Generator, u: _User) -> None:
    """One answered call to a satellite number from 20:00-20:30, 5 hours long, alone on the line
    (ordinary calls keep an hour clear); registrations go on."""
    rng = u.rng
    u.premium = False
    day = rng.choice(g.fraud_days)
    start = day.at(20 * HOUR + rng.randrange(1800))
    ring = rng.randint(5, 15)
    _burst_window(u, start, start + ring + 5 * HOUR)
    number = _from_table(rng, _SATELLITE)

    def call(g: _Generator, u: _User, day: _Day) -> None:
        g.emit_call(u, _Call(start, ring, 5 * HOUR, "ANSWERED", "outbound", signalled(number, rng), True, True))

    u.bursts.setdefault(day.index, []).append(call)


def _setup_short_call_burst(g: _Generator, u: _User) -> None:
    """150-300 attempts on one line (each ends before the next starts) within 59 minutes, to
    distinct high-risk numbers (> 60 an hour: autodialer; none covered), 2.5-8.3 % answered for
    1-6 s."""
    rng = u.rng
    u.premium = False
    day = rng.choice(g.fraud_days)
    base = day.at(rng.choice((2, 3, 13, 14, 21)) * HOUR + rng.randrange(1800))
    n = rng.randint(150, 300)
    step = 3540 // n  # 11-23 s
    answered = set(rng.sample(range(n), rng.randint(n // 40, n // 12)))
    numbers: list[str] = []
    while len(numbers) < n:
        number = _from_table(rng, _PREMIUM_INTL)
        if number not in numbers:
            numbers.append(number)
    _burst_window(u, base, base + n * step)

    def burst(g: _Generator, u: _User, day: _Day) -> None:
        for k, number in enumerate(numbers):
            if k in answered:
                call = _Call(0, rng.randint(1, 3), rng.randint(1, 6), "ANSWERED", "outbound", "", True, True)
            elif rng.random() < 0.8:
                call = _Call(0, rng.randint(2, step - 2), 0, "NO ANSWER", "outbound", "", True, True)
            else:
                call = _Call(0, rng.randint(1, 2), 0, "FAILED", "outbound", "", True, True)
            call.start, call.other = base + k * step, signalled(number, rng)
            g.emit_call(u, call)

    u.bursts.setdefault(day.index, []).append(burst)


def _setup_traffic_pumping(g: _Generator, u: _User) -> None:
    """The same 2-5 numbers of one premium range called back to back on 1-2 lines, answered,
    20-60 minutes each, from the morning to the evening of 1-2 days (<= 2 at once, <= 6 an
    hour, none covered)."""
    rng = u.rng
    u.premium = False
    day = rng.choice(g.fraud_days)
    days = [day] + [d for d in g.fraud_days if d.index == day.index + 1 and rng.random() < 0.5]
    prefix, n = rng.choice(_PUMPING)
    numbers = sorted({prefix + _digits(rng, n) for _ in range(rng.randint(2, 5))})
    lines = rng.randint(1, 2)
    for d in days:
        start = d.at(9 * HOUR + rng.randrange(HOUR))
        stop = d.at(17 * HOUR + rng.randrange(2 * HOUR))
        _burst_window(u, start, stop + HOUR + 60)

        def pump(g: _Generator, u: _User, day: _Day, start: int = start, stop: int = stop) -> None:
            for _ in range(lines):
                t = start + rng.randint(0, 300)
                while t < stop:
                    call = _Call(t, rng.randint(3, 10), rng.randint(1200, 3600), "ANSWERED", "outbound",
                                 signalled(rng.choice(numbers), rng), True, True)
                    g.emit_call(u, call)
                    t += call.ring + call.talk + rng.randint(5, 60)

        u.bursts.setdefault(d.index, []).append(pump)


def _wangiri(g: _Generator, users: list[_User], count: int, abuse_scale: float) -> None:
    """Campaigns of one-ring calls (1-3 s, unanswered) from a few numbers of one high-risk range
    to 40-80 ordinary users of any customer within 20 minutes of a working day; 2-3 of them call
    the number back 1-6 hours later (answered, 3-15 minutes): the fraud. Each call is alone on
    the user's lines (ordinary calls may not touch it): no fair-use rule moves."""
    scenario = _SCENARIO_BY_NAME["wangiri"]
    campaigns = max(1, round(count * scenario.rate * abuse_scale / 2.5))
    for k in range(campaigns):
        rng = random.Random(f"cdrwatch-generate:{g.seed}:wangiri:{k}")
        pool = [u for u in users if u.scenario is None and u.target_of is None]
        if not pool:
            return
        targets = rng.sample(pool, min(len(pool), rng.randint(40, 80)))
        day = rng.choice([d for d in g.fraud_days if d.is_work] or g.fraud_days)
        base = day.at(rng.randint(10 * HOUR, 16 * HOUR))
        prefix, n = rng.choice(_WANGIRI_RANGES)
        head = prefix + _digits(rng, n - 3)
        callers = [head + _digits(rng, 3) for _ in range(rng.randint(3, 5))]
        backs = rng.randint(2, 3)
        for j, u in enumerate(targets):
            caller = rng.choice(callers)
            ring = _Call(base + rng.randrange(1200), rng.randint(1, 3), 0, "NO ANSWER", "inbound",
                         signalled(caller, rng), True)
            calls = [ring]
            u.blocked.append((ring.start, ring.start + ring.ring))
            if j < backs:
                u.scenario, u.premium = scenario, False
                start = ring.start + ring.ring + rng.randint(HOUR, 6 * HOUR)
                back = _Call(start, rng.randint(3, 12), rng.randint(180, 900), "ANSWERED", "outbound",
                             signalled(caller, rng), True, True)
                calls.append(back)
                u.blocked.append((start, start + back.ring + back.talk))
            else:
                u.target_of = scenario.name

            def rung(g: _Generator, u: _User, day: _Day, calls: list[_Call] = calls) -> None:
                for call in calls:
                    g.emit_call(u, call)

            u.bursts.setdefault(day.index, []).append(rung)


def _setup_none(g: _Generator, u: _User) -> None:
    """Set up with its campaign (``_wangiri``)."""


_SETUP: dict[str, Callable[[_Generator, _User], None]] = {
    "prospector": _setup_prospector,
    "shared_line": _setup_shared_line,
    "many_phones": _setup_many_phones,
    "softphone": _setup_softphone,
    "gateway": _setup_gateway,
    "phoning": _setup_phoning,
    "call_centre": _setup_call_centre,
    "office_pbx": _setup_office_pbx,
    "hacked_account": _setup_hacked_account,
    "hacked_pbx": _setup_hacked_pbx,
    "irsf": _setup_irsf,
    "wangiri": _setup_none,
    "silent_call": _setup_silent_call,
    "short_call_burst": _setup_short_call_burst,
    "traffic_pumping": _setup_traffic_pumping,
}
assert set(_SETUP) == set(_SCENARIO_BY_NAME)


# --------------------------------------------------------------------------------------------
# public API


def parse_month(text: str) -> tuple[int, int]:
    try:
        check_period(text)
    except ValueError as exc:
        raise ConfigError(f"--month: {exc}") from None
    if text > "2098-12":  # the month's late CDRs are written into the next one
        raise ConfigError(f"--month: expected a month up to 2098-12, got {text!r}")
    return int(text[:4]), int(text[5:])


def generate_month(
    out_dir: Path,
    *,
    users: int,
    month: str,
    seed: int = 1,
    fmt: str = "jsonl",
    timezone: str = DEFAULT_TIMEZONE,
    abuse_scale: float = 1.0,
) -> GenerateSummary:
    """Write ``cdrs``, ``registrations`` (``fmt``: jsonl or parquet), ``labels.jsonl`` and
    ``manifest.json`` into ``out_dir`` (created); same arguments, byte-identical files."""
    if users < 1:
        raise ConfigError(f"--users: expected at least 1, got {users}")
    if fmt not in ("jsonl", "parquet"):
        raise ConfigError(f"--format: expected jsonl or parquet, got {fmt!r}")
    if abuse_scale < 0:
        raise ConfigError(f"--abuse-scale: expected >= 0, got {abuse_scale}")
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone: unknown time zone {timezone!r}") from None
    year, mon = parse_month(month)
    output_dir(out_dir, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {out_dir}: {exc.strerror}") from None
    started = time.monotonic()
    gen = _Generator(users=users, year=year, month=mon, seed=seed, tz=tz, abuse_scale=abuse_scale)
    cdr_path = out_dir / f"cdrs.{fmt}"
    reg_path = out_dir / f"registrations.{fmt}"
    cdr_sink: _Sink
    reg_sink: _Sink
    if fmt == "parquet":
        cdr_sink = _ParquetSink(cdr_path, CDR_COLUMNS, ends_only=True)
        reg_sink = _ParquetSink(reg_path, REGISTRATION_COLUMNS)
    else:
        cdr_sink, reg_sink = _JsonlSink(cdr_path), _JsonlSink(reg_path)
    try:
        n_cdrs, n_regs = gen.run(cdr_sink, reg_sink)
    finally:
        cdr_sink.close()
        reg_sink.close()
    labels = gen.labels()
    labels_path = out_dir / "labels.jsonl"
    labels_path.write_bytes(b"".join(orjson.dumps(label) + b"\n" for label in labels))
    scenarios: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    for user in gen.users:
        if user.scenario is not None:
            scenarios.setdefault(user.scenario.name, []).append(user.name)
        elif user.target_of is not None:
            targets.setdefault(user.target_of, []).append(user.name)
    manifest_path = out_dir / "manifest.json"
    manifest = {"users": users, "customers": gen.customers, "month": gen.period, "seed": seed,
                "scenarios": {s.name: scenarios[s.name] for s in ALL_SCENARIOS if s.name in scenarios},
                "targets": targets}
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return GenerateSummary(
        users=users, customers=gen.customers, month=gen.period, seed=seed, format=fmt, calls=gen.calls,
        cdr_events=n_cdrs, registrations=n_regs, labels=labels, scenarios=scenarios, targets=targets,
        files=[cdr_path, reg_path, labels_path, manifest_path], seconds=time.monotonic() - started,
    )


def format_generate(summary: GenerateSummary) -> str:
    by_rule: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for label in summary.labels:
        if "rule" in label:
            by_rule[label["rule"]] = by_rule.get(label["rule"], 0) + 1
        else:
            by_kind[label["kind"]] = by_kind.get(label["kind"], 0) + 1
    fair_use = sum(by_rule.values())
    lines = [
        f"generated {summary.month} for {summary.users} users ({summary.customers} customers), seed {summary.seed}, "
        f"in {summary.seconds:.1f} s",
        f"  {summary.calls} calls ({summary.cdr_events} cdrs events), {summary.registrations} registrations",
        f"  {fair_use} fair-use labels: " + (", ".join(f"{r} {n}" for r, n in sorted(by_rule.items())) or "none"),
        f"  {by_kind.get('fraud', 0)} fraud labels, {by_kind.get('target', 0)} fraud targets",
    ]
    for scenario in ALL_SCENARIOS:
        names = summary.scenarios.get(scenario.name, [])
        if names:
            shown = ", ".join(names[:4]) + (f", … ({len(names)})" if len(names) > 4 else "")
            fraud = "fraud" + (", " if scenario.rules else "") if scenario.name in _FRAUD_NAMES else ""
            lines.append(f"  {scenario.name:<16} {shown}  → {fraud}{', '.join(scenario.rules)}")
    lines.append("  wrote " + ", ".join(str(p) for p in summary.files))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def register(sub: Any) -> None:
    def listed(scenarios: tuple[Scenario, ...]) -> str:
        return "\n".join(f"  {s.name:<16} {', '.join(s.rules) or '-'}: {s.description}" for s in scenarios)

    parser = sub.add_parser(
        "generate", description="Generate a realistic month of hosted-telephony traffic for N users — business-hours "
        "and weekly profile, quiet nights, heavy-tailed durations, ~25 % unanswered, address books, supplied "
        "phones re-registering from their customer's office sites (and some from home) — with injected "
        "fair-use abuse and labelled fraud, and write DIR/cdrs.jsonl, DIR/registrations.jsonl (or .parquet), "
        "DIR/labels.jsonl and DIR/manifest.json. labels.jsonl: {user, period, rule, scenario} lines, exactly "
        "the fair-use alerts the default plan must raise; {user, period, scenario, kind: \"fraud\", first_call, "
        "damage} per defrauded user (the first fraudulent call's start, and the end of the first answered one); {user, period, scenario, "
        "kind: \"target\"} per user rung by a wangiri who did not call back. Same arguments, same files.",
        epilog="fair-use scenarios (share of users, at least one each) and the rules they raise:\n"
        + listed(SCENARIOS)
        + "\n\nfraud scenarios (~0.1 % of users each, at least one; from the 16th of the month; every "
        "fraudulent call sends a start event) and the fair-use rules they raise as well:\n"
        + listed(FRAUD_SCENARIOS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=_int, required=True, metavar="N", help="number of SIP accounts")
    parser.add_argument("--month", required=True, metavar="YYYY-MM", help="calendar month (in --timezone)")
    parser.add_argument("--seed", type=_int, default=1, metavar="S", help="random seed (default 1)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl",
                        help="stream files format, default jsonl; labels are always JSONL; Parquet cdrs hold the "
                        "`end` events only (a Parquet row cannot omit a `start` event's missing fields)")
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE, metavar="TZ",
                        help="zone of the month and of the business hours (default Europe/Paris, as plans.toml)")
    parser.add_argument("--abuse-scale", type=float, default=1.0, metavar="X",
                        help="multiply every scenario's share of users (0 = no abuse and no fraud at all; default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = generate_month(args.out, users=args.users, month=args.month, seed=args.seed, fmt=args.format,
                             timezone=args.timezone, abuse_scale=args.abuse_scale)
    print(format_generate(summary))
    return 0
