"""One frozen settings object for a cdrwatch process, built once from flags and the environment."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping


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

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security protocol {self.security_protocol!r}: expected one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"SASL mechanism {self.sasl_mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)}")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError(f"{self.security_protocol} needs CDRWATCH_SASL_USERNAME and CDRWATCH_SASL_PASSWORD")
        if self.ssl_cafile is not None and not Path(self.ssl_cafile).is_file():
            raise ValueError(f"CA file {self.ssl_cafile} does not exist")

    def bootstrap_servers(self) -> str:
        """``kafka://a:9092;kafka://b:9092`` → ``a:9092,b:9092`` for aiokafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker.replace(",", ";").split(";") if part)

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.security_protocol:
            return None
        return ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)

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


ENV_VARS: Mapping[str, str] = {
    "CDRWATCH_BROKER": "broker",
    "CDRWATCH_STORE": "store",
    "CDRWATCH_DATA_DIR": "data_dir",
    "CDRWATCH_APP_ID": "app_id",
    "CDRWATCH_TOPIC_PREFIX": "topic_prefix",
    "CDRWATCH_PLANS": "plans_path",
    "CDRWATCH_RATES": "rates_path",
    "CDRWATCH_PARTITIONS": "partitions",
    "CDRWATCH_REPLICATION_FACTOR": "replication_factor",
    "CDRWATCH_STANDBY_REPLICAS": "standby_replicas",
    "CDRWATCH_WEB_HOST": "web_host",
    "CDRWATCH_WEB_PORT": "web_port",
    "CDRWATCH_SESSION_TIMEOUT": "session_timeout_s",
    "CDRWATCH_MAX_CALL_DURATION": "max_call_duration_s",
    "CDRWATCH_RETENTION_MONTHS": "retention_months",
    "CDRWATCH_HASH_SECRET": "hash_secret",
    "CDRWATCH_LOG_LEVEL": "log_level",
    "CDRWATCH_SECURITY_PROTOCOL": "security_protocol",
    "CDRWATCH_SASL_MECHANISM": "sasl_mechanism",
    "CDRWATCH_SASL_USERNAME": "sasl_username",
    "CDRWATCH_SASL_PASSWORD": "sasl_password",
    "CDRWATCH_SSL_CAFILE": "ssl_cafile",
}

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Defaults, then ``CDRWATCH_*`` variables, then explicit overrides (command-line flags)."""
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, object] = {}
    for var, name in ENV_VARS.items():
        if var in env and env[var] != "":
            values[name] = _coerce(name, env[var], getattr(base, name))
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("hash_secret", "sasl_password"):
        if isinstance(values.get(key), str):
            values[key] = SecretStr(str(values[key]))
    for key in ("plans_path", "rates_path", "data_dir", "ssl_cafile"):
        if isinstance(values.get(key), str):
            values[key] = Path(str(values[key]))
    return replace(base, **values)  # type: ignore[arg-type]


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
