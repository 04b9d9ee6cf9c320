"""Prometheus metrics, wired in one place: Faust's own sensors and cdrwatch's domain metrics share
one registry per pipeline, served by Faust's ``/metrics`` page on the worker's web port.

Domain metrics (all prefixed ``cdrwatch_``; README "Metrics" has the table):

* counters — ``events_total{topic,outcome}``, ``alerts_total{rule}``,
  ``fraud_alerts_total{rule,level}``, ``rebilled_euros_total{rule}``,
  ``changelog_write_failures_total{table}``;
* histogram — ``event_time_lag_seconds``: processing time minus event time of each applied event;
* gauges computed on scrape — ``active_calls``, ``active_registrations`` (``LiveActivity``) and
  ``consumer_lag{topic,partition}`` (``ConsumerLagCollector``).

The process's own (``process_*``: start time, CPU, memory) come with them. Faust's sensors are
exported with the fixed prefix ``faust_`` rather than the app id, so the
dashboard does not depend on ``CDRWATCH_APP_ID``.
"""

from __future__ import annotations

import bisect
import collections
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .agents.batching import cached_prometheus_monitor, consumer_of, prometheus_metrics
from .core.fraud import LEVELS
from .core.plans import FRAUD_RULES, RULES
from .core.rating import CENT
from .core.records import Alert, CallEvent, RebillLine, Registration

if TYPE_CHECKING:
    import faust
    from faust.types import TP

    from .processor import Outputs

__all__ = [
    "ConsumerLagCollector",
    "EVENT_TIME_LAG_BUCKETS",
    "EVENT_OUTCOMES",
    "FAUST_PREFIX",
    "LiveActivity",
    "Metrics",
]

FAUST_PREFIX = "faust"
# outcomes of an input message (label ``outcome``); ``too_late`` events are counted as ``dlq``
EVENT_OUTCOMES = ("ok", "late", "duplicate", "dlq", "rekeyed")
# CDRs arrive when a call ends, registrations within seconds; replays of recorded months land in +Inf
EVENT_TIME_LAG_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
# a partition's event-time clock jumps further ahead only when this many events in a row say so:
# one mistyped date cannot stop the gauges, a replay moving to another month moves them
CLOCK_JUMP_MS = 3_600_000
CLOCK_JUMP_CONFIRMATIONS = 3


class FraudAlertLike(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def level(self) -> str: ...


class _Open(NamedTuple):  # a tuple: built for every start and REGISTER, half the cost of a dataclass
    since_ms: int
    until_ms: int  # exclusive
    tp: Any  # the input partition it came from: dropped when this worker loses that partition


class LiveActivity:
    """Calls in progress and active SIP bindings on this worker's partitions, for two gauges.

    Kept in memory from the events this worker applies — cheaper than scanning the tables, whose
    period states hold every call of the month:

    * a call is active from its ``start`` event until its ``end`` event arrives, for at most the
      maximum call duration (the rules' bound for a ``start`` without ``end``);
    * a binding (``instance_id``, else ``contact``) is active from its REGISTER's ``time`` until
      ``time + expires``; a newer REGISTER replaces it, ``expires = 0`` removes it.

    "Now" is event time: each input partition has a clock, the newest event time applied from it,
    so replays of recorded or synthetic months show what was active at that point of the stream.
    A clock moves more than an hour ahead only when three events in a row do (a lone mistyped
    date does not stop the gauges). Entries of a partition this worker loses in a rebalance are
    dropped; after a restart or a rebalance the gauges miss the calls and bindings that began before
    it until they end or re-register (bindings refresh within their ``expires``).
    """

    def __init__(self, max_call_ms: int = 4 * 3_600_000) -> None:
        self.max_call_ms = max_call_ms
        self.calls: dict[tuple[str, str], _Open] = {}
        self.bindings: dict[tuple[str, str], _Open] = {}
        self.clocks: dict[Any, int] = {}
        self._ahead: dict[Any, int] = {}  # events in a row far ahead of the partition's clock
        self._prune_at = 10_000

    def apply(self, record: CallEvent | Registration, outcome: str, tp: Any) -> None:
        if outcome not in ("ok", "late", "duplicate"):
            return
        if isinstance(record, CallEvent):
            at = record.event_ms
            key = (record.user, record.call_id)
            if record.is_end:
                self.calls.pop(key, None)
            elif outcome != "duplicate":
                self.calls[key] = _Open(record.start_ms, record.start_ms + self.max_call_ms, tp)
        else:
            at = record.time_ms
            key = (record.user, record.binding)
            current = self.bindings.get(key)
            if current is None or current.since_ms <= record.time_ms:
                if record.expires > 0:
                    self.bindings[key] = _Open(record.time_ms, record.time_ms + record.expires * 1000, tp)
                else:
                    self.bindings.pop(key, None)
        self._tick(tp, at)
        if len(self.calls) + len(self.bindings) > self._prune_at:
            self.prune()
            self._prune_at = max(10_000, 2 * (len(self.calls) + len(self.bindings)))

    def _tick(self, tp: Any, at: int) -> None:
        clock = self.clocks.get(tp)
        if clock is not None and at > clock + CLOCK_JUMP_MS:
            self._ahead[tp] = self._ahead.get(tp, 0) + 1
            if self._ahead[tp] < CLOCK_JUMP_CONFIRMATIONS:
                return
        self._ahead.pop(tp, None)
        if clock is None or at > clock:
            self.clocks[tp] = at

    def prune(self) -> None:
        """Forget what has ended by its partition's clock."""
        for entries in (self.calls, self.bindings):
            for key in [k for k, e in entries.items() if e.until_ms <= self.clocks.get(e.tp, 0)]:
                del entries[key]

    def keep_partitions(self, assigned: Iterable[Any]) -> None:
        """After a rebalance: drop what came from partitions this worker no longer owns."""
        keep = set(assigned)
        for entries in (self.calls, self.bindings):
            for key in [k for k, e in entries.items() if e.tp not in keep]:
                del entries[key]
        for tp in [tp for tp in self.clocks if tp not in keep]:
            del self.clocks[tp]
            self._ahead.pop(tp, None)

    def active_calls(self) -> int:
        self.prune()
        return sum(1 for e in self.calls.values() if e.since_ms <= self.clocks.get(e.tp, 0))

    def active_registrations(self) -> int:
        self.prune()
        return sum(1 for e in self.bindings.values() if e.since_ms <= self.clocks.get(e.tp, 0))


class _ActivityCollector(Collector):
    def __init__(self, activity: LiveActivity) -> None:
        self.activity = activity

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "cdrwatch_active_calls",
            "Calls in progress on this worker's partitions (start seen, end not yet), at the partitions' event time",
            value=self.activity.active_calls(),
        )
        yield GaugeMetricFamily(
            "cdrwatch_active_registrations",
            "SIP bindings active on this worker's partitions (registered, not expired), at the partitions' event time",
            value=self.activity.active_registrations(),
        )


class MoneyCounter(Collector):
    """``cdrwatch_rebilled_euros_total{rule}``: sums kept as exact decimals, exposed to the cent
    (a float counter drifts: 16.530000000000005 after a few lines)."""

    def __init__(self) -> None:
        self.totals: dict[str, Decimal] = {}

    def inc(self, rule: str, amount: Decimal) -> None:
        self.totals[rule] = self.totals.get(rule, Decimal(0)) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("cdrwatch_rebilled_euros", "Euros on re-bill lines emitted, by rule",
                                     labels=["rule"])
        for rule, total in sorted(self.totals.items()):
            family.add_metric([rule], float(total.quantize(CENT)))
        yield family


class LagHistogram(Collector):
    """``cdrwatch_event_time_lag_seconds``: a histogram observed once per applied event, kept in
    plain integers. prometheus_client's Histogram takes a lock three times per observation (~2 µs,
    a tenth of a worker's time per event); the event loop is the only writer here, and a scrape
    reads a consistent enough copy."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = list(buckets)  # upper bounds, inclusive (le), +Inf implied
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, float("inf")], list(self.counts)):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class ConsumerLagCollector(Collector):
    """``cdrwatch_consumer_lag{topic,partition}``, computed at each scrape for every partition of
    an agent's topic assigned to this worker: the partition's high watermark from the consumer's
    last fetch (right on Tansu, whose ListOffsets under-reports it) minus the offset this worker
    committed (the committed offset read at assignment until its first commit; none: 0)."""

    def __init__(self, app: "faust.App | None" = None) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cdrwatch_consumer_lag",
            "Messages not yet committed by this worker: high watermark minus committed offset, per partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted(self.lags().items()):
            family.add_metric([topic, str(partition)], lag)
        yield family

    def lags(self) -> dict[tuple[str, int], int]:
        app = self.app
        consumer = consumer_of(app) if app is not None else None
        if app is None or consumer is None:
            return {}
        topics: set[str] = set()
        for agent in app.agents.values():
            topics.update(getattr(agent.channel, "topics", ()))
        committed: Any = getattr(consumer, "_committed_offset", {})
        lags = {}
        try:
            assigned = list(consumer.assignment())
        except Exception:  # not started, or stopping
            return {}
        for tp in assigned:
            if tp.topic not in topics:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked between assignment() and here
                continue
            if highwater is None:  # no fetch answered for it yet
                continue
            done = committed.get(tp) or 0
            lags[(tp.topic, tp.partition)] = max(int(highwater) - int(done), 0)
        return lags


class Metrics:
    """One registry per pipeline, so several workers in one test process do not collide."""

    def __init__(self, max_call_duration_s: int = 4 * 3600) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "cdrwatch_events", "Input messages by topic and outcome (ok, late, duplicate, dlq, rekeyed)",
            ["topic", "outcome"], registry=self.registry,
        )
        self.alerts = Counter(
            "cdrwatch_alerts", "Fair-use alerts emitted (fairuse-alerts), by rule", ["rule"], registry=self.registry
        )
        self.fraud_alerts = Counter(
            "cdrwatch_fraud_alerts", "Fraud alerts emitted (fraud-alerts), by rule and level",
            ["rule", "level"], registry=self.registry,
        )
        self.rebilled_euros = MoneyCounter()
        self.registry.register(self.rebilled_euros)
        self.changelog_failures = Counter(
            "cdrwatch_changelog_write_failures", "Changelog writes the broker refused, by table (the worker stops)",
            ["table"], registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_start_time_seconds: restarts, for the alerting rules
        self.event_time_lag = LagHistogram(
            "cdrwatch_event_time_lag_seconds",
            "Processing time minus event time (end_time of an end CDR, start_time of a start, time of a "
            "registration) of each applied event; negative lags count as 0",
            EVENT_TIME_LAG_BUCKETS,
        )
        self.registry.register(self.event_time_lag)
        self.activity = LiveActivity(max_call_duration_s * 1000)
        self.registry.register(_ActivityCollector(self.activity))
        self.consumer_lag = ConsumerLagCollector()
        self.registry.register(self.consumer_lag)
        self.counts: dict[tuple[str, str], int] = {}
        self._events: dict[tuple[str, str], Any] = {}  # label children: labels() costs ~2 µs a call
        self._installed = False

    # -- hooks the agents call ----------------------------------------------------------------

    def declare(self, topics: Iterable[str]) -> None:
        """Every series of a known label set, at 0 before its first event. A counter that first
        appears at 1 is not an increase to Prometheus (``increase()`` needs two samples), so a
        rule's first alert would never show on the dashboard nor fire an alerting rule; and a DLQ
        panel of a topic that has rejected nothing shows 0, not "no data"."""
        for topic in topics:
            self.events.labels(topic, "dlq")
        for rule in RULES:
            self.alerts.labels(rule)
            self.rebilled_euros.totals.setdefault(rule, Decimal(0))
        for kind in FRAUD_RULES:
            for level in LEVELS:
                self.fraud_alerts.labels(kind, level)

    def report(self, out: "Outputs") -> None:
        """What a batch did, once its outputs are delivered: the data path's one place of metrics."""
        for (topic, outcome), n in collections.Counter(out.counts).items():
            self.event(topic, outcome, n)
        for record, outcome, source in out.applied:
            # a Faust message's topic-partition (dropped when this worker loses it); a partition otherwise
            self.applied(record, outcome, getattr(source, "tp", source.partition))
        for alert in out.alerts:
            self.alert(alert)
        for line in out.lines:
            self.rebill(line)
        for fraud in out.fraud_alerts:
            self.fraud_alert(fraud)

    def event(self, topic: str, outcome: str, n: int = 1) -> None:
        """``n`` input messages handled (counted once their outputs are delivered)."""
        child = self._events.get((topic, outcome))
        if child is None:
            child = self._events[(topic, outcome)] = self.events.labels(topic, outcome)
        child.inc(n)
        self.counts[(topic, outcome)] = self.counts.get((topic, outcome), 0) + n

    def applied(self, record: CallEvent | Registration, outcome: str, tp: "TP | Any",
                now_s: float | None = None) -> None:
        """The engine applied ``record`` from partition ``tp`` (outcome ok, late or duplicate)."""
        if isinstance(record, CallEvent):
            event_ms = record.event_ms
        else:
            event_ms = record.time_ms
        now = time.time() if now_s is None else now_s
        self.event_time_lag.observe(max(now - event_ms / 1000, 0.0))
        self.activity.apply(record, outcome, tp)

    def alert(self, alert: Alert) -> None:
        self.alerts.labels(alert.rule).inc()

    def fraud_alert(self, alert: FraudAlertLike) -> None:
        self.fraud_alerts.labels(alert.rule, alert.level).inc()

    def rebill(self, line: RebillLine) -> None:
        self.rebilled_euros.inc(line.rule, line.amount)

    def changelog_failure(self, table: str) -> None:
        self.changelog_failures.labels(table).inc()

    # -- exposition -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def install(self, app: "faust.App", *, max_call_duration_s: int | None = None, pattern: str = "/metrics") -> None:
        """Faust's sensors into this registry, its ``/metrics`` page serving the whole registry
        (one page: ``setup_prometheus_sensors`` registers it), the lag collector on ``app``."""
        from faust.sensors.prometheus import setup_prometheus_sensors

        if self._installed:
            raise RuntimeError("metrics are already installed on an app")
        self._installed = True
        if max_call_duration_s is not None:
            self.activity.max_call_ms = max_call_duration_s * 1000
        setup_prometheus_sensors(app, pattern=pattern, registry=self.registry, name_prefix=FAUST_PREFIX)
        app.monitor = cached_prometheus_monitor()(metrics=prometheus_metrics(app.monitor))
        self.consumer_lag.app = app
        activity = self.activity

        async def on_partitions_assigned(_sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            activity.keep_partitions(args[0] if args else kwargs.get("assigned", ()))

        self._on_assigned = on_partitions_assigned  # the signal holds it strongly; keep it visible
        app.on_partitions_assigned.connect(on_partitions_assigned)
