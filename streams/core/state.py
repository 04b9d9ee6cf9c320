"""The state the engines keep, and where they keep it.

Every record is keyed by user, so that one worker owns all of a user:

* ``PeriodState`` per ``user|YYYY-MM``: the calls of that month (start, end, direction — the
  duplicate filter, the simultaneity intervals and the auto-dialler clock), the keyed hashes of
  the distinct covered callees, the breached rules and the covered calls kept for re-billing;
* ``UserState`` per ``user``: SIP bindings with their expiry, and the newest period seen (the
  watermark deciding which periods are still open to late events);
* ``FraudState`` per ``user``: what the fraud rules need of the last day or two, and an analyst's
  verdicts;
* ``CustomerState`` per ``customer``: the networks the customer's users register from (kept with
  the fraud states, under a key no user name can take);
* the user's plan name, from ``subscribers``.

The engines read and write them through a ``Store``: ``MemoryStore`` on plain dicts (unit tests,
the summary, replays of files, the benchmark), ``streams.agents.tables.TableStore`` on a worker's
Faust tables. Each state encodes itself compactly (orjson) for its table's changelog.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Protocol

import orjson

from .records import OPEN


# --------------------------------------------------------------------------------- fair-use state


class CallIndex:
    """A month's calls in start order, for window queries, so that a rule looks at the calls near
    an instant, not at the whole month. Not encoded: built from the calls on the first query, then
    kept up to date by ``PeriodState.put_call``. The calls still open (their ``end`` not known yet)
    are kept apart: a window reaches back by the longest ended call, and by the open-call length
    only for the open ones."""

    def __init__(self, calls: dict[str, list[int]]) -> None:
        self.starts = sorted((record[0], call_id) for call_id, record in calls.items() if record[1] != OPEN)
        self.open = sorted((record[0], call_id) for call_id, record in calls.items() if record[1] == OPEN)
        # at least the longest ended call's duration (a replaced record is not subtracted)
        self.longest_ms = max((e - s for s, e, _ in calls.values() if e != OPEN), default=0)

    def put(self, call_id: str, old: list[int] | None, start_ms: int, end_ms: int) -> None:
        if old is not None:
            where = self.open if old[1] == OPEN else self.starts
            del where[bisect.bisect_left(where, (old[0], call_id))]
        bisect.insort(self.open if end_ms == OPEN else self.starts, (start_ms, call_id))
        if end_ms != OPEN and end_ms - start_ms > self.longest_ms:
            self.longest_ms = end_ms - start_ms

    def starting(self, lo_ms: int, hi_ms: int) -> list[str]:
        """The ids of the calls with ``lo_ms <= start < hi_ms``, in start order."""
        found = _starting(self.starts, lo_ms, hi_ms)
        if self.open:
            found = sorted(found + _starting(self.open, lo_ms, hi_ms))
        return [call_id for _s, call_id in found]

    def meeting(self, lo_ms: int, hi_ms: int, open_ms: int) -> list[tuple[int, str]]:
        """``(start, call_id)`` of the calls that may meet ``[lo_ms, hi_ms)``, in start order: the
        ended ones starting up to the longest call's length before it, the open ones up to
        ``open_ms`` before it."""
        found = _starting(self.starts, lo_ms - self.longest_ms, hi_ms)
        if self.open:
            found = sorted(found + _starting(self.open, lo_ms - open_ms, hi_ms))
        return found


def _starting(starts: list[tuple[int, str]], lo_ms: int, hi_ms: int) -> list[tuple[int, str]]:
    first = bisect.bisect_left(starts, (lo_ms, ""))
    return starts[first:bisect.bisect_left(starts, (hi_ms, ""), first)]


LOG_CHUNK = 128  # entries of a month's log per sealed record (see PeriodState)


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class PeriodState:
    """One user's month, kept in memory whole and stored as a log: the head record holds the
    month's counters, its breaches and the entries (calls, covered calls, new numbers) written
    since the last sealed chunk; every ``LOG_CHUNK`` entries are sealed into a record of their own
    that is never rewritten. A write re-encodes the head only, so its cost and size do not grow
    with the month, and no traffic makes a record reach the broker's size limit. Decoding reads
    the sealed chunks in order, then the head's entries: a later entry of a call replaces an
    earlier one."""

    calls: dict[str, list[int]]  # call_id -> [start_ms, end_ms|OPEN, outbound]
    numbers: set[int]  # keyed hashes of distinct covered callees
    breaches: dict[str, str]  # rule -> multiplier, in breach order
    breach_ms: dict[str, int]  # rule -> event time of the breach
    # call_id -> [billsec, rate-deck prefix of the callee, multiplier billed so far]; the prefix, not
    # the number, so that the re-billing store holds no called number in clear
    covered: dict[str, list[Any]]
    peak_simultaneous: int
    peak_devices: int
    customer: str
    plan: str
    index: CallIndex | None = field(repr=False, compare=False)  # not encoded: built on the first query
    # the log: chunks sealed so far, and the entries since (None: not logged, encoded whole)
    sealed: int = field(repr=False, compare=False)
    tail_calls: dict[str, list[int]] | None = field(repr=False, compare=False)
    tail_covered: dict[str, list[Any]] = field(repr=False, compare=False)
    tail_numbers: list[int] = field(repr=False, compare=False)

    def __init__(self, calls: dict[str, list[int]] | None = None, numbers: set[int] | None = None,
                 breaches: dict[str, str] | None = None, breach_ms: dict[str, int] | None = None,
                 covered: dict[str, list[Any]] | None = None, peak_simultaneous: int = 0, peak_devices: int = 0,
                 customer: str = "", plan: str = "") -> None:
        self.calls = calls if calls is not None else {}
        self.numbers = numbers if numbers is not None else set()
        self.breaches = breaches if breaches is not None else {}
        self.breach_ms = breach_ms if breach_ms is not None else {}
        self.covered = covered if covered is not None else {}
        self.peak_simultaneous, self.peak_devices, self.customer, self.plan = (
            peak_simultaneous, peak_devices, customer, plan)
        self.index = None
        self.sealed = 0
        self.tail_calls = None
        self.tail_covered = {}
        self.tail_numbers = []

    # -- changes (each one logged when the state is) --------------------------------------------

    def put_call(self, call_id: str, start_ms: int, end_ms: int, outbound: int) -> None:
        """Record a call (``end_ms`` OPEN while only its ``start`` is known), keeping the index."""
        old = self.calls.get(call_id)
        record = [start_ms, end_ms, outbound]
        self.calls[call_id] = record
        if self.tail_calls is not None:
            self.tail_calls[call_id] = record
        if self.index is not None:
            self.index.put(call_id, old, start_ms, end_ms)

    def cover(self, call_id: str, billsec: int, prefix: str) -> None:
        """A covered call, kept for re-billing (nothing billed over its plan price yet)."""
        entry: list[Any] = [billsec, prefix, "0"]
        self.covered[call_id] = entry
        if self.tail_calls is not None:
            self.tail_covered[call_id] = entry

    def billed(self, call_id: str, multiplier: str) -> None:
        """A covered call re-billed up to ``multiplier``."""
        entry = self.covered[call_id]
        entry[2] = multiplier
        if self.tail_calls is not None:
            self.tail_covered[call_id] = entry

    def add_number(self, number: int) -> None:
        """A covered callee's keyed hash (a number already counted changes nothing)."""
        if number in self.numbers:
            return
        self.numbers.add(number)
        if self.tail_calls is not None:
            self.tail_numbers.append(number)

    # -- window queries -----------------------------------------------------------------------

    def _calls(self) -> CallIndex:
        if self.index is None:
            self.index = CallIndex(self.calls)
        return self.index

    def calls_starting(self, lo_ms: int, hi_ms: int) -> list[tuple[str, list[int]]]:
        """The calls with ``lo_ms <= start < hi_ms``, in start order."""
        calls = self.calls
        return [(call_id, calls[call_id]) for call_id in self._calls().starting(lo_ms, hi_ms)]

    def calls_in(self, lo_ms: int, hi_ms: int, open_ms: int) -> list[tuple[int, int, str]]:
        """The window query: ``(start, end, call_id)`` of the calls whose ``[start, end)`` meets
        ``[lo_ms, hi_ms)``, in start order; a call still open lasts ``open_ms`` from its start."""
        calls = self.calls
        found = []
        for _start, call_id in self._calls().meeting(lo_ms, hi_ms, open_ms):
            s, e, _outbound = calls[call_id]
            if e == OPEN:
                e = s + open_ms
            if s < e and lo_ms < e:
                found.append((s, e, call_id))
        return found

    # -- encoding -----------------------------------------------------------------------------

    def log(self) -> None:
        """Log the changes from now on (a state that was not: all it holds is logged at once)."""
        if self.tail_calls is None:
            self.tail_calls = dict(self.calls)
            self.tail_covered = dict(self.covered)
            self.tail_numbers = sorted(self.numbers)

    def logged(self) -> int:
        """Entries logged since the last sealed chunk."""
        tail = self.tail_calls
        return 0 if tail is None else len(tail) + len(self.tail_covered) + len(self.tail_numbers)

    def seal(self) -> list[tuple[int, bytes]]:
        """The log's full chunks of ``LOG_CHUNK`` entries, as ``(chunk number, record)``, taken out
        of the head; the entries left stay in the head."""
        if self.logged() < LOG_CHUNK:
            return []
        assert self.tail_calls is not None
        entries: list[tuple[str, Any, Any]] = [("c", k, v) for k, v in self.tail_calls.items()]
        entries += [("v", k, v) for k, v in self.tail_covered.items()]
        entries += [("n", n, None) for n in self.tail_numbers]
        chunks = []
        full = len(entries) - len(entries) % LOG_CHUNK
        for first in range(0, full, LOG_CHUNK):
            chunks.append((self.sealed, _encode_entries(entries[first:first + LOG_CHUNK])))
            self.sealed += 1
        rest = entries[full:]
        self.tail_calls = {k: v for kind, k, v in rest if kind == "c"}
        self.tail_covered = {k: v for kind, k, v in rest if kind == "v"}
        self.tail_numbers = [k for kind, k, _v in rest if kind == "n"]
        return chunks

    def encode(self) -> bytes:
        """The head record (a state not logged: the whole month in it, no chunk)."""
        logged = self.tail_calls is not None
        return orjson.dumps(
            {
                "c": self.tail_calls if logged else self.calls,
                "n": self.tail_numbers if logged else sorted(self.numbers),
                "b": self.breaches,
                "bt": self.breach_ms,
                "v": self.tail_covered if logged else self.covered,
                "ps": self.peak_simultaneous,
                "pd": self.peak_devices,
                "cu": self.customer,
                "pl": self.plan,
                "k": self.sealed if logged else 0,
            }
        )

    @classmethod
    def decode(cls, raw: bytes, chunk: Callable[[int], bytes | None] | None = None) -> "PeriodState":
        """A head record, its sealed chunks read with ``chunk`` (chunk number -> record); the
        state comes back logged, ready for the next write."""
        data = orjson.loads(raw)
        state = cls(breaches=data["b"], breach_ms=data["bt"], peak_simultaneous=data["ps"],
                    peak_devices=data["pd"], customer=data["cu"], plan=data["pl"])
        sealed: int = data.get("k", 0)
        for number in range(sealed):
            record = chunk(number) if chunk is not None else None
            if record is None:
                raise ValueError(f"chunk {number} of {sealed} of the month's log is missing")
            part = orjson.loads(record)
            state.calls.update(part["c"])
            state.covered.update(part["v"])
            state.numbers.update(part["n"])
        calls: dict[str, list[int]] = data["c"]
        covered: dict[str, list[Any]] = data["v"]
        numbers: list[int] = data["n"]
        state.calls.update(calls)
        state.covered.update(covered)
        state.numbers.update(numbers)
        state.sealed, state.tail_calls, state.tail_covered, state.tail_numbers = sealed, calls, covered, numbers
        return state

    def multiplier(self) -> Decimal:
        return max((Decimal(m) for m in self.breaches.values()), default=Decimal(0))


@dataclass(init=False)  # see PeriodState
class UserState:
    bindings: dict[str, list[Any]]  # identity -> [registered_ms, expiry_ms, user_agent]
    watermark: str  # newest period seen for this user
    newest_ms: int  # newest REGISTER time (binding clean-up horizon)
    periods: list[str]  # periods with a PeriodState, oldest first

    def __init__(self, bindings: dict[str, list[Any]] | None = None, watermark: str = "", newest_ms: int = 0,
                 periods: list[str] | None = None) -> None:
        self.bindings = bindings if bindings is not None else {}
        self.watermark, self.newest_ms = watermark, newest_ms
        self.periods = periods if periods is not None else []

    def encode(self) -> bytes:
        return orjson.dumps({"b": self.bindings, "w": self.watermark, "t": self.newest_ms, "p": self.periods})

    @classmethod
    def decode(cls, raw: bytes) -> "UserState":
        data = orjson.loads(raw)
        return cls(bindings=data["b"], watermark=data["w"], newest_ms=data["t"], periods=data["p"])


def _encode_entries(entries: list[tuple[str, Any, Any]]) -> bytes:
    calls = {k: v for kind, k, v in entries if kind == "c"}
    covered = {k: v for kind, k, v in entries if kind == "v"}
    return orjson.dumps({"c": calls, "v": covered, "n": [k for kind, k, _v in entries if kind == "n"]})


# ------------------------------------------------------------------------------------ fraud state


@dataclass(init=False)  # an explicit __init__: compiled by mypyc to C (a dataclass's own is Python)
class FraudState:
    """One user's fraud state. Encoded compactly (orjson) for the table changelog."""

    # call_id -> [start_ms, end_ms | OPEN, talk_ms, key, counted]; key = the longest rate-deck or
    # configured prefix of the callee (enough to find its rate and scope, not the number itself);
    # counted = 1 for a call the rules look at (a configured direction, not an emergency number)
    calls: dict[str, list[Any]]
    # rule -> [callee hash, count, first call_id, last start_ms]: the current same-callee run
    runs: dict[str, list[Any]]
    days: dict[str, list[int]]  # "rule|YYYY-MM-DD" -> [count, newest start_ms]
    networks: dict[str, int]  # "203.0.113.0/24" -> last registration ms
    bindings: dict[str, list[Any]]  # identity -> [time_ms, expiry_ms, network]
    # registrations from a network unused for a while, while another binding was active:
    # [time_ms, network, previous use ms or -1]
    fresh: list[list[Any]]
    fired: dict[str, int]  # "rule|level|window" -> event time of the alert
    trusted: dict[str, int]  # network an analyst trusted for the user -> when (never new for new_network)
    muted: dict[str, int]  # rule name -> until when (event time) the rule raises no alert for the user
    newest_call_ms: int
    newest_registration_ms: int
    since: int  # the user's first event seen (event time; 0: a state older than this field, learned)
    customer: str  # the user's customer, as its newest event gave it ("": not known yet)
    devices: dict[str, int]  # binding identity -> its last registration (as long as networks are kept)
    # not encoded: when (newest event time) _prune next walks the state; after a decode, at once
    prune_due: int = field(repr=False, compare=False)
    # rule name -> what a pattern rule (price_cap … wangiri, ``streams.core.fraud.patterns``) keeps
    # of the user; absent from most states
    patterns: dict[str, Any] = field(default_factory=dict)

    def __init__(self, calls: dict[str, list[Any]] | None = None, runs: dict[str, list[Any]] | None = None,
                 days: dict[str, list[int]] | None = None, networks: dict[str, int] | None = None,
                 bindings: dict[str, list[Any]] | None = None, fresh: list[list[Any]] | None = None,
                 fired: dict[str, int] | None = None, newest_call_ms: int = 0, newest_registration_ms: int = 0,
                 prune_due: int = 0, trusted: dict[str, int] | None = None,
                 muted: dict[str, int] | None = None, patterns: dict[str, Any] | None = None, since: int = 0,
                 customer: str = "", devices: dict[str, int] | None = None) -> None:
        self.since, self.customer = since, customer
        self.devices = devices if devices is not None else {}
        self.calls = calls if calls is not None else {}
        self.runs = runs if runs is not None else {}
        self.days = days if days is not None else {}
        self.networks = networks if networks is not None else {}
        self.bindings = bindings if bindings is not None else {}
        self.fresh = fresh if fresh is not None else []
        self.fired = fired if fired is not None else {}
        self.trusted = trusted if trusted is not None else {}
        self.muted = muted if muted is not None else {}
        self.patterns = patterns if patterns is not None else {}
        self.newest_call_ms, self.newest_registration_ms, self.prune_due = (
            newest_call_ms, newest_registration_ms, prune_due)

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "c": self.calls,
            "r": self.runs,
            "d": self.days,
            "n": self.networks,
            "b": self.bindings,
            "x": self.fresh,
            "f": self.fired,
            "tc": self.newest_call_ms,
            "tr": self.newest_registration_ms,
        }
        if self.trusted:  # an analyst's verdicts: absent from most states
            data["t"] = self.trusted
        if self.muted:
            data["m"] = self.muted
        if self.patterns:
            data["p"] = self.patterns
        if self.since:
            data["s"] = self.since
        if self.customer:
            data["k"] = self.customer
        if self.devices:
            data["v"] = self.devices
        return orjson.dumps(data)

    @classmethod
    def decode(cls, raw: bytes) -> "FraudState":
        data = orjson.loads(raw)
        return cls(
            calls=data["c"],
            runs=data["r"],
            days=data["d"],
            networks=data["n"],
            bindings=data["b"],
            fresh=data["x"],
            fired=data["f"],
            newest_call_ms=data["tc"],
            newest_registration_ms=data["tr"],
            trusted=data.get("t"),
            muted=data.get("m"),
            patterns=data.get("p"),
            since=data.get("s", 0),
            customer=data.get("k", ""),
            devices=data.get("v"),
        )


class CustomerState:
    """What the fraud rules know of one customer (all its users together): when it was first seen,
    and the source networks its users registered from, each with its last use (event time)."""

    since: int
    networks: dict[str, int]

    def __init__(self, since: int = 0, networks: dict[str, int] | None = None) -> None:
        self.since = since
        self.networks = networks if networks is not None else {}

    def encode(self) -> bytes:
        return orjson.dumps({"s": self.since, "n": self.networks})

    @classmethod
    def decode(cls, raw: bytes) -> "CustomerState":
        data = orjson.loads(raw)
        return cls(since=data["s"], networks=data["n"])



# ------------------------------------------------------------------------------------------ store


class Store(Protocol):
    def get_period(self, user: str, period: str) -> PeriodState | None: ...
    def put_period(self, user: str, period: str, state: PeriodState) -> None: ...
    def drop_period(self, user: str, period: str) -> None: ...
    def get_user(self, user: str) -> UserState | None: ...
    def put_user(self, user: str, state: UserState) -> None: ...
    def get_fraud(self, user: str) -> FraudState | None: ...
    def put_fraud(self, user: str, state: FraudState) -> None: ...
    def get_customer(self, customer: str) -> CustomerState | None: ...
    def put_customer(self, customer: str, state: CustomerState) -> None: ...
    def plan_of(self, user: str) -> str | None: ...
    def set_plan(self, user: str, plan: str | None) -> None: ...
    # a small record shared by the users of one store, keyed by something other than a user (the
    # wangiri rule's caller ranges); the key never collides with a user's state
    def get_shared(self, key: str) -> bytes | None: ...
    def put_shared(self, key: str, value: bytes) -> None: ...


class MemoryStore:
    """A ``Store`` on plain dicts."""

    def __init__(self) -> None:
        self.periods: dict[tuple[str, str], PeriodState] = {}
        self.users: dict[str, UserState] = {}
        self.fraud: dict[str, FraudState] = {}
        self.customers: dict[str, CustomerState] = {}
        self.subscribers: dict[str, str] = {}
        self.shared: dict[str, bytes] = {}

    def get_period(self, user: str, period: str) -> PeriodState | None:
        return self.periods.get((user, period))

    def put_period(self, user: str, period: str, state: PeriodState) -> None:
        self.periods[(user, period)] = state

    def drop_period(self, user: str, period: str) -> None:
        self.periods.pop((user, period), None)

    def get_user(self, user: str) -> UserState | None:
        return self.users.get(user)

    def put_user(self, user: str, state: UserState) -> None:
        self.users[user] = state

    def get_fraud(self, user: str) -> FraudState | None:
        return self.fraud.get(user)

    def put_fraud(self, user: str, state: FraudState) -> None:
        self.fraud[user] = state

    def get_customer(self, customer: str) -> CustomerState | None:
        return self.customers.get(customer)

    def put_customer(self, customer: str, state: CustomerState) -> None:
        self.customers[customer] = state

    def plan_of(self, user: str) -> str | None:
        return self.subscribers.get(user)

    def set_plan(self, user: str, plan: str | None) -> None:
        if plan is None:
            self.subscribers.pop(user, None)
        else:
            self.subscribers[user] = plan

    def get_shared(self, key: str) -> bytes | None:
        return self.shared.get(key)

    def put_shared(self, key: str, value: bytes) -> None:
        self.shared[key] = value
