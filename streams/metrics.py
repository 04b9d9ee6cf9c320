"""Prometheus metrics, wired in one place: domain counters plus Faust's own sensors."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .core.records import Alert, RebillLine


class Metrics:
    """One registry per pipeline, so several workers in one test process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "cdrwatch_events", "Input messages by topic and outcome (ok, late, duplicate, dlq, rekeyed)",
            ["topic", "outcome"], registry=self.registry,
        )
        self.alerts = Counter("cdrwatch_alerts", "Fair-use alerts emitted, by rule", ["rule"], registry=self.registry)
        self.rebilled_euros = Counter(
            "cdrwatch_rebilled_euros", "Euros on re-bill lines emitted, by rule", ["rule"], registry=self.registry
        )
        self.counts: dict[tuple[str, str], int] = {}

    def event(self, topic: str, outcome: str) -> None:
        self.events.labels(topic, outcome).inc()
        self.counts[(topic, outcome)] = self.counts.get((topic, outcome), 0) + 1

    def alert(self, alert: Alert) -> None:
        self.alerts.labels(alert.rule).inc()

    def rebill(self, line: RebillLine) -> None:
        self.rebilled_euros.labels(line.rule).inc(float(line.amount))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def install(self, app: faust.App) -> None:
        metrics = self

        @app.page("/metrics")
        async def metrics_view(web: Any, request: Any) -> Any:
            return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.page("/healthz")
        async def health_view(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})
