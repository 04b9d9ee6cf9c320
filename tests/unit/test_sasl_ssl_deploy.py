"""Kafka over SASL_SSL in the deployment, without Docker or a broker: docker-compose.yml read with the
variables of deploy/kafka/SASL_SSL.md and without them, deploy/kafka/sasl-ssl.env as the compose
broker and the test suite's broker read it, deploy/kafka/create-users.sh against a stand-in
kafka-configs.sh, and what cdrwatch says and logs about a connection's security settings.

(tests/integration/test_kafka_security.py runs all of it on Apache Kafka.)"""

from __future__ import annotations

import logging
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

from streams.connect import RedactSaslPayloads, security_problem
from streams.settings import ENV_VARS, SecretStr, Settings, settings_from_env
from tests.kafka_cluster import (
    BROKER_ENV, KAFKA_DIR, SASL_SSL_ENV, SECRET_FILE_VARIABLES, KafkaCluster, SaslSsl, broker_properties,
    property_name, read_env_file, sasl_ssl_properties,
)
from tests.unit.test_deploy import (
    COMPOSE_FILE, depends_on, env_files, environment, interpolate, load_yaml, mount_target, mounts,
)

SASL_SSL_DOC = KAFKA_DIR / "SASL_SSL.md"
CREATE_USERS = KAFKA_DIR / "create-users.sh"
# .env's required variables, which the examples leave out
REQUIRED = {"CDRWATCH_HASH_SECRET": "test-hash-secret", "GRAFANA_ADMIN_PASSWORD": "test"}


def documented_env() -> dict[str, str]:
    """The `.env` lines of deploy/kafka/SASL_SSL.md's section 2, as compose reads them."""
    text = SASL_SSL_DOC.read_text(encoding="utf-8")
    section = text.split("## 2. `.env`", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    env = {}
    for line in block.splitlines():
        key, _, value = line.split("#", 1)[0].strip().partition("=")
        if key:
            env[key] = value
    return env


def resolved(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """A service's environment (env_file files, then `environment:`) as the container gets it."""
    env: dict[str, str] = {}
    for path in env_files(service):
        env |= read_env_file(COMPOSE_FILE.parent / path)
    return env | {key: interpolate(value, variables) for key, value in environment(service).items()}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return found


SECURITY_VARIABLES = ("CDRWATCH_BROKER", "CDRWATCH_SECURITY_PROTOCOL", "CDRWATCH_SASL_MECHANISM",
                      "CDRWATCH_SASL_USERNAME", "CDRWATCH_SASL_PASSWORD", "CDRWATCH_SSL_CAFILE")


# ---------------------------------------------------------------------------------------------
# docker-compose.yml, by default and with SASL_SSL
# ---------------------------------------------------------------------------------------------


def test_by_default_the_broker_and_the_workers_stay_plaintext(services: dict[str, dict[str, Any]]) -> None:
    kafka = resolved(services["kafka"], REQUIRED)
    assert kafka["KAFKA_LISTENERS"] == "PLAINTEXT://:9092,CONTROLLER://:9093"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert kafka["KAFKA_OPTS"] == ""
    # no SSL:// in the advertised listeners: the image's configure script asks for no keystore
    assert "SSL://" not in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert [m.source for m in mounts(services["kafka"]) if m.target == "/etc/kafka/secrets"] == [
        "./deploy/kafka/secrets"]
    for name in ("worker", "replay"):
        env = resolved(services[name], REQUIRED)
        settings = settings_from_env({k: v for k, v in env.items() if k in SECURITY_VARIABLES})
        assert settings.broker == "kafka://kafka:9092"
        assert settings.security_protocol == "PLAINTEXT" and settings.ssl_context() is None
        assert settings.client_kwargs() == {"bootstrap_servers": "kafka:9092", "security_protocol": "PLAINTEXT"}
    users = resolved(services["kafka-users"], REQUIRED)
    assert users["CDRWATCH_SECURITY_PROTOCOL"] == "PLAINTEXT"  # create-users.sh: nothing to do


def test_the_stand_in_secrets_directory_holds_no_secret() -> None:
    directory = KAFKA_DIR / "secrets"
    assert sorted(path.name for path in directory.iterdir()) == [".gitignore", "README.md"]
    assert (directory / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore", "!README.md"]


def test_the_documented_env_opens_sasl_ssl_for_the_broker_and_the_workers(
    services: dict[str, dict[str, Any]]
) -> None:
    variables = REQUIRED | documented_env()
    kafka = resolved(services["kafka"], variables)
    assert kafka["KAFKA_LISTENERS"] == "PLAINTEXT://:9092,CONTROLLER://:9093,SASL_SSL://:9094"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092,SASL_SSL://kafka:9094"
    # The image's configure script, with SSL:// and SASL_ in the advertised listeners, stops
    # without these (keystore file name and password files in /etc/kafka/secrets, KAFKA_OPTS).
    for variable in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEY_CREDENTIALS", "KAFKA_SSL_KEYSTORE_CREDENTIALS",
                     "KAFKA_OPTS"):
        assert kafka.get(variable), variable
    assert kafka["KAFKA_SSL_CLIENT_AUTH"] == "none"  # so it asks for no truststore either
    assert [m.source for m in mounts(services["kafka"], variables) if m.target == "/etc/kafka/secrets"] == [
        variables["KAFKA_SECRETS_DIR"]]
    # the broker's inter-broker and controller listeners stay what broker.env says
    assert {"PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", "SASL_SSL:SASL_SSL"} == set(
        kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))

    advertised = dict(entry.split("://") for entry in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    users = resolved(services["kafka-users"], variables)
    for name in ("worker", "replay"):
        service, env = services[name], resolved(services[name], variables)
        # the workers connect to the advertised SASL_SSL listener, on the command line too
        command = [interpolate(str(arg), variables) for arg in service["command"]]
        assert env["CDRWATCH_BROKER"] == command[command.index("--broker") + 1] == f"kafka://{advertised['SASL_SSL']}"
        # the CA file is inside a mounted directory: deploy/cdrwatch, where SASL_SSL.md copies it
        cafile = Path(env["CDRWATCH_SSL_CAFILE"])
        assert cafile.parent == Path(mount_target(service, "./deploy/cdrwatch"))
        settings = settings_from_env({k: v for k, v in env.items() if k in SECURITY_VARIABLES and k != "CDRWATCH_SSL_CAFILE"})
        assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert settings.sasl_username == users["CDRWATCH_SASL_USERNAME"] == "cdrwatch"
        assert settings.sasl_password.get_secret_value() == users["CDRWATCH_SASL_PASSWORD"] != ""
        # the user exists before a worker starts
        assert depends_on(service)["kafka-users"] == "service_completed_successfully"
    assert users["CDRWATCH_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert users["BOOTSTRAP_SERVER"] == "kafka:9092"  # the PLAINTEXT listener, inside the network
    assert mount_target(services["kafka-users"], "./deploy/kafka/create-users.sh") in services["kafka-users"]["entrypoint"]
    assert depends_on(services["kafka-users"]) == {"kafka": "service_healthy"}


def test_compose_passes_the_variables_the_test_broker_connects_with(services: dict[str, dict[str, Any]]) -> None:
    """tests/integration/test_kafka_security.py runs cdrwatch with KafkaCluster.client_env(): the
    variables the compose services pass, which streams.settings reads."""
    cluster = KafkaCluster(nodes=1, sasl_ssl=SaslSsl(Path("/nonexistent"), {"cdrwatch": "x"}))
    try:
        names = set(cluster.client_env("cdrwatch"))
    finally:
        cluster.close()
    assert names | {"CDRWATCH_BROKER"} == set(SECURITY_VARIABLES)
    assert set(SECURITY_VARIABLES) <= set(ENV_VARS)
    for name in ("worker", "replay"):
        env = environment(services[name])
        for variable in SECURITY_VARIABLES:
            assert env[variable].startswith(f"${{{variable}:-"), f"{name}: {variable} is not read from .env"


# ---------------------------------------------------------------------------------------------
# deploy/kafka/sasl-ssl.env: the compose broker's and the test broker's
# ---------------------------------------------------------------------------------------------


def test_sasl_ssl_env_extends_broker_env_listener_map_only() -> None:
    shared, sasl = read_env_file(BROKER_ENV), read_env_file(SASL_SSL_ENV)
    assert set(shared) & set(sasl) == {"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"}
    key = "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
    assert sasl[key] == shared[key] + ",SASL_SSL:SASL_SSL", "broker.env's map, and the SASL_SSL listener"


def test_sasl_ssl_env_is_inert_without_a_sasl_ssl_listener() -> None:
    """Every property is the SASL_SSL listener's own or a TLS setting, which a broker uses only for
    an SSL listener: the PLAINTEXT compose broker, which reads the file too, runs as before."""
    for key, value in read_env_file(SASL_SSL_ENV).items():
        # the image's render-properties drops a variable whose value holds `=`
        assert "=" not in value, key
        if key in SECRET_FILE_VARIABLES or key == "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":
            continue
        name = property_name(key)
        assert name.startswith(("listener.name.sasl_ssl.", "ssl.")), name


def test_the_test_broker_reads_sasl_ssl_env_as_the_image_does(tmp_path: Path) -> None:
    (tmp_path / "broker.p12").write_bytes(b"")
    (tmp_path / "broker-password").write_text("s3cret\n")
    properties = sasl_ssl_properties(read_env_file(SASL_SSL_ENV), tmp_path)
    assert properties["ssl.keystore.location"] == str(tmp_path / "broker.p12")
    assert properties["ssl.keystore.password"] == properties["ssl.key.password"] == "s3cret"
    assert properties["ssl.keystore.type"] == "PKCS12"
    assert properties["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule required" in properties["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]

    cluster = KafkaCluster(nodes=1, sasl_ssl=SaslSsl(tmp_path, {"cdrwatch": "x"}))
    plain = KafkaCluster(nodes=1)
    try:
        node = cluster.nodes[1]
        config = cluster.properties(1)
        assert {key: config[key] for key in properties} == properties
        assert config["listeners"].endswith(f",SASL_SSL://{node.sasl_ssl_address}")
        assert config["advertised.listeners"] == f"PLAINTEXT://{node.address},SASL_SSL://{node.sasl_ssl_address}"
        assert config["inter.broker.listener.name"] == "PLAINTEXT"
        assert cluster.bootstrap == node.address and cluster.sasl_ssl_url == f"kafka://{node.sasl_ssl_address}"
        assert len({node.port, node.controller_port, node.sasl_ssl_port}) == 3
        # without sasl_ssl: broker.env alone, as before
        assert plain.properties(1)["listener.security.protocol.map"] == broker_properties(
            read_env_file(BROKER_ENV))["listener.security.protocol.map"]
        assert "SASL_SSL" not in plain.properties(1)["listeners"] and plain.nodes[1].sasl_ssl_port is None
    finally:
        cluster.close()
        plain.close()
    # the users' passwords are no part of what the cluster shows of itself
    assert "xyz-password" not in repr(SaslSsl(tmp_path, {"cdrwatch": "xyz-password"}))


def test_the_test_broker_says_which_secret_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="KAFKA_SSL_KEYSTORE_FILENAME=broker.p12.*certs.sh"):
        sasl_ssl_properties(read_env_file(SASL_SSL_ENV), tmp_path)


# ---------------------------------------------------------------------------------------------
# deploy/kafka/create-users.sh, against a stand-in kafka-configs.sh
# ---------------------------------------------------------------------------------------------

FAKE_KAFKA_CONFIGS = """#!/usr/bin/env bash
# Records its arguments, the --add-config-file's mode and content, then exits $FAKE_EXIT.
set -euo pipefail
printf '%s\\n' "$@" > "$FAKE_DIR/args"
while [[ $# -gt 0 ]]; do
    if [[ "$1" == --add-config-file ]]; then
        stat -c %a "$2" > "$FAKE_DIR/mode"
        cat "$2" > "$FAKE_DIR/content"
        echo "$2" > "$FAKE_DIR/path"
    fi
    shift
done
if [[ "${FAKE_EXIT:-0}" != 0 ]]; then
    echo "Invalid credential property SCRAM_SHA_512=$(cat "$FAKE_DIR/content")" >&2
    exit "$FAKE_EXIT"
fi
"""


def run_create_users(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    fake = tmp_path / "kafka-configs.sh"
    fake.write_text(FAKE_KAFKA_CONFIGS)
    fake.chmod(0o755)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KAFKA_CONFIGS": str(fake), "FAKE_DIR": str(tmp_path),
            "BOOTSTRAP_SERVER": "kafka:9092"}
    return subprocess.run([bash, str(CREATE_USERS)], env=base | env, capture_output=True, text=True, timeout=60,
                          check=False)


SASL = {"CDRWATCH_SECURITY_PROTOCOL": "SASL_SSL", "CDRWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
        "CDRWATCH_SASL_USERNAME": "cdrwatch"}


def test_create_users_does_nothing_without_sasl(tmp_path: Path) -> None:
    for env in ({}, {"CDRWATCH_SECURITY_PROTOCOL": "PLAINTEXT"}, {"CDRWATCH_SECURITY_PROTOCOL": "SSL"}):
        done = run_create_users(tmp_path, **env)
        assert done.returncode == 0, done.stderr
        assert "no SASL user to create" in done.stdout
        assert not (tmp_path / "args").exists()


def test_create_users_hands_the_password_over_in_a_private_file(tmp_path: Path) -> None:
    password = r"pw, with [odd] = chars\and a backslash"
    done = run_create_users(tmp_path, **SASL, CDRWATCH_SASL_PASSWORD=password)
    assert done.returncode == 0, done.stderr
    assert "create-users: SCRAM-SHA-512 user cdrwatch ready on kafka:9092" in done.stdout
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:7] == ["--bootstrap-server", "kafka:9092", "--alter", "--entity-type", "users", "--entity-name",
                        "cdrwatch"]
    assert args[7] == "--add-config-file" and len(args) == 9
    assert not any(password in arg for arg in args), "the password on a command line"
    # Java properties: the backslash escaped; no brackets (kafka-configs.sh keeps them in a file)
    assert (tmp_path / "content").read_text() == "SCRAM-SHA-512=password=" + password.replace("\\", "\\\\") + "\n"
    assert (tmp_path / "mode").read_text().strip() == "600"
    assert not Path((tmp_path / "path").read_text().strip()).exists(), "the file outlives the script"
    assert password not in done.stdout + done.stderr


def test_create_users_keeps_the_password_out_of_the_tools_error(tmp_path: Path) -> None:
    done = run_create_users(tmp_path, **SASL, CDRWATCH_SASL_PASSWORD="pw-secret-123", FAKE_EXIT="1")
    assert done.returncode == 1
    assert "could not set the SCRAM-SHA-512 credential of cdrwatch on kafka:9092" in done.stderr
    assert "pw-secret-123" not in done.stdout + done.stderr
    assert not Path((tmp_path / "path").read_text().strip()).exists()


@pytest.mark.parametrize("env, expected", [
    ({**SASL, "CDRWATCH_SASL_PASSWORD": ""}, "CDRWATCH_SASL_PASSWORD is not set"),
    ({**SASL, "CDRWATCH_SASL_USERNAME": "", "CDRWATCH_SASL_PASSWORD": "x"}, "CDRWATCH_SASL_USERNAME is not set"),
    ({**SASL, "CDRWATCH_SASL_MECHANISM": "PLAIN", "CDRWATCH_SASL_PASSWORD": "x"}, "only SCRAM users"),
    ({**SASL, "CDRWATCH_SASL_PASSWORD": "mot de passe é"}, "printable ASCII"),
    ({**SASL, "CDRWATCH_SASL_PASSWORD": "two\nlines"}, "printable ASCII"),
])
def test_create_users_refuses_what_it_cannot_create(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    done = run_create_users(tmp_path, **env)
    assert done.returncode == 1
    assert expected in done.stderr
    assert not (tmp_path / "args").exists()


# ---------------------------------------------------------------------------------------------
# cdrwatch: settings, the broker check's words, the debug log
# ---------------------------------------------------------------------------------------------


def test_sasl_needs_a_user_and_a_password() -> None:
    for user, password in (("", "x"), ("cdrwatch", "")):
        with pytest.raises(ValueError, match="SASL_SSL needs CDRWATCH_SASL_USERNAME and CDRWATCH_SASL_PASSWORD"):
            Settings(security_protocol="SASL_SSL", sasl_username=user, sasl_password=SecretStr(password))


def test_a_ca_file_without_a_certificate_is_refused_when_settings_are_made(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"CDRWATCH_SSL_CAFILE .*ca\.pem: no PEM CA certificate there"):
        Settings(security_protocol="SSL", ssl_cafile=garbage)
    Settings(ssl_cafile=garbage)  # PLAINTEXT reads no CA


def _settings(**changes: Any) -> Settings:
    base = Settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="cdrwatch",
                    sasl_password=SecretStr("pw-not-shown"))
    return base.with_(**changes)


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize("exc, expected", [
    (SaslAuthenticationFailed("Authentication failed during authentication due to invalid credentials with SASL "
                              "mechanism SCRAM-SHA-512"),
     "authentication failed for user cdrwatch (SCRAM-SHA-512) at kafka:9094: wrong password or no such user "
     "(CDRWATCH_SASL_USERNAME, CDRWATCH_SASL_PASSWORD)"),
    (_verify_error(62, "Hostname mismatch, certificate is not valid for 'kafka'."),
     "the broker's certificate at kafka:9094 is not valid for kafka (Hostname mismatch"),
    (_verify_error(10, "certificate has expired"), "the broker's certificate at kafka:9094 has expired"),
    (_verify_error(20, "unable to get local issuer certificate"),
     "the broker's certificate at kafka:9094 is not trusted by this machine's CA certificates: set CDRWATCH_SSL_CAFILE"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "no TLS handshake with kafka:9094"),
    (ConnectionResetError(), "no TLS handshake with kafka:9094 (connection reset)"),
    (KafkaConnectionError("Connection at kafka:9094 closed"), "the broker at kafka:9094 closed the connection at once"),
])
def test_the_broker_check_words_security_failures(exc: BaseException, expected: str) -> None:
    problem = security_problem(_settings(), "kafka", 9094, exc)
    assert problem is not None and expected in problem
    assert "pw-not-shown" not in problem


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "Connect call failed"), TimeoutError()])
def test_nothing_listening_is_no_security_problem(exc: BaseException) -> None:
    assert security_problem(_settings(), "kafka", 9094, exc) is None


def test_the_debug_log_shows_no_sasl_authentication_bytes() -> None:
    """With PLAIN, aiokafka's debug line of the SaslAuthenticate request holds the password."""
    request = SaslAuthenticateRequest_v1(b"\x00cdrwatch\x00pw-not-shown")
    assert "pw-not-shown" in f"{request}", "aiokafka shows the bytes: the filter is needed"
    record = logging.LogRecord("aiokafka.conn", logging.DEBUG, __file__, 1, "Request to %s:%d %d: %s",
                               ("kafka", 9094, 3, request), None)
    assert RedactSaslPayloads().filter(record)
    assert record.getMessage() == "Request to kafka:9094 3: <SaslAuthenticateRequest_v1, not shown>"
    other = logging.LogRecord("aiokafka.conn", logging.DEBUG, __file__, 1, "Request %s", ("metadata",), None)
    assert RedactSaslPayloads().filter(other) and other.getMessage() == "Request metadata"


def test_a_sasl_app_installs_the_filter() -> None:
    from streams.app import credentials

    logger = logging.getLogger("aiokafka.conn")
    creds = credentials(_settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"))
    assert creds is not None and "pw-not-shown" not in repr(creds)
    assert any(isinstance(f, RedactSaslPayloads) for f in logger.filters)
