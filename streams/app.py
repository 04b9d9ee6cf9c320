"""The faust.App and its settings, nothing else."""

from __future__ import annotations

import gc
import socket
from typing import Any

import faust
import faust.types.auth

from .agents.batching import App as BatchApp
from .settings import Settings


def store_and_datadir(settings: Settings) -> tuple[str, str | None]:
    """``rocksdb:///var/lib/cdrwatch`` means the rocksdb store with its files in that directory
    (Faust alone would read the path as a file-name prefix shared by every table)."""
    store, datadir = settings.store, settings.data_dir
    scheme, _, path = store.partition("://")
    if scheme == "rocksdb" and path:
        return "rocksdb://", path
    return store, str(datadir) if datadir is not None else None


def credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust's broker credentials from the security settings (the same as ``client_kwargs()``'s):
    SASL with TLS for SASL_SSL, TLS alone for SSL, none for PLAINTEXT."""
    if settings.security_protocol.startswith("SASL"):
        from .connect import redact_sasl_payloads

        redact_sasl_payloads()  # the workers' clients log their requests at debug level
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=settings.ssl_context(),
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(settings.ssl_context())
    return None


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# A worker keeps hundreds of thousands of long-lived containers (the decoded states of its users).
# With CPython's default thresholds (700, 10, 10) it spent about a fifth of its time in full
# collections that find nothing to free (measured: 12.7 s of GC in a 53 s benchmark run); reference
# counting frees almost everything here, so young collections can be rarer and full ones much rarer.
GC_THRESHOLDS = (50_000, 20, 100)


# A table record holds a user's whole month (≈ 90 bytes per call): Kafka's default 1 MB limit would
# stop at ≈ 11,000 calls. Changelog topics are created with this limit (max.message.bytes), and the
# producer may send requests this large: ≈ 180,000 calls per user-month.
MAX_RECORD_BYTES = 16 * 1024 * 1024


def tune_gc() -> None:
    """Collector settings for a worker process; ``gc.freeze()`` parks what exists so far (modules,
    classes, recovered state) where collections no longer walk it."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def create_app(settings: Settings) -> BatchApp:
    tune_gc()
    store, datadir = store_and_datadir(settings)
    extra: dict[str, Any] = {"datadir": datadir} if datadir else {}
    if settings.web_host in {"0.0.0.0", "::", ""}:
        # Faust advertises its web address to the other workers (table_route): a wildcard
        # bind address would tell them "0.0.0.0", so advertise this host's address instead
        extra["canonical_url"] = f"http://{_host_address()}:{settings.web_port}"
    creds = credentials(settings)
    if creds is not None:
        extra["broker_credentials"] = creds
    app = BatchApp(
        settings.app_id,
        broker=settings.broker,
        store=store,
        **extra,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=settings.processing_guarantee,
        producer_acks=-1,
        producer_max_request_size=MAX_RECORD_BYTES,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # Faust binds 0.0.0.0 unless told: listen exactly where asked
        web_port=settings.web_port,
        web_in_thread=False,
    )
    # read by the consumer's end-offset check (agents/batching.py) for its own fetches (same broker, same credentials)
    app.cdrwatch_client_kwargs = settings.client_kwargs()  # type: ignore[attr-defined]
    return app
