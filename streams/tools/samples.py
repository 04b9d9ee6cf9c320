"""A deterministic, labelled sample stream of CDRs and SIP registrations.

``build_sample()`` returns the payloads of the ``cdrs`` and ``sip-registrations`` topics for one
calendar month (the README's topic payloads) and the exact list of fair-use alerts the README's
rules must raise on them, for the default plan of the bundled ``plans.toml`` (``full-illimite``:
150 distinct numbers, 3 simultaneous calls, 3 registered devices, 60 calls per hour,
operator-supplied Yealink/snom/Gigaset/Polycom terminals).

The stream holds:

* ``normal_users`` ordinary users (``u0001`` …, customers ``c001`` …) who trigger no rule: 1–2
  operator-supplied phones each, 10–60 calls in the month in business hours (Europe/Paris), never
  two calls at once, at most 10 calls in any hour, a personal address book of at most 40 French
  numbers (mixed ``0…``/``+33…``/``0033…`` formats) and a few international ones. ``u0001`` also
  makes one emergency call (``112``).
* one abuser per rule, each breaching its own rule only: ``abuse-distinct``,
  ``abuse-simultaneous``, ``abuse-devices``, ``abuse-thirdparty``, ``abuse-pbx``,
  ``abuse-autodialer``;
* edge cases that sit exactly at a limit or look like a breach to a careless implementation and
  must raise nothing: ``edge-150``, ``edge-backtoback``, ``edge-unregister``, ``edge-rebind``,
  ``edge-expiry``, ``edge-60perhour`` (see ``_edge_*`` below).

Everything is derived from ``seed`` through per-user ``random.Random`` instances, so a user's events
do not depend on how many normal users are generated. Pure: no I/O except ``write_jsonl`` /
``write_sample``.
"""

from __future__ import annotations

import random
import uuid
import zlib
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Mapping
from zoneinfo import ZoneInfo

import orjson

from ..codecs import cdr_payload, registration_payload
from .generator import french_fixed, french_mobile, signalled
from ..core.timeutil import check_period

__all__ = ["SampleStream", "build_sample", "write_jsonl", "write_sample", "SAMPLE_TIMEZONE"]

SAMPLE_TIMEZONE = ZoneInfo("Europe/Paris")
UTC = timezone.utc

# User agents of operator-supplied terminals (match the default plan's allowed_user_agents).
ALLOWED_UAS: tuple[str, ...] = (
    "Yealink SIP-T46S 66.86.0.15",
    "Yealink SIP-T54W 96.86.0.70",
    "Yealink SIP-T31P 124.86.0.40",
    "Yealink W60B 77.85.0.20",
    "snomD785/10.1.54.13",
    "snomD735/10.1.73.16",
    "Gigaset N510 IP PRO/42.250.00.000.000",
    "PolycomVVX-VVX_411-UA/6.3.1.8427",
)
THIRD_PARTY_UA = "Zoiper rv2.10.20.2"
PBX_UA = "Asterisk PBX 18.20.0"

_MIN_START_SPACING = 400  # seconds between two call starts of a normal user: <= 9 calls per hour


@dataclass(frozen=True)
class SampleStream:
    cdrs: list[dict[str, object]]  # `cdrs` topic payloads (both "start" and "end" events), sorted by event time
    registrations: list[dict[str, object]]  # `sip-registrations` payloads, sorted by time
    expected: list[tuple[str, str, str]]  # (user, period "YYYY-MM", rule): exactly the alerts to raise


@dataclass(frozen=True)
class _Call:
    user: str
    customer: str
    caller: str
    callee: str
    direction: str
    start: datetime  # UTC
    answer: datetime | None
    end: datetime
    billsec: int
    disposition: str
    with_start: bool
    render_utc: bool = False  # write the times with a +00:00 offset instead of Paris time


@dataclass(frozen=True)
class _Reg:
    user: str
    customer: str
    contact: str
    instance_id: str | None
    user_agent: str
    source_ip: str
    expires: int
    time: datetime  # UTC


@dataclass(frozen=True)
class _Device:
    contact: str
    instance_id: str | None
    user_agent: str
    source_ip: str


@dataclass
class _Account:
    user: str
    customer: str
    did: str  # the user's own number, E.164
    rng: random.Random
    calls: list[_Call] = field(default_factory=list)
    regs: list[_Reg] = field(default_factory=list)
    last_end: datetime | None = None
    last_start: datetime | None = None


# --------------------------------------------------------------------------------------------
# numbers


def _international(rng: random.Random) -> str:
    """A number abroad, E.164 digits with '+' (or 00), mostly in the default plan's destinations."""
    choice = rng.randrange(8)
    if choice == 0:
        return f"+44207{rng.randint(0, 9999999):07d}"  # London, Royaume-Uni Fixe
    if choice == 1:
        return f"+4930{rng.randint(10000000, 99999999)}"  # Berlin, Allemagne Fixe
    if choice == 2:
        return f"+3491{rng.randint(1000000, 9999999)}"  # Madrid, Espagne Fixe
    if choice == 3:
        return f"+1212{rng.randint(2000000, 9999999)}"  # New York, Etats-Unis Fixe
    if choice == 4:
        return f"+3225{rng.randint(100000, 999999)}"  # Brussels, Belgique Fixe (not included)
    if choice == 5:
        return f"+4122{rng.randint(1000000, 9999999)}"  # Geneva, Suisse Fixe (not included)
    if choice == 6:
        return f"0044161{rng.randint(1000000, 9999999)}"  # Manchester, Royaume-Uni Fixe
    return f"+35321{rng.randint(1000000, 9999999)}"  # Cork, Irlande Fixe


def _unique_numbers(rng: random.Random, count: int, *, mobile_share: float, avoid: set[str]) -> list[str]:
    """``count`` distinct French numbers (national form) not in ``avoid``; adds them to ``avoid``."""
    out: list[str] = []
    while len(out) < count:
        number = french_mobile(rng) if rng.random() < mobile_share else french_fixed(rng)
        if number not in avoid:
            avoid.add(number)
            out.append(number)
    return out


# --------------------------------------------------------------------------------------------
# time


def _rfc3339(value: datetime, *, utc: bool = False) -> str:
    return value.astimezone(UTC if utc else SAMPLE_TIMEZONE).isoformat()


def _local(day: date, hour: int, minute: int, second: int = 0) -> datetime:
    """A Paris wall-clock time as an aware UTC datetime (all arithmetic is done in UTC)."""
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=SAMPLE_TIMEZONE).astimezone(UTC)


def _business_days(year: int, month: int) -> list[date]:
    """Weekdays from the 2nd to the 27th: far enough from month ends in any time zone."""
    return [
        date(year, month, d)
        for d in range(2, min(27, monthrange(year, month)[1]) + 1)
        if date(year, month, d).weekday() < 5
    ]


# --------------------------------------------------------------------------------------------
# the builder


class _Builder:
    def __init__(self, seed: int, year: int, month: int) -> None:
        self.seed = seed
        self.year = year
        self.month = month
        self.days = _business_days(year, month)
        self.accounts: dict[str, _Account] = {}
        self._did_counter = 0

    # ---- accounts ---------------------------------------------------------------------------

    def account(self, user: str, customer: str, *, index: int | None = None) -> _Account:
        """A SIP account; ``index`` numbers normal users, the others get their own DID range so
        that their events do not depend on how many normal users there are."""
        if index is None:
            self._did_counter += 1
            did = f"+33980{self._did_counter:06d}"
        else:
            did = f"+33970{index:06d}"
        acc = _Account(user, customer, did, random.Random(f"cdrwatch-sample:{self.seed}:{user}"))
        self.accounts[user] = acc
        return acc

    # ---- calls ------------------------------------------------------------------------------

    def call(
        self,
        acc: _Account,
        *,
        other: str,
        start: datetime,
        direction: str = "outbound",
        ring: int = 5,
        billsec: int = 0,
        disposition: str | None = None,
        with_start: bool = False,
        forward_to: str | None = None,
        render_utc: bool = False,
    ) -> _Call:
        """Add a call; ``billsec > 0`` means answered after ``ring`` seconds."""
        if billsec > 0:
            answer: datetime | None = start + timedelta(seconds=ring)
            end = start + timedelta(seconds=ring + billsec)
            disp = "ANSWERED"
        else:
            answer = None
            end = start + timedelta(seconds=max(ring, 1))
            disp = disposition or "NO ANSWER"
        if direction == "outbound":
            caller, callee = acc.did, other
        elif direction == "inbound":
            caller, callee = other, acc.did
        else:  # forwarded: the original caller, to the user's forwarding target
            assert forward_to is not None
            caller, callee = other, forward_to
        call = _Call(acc.user, acc.customer, caller, callee, direction, start, answer, end, billsec, disp,
                     with_start, render_utc)
        acc.calls.append(call)
        if acc.last_end is None or end > acc.last_end:
            acc.last_end = end
        if acc.last_start is None or start > acc.last_start:
            acc.last_start = start
        return call

    def next_start(self, acc: _Account, candidate: datetime) -> datetime:
        """``candidate`` pushed so that the call neither overlaps the previous one nor starts
        less than ``_MIN_START_SPACING`` seconds after its start (back-to-back at most)."""
        start = candidate
        if acc.last_end is not None:
            gap = 0 if acc.rng.random() < 0.03 else acc.rng.randint(20, 900)
            start = max(start, acc.last_end + timedelta(seconds=gap))
        if acc.last_start is not None:
            start = max(start, acc.last_start + timedelta(seconds=_MIN_START_SPACING))
        return start

    def outcome(self, rng: random.Random, *, answered_share: float = 0.75) -> tuple[int, int, str | None]:
        """(ring seconds, billsec, disposition for unanswered calls)."""
        if rng.random() < answered_share:
            billsec = max(3, min(3600, int(rng.lognormvariate(4.6, 1.0))))
            return rng.randint(3, 20), billsec, None
        if rng.random() < 0.7:
            return rng.randint(15, 45), 0, "NO ANSWER"
        if rng.random() < 0.9:
            return rng.randint(1, 5), 0, "BUSY"
        return rng.randint(1, 3), 0, "FAILED"

    def candidates(self, rng: random.Random, count: int, days: list[date] | None = None) -> list[datetime]:
        """``count`` sorted random times in business hours (08:30–18:00 Paris) on ``days``."""
        pool = days or self.days
        out = []
        for _ in range(count):
            day = rng.choice(pool)
            seconds = rng.randint(8 * 3600 + 1800, 18 * 3600)
            out.append(_local(day, 0, 0) + timedelta(seconds=seconds))
        out.sort()
        return out

    def everyday_calls(
        self, acc: _Account, count: int, book: list[str], *, days: list[date] | None = None
    ) -> None:
        """Ordinary calls to/from an address book: sequential, never overlapping."""
        rng = acc.rng
        weights = [1.0 / (i + 1) for i in range(len(book))]
        for candidate in self.candidates(rng, count, days):
            start = self.next_start(acc, candidate)
            ring, billsec, disp = self.outcome(rng)
            kind = rng.random()
            if kind < 0.2:
                other = signalled(rng.choices(book, weights)[0], rng) \
                    if rng.random() < 0.6 else signalled(french_mobile(rng), rng)
                self.call(acc, other=other, start=start, direction="inbound", ring=ring, billsec=billsec,
                          disposition=disp, with_start=rng.random() < 0.2)
            elif kind < 0.23:
                self.call(acc, other=signalled(french_fixed(rng), rng), start=start,
                          direction="forwarded", ring=ring, billsec=billsec, disposition=disp,
                          forward_to="+33" + book[0][1:], with_start=rng.random() < 0.2)
            else:
                other = signalled(rng.choices(book, weights)[0], rng)
                self.call(acc, other=other, start=start, ring=ring, billsec=billsec, disposition=disp,
                          with_start=rng.random() < 0.2)

    # ---- registrations ----------------------------------------------------------------------

    def device(self, acc: _Account, user_agent: str, *, with_instance: bool = True) -> _Device:
        rng = acc.rng
        lan = f"192.168.{rng.randint(0, 9)}.{rng.randint(10, 250)}"
        port = rng.choice([5060, 5062, 5064]) if with_instance else rng.randint(20000, 60000)
        instance = f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>" if with_instance else None
        rng.choice(['203.0.113', '198.51.100', '192.0.2'])  # kept: the sample stays the same stream otherwise
        # a customer's phones sit behind its office's network: a normal user never "changes network"
        office = ("203.0.113", "198.51.100", "192.0.2")[zlib.crc32(acc.customer.encode()) % 3]
        public = f"{office}.{rng.randint(1, 254)}"
        return _Device(f"sip:{acc.user}@{lan}:{port};transport=udp", instance, user_agent, public)

    def register(self, acc: _Account, dev: _Device, at: datetime, *, expires: int = 3600,
                 contact: str | None = None) -> None:
        acc.regs.append(_Reg(acc.user, acc.customer, contact or dev.contact, dev.instance_id,
                             dev.user_agent, dev.source_ip, expires, at))

    def register_day(self, acc: _Account, dev: _Device, day: date, *, refreshes: int) -> None:
        """A phone registering in the morning and refreshing a little before each expiry."""
        at = _local(day, 7, 30) + timedelta(seconds=acc.rng.randint(0, 5400))
        for _ in range(refreshes + 1):
            self.register(acc, dev, at)
            at += timedelta(seconds=acc.rng.randint(3300, 3550))
        if acc.rng.random() < 0.25:  # switched off at the end of the day
            self.register(acc, dev, at - timedelta(seconds=acc.rng.randint(600, 1800)), expires=0)

    # ---- output -----------------------------------------------------------------------------

    def build(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        events: list[tuple[datetime, int, str, dict[str, object]]] = []
        regs: list[tuple[datetime, str, str, int, dict[str, object]]] = []
        for acc in self.accounts.values():
            calls = sorted(acc.calls, key=lambda c: (c.start, c.end, c.callee))
            for n, call in enumerate(calls, start=1):
                call_id = f"{acc.user}-{n:05d}"
                utc = call.render_utc
                start_time = _rfc3339(call.start, utc=utc)
                if call.with_start:
                    events.append((call.start, 1, call_id, cdr_payload(
                        "start", call_id, call.user, call.customer, call.caller, call.callee, call.direction,
                        start_time)))
                events.append((call.end, 0, call_id, cdr_payload(
                    "end", call_id, call.user, call.customer, call.caller, call.callee, call.direction, start_time,
                    None if call.answer is None else _rfc3339(call.answer, utc=utc), _rfc3339(call.end, utc=utc),
                    call.billsec, call.disposition)))
            for i, reg in enumerate(acc.regs):
                regs.append((reg.time, reg.user, reg.contact, i, registration_payload(
                    reg.user, reg.customer, reg.contact, reg.instance_id, reg.user_agent, reg.source_ip, reg.expires,
                    _rfc3339(reg.time))))
        # At equal instants an `end` comes before a `start` (a hang-up frees the slot the next
        # call takes: intervals are [start, end)).
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        regs.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        return [e[3] for e in events], [r[4] for r in regs]


# --------------------------------------------------------------------------------------------
# populations


def _normal_users(b: _Builder, count: int) -> None:
    rng = random.Random(f"cdrwatch-sample:{b.seed}:customers")
    customer_no, left = 0, 0
    for i in range(1, count + 1):
        if left == 0:
            customer_no += 1
            left = rng.randint(1, 6)
        left -= 1
        acc = b.account(f"u{i:04d}", f"c{customer_no:03d}", index=i)
        r = acc.rng
        book = _unique_numbers(r, r.randint(8, 40), mobile_share=0.4, avoid=set())
        book += [_international(r) for _ in range(r.randint(0, 3))]
        b.everyday_calls(acc, r.randint(10, 60), book)
        if i == 1:  # one emergency call, answered
            start = b.next_start(acc, acc.last_end or _local(b.days[0], 10, 0))
            b.call(acc, other="112", start=start, ring=2, billsec=95, with_start=True)
        devices = [b.device(acc, r.choice(ALLOWED_UAS), with_instance=r.random() < 0.7)
                   for _ in range(r.randint(1, 2))]
        for day in r.sample(b.days, 2):
            for dev in devices:
                b.register_day(acc, dev, day, refreshes=r.randint(1, 2))


def _plain_registration(b: _Builder, acc: _Account, day: date, ua: str | None = None) -> None:
    dev = b.device(acc, ua or acc.rng.choice(ALLOWED_UAS[:3]))
    b.register_day(acc, dev, day, refreshes=2)


def _abuse_distinct(b: _Builder) -> None:
    """160 distinct covered numbers (France Fixe/Mobile), 10 a day, answered, never overlapping."""
    acc = b.account("abuse-distinct", "c901")
    r = acc.rng
    numbers = _unique_numbers(r, 160, mobile_share=0.5, avoid=set())
    days = b.days[:16]
    for i, number in enumerate(numbers):
        day = days[i // 10]
        candidate = _local(day, 9, 0) + timedelta(seconds=(i % 10) * 1800 + r.randint(0, 600))
        start = b.next_start(acc, candidate)
        b.call(acc, other=signalled(number, r), start=start, ring=r.randint(3, 15),
               billsec=r.randint(30, 600), with_start=r.random() < 0.2)
    _plain_registration(b, acc, days[0])


def _abuse_simultaneous(b: _Builder) -> None:
    """A few ordinary calls, and one afternoon with 4 answered outbound calls at once."""
    acc = b.account("abuse-simultaneous", "c902")
    r = acc.rng
    book = _unique_numbers(r, 12, mobile_share=0.3, avoid=set())
    burst_day = b.days[9]
    b.everyday_calls(acc, 8, book, days=[d for d in b.days if d != burst_day])
    targets = _unique_numbers(r, 4, mobile_share=0.5, avoid=set(book))
    base = _local(burst_day, 14, 0)
    for offset, billsec in ((0, 1195), (130, 776), (270, 830), (360, 300)):
        b.call(acc, other=signalled(targets.pop(), r), start=base + timedelta(seconds=offset),
               ring=5, billsec=billsec, with_start=True)
    _plain_registration(b, acc, b.days[0])


def _abuse_devices(b: _Builder) -> None:
    """Four operator-supplied phones registered within five minutes (4 active bindings)."""
    acc = b.account("abuse-devices", "c903")
    r = acc.rng
    day = b.days[3]
    base = _local(day, 9, 0)
    for offset, ua in zip((0, 90, 190, 280), (ALLOWED_UAS[0], ALLOWED_UAS[1], ALLOWED_UAS[4], ALLOWED_UAS[6])):
        b.register(acc, b.device(acc, ua), base + timedelta(seconds=offset))
    b.everyday_calls(acc, 6, _unique_numbers(r, 6, mobile_share=0.3, avoid=set()))


def _abuse_thirdparty(b: _Builder) -> None:
    """A supplied desk phone plus a Zoiper softphone on the same SIP account."""
    acc = b.account("abuse-thirdparty", "c904")
    r = acc.rng
    day = b.days[5]
    desk = b.device(acc, ALLOWED_UAS[0])
    b.register(acc, desk, _local(day, 8, 30))
    b.register(acc, desk, _local(day, 9, 25))
    soft = b.device(acc, THIRD_PARTY_UA, with_instance=False)
    b.register(acc, soft, _local(day, 10, 12))
    b.register(acc, soft, _local(day, 11, 8))  # a refresh: still one alert per (user, period, rule)
    b.everyday_calls(acc, 8, _unique_numbers(r, 8, mobile_share=0.3, avoid=set()))


def _abuse_pbx(b: _Builder) -> None:
    """A supplied desk phone, then the account moved behind an Asterisk PBX."""
    acc = b.account("abuse-pbx", "c905")
    r = acc.rng
    day = b.days[7]
    b.register(acc, b.device(acc, ALLOWED_UAS[4]), _local(day, 8, 45))
    pbx = b.device(acc, PBX_UA, with_instance=False)
    b.register(acc, pbx, _local(day, 15, 20))
    b.register(acc, pbx, _local(day, 15, 20) + timedelta(seconds=3500))
    b.everyday_calls(acc, 10, _unique_numbers(r, 10, mobile_share=0.3, avoid=set()))


def _abuse_autodialer(b: _Builder) -> None:
    """70 short outbound calls within 49 minutes, straddling a clock hour (10:36–11:25), so that
    no single clock hour holds more than 60: only a sliding 60-minute window sees the breach."""
    acc = b.account("abuse-autodialer", "c906")
    r = acc.rng
    burst_day = b.days[11]
    b.everyday_calls(acc, 5, _unique_numbers(r, 5, mobile_share=0.3, avoid=set()),
                     days=[d for d in b.days if d != burst_day])
    prospects = _unique_numbers(r, 35, mobile_share=0.4, avoid=set())
    base = _local(burst_day, 10, 36)
    for i in range(70):
        start = base + timedelta(seconds=i * 42 + r.randint(0, 5))
        roll = r.random()
        if roll < 0.2:  # answered, hung up quickly
            b.call(acc, other=signalled(r.choice(prospects), r), start=start,
                   ring=r.randint(3, 6), billsec=r.randint(5, 25), with_start=r.random() < 0.3)
        else:
            busy = roll > 0.85
            b.call(acc, other=signalled(r.choice(prospects), r), start=start,
                   ring=r.randint(1, 4) if busy else r.randint(8, 20),
                   disposition="BUSY" if busy else "NO ANSWER", with_start=r.random() < 0.3)
    _plain_registration(b, acc, burst_day)


def _edge_150(b: _Builder) -> None:
    """Exactly 150 distinct covered numbers in the month (Paris time), hidden among look-alikes:
    the same numbers again in other formats, unanswered calls to 20 more numbers, answered calls to
    non-included destinations (Spanish/Italian/HK mobiles, a 0800 number), emergency short numbers
    (15/17/18/112 — "1…" would otherwise look like Etats-Unis Fixe), inbound and forwarded calls,
    and 5 answered calls to new numbers on the last evening of the month written with a +00:00
    offset, which fall in the NEXT month in Europe/Paris."""
    acc = b.account("edge-150", "c907")
    r = acc.rng
    seen: set[str] = set()
    covered = _unique_numbers(r, 150, mobile_share=0.5, avoid=seen)
    unanswered = _unique_numbers(r, 20, mobile_share=0.5, avoid=seen)
    specs: list[tuple[str, str, bool]] = []  # (direction, number as signalled, answered)
    specs += [("outbound", signalled(n, r), True) for n in covered]
    for n in r.sample(covered, 30):  # the same numbers, other format, answered or not
        shown = "+33" + n[1:] if r.random() < 0.5 else "0033" + n[1:]
        specs.append(("outbound", shown, r.random() < 0.6))
    specs += [("outbound", signalled(n, r), False) for n in unanswered]
    specs += [
        ("outbound", f"+3461{r.randint(1000000, 9999999)}", True),  # Espagne Mobile
        ("outbound", f"+39333{r.randint(1000000, 9999999)}", True),  # Italie Mobile
        ("outbound", f"+8529{r.randint(1000000, 9999999)}", True),  # Hong Kong Mobile
        ("outbound", f"0800{r.randint(100000, 999999)}", True),  # France Numero Vert
        ("outbound", "112", True),
        ("outbound", "15", True),
        ("outbound", "17", True),
        ("outbound", "18", True),
    ]
    specs += [("inbound", signalled(n, r), True)
              for n in _unique_numbers(r, 10, mobile_share=0.5, avoid=seen)]
    specs += [("forwarded", signalled(n, r), True)
              for n in _unique_numbers(r, 2, mobile_share=0.5, avoid=seen)]
    # the first 150 (one per covered number) stay in order so that the count grows to 150
    head, tail = specs[:150], specs[150:]
    r.shuffle(tail)
    merged: list[tuple[str, str, bool]] = []
    for i, spec in enumerate(head):
        merged.append(spec)
        if i % 2 == 1 and tail:
            merged.append(tail.pop())
    merged += tail
    forward_target = french_mobile(r)
    for spec, candidate in zip(merged, b.candidates(r, len(merged), b.days)):
        direction, number, answered = spec
        start = b.next_start(acc, candidate)
        billsec = r.randint(20, 400) if answered else 0
        b.call(acc, other=number, start=start, direction=direction, ring=r.randint(3, 25), billsec=billsec,
               forward_to="+33" + forward_target[1:], with_start=r.random() < 0.2)
    last_day = date(b.year, b.month, monthrange(b.year, b.month)[1])
    for k, n in enumerate(_unique_numbers(r, 5, mobile_share=0.5, avoid=seen)):
        start = datetime(last_day.year, last_day.month, last_day.day, 23, 5 + 10 * k, tzinfo=UTC)
        b.call(acc, other=signalled(n, r), start=start, ring=4, billsec=r.randint(60, 300),
               render_utc=True)
    _plain_registration(b, acc, b.days[1])


def _edge_backtoback(b: _Builder) -> None:
    """Four calls end-to-start in a row, and three overlapping calls where each new call starts at
    the very second another one ends: never more than 3 at once with [start, end) intervals."""
    acc = b.account("edge-backtoback", "c908")
    r = acc.rng
    book = _unique_numbers(r, 12, mobile_share=0.4, avoid=set())
    day = b.days[6]
    b.everyday_calls(acc, 8, book, days=[d for d in b.days if d != day])
    at = _local(day, 10, 0)
    for billsec in (295, 445, 446, 236):
        call = b.call(acc, other=signalled(r.choice(book), r), start=at, ring=5,
                      billsec=billsec, with_start=True)
        at = call.end
    a = b.call(acc, other=signalled(book[0], r), start=_local(day, 15, 0), ring=5, billsec=1795,
               with_start=True)  # 15:00:00–15:30:00
    bb = b.call(acc, other=signalled(book[1], r), start=_local(day, 15, 5), direction="inbound",
                ring=6, billsec=2094, with_start=True)  # 15:05:00–15:40:00
    b.call(acc, other=signalled(book[2], r), start=_local(day, 15, 10), ring=4, billsec=2096,
           with_start=True)  # 15:10:00–15:45:00
    b.call(acc, other=signalled(book[3], r), start=a.end, ring=3, billsec=717,
           with_start=True)  # 15:30:00–15:42:00
    b.call(acc, other=signalled(book[4], r), start=bb.end, ring=5, billsec=595,
           with_start=True)  # 15:40:00–15:50:00
    _plain_registration(b, acc, day)


def _edge_unregister(b: _Builder) -> None:
    """Three phones, one unregisters (expires 0), then a fourth one registers: 3 active at most."""
    acc = b.account("edge-unregister", "c909")
    r = acc.rng
    day = b.days[4]
    devs = [b.device(acc, ua) for ua in (ALLOWED_UAS[0], ALLOWED_UAS[4], ALLOWED_UAS[6], ALLOWED_UAS[3])]
    base = _local(day, 9, 0)
    for k in range(3):
        b.register(acc, devs[k], base + timedelta(seconds=120 * k))
    b.register(acc, devs[1], base + timedelta(seconds=1200), expires=0)
    b.register(acc, devs[3], base + timedelta(seconds=1500))
    b.everyday_calls(acc, 6, _unique_numbers(r, 6, mobile_share=0.3, avoid=set()))


def _edge_rebind(b: _Builder) -> None:
    """Three phones with +sip.instance; one re-registers from a new NAT port (new contact, same
    instance_id): still 3 bindings, since the identity is the instance_id."""
    acc = b.account("edge-rebind", "c910")
    r = acc.rng
    day = b.days[8]
    devs = [b.device(acc, ua) for ua in (ALLOWED_UAS[1], ALLOWED_UAS[2], ALLOWED_UAS[5])]
    base = _local(day, 9, 0)
    for k, dev in enumerate(devs):
        b.register(acc, dev, base + timedelta(seconds=60 * k))
    moved = devs[0].contact.rsplit(":", 1)[0] + ":40123;transport=udp"
    b.register(acc, devs[0], base + timedelta(seconds=1800), contact=moved)
    b.register(acc, devs[0], base + timedelta(seconds=1800 + 3300), contact=moved)
    b.everyday_calls(acc, 6, _unique_numbers(r, 6, mobile_share=0.3, avoid=set()))


def _edge_expiry(b: _Builder) -> None:
    """Three phones registered once (expires 3600) and never refreshed; three other phones register
    65 minutes later, after the first three expired: 3 active at most."""
    acc = b.account("edge-expiry", "c911")
    r = acc.rng
    day = b.days[10]
    base = _local(day, 9, 0)
    for k, ua in enumerate((ALLOWED_UAS[0], ALLOWED_UAS[0], ALLOWED_UAS[7])):
        b.register(acc, b.device(acc, ua), base + timedelta(seconds=60 * k))
    later = base + timedelta(seconds=3900)
    for k, ua in enumerate((ALLOWED_UAS[1], ALLOWED_UAS[4], ALLOWED_UAS[6])):
        b.register(acc, b.device(acc, ua), later + timedelta(seconds=60 * k))
    b.everyday_calls(acc, 6, _unique_numbers(r, 6, mobile_share=0.3, avoid=set()))


def _edge_60perhour(b: _Builder) -> None:
    """Exactly 60 outbound calls within 55 minutes, nothing else that day: at the limit, no breach."""
    acc = b.account("edge-60perhour", "c912")
    r = acc.rng
    day = b.days[13]
    b.everyday_calls(acc, 5, _unique_numbers(r, 5, mobile_share=0.3, avoid=set()),
                     days=[d for d in b.days if d != day])
    prospects = _unique_numbers(r, 30, mobile_share=0.4, avoid=set())
    base = _local(day, 14, 0)
    for i in range(60):
        start = base + timedelta(seconds=i * 55 + r.randint(0, 3))
        if r.random() < 0.3:
            b.call(acc, other=signalled(r.choice(prospects), r), start=start, ring=4,
                   billsec=r.randint(5, 30))
        else:
            b.call(acc, other=signalled(r.choice(prospects), r), start=start,
                   ring=r.randint(8, 25), disposition="NO ANSWER")
    _plain_registration(b, acc, day)


# --------------------------------------------------------------------------------------------
# public API


def build_sample(*, normal_users: int = 300, month: str = "2026-11", seed: int = 7) -> SampleStream:
    """The labelled sample stream for ``month`` (``YYYY-MM``); same arguments, same stream."""
    check_period(month)
    if normal_users < 0:
        raise ValueError("normal_users must be >= 0")
    b = _Builder(seed, int(month[:4]), int(month[5:]))
    _normal_users(b, normal_users)
    for make in (_abuse_distinct, _abuse_simultaneous, _abuse_devices, _abuse_thirdparty, _abuse_pbx,
                 _abuse_autodialer, _edge_150, _edge_backtoback, _edge_unregister, _edge_rebind,
                 _edge_expiry, _edge_60perhour):
        make(b)
    cdrs, registrations = b.build()
    expected = sorted([
        ("abuse-distinct", month, "distinct_numbers"),
        ("abuse-simultaneous", month, "simultaneous_calls"),
        ("abuse-devices", month, "registered_devices"),
        ("abuse-thirdparty", month, "third_party_device"),
        ("abuse-pbx", month, "pbx_or_gateway"),
        ("abuse-autodialer", month, "autodialer"),
    ])
    return SampleStream(cdrs=cdrs, registrations=registrations, expected=expected)


def write_jsonl(path: Path, records: Iterable[Mapping[str, object]]) -> int:
    """Write one JSON object per line (UTF-8); returns the number of lines written."""
    count = 0
    with path.open("wb") as out:
        for record in records:
            out.write(orjson.dumps(dict(record)))
            out.write(b"\n")
            count += 1
    return count


def write_sample(dir: Path, *, normal_users: int = 300, month: str = "2026-11", seed: int = 7) -> SampleStream:
    """Build the sample and write ``cdrs.jsonl``, ``registrations.jsonl`` and ``expected.jsonl``
    (objects ``{user, period, rule}``) into ``dir`` (created if missing)."""
    sample = build_sample(normal_users=normal_users, month=month, seed=seed)
    dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(dir / "cdrs.jsonl", sample.cdrs)
    write_jsonl(dir / "registrations.jsonl", sample.registrations)
    write_jsonl(
        dir / "expected.jsonl",
        ({"user": user, "period": period, "rule": rule} for user, period, rule in sample.expected),
    )
    return sample
