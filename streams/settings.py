"""One frozen settings object for a cdrwatch process, built once from flags and the environment."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import ssl
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .checks import input_file
from .core.errors import ConfigError
from .core.plans import PlanBook, load_plans
from .core.rates import RateDeck, load_rate_deck


class SecretStr:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def bundled_file(name: str) -> Path:
    """Path of a file shipped in ``streams/data`` (sample plans, rate deck, sample stream)."""
    return Path(str(resources.files("streams").joinpath("data", name)))


# The hash key for called numbers must be stable across restarts and workers, or distinct-number
# counts would split; this default exists for demos and tests only (README: set your own).
DEMO_HASH_SECRET = "cdrwatch-demo-secret-change-me"


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    store: str = "memory://"
    data_dir: Path | None = None  # Faust's datadir (table files); default ./<app_id>-data
    app_id: str = "cdrwatch"
    plans_path: Path = field(default_factory=lambda: bundled_file("plans.toml"))
    rates_path: Path = field(default_factory=lambda: bundled_file("rates.csv"))
    partitions: int = 4
    replication_factor: int = 1
    standby_replicas: int = 0
    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # Embedded Tansu answers JoinGroup only after session_timeout/2: keep it short there.
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    commit_interval_s: float = 1.0
    max_call_duration_s: int = 4 * 3600
    retention_months: int = 2
    hash_secret: SecretStr = SecretStr(DEMO_HASH_SECRET)
    log_level: str = "warning"
    topic_prefix: str = ""
    # Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL mechanism PLAIN,
    # SCRAM-SHA-256 or SCRAM-SHA-512. The password is a SecretStr: never printed or logged.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: Path | None = None
    # Bearer token of the views that show personal data (/users/{user}/usage, /alerts). Without
    # one, those views answer only on a loopback bind; /metrics and /healthz are always open.
    web_token: SecretStr = SecretStr("")
    # at_least_once: outputs may come twice after a failure, with the same ids. exactly_once: each
    # batch's outputs, changelog records and input offsets commit in one Kafka transaction.
    processing_guarantee: str = "at_least_once"

    def __post_init__(self) -> None:
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ValueError(f"processing guarantee {self.processing_guarantee!r}: expected one of "
                             f"{', '.join(PROCESSING_GUARANTEES)}")
        for part in self.broker_urls():
            check_broker_url(part)
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security protocol {self.security_protocol!r}: expected one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"SASL mechanism {self.sasl_mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)}")
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password.get_secret_value()
        ):
            raise ValueError(f"{self.security_protocol} needs CDRWATCH_SASL_USERNAME and CDRWATCH_SASL_PASSWORD")
        if self.ssl_cafile is not None and not Path(self.ssl_cafile).is_file():
            raise ValueError(f"CA file {self.ssl_cafile} does not exist")
        self.ssl_context()  # a CA file that holds no certificate fails here, not at the first connection

    def broker_urls(self) -> list[str]:
        """``kafka://a:9092;kafka://b:9092`` (or comma-separated) → its parts."""
        return [part.strip() for part in self.broker.replace(",", ";").split(";") if part.strip()]

    def bootstrap_servers(self) -> str:
        """``kafka://a:9092;kafka://b:9092`` → ``a:9092,b:9092`` for aiokafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker_urls())

    @property
    def web_on_loopback(self) -> bool:
        return is_loopback(self.web_host)

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for SSL and SASL_SSL: the broker's certificate must be signed by CDRWATCH_SSL_CAFILE's
        CA (this machine's CA certificates without it) and name the host connected to."""
        if "SSL" not in self.security_protocol:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        except ssl.SSLError as exc:
            raise ValueError(f"CDRWATCH_SSL_CAFILE {self.ssl_cafile}: no PEM CA certificate there "
                             f"({exc.reason or exc})") from None

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings for aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers(), "security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        return kwargs

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@dataclass(frozen=True)
class EnvVar:
    """A ``CDRWATCH_*`` variable: the setting it fills and what it means."""

    field: str
    help: str


ENV_VARS: Mapping[str, EnvVar] = {
    "CDRWATCH_BROKER": EnvVar("broker", "Kafka bootstrap, kafka://host:port[;kafka://host2:port]"),
    "CDRWATCH_STORE": EnvVar("store", "table store: memory:// or rocksdb:///path"),
    "CDRWATCH_DATA_DIR": EnvVar("data_dir", "directory of the table files (default ./<app id>-data)"),
    "CDRWATCH_APP_ID": EnvVar("app_id", "consumer group and changelog prefix of the workers"),
    "CDRWATCH_TOPIC_PREFIX": EnvVar("topic_prefix", "prefix of every topic name"),
    "CDRWATCH_PLANS": EnvVar("plans_path", "plans.toml (default: the bundled sample)"),
    "CDRWATCH_RATES": EnvVar("rates_path", "rates.csv rate deck (default: the bundled sample)"),
    "CDRWATCH_PARTITIONS": EnvVar("partitions", "partitions of the topics cdrwatch creates"),
    "CDRWATCH_REPLICATION_FACTOR": EnvVar("replication_factor", "replicas of the topics cdrwatch creates"),
    "CDRWATCH_STANDBY_REPLICAS": EnvVar("standby_replicas", "standby copies of each table partition"),
    "CDRWATCH_WEB_HOST": EnvVar("web_host", "bind address of /metrics and the views"),
    "CDRWATCH_WEB_PORT": EnvVar("web_port", "port of /metrics and the views"),
    "CDRWATCH_WEB_TOKEN": EnvVar("web_token", "bearer token of /users/{user}/usage and /alerts (secret)"),
    "CDRWATCH_PROCESSING_GUARANTEE": EnvVar("processing_guarantee", "at_least_once, or exactly_once (Kafka transactions)"),
    "CDRWATCH_SESSION_TIMEOUT": EnvVar("session_timeout_s", "consumer group session timeout, seconds"),
    "CDRWATCH_MAX_CALL_DURATION": EnvVar("max_call_duration_s", "seconds a call without its end stays open"),
    "CDRWATCH_RETENTION_MONTHS": EnvVar("retention_months", "months of state kept open"),
    "CDRWATCH_HASH_SECRET": EnvVar("hash_secret", "key of the called-number hashes (secret; set your own)"),
    "CDRWATCH_LOG_LEVEL": EnvVar("log_level", "debug, info, warning or error"),
    "CDRWATCH_SECURITY_PROTOCOL": EnvVar("security_protocol", ", ".join(("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))),
    "CDRWATCH_SASL_MECHANISM": EnvVar("sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    "CDRWATCH_SASL_USERNAME": EnvVar("sasl_username", "SASL user"),
    "CDRWATCH_SASL_PASSWORD": EnvVar("sasl_password", "SASL password (secret)"),
    "CDRWATCH_SSL_CAFILE": EnvVar("ssl_cafile", "CA certificate file of the brokers"),
}

SECRET_FIELDS = ("hash_secret", "sasl_password", "web_token")

PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Defaults, then ``CDRWATCH_*`` variables, then explicit overrides (command-line flags)."""
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, object] = {}
    for var, spec in ENV_VARS.items():
        if var in env and env[var] != "":
            values[spec.field] = _coerce(var, env[var], getattr(base, spec.field))
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in SECRET_FIELDS:
        if isinstance(values.get(key), str):
            values[key] = SecretStr(str(values[key]))
    for key in ("plans_path", "rates_path", "data_dir", "ssl_cafile"):
        if isinstance(values.get(key), str):
            values[key] = Path(str(values[key]))
    return replace(base, **values)  # type: ignore[arg-type]


def env_help() -> str:
    """The environment-variable list of ``--help``: name, meaning, default."""
    base = Settings()
    lines = ["environment (flags win):"]
    for var, spec in ENV_VARS.items():
        default = getattr(base, spec.field)
        if isinstance(default, SecretStr):
            shown = "built-in demo value" if default.get_secret_value() else "none"
        elif isinstance(default, Path):
            shown = "bundled"
        elif default in (None, ""):
            shown = "none"
        else:
            shown = str(default)
        lines.append(f"  {var:<28} {spec.help} [default: {shown}]")
    return "\n".join(lines)


def is_loopback(host: str) -> bool:
    """A bind address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorized_caller(token: str, authorization: str | None) -> str | None:
    """Who is asking, when allowed: ``""`` without a token (loopback), the user name of Basic auth
    (the token as its password) or ``"bearer"``; None when refused."""
    if not token:
        return ""
    scheme, _, given = (authorization or "").partition(" ")
    name = "bearer"
    if scheme.lower() == "basic":
        try:
            name, _, given = base64.b64decode(given.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    return name if hmac.compare_digest(given.strip().encode(), token.encode()) else None


def service_settings(broker: str | None, host: str, token_env: str, shows: str) -> tuple["Settings", str]:
    """An HTTP service's settings (the environment's, ``--broker`` winning) and its token, from
    ``token_env``: required when ``host`` is reachable beyond this machine, because ``shows``."""
    settings = settings_from_env()
    if broker:
        settings = settings.with_(broker=broker)
    token = os.environ.get(token_env, "")
    if not token and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable beyond this machine: set {token_env} ({shows}), or listen "
                          "on 127.0.0.1")
    return settings, token


def check_broker_url(url: str) -> None:
    """``kafka://host:port`` (or ``host:port``); anything else is refused with an example."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "kafka", url
    host, colon, port = rest.rpartition(":")
    if scheme != "kafka":
        raise ValueError(f"broker URL {url!r}: expected kafka://host:port (e.g. kafka://127.0.0.1:9092), "
                         f"not a {scheme}:// URL")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ValueError(f"broker URL {url!r}: expected kafka://host:port (e.g. kafka://127.0.0.1:9092)")


def _coerce(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    return raw


def load_plans_and_rates(settings: Settings) -> tuple[PlanBook, RateDeck]:
    """The operator's plans and rate deck, from the files the settings name."""
    rates = load_rate_deck(input_file(settings.rates_path, "--rates"))
    return load_plans(input_file(settings.plans_path, "--plans"), rates), rates
