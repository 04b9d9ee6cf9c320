"""Apache Kafka for the test suite: one broker or a cluster of them, real Kafka on loopback ports.

The brokers run from the jars deploy/kafka/kafka.sh fetches from Maven Central (once, into a cache
outside the checkout), with the machine's JDK; their settings are deploy/kafka/broker.env, the file
docker-compose.yml gives the production broker, plus what belongs to each node (id, ports, data
directory, quorum voters) and, for a cluster, its replication. Each node is a KRaft broker and
controller in one JVM.

    with KafkaCluster(nodes=3) as cluster:
        cluster.bootstrap                  # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
        cluster.url                        # "kafka://127.0.0.1:P1;kafka://..." (Settings.broker)
        leader = cluster.leader("cdrs", 0)
        cluster.kill(leader)               # SIGKILL
        cluster.start(leader)              # back on its ports and its data

A cluster made with ``sasl_ssl=SaslSsl(secrets_dir, users)`` also has a SASL_SSL listener on each
node, configured by deploy/kafka/sasl-ssl.env (the compose broker's file, read the way the
apache/kafka image reads it), with certificates from deploy/kafka/certs.sh (``make_certificates``)
and SCRAM-SHA-512 users created when the storage is formatted; ``sasl_ssl_url`` and
``client_env(user)`` are what cdrwatch connects with.

No broker outlives this process: the kernel sends each one SIGKILL when we die (even by SIGKILL),
and ``close()``, run on every exit path of the ``with`` block, kills them all and removes their
data. They run in their own session, so a terminal's Ctrl-C reaches pytest only, which then closes
the cluster from its fixture finalizers.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Mapping, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.tools.embedded import free_port
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KAFKA_DIR = ROOT / "deploy" / "kafka"
KAFKA_SH = KAFKA_DIR / "kafka.sh"
BROKER_ENV = KAFKA_DIR / "broker.env"
SASL_SSL_ENV = KAFKA_DIR / "sasl-ssl.env"
CERTS_SH = KAFKA_DIR / "certs.sh"
POM = KAFKA_DIR / "pom.xml"

# Variables of the apache/kafka image that are JVM options, not broker properties: they have no
# place in broker.env (kafka.sh sets the JVM's options).
NOT_PROPERTIES = frozenset({
    "KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_JMX_OPTS",
    "KAFKA_LOG4J_OPTS", "KAFKA_LOG4J_LOGGERS", "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_TOOLS_LOG4J_LOGLEVEL",
})

# What is each node's own, set by the test brokers per node and by docker-compose.yml for its one
# node: never in broker.env.
NODE_PROPERTIES = ("node.id", "listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs")

# The apache/kafka image's indirection for the keystore (its configure script, when a listener is
# SSL): a file name in /etc/kafka/secrets, and files there holding the passwords. Variables of
# the image, not broker properties: sasl_ssl_properties() resolves them as the image does.
SECRET_FILE_VARIABLES: Mapping[str, tuple[str, str]] = {
    # variable: (the property it sets, "path" of the named file or its "content")
    "KAFKA_SSL_KEYSTORE_FILENAME": ("ssl.keystore.location", "path"),
    "KAFKA_SSL_KEYSTORE_CREDENTIALS": ("ssl.keystore.password", "content"),
    "KAFKA_SSL_KEY_CREDENTIALS": ("ssl.key.password", "content"),
    "KAFKA_SSL_TRUSTSTORE_FILENAME": ("ssl.truststore.location", "path"),
    "KAFKA_SSL_TRUSTSTORE_CREDENTIALS": ("ssl.truststore.password", "content"),
}

# The SASL mechanism of sasl-ssl.env's listener, and its listener name.
SCRAM_MECHANISM = "SCRAM-SHA-512"
SASL_SSL_LISTENER = "SASL_SSL"

# Settings only the test brokers have, all about time: a killed broker is fenced, and its
# partitions get a new leader, after 3 s without a heartbeat instead of 9 s. The log cleaner's
# dedupe buffer (128 MiB by default, allocated on the heap) fits kafka.sh's small heap.
TEST_PROPERTIES: Mapping[str, str] = {
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The configuration: broker.env, the apache/kafka image's way
# ---------------------------------------------------------------------------------------------


def read_env_file(path: Path = BROKER_ENV) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments skipped, values taken as they are."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        if key in env:
            raise ValueError(f"{path}:{number}: {key} is set twice")
        env[key] = value
    return env


def property_name(variable: str) -> str:
    """``KAFKA_LOG_RETENTION_MS`` → ``log.retention.ms``, as the apache/kafka image converts:
    ``_`` is ``.``, ``__`` is ``_``, ``___`` is ``-``."""
    if not variable.startswith("KAFKA_") or variable in NOT_PROPERTIES:
        raise ValueError(f"{variable} is not a broker property variable")
    rest = variable.removeprefix("KAFKA_").lower()

    def separator(match: re.Match[str]) -> str:
        run = match.group(0)
        if len(run) > 3:
            raise ValueError(f"{variable}: {len(run)} underscores in a row")
        return {1: ".", 2: "_", 3: "-"}[len(run)]

    return re.sub(r"_+", separator, rest)


def broker_properties(env: Mapping[str, str]) -> dict[str, str]:
    """broker.env's variables as server.properties entries."""
    return {property_name(key): value for key, value in env.items()}


def sasl_ssl_properties(env: Mapping[str, str], secrets_dir: Path) -> dict[str, str]:
    """sasl-ssl.env's variables as server.properties entries, with the image's secret files
    (``SECRET_FILE_VARIABLES``) looked up in ``secrets_dir``, its /etc/kafka/secrets."""
    properties = {}
    for key, value in env.items():
        if key not in SECRET_FILE_VARIABLES:
            properties[property_name(key)] = value
            continue
        name, kind = SECRET_FILE_VARIABLES[key]
        path = secrets_dir / value
        if not path.is_file():
            raise FileNotFoundError(f"{key}={value}: no {path} (deploy/kafka/certs.sh makes it)")
        # the image reads a password with $(cat FILE): trailing newlines dropped
        properties[name] = str(path) if kind == "path" else path.read_text(encoding="utf-8").rstrip("\n")
    return properties


def make_certificates(directory: Path, *names: str, timeout_s: float = 120.0) -> Path:
    """A CA and a broker certificate for ``names`` (the CA only without names) in ``directory``,
    by deploy/kafka/certs.sh (keytool); ``directory``."""
    done = subprocess.run(["bash", str(CERTS_SH), str(directory), *names], capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"deploy/kafka/certs.sh failed:\n{done.stdout}{done.stderr}")
    return directory


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener on every node, configured by deploy/kafka/sasl-ssl.env: the keystore
    and password files it names are in ``secrets_dir`` (``make_certificates`` makes them, with the
    CA clients trust in ``secrets_dir/ca.pem``), and the SCRAM-SHA-512 ``users`` (name: password)
    are created when the storage is formatted."""

    secrets_dir: Path
    users: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def cafile(self) -> Path:
        return self.secrets_dir / "ca.pem"


def replication_properties(nodes: int) -> dict[str, str]:
    """What a cluster of ``nodes`` raises: replication factor up to 3, min.insync.replicas up to 2
    (for one node, exactly broker.env's values)."""
    replicas, in_sync = min(3, nodes), min(2, nodes)
    return {
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(in_sync),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(in_sync),
    }


def kafka_version() -> str:
    """The project's Kafka version: pom.xml's kafka.version."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text(encoding="utf-8"))
    if not found:
        raise ValueError(f"{POM} has no <kafka.version>")
    return found.group(1).strip()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (never starting with
    ``-``, which a command line would take for an option; Kafka avoids it the same way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# ---------------------------------------------------------------------------------------------
# The jars and the processes
# ---------------------------------------------------------------------------------------------

_fetched: Path | None = None


def fetch_kafka(timeout_s: float = 900.0) -> Path:
    """Fetch the jars (once per machine; a no-op when the cache is complete); their directory."""
    global _fetched
    if _fetched is None:
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
        if shutil.which(java) is None:
            raise RuntimeError("Apache Kafka needs a JDK (java 17 or newer) on PATH or in JAVA_HOME")
        done = subprocess.run(["bash", str(KAFKA_SH), "fetch"], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"deploy/kafka/kafka.sh fetch failed:\n{done.stderr[-3000:]}")
        _fetched = Path(done.stdout.strip())
    return _fetched


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


# The kernel sends the parent-death signal when the THREAD that forked the child ends, not the
# process: a broker started from a short-lived thread (asyncio.to_thread, a fixture run in a
# pool) would be killed with it. Every broker is therefore forked by this one thread, which
# lives as long as the process.
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-launcher")


def _launch(command: list[str], output: Path) -> subprocess.Popen[bytes]:
    def popen() -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with open(output, "ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=_die_with_parent, start_new_session=True)

    return _LAUNCHER.submit(popen).result()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when called inside a running event loop
    (then in a thread of its own: the caller's loop is blocked meanwhile)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class KafkaNode:
    node_id: int
    host: str
    port: int  # the PLAINTEXT listener clients use
    controller_port: int  # the KRaft controller listener
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    sasl_ssl_port: int | None = None  # the SASL_SSL listener, on a cluster made with sasl_ssl=

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_address(self) -> str:
        if self.sasl_ssl_port is None:
            raise RuntimeError(f"node {self.node_id} has no SASL_SSL listener")
        return f"{self.host}:{self.sasl_ssl_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The broker's log (deploy/kafka/log4j2.yaml)."""
        return self.directory / "server.log"

    @property
    def output_path(self) -> Path:
        """The JVM's own stdout and stderr: what happens before logging starts (bad options)."""
        return self.directory / "jvm.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None


@dataclass(frozen=True)
class PartitionState:
    leader: int  # -1 while the partition has none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class GroupState:
    state: str  # "Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead"
    members: int


def _kill_all(nodes: Iterable[KafkaNode]) -> None:
    procs = [node.process for node in nodes if node.process is not None]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _close(nodes: Iterable[KafkaNode], directory: tempfile.TemporaryDirectory[str]) -> None:
    _kill_all(nodes)
    directory.cleanup()


def _remove_stale_directories() -> None:
    """Data of clusters whose owner died without closing them (SIGKILL): their brokers died with
    it, their directories stay behind until the next cluster starts."""
    for directory in Path(tempfile.gettempdir()).glob("cdrwatch-kafka-*"):
        try:
            owner = int((directory / "owner").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


class KafkaCluster:
    """``nodes`` Apache Kafka nodes, each a KRaft broker and controller, on free loopback ports.

    A cluster of 3 or more replicates 3 times with min.insync.replicas=2 (``replication_factor``,
    ``min_insync_replicas``); one node replicates once. Lifecycle methods block until the brokers
    answer; metadata methods ask the running brokers with aiokafka's admin client.

    With ``sasl_ssl``, each node also has a SASL_SSL listener (deploy/kafka/sasl-ssl.env, as the
    compose broker with KAFKA_SASL_SSL set): ``sasl_ssl_url`` and ``client_env`` are what cdrwatch
    connects with. ``bootstrap`` and ``url`` stay the PLAINTEXT listener, the broker's own.
    """

    def __init__(self, nodes: int = 1, *, host: str = "127.0.0.1", properties: Mapping[str, str] | None = None,
                 start_timeout_s: float = 120.0, sasl_ssl: SaslSsl | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"test brokers listen on loopback only, not {host!r}")
        _remove_stale_directories()
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.version = kafka_version()
        self.cluster_id = new_cluster_id()
        self.replication_factor = min(3, nodes)
        self.min_insync_replicas = min(2, nodes)
        self.extra_properties = dict(properties or {})
        self.sasl_ssl = sasl_ssl
        self._dir = tempfile.TemporaryDirectory(prefix="cdrwatch-kafka-")
        (Path(self._dir.name) / "owner").write_text(str(os.getpid()))
        per_node = 3 if sasl_ssl is not None else 2
        ports: set[int] = set()
        while len(ports) < per_node * nodes:
            ports.add(free_port(host))
        port_list = sorted(ports)
        self.nodes: dict[int, KafkaNode] = {
            node_id: KafkaNode(node_id, host, port_list[per_node * i], port_list[per_node * i + 1],
                               Path(self._dir.name) / f"node-{node_id}",
                               sasl_ssl_port=port_list[per_node * i + 2] if sasl_ssl is not None else None)
            for i, node_id in enumerate(range(1, nodes + 1))
        }
        self._formatted = False
        self._wanted: set[int] = set()  # nodes started and not killed or stopped since
        # Also on garbage collection and at interpreter exit, should close() never be called.
        self._finalizer = weakref.finalize(self, _close, list(self.nodes.values()), self._dir)

    # -- addresses ------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return list(self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's client address, ``127.0.0.1:P1,127.0.0.1:P2``: aiokafka's bootstrap_servers."""
        return ",".join(node.address for node in self.nodes.values())

    @property
    def url(self) -> str:
        """``kafka://127.0.0.1:P1;kafka://127.0.0.1:P2``, as Settings.broker and --broker take it."""
        return ";".join(f"kafka://{node.address}" for node in self.nodes.values())

    def settings(self, **changes: Any) -> Settings:
        """cdrwatch settings for this cluster: its URL and replication factor, no web server."""
        return Settings(broker=self.url, replication_factor=self.replication_factor, web_enabled=False).with_(**changes)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """Every node's SASL_SSL address, ``127.0.0.1:S1,127.0.0.1:S2``."""
        return ",".join(node.sasl_ssl_address for node in self.nodes.values())

    @property
    def sasl_ssl_url(self) -> str:
        """``kafka://127.0.0.1:S1;kafka://...``: the SASL_SSL listeners, as --broker takes them."""
        return ";".join(f"kafka://{node.sasl_ssl_address}" for node in self.nodes.values())

    def client_env(self, user: str, *, password: str | None = None, cafile: Path | None = None) -> dict[str, str]:
        """The CDRWATCH_* security variables (docker-compose.yml passes the same) of ``user`` on
        the SASL_SSL listener: its own password and the cluster's CA unless told otherwise."""
        if self.sasl_ssl is None:
            raise RuntimeError("this cluster has no SASL_SSL listener (KafkaCluster(sasl_ssl=...))")
        return {
            "CDRWATCH_SECURITY_PROTOCOL": SASL_SSL_LISTENER,
            "CDRWATCH_SASL_MECHANISM": SCRAM_MECHANISM,
            "CDRWATCH_SASL_USERNAME": user,
            "CDRWATCH_SASL_PASSWORD": self.sasl_ssl.users[user] if password is None else password,
            "CDRWATCH_SSL_CAFILE": str(self.sasl_ssl.cafile if cafile is None else cafile),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def properties(self, node_id: int) -> dict[str, str]:
        """A node's server.properties: broker.env (and sasl-ssl.env, with ``sasl_ssl``), the
        cluster's replication, the test settings, the caller's ``properties``, then the node's own
        identity and addresses."""
        node = self.nodes[node_id]
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes.values())
        listeners = f"PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}"
        advertised = f"PLAINTEXT://{node.address}"
        shared = broker_properties(read_env_file())
        if self.sasl_ssl is not None:
            listeners += f",{SASL_SSL_LISTENER}://{node.sasl_ssl_address}"
            advertised += f",{SASL_SSL_LISTENER}://{node.sasl_ssl_address}"
            shared |= sasl_ssl_properties(read_env_file(SASL_SSL_ENV), self.sasl_ssl.secrets_dir)
        own = dict(zip(NODE_PROPERTIES, (str(node_id), listeners, advertised, voters, str(node.data_dir)), strict=True))
        return {
            **shared,
            **replication_properties(len(self.nodes)),
            **TEST_PROPERTIES,
            **self.extra_properties,
            **own,
        }

    def _format(self) -> None:
        """Write every node's configuration and format its storage (in parallel: a JVM each)."""
        formats = []
        for node_id, node in self.nodes.items():
            node.directory.mkdir(parents=True, exist_ok=True)
            lines = [f"# node {node_id} of cluster {self.cluster_id} (tests/kafka_cluster.py)"]
            lines += [f"{key}={value}" for key, value in self.properties(node_id).items()]
            node.config_path.write_text("\n".join(lines) + "\n")
            command = ["bash", str(KAFKA_SH), "format", str(node.config_path), self.cluster_id]
            if self.sasl_ssl is not None and self.sasl_ssl.users:
                # SCRAM users, the KRaft way: in the metadata the storage starts with (kafka.sh's
                # format, plus --add-scram). Passwords of test users only, on a command line.
                command = ["bash", str(KAFKA_SH), "run", "kafka.tools.StorageTool", "format",
                           "--config", str(node.config_path), "--cluster-id", self.cluster_id, "--ignore-formatted"]
                for user, password in self.sasl_ssl.users.items():
                    command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
            formats.append(subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            ))
        for node, proc in zip(self.nodes.values(), formats):
            output, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"formatting node {node.node_id} failed:\n{output[-3000:]}")
        self._formatted = True

    def start(self, node_id: int | None = None) -> "KafkaCluster":
        """Start one node (on its ports and its data), or every node that is not running; return
        when each running node's metadata lists every running broker."""
        fetch_kafka()
        if not self._formatted:
            self._format()
        targets = [node_id] if node_id is not None else [n for n, node in self.nodes.items() if not node.running]
        for target in targets:
            node = self.nodes[target]
            if node.running:
                raise RuntimeError(f"node {target} is already running")
            node.process = _launch(["bash", str(KAFKA_SH), "server", str(node.config_path), str(node.directory)],
                                   node.output_path)
            self._wanted.add(target)
        try:
            self.wait_ready()
        except BaseException:
            if node_id is None:  # a cluster half up is no use to anyone
                _kill_all(self.nodes.values())
                self._wanted.clear()
            raise
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL a node (no controlled shutdown: its partitions lose their leader until the
        controller fences it, ``TEST_PROPERTIES``' 3 s); returns once the process is gone."""
        node = self.nodes[node_id]
        if not node.running or node.process is None:
            raise RuntimeError(f"node {node_id} is not running")
        self._wanted.discard(node_id)
        node.process.kill()
        node.process.wait(timeout=30)

    def stop(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Stop a node cleanly (SIGTERM: controlled shutdown, leadership moved first); SIGKILL if it
        takes longer than ``timeout_s``."""
        node = self.nodes[node_id]
        if not node.running or node.process is None:
            raise RuntimeError(f"node {node_id} is not running")
        self._wanted.discard(node_id)
        node.process.terminate()
        try:
            node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=30)

    def close(self) -> None:
        """Kill every node and remove all data and logs."""
        self._finalizer()

    def __enter__(self) -> "KafkaCluster":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- readiness and metadata -----------------------------------------------------------------

    @property
    def running_ids(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.running]

    @property
    def stopped_ids(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if not node.running]

    def _running_bootstrap(self) -> str:
        running = [self.nodes[n].address for n in self.running_ids]
        if not running:
            raise RuntimeError("no node is running")
        return ",".join(running)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until every running node answers and its metadata lists exactly the running brokers:
        after ``start`` they have registered; after ``kill`` the others have fenced the dead one."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.start_timeout_s)
        last: object = None
        while True:
            for node_id in sorted(self._wanted):
                node = self.nodes[node_id]
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"node {node_id} exited with code {node.process.returncode}:\n"
                                       f"{self.log_tail(node_id=node_id)}")
            wanted = set(self.running_ids)
            try:
                # a TCP connect first: aiokafka logs an error for each refused connection
                for node_id in wanted:
                    socket.create_connection((self.host, self.nodes[node_id].port), timeout=1).close()
                seen = _run(self._brokers_seen())
                if all(brokers == wanted for brokers in seen.values()):
                    return
                last = seen
            except (KafkaError, OSError) as exc:  # TimeoutError is an OSError
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka nodes {sorted(wanted)} not ready within the timeout (last: {last!r})\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    async def _brokers_seen(self) -> dict[int, set[int]]:
        """For each running node: the broker ids its metadata answer lists."""
        seen = {}
        for node_id in self.running_ids:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.nodes[node_id].address, request_timeout_ms=3000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                seen[node_id] = {int(broker["node_id"]) for broker in cluster["brokers"]}
            finally:
                await admin.close()
        return seen

    async def _admin(self, call: Callable[[AIOKafkaAdminClient], Awaitable[T]]) -> T:
        """``call`` with an admin client of the running nodes, closed afterwards."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._running_bootstrap(), request_timeout_ms=5000)
        try:
            await admin.start()
            return await call(admin)
        finally:
            await admin.close()

    async def _describe(self, topics: list[str]) -> dict[str, dict[int, PartitionState]]:
        described = await self._admin(lambda admin: admin.describe_topics(topics))
        states: dict[str, dict[int, PartitionState]] = {}
        for topic in described:
            if topic["error_code"]:
                raise KeyError(f"topic {topic['topic']}: error code {topic['error_code']}")
            states[topic["topic"]] = {
                p["partition"]: PartitionState(p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
                for p in topic["partitions"]
            }
        return states

    def partitions(self, topic: str) -> dict[int, PartitionState]:
        """Leader, replicas and in-sync replicas of each partition of ``topic``."""
        return _run(self._describe([topic]))[topic]

    def leader(self, topic: str, partition: int) -> int:
        """The node id leading ``topic``/``partition`` now, -1 while it has none."""
        return self.partitions(topic)[partition].leader

    def wait_leader(self, topic: str, partition: int, not_on: int | None = None, timeout_s: float = 60.0) -> int:
        """Wait until ``topic``/``partition`` has a leader (other than ``not_on``); its node id."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                leader = self.leader(topic, partition)
                if leader >= 0 and leader != not_on:
                    return leader
            except (KafkaError, OSError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}/{partition} has no leader (other than {not_on}) after {timeout_s:.0f} s")
            time.sleep(0.2)

    def wait_in_sync(self, topics: Iterable[str], timeout_s: float = 60.0) -> None:
        """Wait until every replica of every partition of ``topics`` is in sync (a restarted node
        has caught up)."""
        names = list(topics)
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            try:
                states = _run(self._describe(names))
                last = {f"{t}/{p}": s for t, parts in states.items() for p, s in parts.items()
                        if set(s.isr) != set(s.replicas)}
                if not last:
                    return
            except (KafkaError, OSError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not in sync after {timeout_s:.0f} s: {last!r}")
            time.sleep(0.2)

    def topics(self) -> list[str]:
        """Every topic's name (Kafka's internal ones included)."""
        return sorted(_run(self._admin(lambda admin: admin.list_topics())))

    def coordinator(self, group_id: str) -> int:
        """The node id coordinating consumer group ``group_id`` (its commits and rebalances)."""
        return int(_run(self._admin(lambda admin: admin.find_coordinator(group_id))))

    def group(self, group_id: str) -> GroupState:
        """Consumer group ``group_id`` as its coordinator describes it: state and members."""
        [response] = _run(self._admin(lambda admin: admin.describe_consumer_groups([group_id])))
        [described] = response.groups
        error_code, _group, state, _protocol_type, _protocol, members = described[:6]
        if error_code:
            raise KeyError(f"group {group_id}: error code {error_code}")
        return GroupState(state, len(members))

    # -- diagnostics ----------------------------------------------------------------------------

    def log_tail(self, lines: int = 20, node_id: int | None = None) -> str:
        """The last lines of a node's log and JVM output (of every node when ``node_id`` is None)."""
        chunks = []
        for nid in [node_id] if node_id is not None else list(self.nodes):
            node = self.nodes[nid]
            for path in (node.output_path, node.log_path):
                try:
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                except OSError:
                    continue
                if tail:
                    chunks.append(f"--- node {nid} {path.name}\n" + "\n".join(tail))
        return "\n".join(chunks)

    def rss_bytes(self) -> dict[int, int]:
        """Resident memory of each running node's JVM."""
        sizes = {}
        for node_id in self.running_ids:
            pid = self.nodes[node_id].pid
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if found:
                sizes[node_id] = int(found.group(1)) * 1024
        return sizes


if __name__ == "__main__":
    # python -m tests.kafka_cluster COMMAND ARGS...: run COMMAND beside a one-node Kafka started for
    # it ("{url}" in ARGS becomes its kafka://host:port), then stop the broker (make bench).
    import sys

    with KafkaCluster(nodes=1) as _cluster:
        sys.exit(subprocess.call([arg.replace("{url}", _cluster.url) for arg in sys.argv[1:]]))
