"""``cdrwatch ingest``: an HTTP service that takes events from switches and produces them to the
input topics, keyed by user, so that a switch pushes its CDRs live instead of files converted by
``cdrwatch import``.

Endpoints (``POST``):

* ``/freeswitch/cdr`` — a ``mod_json_cdr`` post, in any of its encodings: ``encode=true`` (the
  default: a form field ``cdr`` holding the URL-encoded JSON), ``encode=base64`` (the field holds
  base64) or ``encode=false`` (the JSON itself as the body). Converted as ``cdrwatch import
  freeswitch`` converts a file.
* ``/kamailio/event`` — the events of ``deploy/kamailio/cdrwatch.cfg`` (a saved REGISTER, a
  dialog's start, end or failure), as the ``sip-registrations`` or ``cdrs`` payload they stand
  for. With ``--evapi HOST:PORT`` the same events are also read from Kamailio's evapi module, this
  service being its client.
* ``/cdrs``, ``/sip-registrations``, ``/subscribers`` — cdrwatch's own payloads: one JSON object,
  or JSON Lines in bulk.

Each record is validated at the boundary as a worker would (``streams.codecs``). A good one goes to
its topic, keyed by its user; a bad one to ``<topic>-dlq`` with its reason in the
``cdrwatch-reason`` header, and the answer says why. The answer is sent once the broker holds
every record of the request (``acks=all``): 200 when each is in its topic or its DLQ; 422 when a
FreeSWITCH post, or every record of a bulk post, was rejected (mod_json_cdr then retries and keeps
the post in its error directory: each copy in the DLQ is the same record); 400 for a body that is
not JSON; 401 without the token; 413 above ``--max-body``; 503 with ``Retry-After`` when more than
``--max-pending`` records wait for the broker, or it did not answer within ``--send-timeout``.

``GET /healthz`` and ``GET /metrics`` (Prometheus) need no token and show no personal data.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .checks import positive_float, positive_int
from .codecs import MAX_MESSAGE_BYTES, decode_cdr, decode_registration, decode_subscriber, encode_cdr, registration_payload
from .core.errors import InvalidRecord
from .tools.importers import ImportOptions, RowError, convert_freeswitch, iso_time
from .settings import Settings, authorized_caller, service_settings
from .topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, EVENT_TOPICS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8088
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_MAX_PENDING = 10_000
DEFAULT_SEND_TIMEOUT_S = 10.0
RETRY_AFTER_S = 1
TOKEN_ENV = "CDRWATCH_INGEST_TOKEN"


class Rejected(Exception):
    """A record that cannot go to its topic: it goes to the DLQ (of ``topic``, when the record
    says which input it was meant for) with this reason."""

    def __init__(self, reason: str, topic: str | None = None) -> None:
        super().__init__(reason)
        self.topic = topic


@dataclass(frozen=True)
class Record:
    topic: str  # the input topic, without the prefix
    key: bytes | None
    value: bytes


@dataclass
class IngestConfig:
    settings: Settings
    token: str = ""
    max_body: int = DEFAULT_MAX_BODY
    max_pending: int = DEFAULT_MAX_PENDING
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    import_options: ImportOptions = ImportOptions()


# --------------------------------------------------------------------------------------------
# decoding: body → records, each validated


def _validated(topic: str, value: bytes, known_plans: Callable[[str], bool]) -> Record:
    """A cdrwatch payload of ``topic``, keyed by its user, or Rejected with the worker's reason."""
    try:
        if topic == "cdrs":
            user = decode_cdr(value).user
        elif topic == "sip-registrations":
            user = decode_registration(value).user
        else:
            data = orjson.loads(value)
            named = data.get("user") if isinstance(data, dict) else None
            if not isinstance(named, str) or not named:
                raise Rejected("missing required field(s): user")
            user = named
            decode_subscriber(user.encode(), value, known_plans)
    except InvalidRecord as exc:
        raise Rejected(str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not valid UTF-8 JSON ({exc})") from None
    return Record(topic, user.encode(), value)


def freeswitch_body(body: bytes, content_type: str) -> Any:
    """The JSON record of a mod_json_cdr post (form field ``cdr``, URL-encoded or base64; or the
    JSON as the body). Raises ValueError for a body that holds no JSON."""
    text = body.decode("utf-8", errors="replace").strip()
    if "form-urlencoded" in content_type or (text and not text.startswith(("{", "["))):
        fields = parse_qs(text, keep_blank_values=True)
        cdr = (fields.get("cdr") or [""])[0]
        if not cdr:
            raise ValueError("no cdr field in the form (mod_json_cdr posts cdr=<json>)")
        if not cdr.lstrip().startswith("{"):  # encode=base64
            try:
                cdr = base64.b64decode(cdr, validate=False).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                raise ValueError("the cdr field is neither JSON nor base64") from None
        text = cdr
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid UTF-8 JSON ({exc})") from None


def freeswitch_record(record: Any, options: ImportOptions) -> Record:
    try:
        payload = convert_freeswitch(record, options, "")
    except RowError as exc:
        raise Rejected(str(exc)) from None
    return _validated("cdrs", orjson.dumps(payload), lambda _plan: True)


KAMAILIO_EVENTS = ("register", "dialog_start", "dialog_end", "dialog_failed")


def _epoch(event: dict[str, Any], name: str, tz: ZoneInfo) -> datetime:
    """``sec.usec`` ($TV(Sn)) or seconds, as a time in ``tz``."""
    value = event.get(name)
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).astimezone(tz)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):  # not a number, nan, out of range
        raise Rejected(f"{name}: expected epoch seconds ($TV(Sn)), got {value!r}") from None


def kamailio_record(value: bytes, tz: ZoneInfo) -> Record:
    """A Kamailio event (deploy/kamailio/cdrwatch.cfg) as the cdrwatch payload it stands for:
    ``register`` → ``sip-registrations``; ``dialog_start`` (answered) → a ``cdrs`` ``start``;
    ``dialog_end`` → its ``end``; ``dialog_failed`` → an unanswered ``end``."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(event, dict) or event.get("type") not in KAMAILIO_EVENTS:
        kind = event.get("type") if isinstance(event, dict) else None
        raise Rejected(f"type: expected one of {', '.join(KAMAILIO_EVENTS)}, got {kind!r}")
    topic = "sip-registrations" if event["type"] == "register" else "cdrs"
    try:
        return _kamailio_payload(event, tz)
    except Rejected as exc:
        raise Rejected(str(exc), topic) from None


def _kamailio_payload(event: dict[str, Any], tz: ZoneInfo) -> Record:
    kind = event["type"]
    if kind == "register":
        user = str(event.get("user") or "")
        try:
            expires = int(str(event.get("expires", "")))
        except ValueError:
            raise Rejected(f"expires: not an integer: {event.get('expires')!r}") from None
        payload = registration_payload(
            user, str(event.get("customer") or user), str(event.get("contact") or ""),
            str(event.get("instance_id") or "") or None, str(event.get("user_agent") or ""),
            str(event.get("source_ip") or ""), expires, iso_time(_epoch(event, "time", tz)))
        return _validated("sip-registrations", orjson.dumps(payload), lambda _plan: True)
    user = str(event.get("user") or event.get("caller") or "")
    invite = _epoch(event, "invite_time", tz)
    call = (str(event.get("call_id") or ""), user, str(event.get("customer") or user), str(event.get("caller") or ""),
            str(event.get("callee") or ""), str(event.get("direction") or "outbound"), iso_time(invite))
    if kind == "dialog_end":
        answer, end = _epoch(event, "answer_time", tz), _epoch(event, "time", tz)
        raw = encode_cdr("end", *call, iso_time(answer), iso_time(end), int((end - answer).total_seconds() + 0.5),
                         "ANSWERED")
    elif kind == "dialog_failed":
        raw = encode_cdr("end", *call, None, iso_time(_epoch(event, "time", tz)), 0, "FAILED")
    else:
        raw = encode_cdr("start", *call)
    return _validated("cdrs", raw, lambda _plan: True)


def jsonl_values(body: bytes) -> list[bytes]:
    """One JSON object, or JSON Lines: the non-blank lines, as they came."""
    stripped = body.strip()
    if not stripped:
        return []
    try:  # one object, possibly spread over several lines
        orjson.loads(stripped)
        return [stripped]
    except orjson.JSONDecodeError:
        return [line.strip() for line in stripped.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# the service


class Ingest:
    def __init__(self, config: IngestConfig, producer: Any, known_plans: Callable[[str], bool]) -> None:
        self.config = config
        self.producer = producer
        self.known_plans = known_plans
        self.pending = 0
        self.registry = CollectorRegistry()
        self.requests = Counter("cdrwatch_ingest_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.records = Counter("cdrwatch_ingest_records", "Records produced, by input topic and outcome (ok, dlq)",
                               ["topic", "outcome"], registry=self.registry)
        self.pending_gauge = Gauge("cdrwatch_ingest_pending_records", "Records waiting for the broker",
                                   registry=self.registry)
        self.evapi_connected = Gauge("cdrwatch_ingest_evapi_connected", "1 while connected to a Kamailio evapi",
                                     ["peer"], registry=self.registry)
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body, middlewares=[self._errors])
        app.router.add_post("/freeswitch/cdr", self._freeswitch)
        app.router.add_post("/kamailio/event", self._kamailio())
        for topic in EVENT_TOPICS:
            app.router.add_post(f"/{topic}", self._payloads(topic))
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = self._too_large()
        except web.HTTPException as exc:
            response = _answer(exc.status, {"error": exc.reason})
        self.requests.labels(request.path if request.match_info.route.resource else "other", str(response.status)).inc()
        return response

    def _authorized(self, request: web.Request) -> bool:
        # mod_json_cdr's `cred` param sends Basic auth: any user name, the token as password
        return authorized_caller(self.config.token, request.headers.get("Authorization")) is not None

    async def _body(self, request: web.Request) -> bytes | web.Response:
        if not self._authorized(request):
            return _answer(401, {"error": f"this endpoint needs Authorization: Bearer <{TOKEN_ENV}>"},
                           {"WWW-Authenticate": 'Bearer realm="cdrwatch"'})
        if request.content_length is not None and request.content_length > self.config.max_body:
            return self._too_large()
        return await request.read()

    def _too_large(self) -> web.Response:
        return _answer(413, {"error": f"body above the limit of {self.config.max_body} bytes (--max-body)"})

    async def _freeswitch(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        source = "ingest/freeswitch/cdr"
        try:
            parsed = freeswitch_body(body, request.content_type)
        except ValueError as exc:
            return await self._refuse([(Record("cdrs", None, body), str(exc))], source, 400)
        try:
            record = freeswitch_record(parsed, self.config.import_options)
        except Rejected as exc:
            return await self._refuse([(Record("cdrs", None, body), str(exc))], source, 422)
        return await self._produce([record], [], source)

    def _payloads(self, topic: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        return self._lines(topic, lambda value: _validated(topic, value, self.known_plans))

    def _kamailio(self) -> Callable[[web.Request], Awaitable[web.Response]]:
        return self._lines("kamailio/event", lambda value: kamailio_record(value, self.config.import_options.timezone))

    def _lines(self, name: str, convert: Callable[[bytes], Record]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await self._body(request)
            if isinstance(body, web.Response):
                return body
            values = jsonl_values(body)
            if not values:
                return _answer(400, {"error": "empty body: one JSON object, or JSON Lines"})
            good: list[Record] = []
            bad: list[tuple[Record, str]] = []
            lines: list[int] = []
            for line, value in enumerate(values, start=1):
                record = _converted(convert, value, name if name in EVENT_TOPICS else "cdrs")
                if isinstance(record, Record):
                    good.append(record)
                else:
                    bad.append(record)
                    lines.append(line)
            if not good:
                return await self._refuse(bad, f"ingest/{name}", 422, lines)
            return await self._produce(good, bad, f"ingest/{name}", lines)

        return handle

    async def _refuse(self, bad: list[tuple[Record, str]], source: str, status: int,
                      lines: list[int] | None = None) -> web.Response:
        sent = await self._send([], bad, source)
        if sent is not None:
            return sent
        error = bad[0][1] if len(bad) == 1 else f"every record rejected ({len(bad)})"
        return _answer(status, {"error": error, "accepted": 0, "rejected": _rejected(bad, lines),
                                "dlq": self.config.settings.topic(f"{bad[0][0].topic}-dlq")})

    async def _produce(self, good: list[Record], bad: list[tuple[Record, str]], source: str,
                       lines: list[int] | None = None) -> web.Response:
        sent = await self._send(good, bad, source)
        if sent is not None:
            return sent
        return _answer(200, {"accepted": len(good), "rejected": _rejected(bad, lines)})

    async def _send(self, good: list[Record], bad: list[tuple[Record, str]], source: str) -> web.Response | None:
        """Produce every record and wait for the broker to hold them all; None when it does,
        else the 503 to answer."""
        count = len(good) + len(bad)
        if self.pending + count > self.config.max_pending:
            return _answer(503, {"error": f"{self.pending} records are waiting for the broker (--max-pending "
                                          f"{self.config.max_pending}): try again"},
                           {"Retry-After": str(RETRY_AFTER_S)})
        self.pending += count
        self.pending_gauge.set(self.pending)
        settings = self.config.settings
        try:
            futures = [await self.producer.send(settings.topic(r.topic), r.value, key=r.key) for r in good]
            for record, reason in bad:
                headers = [(DLQ_REASON_HEADER, reason.encode()), (DLQ_SOURCE_HEADER, source.encode())]
                futures.append(await self.producer.send(settings.topic(f"{record.topic}-dlq"), record.value[:MAX_MESSAGE_BYTES],
                                                        key=record.key, headers=headers))
            await asyncio.wait_for(asyncio.gather(*futures), self.config.send_timeout_s)
        except Exception as exc:  # the broker's (or a timeout): nothing is acknowledged
            log.warning("ingest: the broker did not take %d record(s) (%r)", count, exc)
            return _answer(503, {"error": "the broker did not take the records in time: try again"},
                           {"Retry-After": str(RETRY_AFTER_S)})
        finally:
            self.pending -= count
            self.pending_gauge.set(self.pending)
        for record in good:
            self.records.labels(record.topic, "ok").inc()
        for record, _reason in bad:
            self.records.labels(record.topic, "dlq").inc()
        return None

    # -- evapi: Kamailio's events pushed over TCP to this client ---------------------------------

    async def evapi(self, host: str, port: int, stop: asyncio.Event) -> None:
        """Stay connected to Kamailio's evapi at ``host:port`` (again a second after each loss) and
        take its events: netstrings (``<length>:<json>,``), each a ``/kamailio/event`` payload. No
        answer goes back, so an event that cannot be produced yet waits (the socket is not read
        meanwhile) rather than being dropped."""
        peer = f"{host}:{port}"
        connected = self.evapi_connected.labels(peer)
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                connected.set(0)
                log.warning("ingest: evapi %s: cannot connect (%s): again in %d s", peer, exc.strerror or exc, RETRY_AFTER_S)
                await _sleep_or_stop(stop, RETRY_AFTER_S)
                continue
            connected.set(1)
            log.warning("ingest: evapi %s: connected", peer)
            try:
                while not stop.is_set():
                    value = await _netstring(reader)
                    if value is None:
                        break
                    await self._take_event(value, f"ingest/evapi/{peer}")
            except ValueError as exc:  # out of step with the stream: start afresh
                log.warning("ingest: evapi %s: %s: reconnecting", peer, exc)
            finally:
                connected.set(0)
                writer.close()
            if not stop.is_set():
                log.warning("ingest: evapi %s: disconnected: again in %d s", peer, RETRY_AFTER_S)
                await _sleep_or_stop(stop, RETRY_AFTER_S)

    async def _take_event(self, value: bytes, source: str) -> None:
        record = _converted(lambda v: kamailio_record(v, self.config.import_options.timezone), value, "cdrs")
        good, bad = ([record], []) if isinstance(record, Record) else ([], [record])
        while await self._send(good, bad, source) is not None:  # the broker is not keeping up: wait
            await asyncio.sleep(RETRY_AFTER_S)

    async def _health(self, _request: web.Request) -> web.Response:
        return _answer(200, {"status": "ok", "pending": self.pending, "uptime_s": round(time.time() - self.started)})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")


async def _netstring(reader: asyncio.StreamReader) -> bytes | None:
    """The next netstring's content; None at the end of the stream."""
    try:
        head = await reader.readuntil(b":")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise ValueError("no netstring length") from None
    length = head[:-1].strip()
    if not length.isdigit() or len(length) > 9:
        raise ValueError(f"not a netstring length: {length[:20]!r}")
    try:
        data = await reader.readexactly(int(length) + 1)
    except asyncio.IncompleteReadError:
        return None
    if data[-1:] != b",":
        raise ValueError("a netstring without its closing comma")
    return data[:-1]


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _converted(convert: Callable[[bytes], Record], value: bytes, topic: str) -> Record | tuple[Record, str]:
    """The record ``value`` makes, or what goes to the DLQ instead: the value as it came, with the
    reason, for the topic it was meant for (else ``topic``)."""
    try:
        return convert(value)
    except Rejected as exc:
        return Record(exc.topic or topic, None, value), str(exc)


def _rejected(bad: list[tuple[Record, str]], lines: list[int] | None) -> list[dict[str, Any]]:
    return [{"reason": reason} | ({"line": lines[n]} if lines else {}) for n, (_record, reason) in enumerate(bad)]


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def producer_for(settings: Settings) -> AIOKafkaProducer:
    """acks=all, without idempotence (the embedded broker refuses it): a send the producer retried
    may land twice, which the workers drop as they drop any duplicate (same call_id)."""
    return AIOKafkaProducer(acks="all", linger_ms=5, **settings.client_kwargs())


# --------------------------------------------------------------------------------------------
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "ingest", description="Take CDRs and events over HTTP and produce them to the input topics, keyed by user: "
        "FreeSWITCH mod_json_cdr posts (POST /freeswitch/cdr, every encoding), Kamailio's events (POST "
        "/kamailio/event, or read from its evapi with --evapi), and cdrwatch's own payloads, one "
        "JSON object or JSON Lines (POST /cdrs, /sip-registrations, /subscribers). Each record is validated as a "
        "worker would; a bad one goes to <topic>-dlq and the answer says why. A request is answered once the "
        "broker holds its records (acks=all); 503 with Retry-After when it cannot keep up. GET /healthz and "
        "/metrics need no token.",
        epilog=f"environment: {TOKEN_ENV} (a secret: the bearer token every POST must carry; required when "
        "--host is not loopback; mod_json_cdr sends it as the password of its `cred` param), and the worker's "
        "CDRWATCH_BROKER, CDRWATCH_TOPIC_PREFIX, CDRWATCH_SECURITY_PROTOCOL, … (see cdrwatch --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", metavar="URL", help="kafka://host:port (default: CDRWATCH_BROKER, else kafka://127.0.0.1:9092)")
    parser.add_argument("--host", default="127.0.0.1", metavar="HOST", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT, metavar="N", help=f"default {DEFAULT_PORT}")
    parser.add_argument("--max-body", type=positive_int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                        help=f"largest request body (default {DEFAULT_MAX_BODY}); larger: 413")
    parser.add_argument("--max-pending", type=positive_int, default=DEFAULT_MAX_PENDING, metavar="N",
                        help=f"records waiting for the broker beyond which a request gets 503 (default {DEFAULT_MAX_PENDING})")
    parser.add_argument("--send-timeout", type=positive_float, default=DEFAULT_SEND_TIMEOUT_S, metavar="S",
                        help=f"how long a request waits for the broker before 503 (default {DEFAULT_SEND_TIMEOUT_S:g} s)")
    parser.add_argument("--evapi", action="append", type=_host_port, default=[], metavar="HOST:PORT",
                        help="also take Kamailio's events from its evapi module at HOST:PORT, as its client "
                        "(again and again: one per Kamailio); see deploy/kamailio/cdrwatch.cfg")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: warning")
    parser.set_defaults(func=run)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    settings, token = service_settings(args.broker, args.host, TOKEN_ENV, "the posts carry personal data")
    return IngestConfig(settings=settings, token=token, max_body=args.max_body, max_pending=args.max_pending,
                        send_timeout_s=args.send_timeout)


def run(args: argparse.Namespace) -> int:
    from .settings import load_plans_and_rates
    from .connect import check_broker, check_port_free

    config = config_from_args(args)
    check_port_free(args.host, args.port)
    plans, _rates = load_plans_and_rates(config.settings)
    asyncio.run(check_broker(config.settings))

    async def serve() -> None:
        producer = producer_for(config.settings)
        await producer.start()
        ingest = Ingest(config, producer, lambda plan: plan in plans.plans)
        runner = web.AppRunner(ingest.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"cdrwatch ingest: listening on http://{args.host}:{args.port} → {config.settings.broker}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        clients = [asyncio.create_task(ingest.evapi(host, port, stop)) for host, port in args.evapi]
        try:
            await stop.wait()
        finally:
            for client in clients:  # reading its socket: cancelled between two events
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await runner.cleanup()  # finishes the requests under way
            await producer.stop()

    asyncio.run(serve())
    return 0


__all__ = ["Ingest", "IngestConfig", "freeswitch_body", "jsonl_values", "producer_for", "register"]
