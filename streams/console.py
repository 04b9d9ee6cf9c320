"""``cdrwatch console``: the fraud analyst's web console, for the whole cluster.

It reads the output topics (``fairuse-alerts``, ``fraud-alerts``, ``account-actions``,
``rebilled-calls``) and the analysts' verdicts (``fraud-feedback``) from their beginning, keeps the
newest ``--keep`` records in memory, and serves:

* ``/`` — the live view: every record pushed to the page as it is read (server-sent events from
  ``/api/stream``), with filters (customer, user, rule, level, period, topic), and on each fraud
  alert the buttons *acknowledge*, *false positive* and, when it cut the account off, *lift*;
* ``/users/{user}?period=YYYY-MM`` — one user's month: the counters against the plan's limits (asked
  of a worker's ``/users/{user}/usage``, which answers for any user), a day-by-day chart of calls,
  simultaneous calls, registrations and networks (read from the user's partition of ``cdrs`` and
  ``sip-registrations``), each alert with its evidence, and the re-bill lines with their total;
* ``POST /api/feedback`` — a verdict: a ``fraud-feedback`` record keyed by user (and for *lift* an
  ``account-actions`` record ``lift``), which the worker holding the user honours;
* ``/api/events`` (JSON, the same filters) and ``/healthz``.

A verdict's id is a hash of (alert, kind): given twice, it is sent once. It carries who gave it (the
user name of Basic auth, else the name typed on the page), when and why.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import logging
import os
import re
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import quote
from zoneinfo import ZoneInfo

import fastjsonschema
import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from .checks import positive_float, positive_int
from .codecs import decode_cdr, decode_feedback, decode_registration, encode
from .core.errors import ConfigError, InvalidRecord
from .core.fraud import network_of
from .core.rating import CENT, stable_id
from .core.schemas import explain, validator
from .core.timeutil import check_period, from_ms, instant_us, period_of
from .settings import Settings, authorized_caller, service_settings

log = logging.getLogger(__name__)

TOPICS = ("fairuse-alerts", "fraud-alerts", "account-actions", "rebilled-calls", "fraud-feedback")
ID_FIELD = {"fairuse-alerts": "alert_id", "fraud-alerts": "alert_id", "account-actions": "action_id",
            "rebilled-calls": "line_id", "fraud-feedback": "feedback_id"}
FILTERS = ("customer", "user", "rule", "level", "period", "topic")
KINDS = ("acknowledge", "false_positive", "lift")
TOKEN_ENV = "CDRWATCH_CONSOLE_TOKEN"
WORKER_TOKEN_ENV = "CDRWATCH_WEB_TOKEN"
DEFAULT_PORT = 8089
DEFAULT_KEEP = 100_000
DEFAULT_MUTE_HOURS = 24.0
BACKLOG = 500  # records a newly opened live view starts with
TIMELINE_MAX_RECORDS = 2_000_000  # read at most this many input records for one user's chart
HEARTBEAT_S = 15.0
MAX_MUTE_HOURS = 24 * 366
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WHO = web.RequestKey("who", str)  # who is asking (see authorized_caller)


class BadRequest(ValueError):
    """A parameter or body the console cannot use; the text is the 400's reason."""


@dataclass
class ConsoleConfig:
    settings: Settings
    token: str = ""
    worker_url: str = "http://127.0.0.1:6066"
    worker_token: str = ""
    keep: int = DEFAULT_KEEP
    mute_hours: float = DEFAULT_MUTE_HOURS


# --------------------------------------------------------------------------------------------
# what has been read


@dataclass
class Entry:
    seq: int  # the order the console read it in (the page's cursor)
    topic: str
    payload: dict[str, Any]

    def view(self) -> dict[str, Any]:
        return {"seq": self.seq, "topic": self.topic, "payload": self.payload}


def _period(payload: dict[str, Any]) -> str:
    """The month a record belongs to: its ``period``, else the local month of its ``time``."""
    period = payload.get("period")
    if isinstance(period, str):
        return period
    text = payload.get("time")
    return text[:7] if isinstance(text, str) else ""


def matches(entry: Entry, filters: dict[str, str]) -> bool:
    p = entry.payload
    for name, wanted in filters.items():
        if name == "topic":
            if entry.topic != wanted if wanted else entry.topic in ("rebilled-calls", "fraud-feedback"):
                return False
        elif name == "rule":
            if wanted not in (p.get("rule"), p.get("rule_name")):
                return False
        elif name == "period":
            if _period(p) != wanted:
                return False
        elif p.get(name) != wanted:
            return False
    return True


def _period_parameter(text: str) -> None:
    try:
        check_period(text)
    except ValueError as exc:
        raise BadRequest(f"period: {exc}") from None


def parse_filters(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in query:
        if name not in FILTERS:
            raise BadRequest(f"unknown parameter {name!r} (allowed: {', '.join(FILTERS)})")
        if not value:
            continue  # an empty filter field on the page: no filter
        if name in found:
            raise BadRequest(f"parameter {name!r} given more than once")
        if name == "period":
            _period_parameter(value)
        if name == "level" and value not in ("warning", "critical"):
            raise BadRequest(f"level: expected warning or critical, got {value!r}")
        if name == "topic" and value not in TOPICS:
            raise BadRequest(f"topic: expected one of {', '.join(TOPICS)}, got {value!r}")
        found[name] = value
    return found


class Feed:
    """The newest ``keep`` records read, de-duplicated by their id (a redelivered output comes with
    the same id), and the live views waiting for more."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self.keep = keep
        self.entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.actions: dict[str, dict[str, Any]] = {}  # alert_id -> its account action (not lift)
        self.verdicts: dict[str, dict[str, dict[str, Any]]] = {}  # alert_id -> kind -> feedback
        self.listeners: set[asyncio.Queue[Entry | None]] = set()  # None: the console is stopping
        self.caught_up = asyncio.Event()  # every topic read up to where it ended when the console started
        self._seq = 0

    def add(self, topic: str, payload: dict[str, Any]) -> Entry | None:
        ident = (topic, str(payload.get(ID_FIELD[topic])))
        if ident in self.entries:
            return None
        self._seq += 1
        entry = self.entries[ident] = Entry(self._seq, topic, payload)
        if len(self.entries) > self.keep:
            (old_topic, old_id), _ = self.entries.popitem(last=False)
            if old_topic == "fraud-alerts":  # what was kept about it goes with it
                self.actions.pop(old_id, None)
                self.verdicts.pop(old_id, None)
        alert_id = str(payload.get("alert_id"))
        if topic == "account-actions" and payload.get("action") != "lift":
            self.actions[alert_id] = payload
        elif topic == "fraud-feedback":
            self.verdicts.setdefault(alert_id, {})[str(payload.get("kind"))] = payload
        for queue in self.listeners:
            queue.put_nowait(entry)
        return entry

    def close(self) -> None:
        """End every live view's stream (the console is stopping)."""
        for queue in self.listeners:
            queue.put_nowait(None)

    def select(self, filters: dict[str, str], last: int | None = None) -> list[Entry]:
        found = [e for e in self.entries.values() if matches(e, filters)]
        return found[-last:] if last else found

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        entry = self.entries.get(("fraud-alerts", alert_id))
        return entry.payload if entry is not None else None


# --------------------------------------------------------------------------------------------
# verdicts


def rfc3339(ms: int) -> str:
    return from_ms(ms).isoformat(timespec="milliseconds")


def verdict_records(alert: dict[str, Any], action: dict[str, Any] | None, kind: str, by: str, reason: str,
                    now_ms: int, mute_hours: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``fraud-feedback`` record of a verdict on ``alert``, and for ``lift`` the
    ``account-actions`` record that undoes ``action``. A false positive (or a lift) mutes the
    alert's rule for the user for ``mute_hours`` and, for ``new_network``, trusts its networks."""
    if kind not in KINDS:
        raise BadRequest(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "lift" and action is None:
        raise BadRequest(f"alert {alert['alert_id']} cut nothing off: there is no account action to lift")
    changes = kind != "acknowledge"
    networks = alert.get("evidence", {}).get("networks", []) if alert["rule"] == "new_network" and changes else []
    feedback = {
        "feedback_id": stable_id("feedback", alert["alert_id"], kind),
        "kind": kind,
        "alert_id": alert["alert_id"],
        "user": alert["user"],
        "customer": alert["customer"],
        "rule": alert["rule"],
        "rule_name": alert["rule_name"],
        "trust_networks": [n for n in networks if isinstance(n, str)],
        "suppress_until": rfc3339(now_ms + int(mute_hours * 3_600_000)) if changes else None,
        "by": by,
        "reason": reason,
        "time": rfc3339(now_ms),
    }
    try:
        decode_feedback(encode(feedback))  # what the workers will accept, checked before it is sent
    except InvalidRecord as exc:
        raise BadRequest(str(exc)) from None
    if kind != "lift":
        return feedback, None
    assert action is not None
    lift = {
        "action_id": stable_id("action", alert["alert_id"], "lift"),
        "action": "lift",
        "user": action["user"],
        "customer": action["customer"],
        "plan": action["plan"],
        "rule": action["rule"],
        "rule_name": action["rule_name"],
        "alert_id": alert["alert_id"],
        "reason": f"{action['action']} lifted by {by}" + (f": {reason}" if reason else ""),
        "time": rfc3339(now_ms),
    }
    try:
        validator("account-actions")(lift)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise BadRequest(explain(exc)) from None
    return feedback, lift


# --------------------------------------------------------------------------------------------
# a user's month, day by day


@dataclass
class Day:
    calls: int = 0
    peak: int = 0  # simultaneous calls
    registrations: int = 0
    networks: set[str] = field(default_factory=set)


def month_days(period: str) -> list[str]:
    year, month = int(period[:4]), int(period[5:])
    first = date(year, month, 1)
    return [(first + timedelta(days=d)).isoformat() for d in range(calendar.monthrange(year, month)[1])]


def timeline(cdrs: Iterable[dict[str, Any]], registrations: Iterable[dict[str, Any]], period: str,
             tz: ZoneInfo, max_open_ms: int = 4 * 3_600_000) -> dict[str, Day]:
    """Per local day of ``period``: calls started, the peak of simultaneous calls, REGISTERs and the
    distinct networks they came from. Calls are the ``end`` CDRs' [start, end); a call whose ``end``
    has not been read counts from its ``start`` event to the last instant read, at most
    ``max_open_ms`` (the workers' maximum call duration)."""
    days = {d: Day() for d in month_days(period)}
    spans: dict[str, list[int]] = {}
    last = 0
    for cdr in cdrs:
        start = instant_us(cdr["start_time"]) // 1000
        end = instant_us(cdr["end_time"]) // 1000 if cdr.get("event") == "end" else None
        span = spans.setdefault(cdr["call_id"], [start, -1])
        if end is not None:
            span[1] = end
        last = max(last, start, end or 0)
    points: list[tuple[int, int]] = []
    for start, end in spans.values():
        if period_of(start, tz) == period:
            day = days.get(from_ms(start, tz).date().isoformat())
            if day is not None:
                day.calls += 1
        points += [(start, 1), (end if end >= 0 else max(min(last, start + max_open_ms), start + 1), -1)]
    live = 0
    for at, step in sorted(points):  # an end before a start at the same instant: not simultaneous
        live += step
        day = days.get(from_ms(at, tz).date().isoformat())
        if day is not None and step > 0:
            day.peak = max(day.peak, live)
    for reg in registrations:
        at = instant_us(reg["time"]) // 1000
        day = days.get(from_ms(at, tz).date().isoformat())
        if day is None or not reg.get("expires"):
            continue
        day.registrations += 1
        network = network_of(str(reg.get("source_ip", "")))
        if network is not None:
            day.networks.add(network)
    return days


def chart_svg(days: dict[str, Day]) -> str:
    """Four rows of bars, one per measure, a bar per day; plain SVG (no script)."""
    rows: list[tuple[str, Callable[[Day], int]]] = [("calls", lambda d: d.calls), ("simultaneous calls (peak)", lambda d: d.peak),
            ("registrations", lambda d: d.registrations), ("networks", lambda d: len(d.networks))]
    width, label, bar, row_h = 760, 170, 18, 46
    step = (width - label) / max(len(days), 1)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_h * 4 + 20}" '
             f'role="img" aria-label="the month day by day">']
    for i, (name, value) in enumerate(rows):
        top = i * row_h + 4
        values = [value(d) for d in days.values()]
        peak = max(values, default=0) or 1
        parts.append(f'<text x="0" y="{top + 20}" font-size="12">{name}</text>'
                     f'<text x="0" y="{top + 35}" font-size="10" fill="#666">max {max(values, default=0)}</text>')
        for j, (day, v) in enumerate(zip(days, values)):
            h = round(bar * 1.6 * v / peak, 1)
            x = round(label + j * step, 1)
            parts.append(f'<rect x="{x}" y="{round(top + 30 - h, 1)}" width="{round(step * 0.8, 1)}" height="{h}" '
                         f'fill="#3b6ea5"><title>{day}: {v} {name}</title></rect>')
    first, last = next(iter(days), ""), next(reversed(days), "")
    parts.append(f'<text x="{label}" y="{row_h * 4 + 16}" font-size="10" fill="#666">{first}</text>'
                 f'<text x="{width - 70}" y="{row_h * 4 + 16}" font-size="10" fill="#666">{last}</text></svg>')
    return "".join(parts)


async def read_user(settings: Settings, topic: str, user: str, since_ms: int,
                    limit: int = TIMELINE_MAX_RECORDS) -> tuple[list[dict[str, Any]], bool]:
    """The ``topic`` records of ``user`` written since ``since_ms``: its partition only (the one its
    key hashes to, as every producer here and the workers' re-keying choose), up to where it ends
    now. Returns (records, whether ``limit`` cut the read short)."""
    decode = decode_cdr if topic == "cdrs" else decode_registration
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.client_kwargs(), **_isolation(settings))
    await consumer.start()
    try:
        name = settings.topic(topic)
        partitions = sorted(consumer.partitions_for_topic(name) or await _partitions(consumer, name))
        if not partitions:
            return [], False
        key = user.encode()
        tp = TopicPartition(name, DefaultPartitioner()(key, partitions, partitions))  # murmur2, as every producer here
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = None
        try:
            found = (await consumer.offsets_for_times({tp: since_ms}))[tp]
            start = found.offset if found is not None else end
        except (KafkaError, ValueError) as exc:  # a broker without timestamp lookups: from the beginning
            log.info("offsets_for_times on %s: %r; reading from the beginning", tp, exc)
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
        out: list[dict[str, Any]] = []
        read = 0
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for message in batch.get(tp, []):
                read += 1
                if message.key == key and message.value is not None:
                    try:
                        decode(message.value)  # what the workers accept; the rest went to the DLQ
                    except InvalidRecord:
                        continue
                    payload = orjson.loads(message.value)
                    if payload.get("user") == user:
                        out.append(payload)
            if read >= limit:
                return out, True
        return out, False
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _partitions(consumer: AIOKafkaConsumer, name: str) -> set[int]:
    await consumer.topics()  # a metadata request
    return consumer.partitions_for_topic(name) or set()


def _isolation(settings: Settings) -> dict[str, str]:
    # under exactly_once, outputs of an aborted transaction are not records
    return {"isolation_level": "read_committed"} if settings.processing_guarantee == "exactly_once" else {}


# --------------------------------------------------------------------------------------------
# the service


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


class Console:
    def __init__(self, config: ConsoleConfig, producer: AIOKafkaProducer | None = None,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self.feed = Feed(config.keep)
        self.producer = producer
        self.sending: set[tuple[str, str]] = set()  # verdicts on their way to the broker
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        import jinja2

        self.templates = jinja2.Environment(loader=jinja2.PackageLoader("streams", "templates"), autoescape=True,
                                            undefined=jinja2.StrictUndefined, trim_blocks=True,
                                            lstrip_blocks=True)

    # -- reading the topics -------------------------------------------------------------------

    async def tail(self, stop: asyncio.Event) -> None:
        """Read the topics from their beginning, then follow them, until ``stop``."""
        settings = self.config.settings
        consumer = AIOKafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=100, **settings.client_kwargs(),
                                    **_isolation(settings))
        await consumer.start()
        try:
            tps = await self._assign(consumer, stop)
            if not tps:
                return
            ends = await consumer.end_offsets(tps)
            names = {settings.topic(t): t for t in TOPICS}
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, messages in batch.items():
                    for message in messages:
                        self._read(names[tp.topic], message.value)
                if not self.feed.caught_up.is_set() and await _reached(consumer, ends):
                    self.feed.caught_up.set()
                    log.info("console: %d records read; following the topics", len(self.feed.entries))
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[TopicPartition]:
        settings, warned = self.config.settings, False
        while not stop.is_set():
            names = [settings.topic(t) for t in TOPICS]
            found = {n: consumer.partitions_for_topic(n) or await _partitions(consumer, n) for n in names}
            missing = [n for n, parts in found.items() if not parts]
            if not missing:
                tps = [TopicPartition(n, p) for n, parts in found.items() for p in sorted(parts)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                return tps
            if not warned:
                log.warning("console: waiting for the topics %s (created by the workers or create-topics.sh)",
                            ", ".join(missing))
                warned = True
            await asyncio.sleep(1.0)
        return []

    def _read(self, topic: str, value: bytes | None) -> None:
        try:
            payload = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get(ID_FIELD[topic]), str):
            log.warning("console: a %s record that is not a cdrwatch payload: left out", topic)
            return
        self.feed.add(topic, payload)

    # -- HTTP -----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._access], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_post("/api/feedback", self._feedback)
        app.router.add_get("/users/{user}", self._user)
        app.router.add_get("/healthz", self._health)
        return app

    @web.middleware
    async def _access(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if not self.config.token and request.url.host not in LOOPBACK_NAMES:
            # no token: only this machine may ask, by its loopback name (a page of another site whose
            # name now points to 127.0.0.1 would otherwise be same-origin with the console)
            return web.Response(status=403, text=f"this console answers on a loopback name only (Host "
                                f"{request.host!r}); set {TOKEN_ENV} to serve it under another name\n")
        who = authorized_caller(self.config.token, request.headers.get("Authorization"))
        if who is None:
            return web.Response(status=401, text=f"this console needs Basic auth (any user name, {TOKEN_ENV} as the "
                                "password) or Authorization: Bearer <token>\n",
                                headers={"WWW-Authenticate": 'Basic realm="cdrwatch console"'})
        request[WHO] = who
        try:
            return await handler(request)
        except BadRequest as exc:
            return _answer(400, {"error": str(exc)})

    async def _health(self, request: web.Request) -> web.Response:
        return _answer(200, {"status": "ok", "caught_up": self.feed.caught_up.is_set(),
                             "records": len(self.feed.entries)})

    def _page(self, name: str, **context: Any) -> web.Response:
        from . import __version__

        html = self.templates.get_template(name).render(version=__version__, **context)
        return web.Response(text=html, content_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; img-src 'self' data:"})

    async def _index(self, request: web.Request) -> web.Response:
        filters = parse_filters(request.query.items())
        return self._page("console.html.j2", filters={name: filters.get(name, "") for name in FILTERS},
                          who=request[WHO],
                          mute_hours=self.config.mute_hours)

    def _shown(self, entry: Entry) -> dict[str, Any]:
        view = entry.view()
        alert_id = entry.payload.get("alert_id")
        if entry.topic == "fraud-alerts":
            view["verdicts"] = sorted(self.feed.verdicts.get(str(alert_id), {}))
            view["action"] = (self.feed.actions.get(str(alert_id)) or {}).get("action")
        return view

    async def _events(self, request: web.Request) -> web.Response:
        filters = parse_filters(request.query.items())
        return _answer(200, {"caught_up": self.feed.caught_up.is_set(),
                             "events": [self._shown(e) for e in self.feed.select(filters)]})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        filters = parse_filters(request.query.items())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self.feed.listeners.add(queue)
        try:
            # the live view's rows: without a topic filter, the alerts and actions (re-bill lines and
            # verdicts update rows, they are not rows)
            shown = filters if "topic" in filters else {**filters, "topic": ""}
            for old in self.feed.select(shown, last=BACKLOG):
                await response.write(self._event(old, True))
            while True:
                try:
                    entry = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                if entry is None:
                    break
                # a verdict or an action changes how its alert is shown, whatever the filters
                match = matches(entry, filters)
                if match or entry.topic in ("fraud-feedback", "account-actions"):
                    await response.write(self._event(entry, match))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.listeners.discard(queue)
        return response

    def _event(self, entry: Entry, match: bool) -> bytes:
        """An SSE event; ``match``: it passes the view's filters (a row), else it only updates one."""
        return b"id: %d\ndata: %s\n\n" % (entry.seq, orjson.dumps({**self._shown(entry), "match": match}))

    async def _feedback(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # a form posted from another site cannot be JSON
            raise BadRequest("expected a JSON body (Content-Type: application/json)")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"not valid UTF-8 JSON ({exc})") from None
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object {alert_id, kind, reason, by}")
        unknown = sorted(set(body) - {"alert_id", "kind", "reason", "by"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        alert_id, kind = str(body.get("alert_id", "")), str(body.get("kind", ""))
        reason = str(body.get("reason") or "").strip()
        # the signed-in name when there is one; else what the analyst typed (loopback, no token)
        by = request[WHO] if request[WHO] not in ("", "bearer") else str(body.get("by") or "").strip()
        if not by:
            raise BadRequest("by: who gives the verdict (the name field of the page)")
        if kind == "false_positive" and not reason:
            raise BadRequest("reason: say why the alert is a false positive")
        if not self.feed.caught_up.is_set():  # an earlier verdict may not have been read yet
            return _answer(503, {"error": "the console is still reading the topics: retry in a moment"},
                           {"Retry-After": "2"})
        alert = self.feed.alert(alert_id)
        if alert is None:
            return _answer(404, {"error": f"no fraud alert {alert_id!r} has been read by this console"})
        given = self.feed.verdicts.get(alert_id, {}).get(kind)
        if given is not None or (alert_id, kind) in self.sending:  # the same verdict twice is sent once
            return _answer(200, {"feedback": given, "sent": False})
        feedback, lift = verdict_records(alert, self.feed.actions.get(alert_id), kind, by, reason, self.clock_ms(),
                                         self.config.mute_hours)
        assert self.producer is not None
        settings = self.config.settings
        key = alert["user"].encode()
        self.sending.add((alert_id, kind))
        try:
            sends = [await self.producer.send(settings.topic("fraud-feedback"), encode(feedback), key=key)]
            if lift is not None:
                sends.append(await self.producer.send(settings.topic("account-actions"), encode(lift), key=key))
            await asyncio.gather(*sends)  # the broker has them (acks=all) before the analyst is told
            self.feed.add("fraud-feedback", feedback)
            if lift is not None:
                self.feed.add("account-actions", lift)
        finally:
            self.sending.discard((alert_id, kind))
        log.info("verdict %s on alert %s (user %s) by %s", kind, alert_id, alert["user"], by)
        return _answer(200, {"feedback": feedback, "lift": lift, "sent": True})

    async def _user(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        params = dict(request.query.items())
        unknown = sorted(set(params) - {"period"})
        if unknown:
            raise BadRequest(f"unknown parameter(s): {', '.join(unknown)} (allowed: period)")
        usage, problem = await self._usage(user, params.get("period"))
        period = params.get("period") or (usage or {}).get("period") or rfc3339(self.clock_ms())[:7]
        _period_parameter(period)
        tz = ZoneInfo((usage or {}).get("timezone") or "UTC")
        since = int(datetime(int(period[:4]), int(period[5:]), 1, tzinfo=tz).timestamp() * 1000) - 86_400_000
        settings = self.config.settings
        (cdrs, cut), (regs, cut2) = await asyncio.gather(read_user(settings, "cdrs", user, since),
                                                         read_user(settings, "sip-registrations", user, since))
        days = timeline(cdrs, regs, period, tz, settings.max_call_duration_s * 1000)
        mine = {"user": user, "period": period}
        alerts = [self._shown(e) for e in self.feed.select(mine) if e.topic in ("fairuse-alerts", "fraud-alerts")]
        actions = [e.payload for e in self.feed.select({**mine, "topic": "account-actions"})]
        lines = [e.payload for e in self.feed.select({**mine, "topic": "rebilled-calls"})]
        total = sum((Decimal(str(line["amount"])) for line in lines), Decimal(0)).quantize(CENT)
        return self._page("console_user.html.j2", user=user, period=period, usage=usage, problem=problem,
                          chart=chart_svg(days), cut=cut or cut2, alerts=alerts, actions=actions, lines=lines,
                          total=total, who=request[WHO], mute_hours=self.config.mute_hours,
                          evidence=lambda e: orjson.dumps(e, option=orjson.OPT_INDENT_2).decode())

    async def _usage(self, user: str, period: str | None) -> tuple[dict[str, Any] | None, str]:
        """The worker's ``/users/{user}/usage`` (any worker forwards to the one holding the user)."""
        url = f"{self.config.worker_url.rstrip('/')}/users/{quote(user, safe='')}/usage"
        headers = {"Authorization": f"Bearer {self.config.worker_token}"} if self.config.worker_token else {}
        try:
            async with ClientSession(timeout=ClientTimeout(total=5)) as session:
                async with session.get(url, params={"period": period} if period else {}, headers=headers) as r:
                    body = await r.json(content_type=None)
                    if r.status == 200:
                        return body, ""
                    return None, f"{r.status}: {body.get('error', body) if isinstance(body, dict) else body}"
        except (ClientError, asyncio.TimeoutError, ValueError) as exc:
            return None, f"the worker at {self.config.worker_url} did not answer ({exc!r})"


# --------------------------------------------------------------------------------------------
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "console", description="Serve the alert console: the output topics (fair-use and fraud alerts, account actions, "
        "re-bill lines) read from their beginning and pushed live to the page, with filters; a page per user "
        "and month (counters against limits from a worker, a day-by-day chart, alerts with their evidence, "
        "re-bill lines and their total); and the analysts' verdicts on fraud alerts (acknowledge, false "
        "positive, lift), written to fraud-feedback, which the workers honour: a false positive or a lift "
        "mutes the rule for the user for --mute-hours and, for new_network, trusts the alert's networks; a "
        "lift also writes an account-actions record `lift`.",
        epilog=f"environment: {TOKEN_ENV} (a secret: the password of Basic auth, any user name, which the "
        "verdicts record as who gave them; or a bearer token; required when --host is not loopback), "
        f"{WORKER_TOKEN_ENV} (the workers' token, to ask them for usage), and the worker's CDRWATCH_BROKER, "
        "CDRWATCH_TOPIC_PREFIX, CDRWATCH_SECURITY_PROTOCOL, … (see cdrwatch --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", metavar="URL", help="kafka://host:port (default: CDRWATCH_BROKER, else "
                        "kafka://127.0.0.1:9092)")
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT, metavar="N", help=f"default {DEFAULT_PORT}")
    parser.add_argument("--worker-url", default="http://127.0.0.1:6066", metavar="URL",
                        help="a worker's web address, asked for users' usage (default http://127.0.0.1:6066)")
    parser.add_argument("--keep", type=positive_int, default=DEFAULT_KEEP, metavar="N",
                        help=f"records kept in memory, the newest (default {DEFAULT_KEEP})")
    parser.add_argument("--mute-hours", type=positive_float, default=DEFAULT_MUTE_HOURS, metavar="H",
                        help=f"how long a false positive mutes its rule for the user (default {DEFAULT_MUTE_HOURS:g})")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: warning")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ConsoleConfig:
    settings, token = service_settings(args.broker, args.host, TOKEN_ENV,
                                       "the console shows personal data and takes verdicts")
    if args.mute_hours > MAX_MUTE_HOURS:
        raise ConfigError(f"--mute-hours: at most {MAX_MUTE_HOURS} (a year), got {args.mute_hours:g}")
    if not re.fullmatch(r"https?://[^/\s]+/?", args.worker_url):
        raise ConfigError(f"--worker-url: expected http://host:port, got {args.worker_url!r}")
    return ConsoleConfig(settings=settings, token=token, worker_url=args.worker_url,
                         worker_token=os.environ.get(WORKER_TOKEN_ENV, ""), keep=args.keep,
                         mute_hours=args.mute_hours)


async def serve(config: ConsoleConfig, host: str, port: int, stop: asyncio.Event,
                started: Callable[[str], None] | None = None) -> None:
    from .ingest import producer_for

    producer = producer_for(config.settings)
    await producer.start()
    console = Console(config, producer)
    reader = asyncio.create_task(console.tail(stop))
    runner = web.AppRunner(console.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    url = f"http://{host}:{port}/"
    (started or (lambda u: print(f"cdrwatch console: {u} ← {config.settings.broker}", flush=True)))(url)
    try:
        await asyncio.wait([reader, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()  # a reader that died: say why
    finally:
        stop.set()
        console.feed.close()  # the live views' streams end
        await runner.shutdown()
        await runner.cleanup()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()


def run(args: argparse.Namespace) -> int:
    from .settings import load_plans_and_rates
    from .connect import check_broker, check_port_free

    config = config_from_args(args)
    check_port_free(args.host, args.port)
    load_plans_and_rates(config.settings)  # the same settings errors as a worker's, before anything starts
    asyncio.run(check_broker(config.settings))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, args.host, args.port, stop)

    asyncio.run(main())
    return 0


__all__ = ["Console", "ConsoleConfig", "Feed", "chart_svg", "register", "timeline", "verdict_records"]
