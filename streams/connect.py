"""Checks made before a command starts work: the broker answers, the web port is free.

Without them, a broker that nothing listens on shows as a hundred aiokafka ERROR lines over
twenty seconds and then a traceback, and a web port in use as a traceback from deep in aiohttp.
A wrong password or an untrusted broker certificate is worse: the workers' clients retry it for
ever, one log line at a time. The broker check says what is wrong in one line, within seconds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from .core.errors import ConfigError
from .settings import Settings

BROKER_CHECK_TIMEOUT_S = 8.0

# OpenSSL's verification results that are about the certificate itself, not about who signed it.
_HOST_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9

# A listener that closes the connection after the first request speaks another protocol; what the
# client may be missing, by its own protocol.
_EXPECTS_INSTEAD = {
    "PLAINTEXT": "TLS or SASL",
    "SSL": "SASL authentication (SASL_SSL)",
    "SASL_PLAINTEXT": "TLS (SASL_SSL)",
}


class _Collect(logging.Handler):
    """Keeps what aiokafka says while it is silenced (the reasons of the failed attempts)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


class RedactSaslPayloads(logging.Filter):
    """aiokafka logs each request and response at debug level, SASL authentication ones with
    their bytes, which hold the password itself with PLAIN: shown by their type's name only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl_payload(arg) for arg in record.args):
            record.args = tuple(f"<{type(arg).__name__}, not shown>" if _is_sasl_payload(arg) else arg
                                for arg in record.args)
        return True


def _is_sasl_payload(value: object) -> bool:
    return type(value).__name__.startswith(("SaslAuthenticateRequest", "SaslAuthenticateResponse"))


_REDACT = RedactSaslPayloads()


def redact_sasl_payloads() -> None:
    """From now on, aiokafka's debug log shows no SASL authentication bytes (idempotent)."""
    logger = logging.getLogger("aiokafka.conn")
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)


async def check_broker(settings: Settings, timeout_s: float = BROKER_CHECK_TIMEOUT_S) -> None:
    """Connect to the bootstrap brokers of ``settings.broker`` with its security settings (TLS,
    SASL) and ask one for the cluster's metadata. If none answers within ``timeout_s``, raise a
    one-line ConfigError: what is wrong with the security settings when that is why (a refused
    password, an untrusted certificate, another protocol on that port), else which broker and
    what was tried."""
    redact_sasl_payloads()
    kwargs: dict[str, Any] = settings.client_kwargs()
    hosts = collect_hosts(kwargs.pop("bootstrap_servers"), randomize=False)
    logger = logging.getLogger("aiokafka")
    collect = _Collect()
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    failures: list[tuple[str, int, BaseException]] = []
    try:
        for left, (host, port, _family) in zip(range(len(hosts), 0, -1), hosts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            budget = remaining / left  # a broker that never answers leaves time for the others
            try:
                async with asyncio.timeout(budget):
                    await _ask_metadata(host, port, int(budget * 1000), kwargs)
                return
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
                failures.append((host, port, exc))
    finally:
        await asyncio.sleep(0)  # a closed connection's reader logs its end: still silenced
        logger.removeHandler(collect)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate
    for host, port, error in failures:
        problem = security_problem(settings, host, port, error)
        if problem:
            raise ConfigError(problem) from None
    last = failures[-1][2] if failures else asyncio.TimeoutError()
    if isinstance(last, asyncio.TimeoutError):
        why = f"no answer within {timeout_s:g} s"
    else:
        why = collect.lines[-1] if collect.lines else (str(last) or type(last).__name__)
    raise ConfigError(f"no Kafka broker answers at {settings.broker} (tried {settings.bootstrap_servers()} "
                      f"over {settings.security_protocol}: {why})")


async def _ask_metadata(host: str, port: int, timeout_ms: int, kwargs: dict[str, Any]) -> None:
    """One connection (TLS handshake, SASL authentication), one metadata request."""
    conn = await create_conn(host, port, request_timeout_ms=timeout_ms, **kwargs)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def security_problem(settings: Settings, host: str, port: int, exc: BaseException) -> str | None:
    """What the failure ``exc`` of a connection to ``host:port`` says about the security settings,
    in words: None when it is not about them (nothing listens, no answer in time)."""
    at = f"{host}:{port}"
    protocol = settings.security_protocol
    if isinstance(exc, SaslAuthenticationFailed):
        # Kafka answers a wrong password and an unknown user alike, on purpose.
        said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        detail = "" if not said or "invalid credentials" in said else f"; the broker says: {said}"
        return (f"authentication failed for user {settings.sasl_username} ({settings.sasl_mechanism}) at {at}: "
                f"wrong password or no such user (CDRWATCH_SASL_USERNAME, CDRWATCH_SASL_PASSWORD){detail}")
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (f"the broker at {at} does not offer SASL mechanism {settings.sasl_mechanism} on this listener "
                "(CDRWATCH_SASL_MECHANISM)")
    if isinstance(exc, IllegalSaslStateError):
        return (f"the listener at {at} does not take SASL: CDRWATCH_SECURITY_PROTOCOL is {protocol}; "
                "is CDRWATCH_BROKER's port the broker's SASL listener?")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        if exc.verify_code in _HOST_MISMATCH:
            return (f"the broker's certificate at {at} is not valid for {host} ({reason}): connect with a "
                    "name the certificate holds (CDRWATCH_BROKER), or give the broker a certificate for it")
        if exc.verify_code == _EXPIRED:
            return f"the broker's certificate at {at} has expired: the broker needs a new one"
        if exc.verify_code == _NOT_YET_VALID:
            return f"the broker's certificate at {at} is not valid yet (is this machine's clock right?)"
        if settings.ssl_cafile is not None:
            return (f"the broker's certificate at {at} is not trusted by CDRWATCH_SSL_CAFILE ({settings.ssl_cafile}): "
                    f"that file does not hold the CA that signed it (certificate verify failed: {reason})")
        return (f"the broker's certificate at {at} is not trusted by this machine's CA certificates: set "
                f"CDRWATCH_SSL_CAFILE to the CA that signed it (certificate verify failed: {reason})")
    if "SSL" in protocol and isinstance(exc, (ssl.SSLError, ConnectionResetError)):
        reason = getattr(exc, "reason", None) or str(exc) or "connection reset"
        return (f"no TLS handshake with {at} ({reason}): CDRWATCH_SECURITY_PROTOCOL is {protocol}; is "
                "CDRWATCH_BROKER's port a PLAINTEXT listener?")
    if isinstance(exc, KafkaConnectionError) and str(exc).endswith("closed"):
        expects = _EXPECTS_INSTEAD.get(protocol, "another protocol")
        return (f"the broker at {at} closed the connection at once: CDRWATCH_SECURITY_PROTOCOL is {protocol}; "
                f"does this listener expect {expects}? (check CDRWATCH_BROKER's port too)")
    return None


TRANSACTIONS_CHECK_TIMEOUT_S = 10.0


async def check_transactions(settings: Settings, timeout_s: float = TRANSACTIONS_CHECK_TIMEOUT_S) -> None:
    """For ``exactly_once``: open and abort one transaction on the broker, or raise a one-line
    ConfigError (Tansu, and Kafka without a transaction coordinator, refuse them)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(transactional_id=f"{settings.app_id}-transactions-check", enable_idempotence=True,
                                request_timeout_ms=int(timeout_s * 1000), **settings.client_kwargs())
    problem = ""
    logger = logging.getLogger("aiokafka")  # its sender logs the refusal too: the one line below says it
    saved = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        async with asyncio.timeout(timeout_s):
            await producer.start()
            await producer.begin_transaction()
            await producer.abort_transaction()
    except asyncio.TimeoutError:
        problem = f"no answer within {timeout_s:.0f} s"
    except (KafkaError, OSError) as exc:
        problem = f"InitProducerId answered {type(exc).__name__}"
    finally:
        try:
            async with asyncio.timeout(2):
                await producer.stop()
        except (asyncio.TimeoutError, KafkaError, OSError):
            pass
        logger.setLevel(saved)
    if problem:
        raise ConfigError(f"--processing-guarantee exactly_once needs Kafka transactions, and the broker at "
                          f"{settings.broker} refused one ({problem}): use Apache Kafka, or at_least_once")


def check_port_free(host: str, port: int) -> None:
    """Refuse to start when something already listens on ``host:port`` (another worker?)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the web server binds: a port left in TIME_WAIT is free, one that someone listens on is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"web port {host}:{port} is already in use (another worker?): choose another "
                                  "with --web-port or CDRWATCH_WEB_PORT") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
