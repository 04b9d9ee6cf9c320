"""Checks made before a command starts work: the broker answers, the web port is free.

Without them, a broker that nothing listens on shows as a hundred aiokafka ERROR lines over
twenty seconds and then a traceback, and a web port in use as a traceback from deep in aiohttp.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from .core.errors import ConfigError
from .settings import Settings

BROKER_CHECK_TIMEOUT_S = 8.0


class _Collect(logging.Handler):
    """Keeps what aiokafka says while it is silenced (the reasons of the failed attempts)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


async def check_broker(settings: Settings, timeout_s: float = BROKER_CHECK_TIMEOUT_S) -> None:
    """Bootstrap once from ``settings.broker`` (with its security settings); raise a one-line
    ConfigError naming the broker and what was tried if no broker answers within ``timeout_s``."""
    kwargs: dict[str, Any] = settings.client_kwargs()
    client = AIOKafkaClient(request_timeout_ms=int(timeout_s * 1000), **kwargs)
    logger = logging.getLogger("aiokafka")
    collect = _Collect()
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        why = collect.lines[-1] if collect.lines else (str(exc) or type(exc).__name__)
        raise ConfigError(f"no Kafka broker answers at {settings.broker} (tried {settings.bootstrap_servers()} "
                          f"over {settings.security_protocol}: {why})") from None
    finally:
        logger.removeHandler(collect)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate
        await client.close()


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
