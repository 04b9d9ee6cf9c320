"""The worker's web views beside ``/metrics``: ``/healthz``, ``/users/{user}/usage`` (answered by the
worker that owns the user, whichever worker is asked) and ``/alerts`` (the alerts this worker emitted).

The handlers are plain functions of (query, state) returning ``(status, body)``, so their parameter
checks are unit-tested without a web server; ``install_views`` wraps them in Faust pages.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, cast

import faust
import faust.web
import orjson

from .agents.batching import consumer_of
from .core.plans import PlanBook
from .core.rates import RateDeck
from .core.rating import CENT
from .core.summary import summarise
from .core.timeutil import check_period, from_ms, parse_rfc3339, to_ms
from .core.records import json_number
from .core.state import PeriodState, UserState
from .topics import EVENT_TOPICS, period_key, period_reader

if TYPE_CHECKING:
    from .agents.pipeline import Pipeline

__all__ = [
    "ALERT_TOPICS",
    "AlertRing",
    "Response",
    "VIEW_PATHS",
    "alerts_view",
    "authorize",
    "format_endpoints",
    "health_view",
    "install_views",
    "usage_view",
]

log = logging.getLogger(__name__)

Response = tuple[int, dict[str, Any]]

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
USAGE_PATH = "/users/{user}/usage"
ALERTS_PATH = "/alerts"
VIEW_PATHS = (METRICS_PATH, HEALTH_PATH, USAGE_PATH, ALERTS_PATH)

ALERT_TOPICS = ("fairuse-alerts", "fraud-alerts")
ALERT_RING_SIZE = 1000


class BadRequest(ValueError):
    """A query parameter the view cannot use; the text is the 400's reason."""


def format_endpoints(host: str, port: int) -> str:
    """Where ``cdrwatch run`` / a worker serves its metrics and views."""
    base = f"http://{host}:{port}"
    return "\n".join([
        f"metrics on {base}{METRICS_PATH}, health on {base}{HEALTH_PATH}",
        f"views: {base}{USAGE_PATH}?period=YYYY-MM (usage of one user, from whichever worker owns it), "
        f"{base}{ALERTS_PATH}?since=RFC3339 (alerts this worker emitted)",
    ])


# ------------------------------------------------------------------------------- parameters


def _params(query: Iterable[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in query:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r} (allowed: {', '.join(allowed)})")
        if name in found:
            raise BadRequest(f"parameter {name!r} given more than once")
        found[name] = value
    return found


def parse_period(text: str) -> str:
    try:
        return check_period(text)
    except ValueError as exc:
        raise BadRequest(f"period: {exc}") from None


def parse_since(text: str) -> int:
    """``since`` as epoch ms. An unescaped ``+`` of the offset arrives as a space in a query
    string: ``2026-11-03T09:00:00 01:00`` is read as ``+01:00``."""
    if len(text) > 19 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    try:
        return to_ms(parse_rfc3339(text))
    except ValueError as exc:
        raise BadRequest(f"since: {exc}") from None


# ------------------------------------------------------------------------------------ usage


def usage_view(
    user: str,
    query: Iterable[tuple[str, str]],
    users: Any,
    periods: Any,
    plans: PlanBook,
    rates: RateDeck,
    worker: str = "",
) -> Response:
    """``GET /users/{user}/usage[?period=YYYY-MM]`` on the worker holding the user's state.

    ``users`` and ``periods`` are the tables (or dicts) of encoded states; without ``period``, the
    user's newest month. 400: a bad or unknown parameter; 404: a user with no state here, or a month
    without state (not seen, or closed and deleted)."""
    try:
        params = _params(query, ("period",))
        period = parse_period(params["period"]) if "period" in params else None
        if not user:
            raise BadRequest("user: empty")
    except BadRequest as exc:
        return 400, {"error": str(exc)}
    raw_user = users.get(user.encode())
    if raw_user is None:
        return 404, {"error": f"unknown user {user!r}: no event of this user has been processed", "user": user,
                     "worker": worker}
    ustate = UserState.decode(raw_user)
    period = period or ustate.watermark
    key = period_key(user, period)
    raw = periods.get(key)
    if raw is None:
        return 404, {
            "error": f"no usage of user {user!r} in {period} (months held: {', '.join(ustate.periods) or 'none'})",
            "user": user, "periods": list(ustate.periods), "worker": worker,
        }
    state = PeriodState.decode(raw, period_reader(periods, key))
    row = summarise(user, period, state, plans, rates)
    plan = plans.plans.get(row.plan) or plans.get(None)
    breaches = [
        {
            "rule": rule,
            "multiplier": json_number(Decimal(state.breaches[rule])),
            "time": from_ms(state.breach_ms[rule], plan.timezone).isoformat(timespec="seconds"),
        }
        for rule in row.rules_breached
    ]
    return 200, {
        "user": user,
        "customer": row.customer,
        "period": period,
        "plan": row.plan,
        "timezone": plan.timezone.key,
        "distinct_numbers": row.distinct_numbers,
        "peak_simultaneous_calls": row.peak_simultaneous_calls,
        "peak_registered_devices": row.peak_registered_devices,
        "covered_calls": row.covered_calls,
        "covered_seconds": row.covered_seconds,
        "covered_minutes": str(row.covered_minutes),
        "limits": {
            "max_distinct_numbers": plan.max_distinct_numbers,
            "max_simultaneous_calls": plan.max_simultaneous_calls,
            "max_registered_devices": plan.max_registered_devices,
            "max_calls_per_hour": plan.max_calls_per_hour,
        },
        "breaches": breaches,
        "multiplier": json_number(row.multiplier),
        "rebilled_amount": str(row.rebilled_amount.quantize(CENT)),
        "currency": row.currency,
        "periods": list(ustate.periods),
        "worker": worker,
    }


# ----------------------------------------------------------------------------------- alerts


class AlertRing:
    """The last ``size`` alerts this worker emitted (fair-use and fraud), in memory, de-duplicated
    by ``alert_id`` (a redelivered event re-sends the same alert). Filled by the pipeline's output
    hook; lost on restart — the topics are the record, this is a NOC convenience."""

    def __init__(self, size: int = ALERT_RING_SIZE, wall_ms: Callable[[], int] | None = None) -> None:
        self.size = size
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._entries: deque[tuple[int, str, dict[str, Any]]] = deque()
        self._ids: set[str] = set()

    def record(self, topic: str, payload: dict[str, Any]) -> None:
        if topic not in ALERT_TOPICS:
            return
        alert_id = str(payload.get("alert_id"))
        if alert_id in self._ids:
            return
        if len(self._entries) >= self.size:
            _, _, old = self._entries.popleft()
            self._ids.discard(str(old.get("alert_id")))
        self._entries.append((self._wall_ms(), topic, payload))
        self._ids.add(alert_id)

    def since(self, since_ms: int | None) -> list[tuple[int, str, dict[str, Any]]]:
        return [e for e in self._entries if since_ms is None or e[0] >= since_ms]

    def __len__(self) -> int:
        return len(self._entries)


def alerts_view(query: Iterable[tuple[str, str]], ring: AlertRing, worker: str = "") -> Response:
    """``GET /alerts[?since=RFC3339]``: the alerts this worker emitted at or after ``since``
    (processing time), oldest first. Each worker answers for its own users' alerts only."""
    try:
        params = _params(query, ("since",))
        since_ms = parse_since(params["since"]) if "since" in params else None
    except BadRequest as exc:
        return 400, {"error": str(exc)}
    alerts = [
        {"topic": topic, "emitted_at": from_ms(ms).isoformat(timespec="milliseconds"), "alert": payload}
        for ms, topic, payload in ring.since(since_ms)
    ]
    return 200, {
        "worker": worker,
        "scope": f"alerts emitted by this worker since it started (its users only), the last {ring.size} kept",
        "since": from_ms(since_ms).isoformat(timespec="milliseconds") if since_ms is not None else None,
        "alerts": alerts,
    }


# ------------------------------------------------------------------------------------ access


def authorize(token: str, on_loopback: bool, authorization: str | None) -> Response | None:
    """Access to a view that shows personal data (user ids, source IPs, contacts, user agents):
    ``None`` to serve it, else the refusal. With a token configured, ``Authorization: Bearer
    <token>`` is required wherever the worker listens; without one, only a loopback bind serves
    these views (a worker reachable from the network refuses them until a token is set)."""
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return 401, {"error": "this view needs Authorization: Bearer <CDRWATCH_WEB_TOKEN>"}
    if on_loopback:
        return None
    return 403, {"error": "this worker listens beyond loopback and has no CDRWATCH_WEB_TOKEN: views with "
                          "personal data are refused (set CDRWATCH_WEB_TOKEN and send it as a bearer token)"}


# ----------------------------------------------------------------------------------- health


def health_view(worker: str, assigned: Mapping[str, list[int]], processed: int) -> Response:
    return 200, {"status": "ok", "worker": worker, "partitions": dict(assigned), "processed": processed}


def _assigned(app: faust.App, topic_names: Mapping[str, str]) -> dict[str, list[int]]:
    """This worker's partitions of the input topics, by topic name without the prefix."""
    consumer = consumer_of(app)
    if consumer is None:
        return {}
    try:
        tps = consumer.assignment()
    except Exception:  # not started, or stopping
        return {}
    out: dict[str, list[int]] = {}
    for tp in sorted(tps):
        if tp.topic in topic_names:
            out.setdefault(topic_names[tp.topic], []).append(tp.partition)
    return out


# ------------------------------------------------------------------------------ Faust pages


def _json(view: faust.web.View, response: Response) -> faust.web.Response:
    status, body = response
    headers = ({"WWW-Authenticate": 'Bearer realm="cdrwatch"'} if status == 401
               else {"Retry-After": "5"} if status == 503 else None)
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


def install_views(app: faust.App, pipeline: "Pipeline") -> AlertRing:
    """``/metrics`` (Faust's sensors and the domain metrics), ``/healthz``, the usage and alerts
    views; returns the alert ring the views read."""
    pipeline.metrics.install(app, max_call_duration_s=pipeline.settings.max_call_duration_s)
    ring = AlertRing()
    pipeline.on_output.append(ring.record)
    inputs = {topic.get_topic_name(): name for name, topic in pipeline.topics.items()
              if name in EVENT_TOPICS}

    def worker() -> str:
        return str(app.conf.canonical_url)

    settings = pipeline.settings
    token = settings.web_token.get_secret_value()

    def refused(request: faust.web.Request) -> Response | None:
        return authorize(token, settings.web_on_loopback, request.headers.get("Authorization"))

    if not token and not settings.web_on_loopback:
        log.warning("web views: listening on %s without CDRWATCH_WEB_TOKEN: /users/{user}/usage and /alerts are "
                    "refused (403); /metrics and /healthz are served", settings.web_host)

    if app.conf.canonical_url.host in ("0.0.0.0", "::", ""):
        # every worker would advertise the same unreachable URL and answer for users it does not hold
        log.warning("web views: this worker advertises %s to the others, which cannot reach it; /users/{user}/usage "
                    "answers only for this worker's users. Set NODE_CANONICAL_URL=http://<this host>:<port>",
                    app.conf.canonical_url)

    @app.page(HEALTH_PATH, name="cdrwatch-health")
    class HealthView(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            return _json(self, health_view(worker(), _assigned(app, inputs), pipeline.processed))

    @app.page(USAGE_PATH, name="cdrwatch-usage")
    class UsageView(faust.web.View):
        async def get(self, request: faust.web.Request, user: str) -> faust.web.Response:
            # checked before the request is forwarded (the owner checks it again: headers go along)
            denied = refused(request)
            if denied is not None:
                return _json(self, denied)
            if not cast(Any, app.tables).recovery.completed.is_set() or not _assigned(app, inputs):
                return _json(self, (503, {"error": "this worker is starting (tables not recovered yet): retry"}))
            return await self.routed(request, user=user)  # type: ignore[call-arg]  # table_route's wrapper

        # the users table is keyed by the user's UTF-8 bytes and written from the user's input
        # partition, which the producers chose by murmur2 of that same key: Faust's router hashes
        # the path's user the same way and forwards the request to the worker holding it
        @app.table_route(table=pipeline.users, match_info="user")  # type: ignore[arg-type]  # `user` from the path
        async def routed(self, request: faust.web.Request, user: str) -> faust.web.Response:
            engine = pipeline.processor.fairuse
            return _json(self, usage_view(user, request.query.items(), pipeline.users, pipeline.periods,
                                          engine.plans, engine.rates, worker()))

    @app.page(ALERTS_PATH, name="cdrwatch-alerts")
    class AlertsView(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:
            denied = refused(request)
            return _json(self, denied if denied is not None else alerts_view(request.query.items(), ring, worker()))

    return ring
