"""cdrwatch on Apache Kafka's SASL_SSL listener: SCRAM-SHA-512 over TLS, configured by
deploy/kafka/sasl-ssl.env (the compose broker's file), with a CA and a broker certificate made here
by deploy/kafka/certs.sh, and the CDRWATCH_* variables docker-compose.yml gives the workers.

`cdrwatch replay --broker` and `cdrwatch worker` connect with them; a wrong password, a CA that did
not sign the broker's certificate and the broker's PLAINTEXT port each fail within seconds, in one
line, with exit code 2; and the password shows nowhere, not even at --log-level debug."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.topics import ALL_TOPICS
from streams.connect import check_broker
from streams.core.errors import ConfigError
from streams.tools.embedded import create_topics, free_port
from streams.settings import Settings, bundled_file, settings_from_env
from tests.kafka_cluster import KAFKA_DIR, KAFKA_SH, KafkaCluster, SaslSsl, make_certificates

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SAMPLE = bundled_file("sample")
USER = "cdrwatch"
# A check that fails "within seconds": the interpreter's start and cdrwatch's imports included,
# on a loaded two-core machine.
FAIL_FAST_S = 20.0


@pytest.fixture(scope="session")
def kafka_sasl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Apache Kafka node with a SASL_SSL listener (deploy/kafka/sasl-ssl.env) beside its
    PLAINTEXT one: a certificate for 127.0.0.1 and localhost from a CA made for this session, and
    the SCRAM-SHA-512 user ``cdrwatch`` created when the storage is formatted. Always stopped."""
    secrets_dir = make_certificates(tmp_path_factory.mktemp("kafka-secrets"), "localhost", "127.0.0.1")
    users = {USER: f"pw-{secrets.token_hex(16)}"}
    with KafkaCluster(nodes=1, sasl_ssl=SaslSsl(secrets_dir, users)) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificate of another CA, which never signed the broker's."""
    return make_certificates(tmp_path_factory.mktemp("other-ca")) / "ca.pem"


def password(cluster: KafkaCluster) -> str:
    assert cluster.sasl_ssl is not None
    return cluster.sasl_ssl.users[USER]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cdrwatch(args: list[str], env: dict[str, str], timeout_s: float = 300) -> Run:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, env={**os.environ, **env}, check=False)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def replay_args(broker_url: str, out: Path, *extra: str) -> list[str]:
    return ["replay", "--broker", broker_url, "--cdrs", str(SAMPLE / "cdrs.jsonl"),
            "--registrations", str(SAMPLE / "registrations.jsonl"), "--out", str(out), "--timeout", "240", *extra]


def worker_args(broker_url: str, *extra: str) -> list[str]:
    return ["worker", "--broker", broker_url, "--web-port", str(free_port()), *extra]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def assert_no_password(text: str, *passwords: str) -> None:
    for secret in passwords:
        assert secret not in text, "the SASL password appears in the output"


def assert_one_line_exit_2(run: Run, command: str, expected: str) -> str:
    """The run stopped with exit code 2 within seconds, its last stderr line
    ``cdrwatch COMMAND: error: ...`` holding ``expected``; that line."""
    assert run.returncode == 2, run.output[-3000:]
    assert run.seconds < FAIL_FAST_S, f"took {run.seconds:.1f} s"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cdrwatch {command}: error: "), run.stderr[-3000:]
    assert expected in last, last
    assert "Traceback" not in run.output
    return last


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------


async def test_the_broker_runs_the_listener_of_sasl_ssl_env(kafka_sasl: KafkaCluster) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_sasl.bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(
            ConfigResourceType.BROKER, "1", dict.fromkeys(["listener.security.protocol.map", "ssl.keystore.type",
                                                           "ssl.client.auth", "listeners"]))])
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for res in response.resources for entry in res[4]}
    assert "SASL_SSL:SASL_SSL" in configs["listener.security.protocol.map"]
    assert f"SASL_SSL://{kafka_sasl.nodes[1].sasl_ssl_address}" in configs["listeners"]
    assert configs["ssl.keystore.type"] == "PKCS12" and configs["ssl.client.auth"] == "none"


def sasl_settings(cluster: KafkaCluster, broker: str | None = None, **env: str) -> Settings:
    return settings_from_env({**cluster.client_env(USER), **env}, broker=broker or cluster.sasl_ssl_url)


async def test_check_broker_passes_with_the_user_its_password_and_the_ca(kafka_sasl: KafkaCluster) -> None:
    await check_broker(sasl_settings(kafka_sasl))
    # the certificate names localhost too
    await check_broker(sasl_settings(kafka_sasl, kafka_sasl.sasl_ssl_url.replace("127.0.0.1", "localhost")))


@pytest.mark.parametrize("case, env, expected", [
    ("wrong password", {"CDRWATCH_SASL_PASSWORD": "not-the-password"},
     "authentication failed for user cdrwatch (SCRAM-SHA-512) at 127.0.0.1:{port}: wrong password or no such user"),
    ("unknown user", {"CDRWATCH_SASL_USERNAME": "nobody"},
     "authentication failed for user nobody (SCRAM-SHA-512) at 127.0.0.1:{port}: wrong password or no such user"),
    ("mechanism the listener does not offer", {"CDRWATCH_SASL_MECHANISM": "SCRAM-SHA-256"},
     "the broker at 127.0.0.1:{port} does not offer SASL mechanism SCRAM-SHA-256"),
    ("this machine's CAs only", {"CDRWATCH_SSL_CAFILE": ""},
     "the broker's certificate at 127.0.0.1:{port} is not trusted by this machine's CA certificates: "
     "set CDRWATCH_SSL_CAFILE"),
    ("TLS without SASL", {"CDRWATCH_SECURITY_PROTOCOL": "SSL"},
     "the broker at 127.0.0.1:{port} closed the connection at once: CDRWATCH_SECURITY_PROTOCOL is SSL; "
     "does this listener expect SASL authentication (SASL_SSL)?"),
    ("PLAINTEXT", {"CDRWATCH_SECURITY_PROTOCOL": "PLAINTEXT"},
     "the broker at 127.0.0.1:{port} closed the connection at once: CDRWATCH_SECURITY_PROTOCOL is PLAINTEXT"),
])
async def test_check_broker_says_what_is_wrong_at_once(kafka_sasl: KafkaCluster, case: str, env: dict[str, str],
                                                       expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        await check_broker(sasl_settings(kafka_sasl, **env))
    assert time.monotonic() - started < 5, case
    assert expected.format(port=kafka_sasl.nodes[1].sasl_ssl_port) in str(raised.value)
    assert password(kafka_sasl) not in str(raised.value)


async def test_check_broker_names_a_sasl_client_on_the_plaintext_listener(kafka_sasl: KafkaCluster) -> None:
    with pytest.raises(ConfigError, match=r"the listener at 127\.0\.0\.1:\d+ does not take SASL"):
        await check_broker(sasl_settings(kafka_sasl, kafka_sasl.url, CDRWATCH_SECURITY_PROTOCOL="SASL_PLAINTEXT"))


def test_create_users_sh_makes_the_user_compose_connects_as(kafka_sasl: KafkaCluster) -> None:
    """The script of the kafka-users job, with the same tool from the jars of deploy/kafka/, through
    the broker's PLAINTEXT listener: the user it makes authenticates on SASL_SSL; run again with
    another password, it changes the password."""
    user = f"compose-{uuid.uuid4().hex[:6]}"
    first, second = f"pw-{secrets.token_hex(12)}", f"pw, with [odd] = chars\\{secrets.token_hex(4)}"
    for secret in (first, second):
        env = {**os.environ, "KAFKA_CONFIGS": f"bash {KAFKA_SH} configs", "BOOTSTRAP_SERVER": kafka_sasl.bootstrap,
               "CDRWATCH_SECURITY_PROTOCOL": "SASL_SSL", "CDRWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
               "CDRWATCH_SASL_USERNAME": user, "CDRWATCH_SASL_PASSWORD": secret}
        done = subprocess.run(["bash", str(KAFKA_DIR / "create-users.sh")], env=env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"create-users: SCRAM-SHA-512 user {user} ready on {kafka_sasl.bootstrap}" in done.stdout
        assert_no_password(done.stdout + done.stderr, secret)
        asyncio.run(_authenticates(sasl_settings(kafka_sasl, CDRWATCH_SASL_USERNAME=user,
                                                 CDRWATCH_SASL_PASSWORD=secret)))
    with pytest.raises(ConfigError, match="authentication failed"):
        asyncio.run(check_broker(sasl_settings(kafka_sasl, CDRWATCH_SASL_USERNAME=user, CDRWATCH_SASL_PASSWORD=first)))


async def _authenticates(settings: Settings, timeout_s: float = 15.0) -> None:
    """check_broker passes (the broker may take a moment to apply a credential just made)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await check_broker(settings)
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# cdrwatch replay and cdrwatch worker, as processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_replay_over_sasl_ssl_raises_exactly_the_expected_alerts(kafka_sasl: KafkaCluster, tmp_path: Path) -> None:
    """The whole sample through the SASL_SSL listener (producer, Faust's consumer group, changelogs,
    admin client), logged at debug level: the password is in none of it."""
    run = cdrwatch(replay_args(kafka_sasl.sasl_ssl_url, tmp_path, "--log-level", "debug"), kafka_sasl.client_env(USER))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Authenticated as cdrwatch via SCRAM-SHA-512" in run.stderr  # aiokafka, at info level
    assert_no_password(run.output, password(kafka_sasl))
    expected = {(e["user"], e["period"], e["rule"]) for e in read_jsonl(SAMPLE / "expected.jsonl")}
    got = [(a["user"], a["period"], a["rule"]) for a in read_jsonl(tmp_path / "alerts.jsonl")]
    assert len(got) == len(set(got)), "an alert was emitted twice"
    assert set(got) == expected
    assert read_jsonl(tmp_path / "dlq.jsonl") == []


def healthz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return {}


@pytest.mark.slow
def test_a_worker_connects_over_sasl_ssl_and_is_assigned_its_partitions(kafka_sasl: KafkaCluster,
                                                                        tmp_path: Path) -> None:
    """`cdrwatch worker` with the compose variables, at debug level, on topics of its own: its
    /healthz lists the partitions of the input topics it was assigned."""
    tag = uuid.uuid4().hex[:8]
    prefix, partitions = f"sasl-{tag}-", 2
    settings = sasl_settings(kafka_sasl, CDRWATCH_TOPIC_PREFIX=prefix)
    asyncio.run(create_topics(settings.client_kwargs(), [settings.topic(t) for t in ALL_TOPICS], partitions))
    port = free_port()
    env = {**os.environ, **kafka_sasl.client_env(USER), "CDRWATCH_TOPIC_PREFIX": prefix,
           "CDRWATCH_APP_ID": f"cdrwatch-sasl-{tag}", "CDRWATCH_PARTITIONS": str(partitions),
           "CDRWATCH_DATA_DIR": str(tmp_path / "data")}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--broker", kafka_sasl.sasl_ssl_url,
                                   "--web-port", str(port), "--log-level", "debug"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        health: dict[str, Any] = {}
        while not health.get("partitions", {}).get("cdrs"):
            assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"no partitions assigned in 120 s: {health}"
            time.sleep(0.5)
            health = healthz(port)
        assert health["status"] == "ok"
        assert sorted(health["partitions"]["cdrs"]) == list(range(partitions))
        assert sorted(health["partitions"]["sip-registrations"]) == list(range(partitions))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    output = log_path.read_text(errors="replace")
    assert "Authenticated as cdrwatch via SCRAM-SHA-512" in output
    assert_no_password(output, password(kafka_sasl))


@pytest.mark.parametrize("log_level", ["warning", "debug"])
@pytest.mark.parametrize("command", ["worker", "replay"])
def test_a_wrong_password_stops_the_command_at_once(kafka_sasl: KafkaCluster, tmp_path: Path, command: str,
                                                    log_level: str) -> None:
    """One line, exit 2, within seconds, instead of clients retrying a refused password for ever;
    neither the wrong password nor the right one in the output, at any log level."""
    wrong = f"wrong-{secrets.token_hex(12)}"
    args = (worker_args(kafka_sasl.sasl_ssl_url) if command == "worker"
            else replay_args(kafka_sasl.sasl_ssl_url, tmp_path))
    run = cdrwatch([*args, "--log-level", log_level], kafka_sasl.client_env(USER, password=wrong), timeout_s=60)
    line = assert_one_line_exit_2(run, command, f"authentication failed for user cdrwatch (SCRAM-SHA-512) at "
                                                f"{kafka_sasl.nodes[1].sasl_ssl_address}: wrong password or no such user")
    assert "CDRWATCH_SASL_PASSWORD" in line
    if log_level == "warning":
        assert run.stderr.strip() == line and run.stdout == "", "nothing but the one line"
    assert_no_password(run.output, wrong, password(kafka_sasl))


@pytest.mark.parametrize("command", ["worker", "replay"])
def test_an_untrusted_broker_certificate_stops_the_command_at_once(kafka_sasl: KafkaCluster, untrusted_ca: Path,
                                                                   tmp_path: Path, command: str) -> None:
    args = (worker_args(kafka_sasl.sasl_ssl_url) if command == "worker"
            else replay_args(kafka_sasl.sasl_ssl_url, tmp_path))
    run = cdrwatch(args, kafka_sasl.client_env(USER, cafile=untrusted_ca), timeout_s=60)
    line = assert_one_line_exit_2(run, command, f"the broker's certificate at {kafka_sasl.nodes[1].sasl_ssl_address} "
                                                f"is not trusted by CDRWATCH_SSL_CAFILE ({untrusted_ca})")
    assert run.stderr.strip() == line and run.stdout == ""
    assert_no_password(run.output, password(kafka_sasl))


def test_sasl_ssl_settings_on_the_plaintext_port_stop_the_command_at_once(kafka_sasl: KafkaCluster,
                                                                         tmp_path: Path) -> None:
    run = cdrwatch(replay_args(kafka_sasl.url, tmp_path), kafka_sasl.client_env(USER), timeout_s=60)
    line = assert_one_line_exit_2(run, "replay", f"no TLS handshake with {kafka_sasl.nodes[1].address}")
    assert "is CDRWATCH_BROKER's port a PLAINTEXT listener?" in line
    assert_no_password(run.output, password(kafka_sasl))
