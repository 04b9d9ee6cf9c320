"""One input message through the rules: decode → route → fair-use → fraud → outputs.

No Faust and no I/O. The worker (``streams.agents.pipeline``), the offline replay and summary, the
benchmark and the tests all run this code; the worker is a thin shell that sends what ``Outputs``
holds, then writes the state the ``Store`` was given, then commits.

For each message the processor decodes it (a bad one becomes a dead letter with its reason), sends
a message keyed by another user than its own back to its topic under the right key, resolves the
user's plan once and works out the called number once for both engines, then runs the fair-use
engine and, when a plan has fraud rules, the fraud engine. A failure inside an engine costs that
message only: a dead letter when the fair-use engine fails, a skipped fraud check when the fraud
engine does.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from .codecs import decode_cdr, decode_feedback, decode_key, decode_registration, decode_subscriber
from .core.callee import Callee
from .core.errors import InvalidRecord
from .core.fairuse import FairUseEngine
from .core.fraud import FraudEngine
from .core.plans import PlanBook
from .core.rates import RateDeck
from .core.records import AccountAction, Alert, CallEvent, FraudAlert, RebillLine, Registration
from .core.state import FraudState, Store
from .topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class Source(Protocol):
    """An input message as any reader gives it: a Faust ``Message``, a line of a replayed file."""

    @property
    def topic(self) -> str: ...  # the topic's full name (with the deployment's prefix)
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass
class Outputs:
    """What a batch of messages will send, and what happened to each message."""

    alerts: list[Alert] = field(default_factory=list)
    lines: list[RebillLine] = field(default_factory=list)
    fraud_alerts: list[FraudAlert] = field(default_factory=list)
    actions: list[AccountAction] = field(default_factory=list)
    # raw sends: dead letters (with their headers) and messages re-keyed to their user
    sends: list[tuple[str, bytes | None, bytes | None, Headers | None]] = field(default_factory=list)
    counts: list[tuple[str, str]] = field(default_factory=list)  # (topic, outcome) per message
    applied: list[tuple[CallEvent | Registration, str, Source]] = field(default_factory=list)  # for metrics

    def dead_letter(self, topic: str, message: Source, reason: str) -> None:
        headers = [
            (DLQ_REASON_HEADER, reason.encode()),
            (DLQ_SOURCE_HEADER, f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ]
        self.sends.append((f"{topic}-dlq", message.key, message.value, headers))
        self.counts.append((topic, "dlq"))
        # the reason may quote the offending value (a phone number): the log gets it without
        log.info("DLQ %s/%s/%s: %s", message.topic, message.partition, message.offset, reason.split(" (got ")[0])


class Processor:
    """The rules applied to one message at a time against a ``Store``."""

    def __init__(self, fairuse: FairUseEngine, fraud: FraudEngine | None = None, *, partitions: int = 1) -> None:
        self.fairuse, self.fraud = fairuse, fraud
        self.plans: PlanBook = fairuse.plans
        self.rates: RateDeck = fairuse.rates
        self.partitions = partitions  # with more than one, a message keyed by another user is re-keyed
        # the live fraud rules' clock: user -> the instant its live rules are next due (a heap of
        # (instant, user) per input partition, stale entries skipped), and the message whose
        # partition its state is written to
        self._due: dict[str, int] = {}
        self._queues: dict[int, list[tuple[int, str]]] = {}  # per input partition
        self._source: dict[str, Source] = {}
        # (topic, partition) -> the newest event time read from it: the watermark's input
        self.read_ms: dict[tuple[str, int], int] = {}

    def process(self, topic: str, message: Source, store: Store, out: Outputs) -> None:
        """Apply one message of ``topic`` (the topic's base name: ``cdrs``, ``sip-registrations``,
        ``subscribers`` or ``fraud-feedback``)."""
        if topic == "cdrs" or topic == "sip-registrations":
            self._event(topic, message, store, out)
        elif topic == "subscribers":
            self._subscriber(message, store, out)
        elif topic == "fraud-feedback":
            self._feedback(message, store, out)
        else:
            raise ValueError(f"not an input topic: {topic}")

    def _subscriber(self, message: Source, store: Store, out: Outputs) -> None:
        try:
            sub = decode_subscriber(message.key, message.value, lambda plan: plan in self.plans.plans)
        except InvalidRecord as exc:
            out.dead_letter("subscribers", message, str(exc))
            return
        store.set_plan(sub.user, sub.plan)
        out.counts.append(("subscribers", "ok"))

    def _rekeyed(self, topic: str, message: Source, user: str, out: Outputs) -> bool:
        """Partitioning by user keeps a user's state on one worker: a message keyed otherwise goes
        back to its topic under its user's key."""
        if self.partitions <= 1 or decode_key(message.key) == user:
            return False
        out.sends.append((topic, user.encode(), message.value, None))
        out.counts.append((topic, "rekeyed"))
        return True

    def _event(self, topic: str, message: Source, store: Store, out: Outputs) -> None:
        record: CallEvent | Registration
        try:
            record = decode_cdr(message.value) if topic == "cdrs" else decode_registration(message.value)
        except InvalidRecord as exc:
            out.dead_letter(topic, message, str(exc))
            return
        if self._rekeyed(topic, message, record.user, out):
            return
        self.read(topic, message.partition, record.event_ms if isinstance(record, CallEvent) else record.time_ms)
        self.apply(topic, record, message, store, out)

    def apply(self, topic: str, record: CallEvent | Registration, message: Source, store: Store, out: Outputs) -> None:
        """Both engines on a decoded event of ``message`` (a benchmark of the rules starts here)."""
        plan = self.plans.resolve(store.plan_of(record.user))
        callee = None
        try:
            if isinstance(record, CallEvent):
                callee = Callee(record.callee, self.rates, self.fairuse.hash_key)
                outcome = self.fairuse.on_call(store, record, plan, callee)
            else:
                outcome = self.fairuse.on_registration(store, record, plan)
        except Exception as exc:  # a bug must cost one message, not the worker
            log.exception("fair-use engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            out.dead_letter(topic, message, f"internal error: {exc!r}")
            return
        if outcome.status == "too_late":
            out.dead_letter(topic, message, outcome.reason)
            return
        out.counts.append((topic, outcome.status))
        out.applied.append((record, outcome.status, message))
        out.alerts += outcome.alerts
        out.lines += outcome.lines
        if self.fraud is None:
            return
        try:
            if isinstance(record, CallEvent):
                # its own earlier instants first: every CDR of the user before this one has been
                # read (a partition is in event-time order), and this one may prune what they need
                due = self._due.get(record.user)
                if due is not None and due < record.event_ms:
                    self._catch_up(record.user, record.event_ms - 1, store, out)
                found = self.fraud.on_call(store, record, plan=plan, callee=callee)
            else:
                found = self.fraud.on_registration(store, record, plan=plan)
        except Exception:  # the fair-use outcome stands; a fraud bug costs this event's fraud check
            log.exception("fraud engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            return
        out.fraud_alerts += found.alerts
        out.actions += found.actions
        if found.due >= 0:
            self.schedule(record.user, found.due, message)

    # -- the live rules' clock ----------------------------------------------------------------

    def read(self, topic: str, partition: int, event_ms: int) -> None:
        """An input event of ``topic``/``partition`` at ``event_ms`` has been read."""
        where = (topic, partition)
        if event_ms > self.read_ms.get(where, -1):
            self.read_ms[where] = event_ms

    def schedule(self, user: str, due: int, message: Source) -> None:
        """Evaluate ``user``'s live rules at ``due`` (event time), unless due sooner already."""
        current = self._due.get(user)
        self._source[user] = message
        if current is None or due < current:
            self._due[user] = due
            heapq.heappush(self._queues.setdefault(message.partition, []), (due, user))

    def advance(self, until: int | Mapping[int, int], store: Store, out: Outputs,
                enter: Callable[[Source], None] | None = None, partitions: set[int] | None = None) -> int:
        """Evaluate every live rule due up to ``until``, the instant (event time) up to which every
        input of its user has been read — one for all, or one per input partition (the caller's
        watermarks; a partition left out waits) — in time order per partition; only the users of
        ``partitions`` if given. ``enter`` is told the message whose partition takes a user's state
        before it is evaluated. Returns how many users were evaluated."""
        if self.fraud is None:
            return 0
        done = 0
        for partition in sorted(self._queues):
            limit = until if isinstance(until, int) else until.get(partition)
            if limit is None or (partitions is not None and partition not in partitions):
                continue
            queue = self._queues[partition]
            while queue and queue[0][0] <= limit:
                due, user = heapq.heappop(queue)
                if self._due.get(user) != due:
                    continue  # rescheduled sooner, and evaluated then
                try:
                    self._evaluate(user, due, store, out, enter)
                except Exception:  # a bug costs this evaluation, not the worker
                    log.exception("fraud engine failed on the live rules of a user at %s", due)
                    continue
                done += 1
        return done

    def _catch_up(self, user: str, until: int, store: Store, out: Outputs) -> None:
        """Evaluate ``user``'s live rules at every instant due up to ``until`` (its heap entries
        left behind are skipped as stale)."""
        while (due := self._due.get(user)) is not None and due <= until:
            self._evaluate(user, due, store, out)

    def _evaluate(self, user: str, due: int, store: Store, out: Outputs,
                  enter: Callable[[Source], None] | None = None) -> None:
        """``user``'s live rules at ``due``, taken off the clock, then put back on it at the next
        instant they are due."""
        assert self.fraud is not None
        del self._due[user]
        source = self._source.pop(user)
        if enter is not None:
            enter(source)
        found = self.fraud.on_time(store, user, due)
        out.fraud_alerts += found.alerts
        out.actions += found.actions
        if found.due >= 0:
            self.schedule(user, found.due, source)

    def resume(self, user: str, state: FraudState | None, message: Source) -> None:
        """After a restart: put a recovered user back on the live rules' clock."""
        if self.fraud is not None and state is not None:
            due = self.fraud.resume_at(state)
            if due >= 0:
                self.schedule(user, due, message)

    def forget(self, partitions: set[int]) -> None:
        """Stop the clock of the users of ``partitions`` (revoked: another worker owns them now)."""
        for user in [u for u, m in self._source.items() if m.partition in partitions]:
            del self._source[user]
            self._due.pop(user, None)
        for partition in partitions:
            self._queues.pop(partition, None)

    def pending(self) -> int:
        """Users whose live rules are due at some instant."""
        return len(self._due)

    def next_due(self) -> int | None:
        """The earliest instant (event time) at which a user's live rules are due; None: none."""
        return min(self._due.values(), default=None)

    def _feedback(self, message: Source, store: Store, out: Outputs) -> None:
        try:
            feedback = decode_feedback(message.value)
        except InvalidRecord as exc:
            out.dead_letter("fraud-feedback", message, str(exc))
            return
        if self._rekeyed("fraud-feedback", message, feedback.user, out):
            return
        if self.fraud is None:  # no plan has fraud rules: nothing to honour
            out.counts.append(("fraud-feedback", "ignored"))
            return
        try:
            status = self.fraud.on_feedback(store, feedback).status if feedback.kind != "acknowledge" else "ok"
        except Exception as exc:  # a bug must cost one message, not the worker
            log.exception("fraud engine failed on %s/%s/%s", message.topic, message.partition, message.offset)
            out.dead_letter("fraud-feedback", message, f"internal error: {exc!r}")
            return
        out.counts.append(("fraud-feedback", status))
        log.info("FEEDBACK %s user=%s rule=%s alert=%s", feedback.kind, feedback.user, feedback.rule_name,
                 feedback.alert_id)


@dataclass(frozen=True)
class Replayed:
    """An input message read from a file (no broker): what ``Source`` asks, and nothing more."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0


def build_processor(settings: Settings, plans: PlanBook, rates: RateDeck, *, partitions: int | None = None) -> Processor:
    """The processor of a cdrwatch process: the fair-use engine, and the fraud engine when a plan
    has fraud rules."""
    secret = settings.hash_secret.get_secret_value().encode()
    fairuse = FairUseEngine(plans, rates, hash_secret=secret, max_call_duration_s=settings.max_call_duration_s,
                            retention_months=settings.retention_months)
    fraud = FraudEngine(plans, rates, hash_secret=secret, max_call_duration_s=settings.max_call_duration_s)
    return Processor(fairuse, fraud if fraud.enabled else None,
                     partitions=settings.partitions if partitions is None else partitions)


__all__ = ["Outputs", "Processor", "Replayed", "Source", "build_processor"]
