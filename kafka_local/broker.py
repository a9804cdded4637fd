"""Real Apache Kafka nodes (KRaft, combined broker and controller) for the test suites.

The jars come from ``make kafka`` (Maven, ``kafka_local/pom.xml``) in ``.cache/kafka/lib``
(or the folder named by ``KAFKA_TEST_LIB``); the JVM is ``$JAVA_HOME/bin/java`` or ``java``
on PATH, version 17 or newer.

``KafkaNode`` is one node on free ports with its data in a folder of its own (a temporary one
unless given): ``kafka.tools.StorageTool format`` once, then ``kafka.Kafka``. ``KafkaCluster``
is several such nodes forming one quorum (3 by default: replication factor 3,
``min.insync.replicas=2``). Both are async and sync context managers; leaving one kills every
JVM it started and removes its temporary folder, and a watchdog process kills a node's JVM
should the Python process die without cleaning up (even by SIGKILL).

Lifecycle of a node: ``start()`` (spawn and wait until it answers a Metadata request listing
itself, i.e. the broker is registered and unfenced), ``stop()`` (SIGTERM: controlled
shutdown), ``kill()`` (SIGKILL), ``restart()`` (same data, same ports), ``pause()`` and
``resume()`` (SIGSTOP and SIGCONT).

Each node's folder holds ``server.properties``, ``kafka.log`` (Log4j, WARN and the lifecycle
lines), ``console.log`` (the JVM's stdout and stderr) and ``data/`` (``log.dirs``); a start
that fails raises ``KafkaStartError`` with the last lines of both logs.

Broker defaults (see ``default_properties``): ``auto.create.topics.enable=false`` (the
project creates its topics explicitly, ``ensure_topics``/``provision_topics``, and a topic
created by accident must fail a test, not pass it), ``num.partitions=1``, internal topics
replicated to min(3, size) nodes with 5 partitions, ``group.initial.rebalance.delay.ms=0``
and a broker session timeout of 3 s (a killed broker is fenced and loses its leaderships
after that; a killed node's restart waits that long to register again). Everything can be
overridden per node or cluster with ``overrides``; extra listeners (SASL, SSL...) come with
``listeners``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

__all__ = [
    "DEFAULT_LIB_DIR",
    "HOST",
    "JVM_OPTIONS",
    "LIB_DIR_ENV",
    "KafkaCluster",
    "KafkaNode",
    "KafkaSetupError",
    "KafkaStartError",
    "Listener",
    "PartitionState",
    "PropertyValue",
    "class_data_archive",
    "classpath",
    "default_properties",
    "free_ports",
    "java_executable",
    "kafka_uuid",
    "kafka_version",
    "lib_dir",
    "metadata_brokers",
    "partition_state",
    "run_blocking",
    "write_properties",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
LIB_DIR_ENV = "KAFKA_TEST_LIB"
DEFAULT_LIB_DIR = REPO_ROOT / ".cache" / "kafka" / "lib"
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
MIN_JAVA = 17
HOST = "127.0.0.1"
CLIENT_LISTENER = "PLAINTEXT"
CONTROLLER_LISTENER = "CONTROLLER"

# Measured on 2 cores, Java 17 (format + spawn-to-ready of one node; three nodes): JVM
# defaults 1.8 + 4.3 s, 18 s; these (C1 only, the serial collector, a small heap) about
# 1.0 + 2.6 s, 6-12 s; with the class data archive below 0.7 + 1.6 s, about 5.5 s. C1-only
# code is slower at peak, but test traffic is far from any broker limit.
JVM_OPTIONS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

PropertyValue = str | int | float | bool
T = TypeVar("T")

_PROBE_SECONDS = 2.0
_POLL_SECONDS = 0.1
_LOG_TAIL_LINES = 30


class KafkaSetupError(RuntimeError):
    """No usable Java or no Kafka jars: what to install or run, in one message."""


class KafkaStartError(RuntimeError):
    """A node did not start (exited, or not ready in time); the message ends with its logs."""


# --- Java and the classpath -------------------------------------------------------------


@functools.cache
def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` if JAVA_HOME is set, else ``java`` on PATH; 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = str(Path(home, "bin", "java"))
        if not os.access(java, os.X_OK):
            raise KafkaSetupError(
                f"JAVA_HOME={home} has no bin/java: the test Kafka needs Java {MIN_JAVA}+"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise KafkaSetupError(
                f"no `java` on PATH (and JAVA_HOME is unset): the test Kafka needs Java {MIN_JAVA}+"
            )
        java = found
    major = _java_major(java)
    if major < MIN_JAVA:
        raise KafkaSetupError(
            f"{java} is Java {major}: the test Kafka needs Java {MIN_JAVA}+ (set JAVA_HOME)"
        )
    return java


@functools.cache
def _java_version_text(java: str) -> str:
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"cannot run {java} -version: {exc}") from exc
    return done.stderr + done.stdout


def _java_major(java: str) -> int:
    text = _java_version_text(java)
    # 'openjdk version "17.0.15" 2025-04-15', 'java version "1.8.0_402"', 'version "21"'
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if found is None:
        raise KafkaSetupError(f"cannot tell the version of {java}: {text.strip()!r}")
    major = int(found.group(1))
    if major == 1 and found.group(2):
        major = int(found.group(2))
    return major


def lib_dir() -> Path:
    """The folder of the Kafka jars: ``$KAFKA_TEST_LIB`` or ``.cache/kafka/lib``."""
    return Path(os.environ.get(LIB_DIR_ENV) or DEFAULT_LIB_DIR)


def classpath() -> str:
    """Every jar of ``lib_dir()``, sorted (a stable order for every JVM)."""
    lib = lib_dir()
    jars = sorted(lib.glob("*.jar"))
    names = [jar.name for jar in jars]
    if not any(n.startswith("kafka_2.13-") for n in names) or not any(
        n.startswith("log4j-slf4j-impl-") for n in names
    ):
        raise KafkaSetupError(
            f"no Kafka jars in {lib}: run `make kafka` (fetches Apache Kafka with Maven, "
            "kafka_local/pom.xml)"
        )
    return os.pathsep.join(str(jar) for jar in jars)


def kafka_version() -> str:
    """The version of the Kafka jars, e.g. ``"4.3.2"``."""
    classpath()
    jar = next(lib_dir().glob("kafka_2.13-*.jar"))
    return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")


def _java_command(main: str, *args: str, log_file: Path, jvm_options: Sequence[str]) -> list[str]:
    options = list(jvm_options)
    if not any(o.startswith(_CDS_OPTIONS) for o in options):
        archive = class_data_archive()
        if archive is not None:
            options.append(f"-XX:SharedArchiveFile={archive}")
    return [
        java_executable(),
        *options,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.test.log={log_file}",
        "-cp",
        classpath(),
        main,
        *args,
    ]


# --- Class data sharing ------------------------------------------------------------------
#
# An AppCDS archive of the classes a broker loads (a JDK 13+ dynamic archive) spares every
# JVM most of its class loading and verification: a node formats and starts in about 2.3 s
# instead of 3.6 s, three nodes on two cores in about 5.5 s instead of 8 s (and up to 12).
# It is made once per java and set of jars, by a training run (one node started, then
# stopped, about 7 s) on first use, in .cache/kafka/cds/. A JVM that cannot use it (another
# JDK, changed jars) runs without it. KAFKA_TEST_CDS=0 turns it off.

CDS_ENV = "KAFKA_TEST_CDS"
CDS_DIR = REPO_ROOT / ".cache" / "kafka" / "cds"
# Options that choose the sharing themselves: no archive is added to them.
_CDS_OPTIONS = ("-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit", "-Xshare:")
_cds_lock = threading.Lock()
_cds_archives: dict[str, Path | None] = {}


def class_data_archive() -> Path | None:
    """The class data archive for this java and classpath (made now if missing), or None
    when turned off or it could not be made."""
    if os.environ.get(CDS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    java, jars = java_executable(), classpath()
    # The JVM ignores an archive whose jars changed since (size, mtime): so does the key.
    stamps = [
        (jar, os.stat(jar).st_size, os.stat(jar).st_mtime_ns) for jar in jars.split(os.pathsep)
    ]
    key = hashlib.sha256(repr((java, _java_version_text(java), stamps)).encode()).hexdigest()
    with _cds_lock:
        if key not in _cds_archives:
            _cds_archives[key] = _make_class_data_archive(CDS_DIR / f"kafka-{key[:16]}.jsa")
        return _cds_archives[key]


def _make_class_data_archive(archive: Path) -> Path | None:
    if archive.exists():
        return archive
    CDS_DIR.mkdir(parents=True, exist_ok=True)
    with (CDS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be training right now
        if archive.exists():
            return archive
        partial = archive.with_suffix(f".{os.getpid()}.partial")
        node = KafkaNode(jvm_options=(*JVM_OPTIONS, "-Xshare:auto"))
        try:
            node.format()
            node.jvm_options = (
                *JVM_OPTIONS,
                f"-XX:ArchiveClassesAtExit={partial}",
                "-Xlog:cds=off",
            )
            node.spawn()
            deadline = time.monotonic() + 60
            while node.running and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if "Kafka Server started" in node.log_path.read_text(errors="replace"):
                        break
                time.sleep(_POLL_SECONDS)
            # SIGTERM: a normal exit, at which the JVM writes the archive (SIGKILL: none).
            run_blocking(node.stop(timeout=60))
            written = partial.exists() and partial.stat().st_size > 0
            if node.returncode != -signal.SIGKILL and written:
                partial.replace(archive)
                for stale in CDS_DIR.glob("kafka-*.jsa"):
                    if stale != archive:
                        stale.unlink(missing_ok=True)
                return archive
            return None
        except (OSError, RuntimeError, subprocess.SubprocessError):
            return None
        finally:
            node.close()
            partial.unlink(missing_ok=True)


# --- Identifiers, ports, properties ------------------------------------------------------


def kafka_uuid() -> str:
    """A random Kafka ``Uuid`` as Kafka prints it (cluster and directory ids)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # as Uuid.randomUuid(): never a leading dash
            return text


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports free right now (all held open at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclasses.dataclass(frozen=True, slots=True)
class Listener:
    """An extra listener of every node: its name (``listener.name.<name lowercased>.*``
    properties configure it, through ``overrides``), its security protocol, and its port
    (0: a free one, chosen per node)."""

    name: str
    protocol: str = "PLAINTEXT"
    port: int = 0


def default_properties(size: int = 1, min_insync_replicas: int | None = None) -> dict[str, str]:
    """Broker settings of a test cluster of ``size`` nodes (before ``overrides``)."""
    replicas = min(3, size)
    min_isr = min_insync_replicas if min_insync_replicas is not None else min(2, size)
    return {
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min(min_isr, replicas)),
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min(min_isr, replicas)),
        "share.coordinator.state.topic.num.partitions": "5",
        "group.initial.rebalance.delay.ms": "0",
        # Records up to the processor's default kafka.max_request_bytes (4 MiB), as the
        # topics that `cancel-processor topics` creates take them: oversize-input tests.
        "message.max.bytes": str(4 * 1024 * 1024),
        # A killed broker is fenced (its leaderships move) this many ms after its last
        # heartbeat, and a killed node restarted before then cannot register again until
        # then: 3 s instead of 9 s keeps broker-fault tests and restarts short.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
        "replica.lag.time.max.ms": "10000",
        # Two cores: fewer threads than the defaults (3 network, 8 I/O).
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def _property_text(value: PropertyValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _escape(text: str, *, key: bool = False) -> str:
    """java.util.Properties escaping: backslashes, line breaks, and in keys ``=``/``:``/space."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if key:
        for char in "=: ":
            text = text.replace(char, "\\" + char)
    elif text.startswith(" "):
        text = "\\" + text
    return text


def write_properties(path: Path, properties: Mapping[str, str]) -> None:
    lines = [f"{_escape(k, key=True)}={_escape(v)}" for k, v in properties.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- One node ----------------------------------------------------------------------------


class _Managed:
    """``async with`` and ``with`` (for sync, e.g. session, fixtures: started on an event
    loop of its own) around ``start()`` and ``close()``; closed too when the start fails."""

    async def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __enter__(self) -> Self:
        try:
            run_blocking(self.start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class KafkaNode(_Managed):
    """One KRaft node, broker and controller, on ``HOST``.

    Alone (the defaults) it is a cluster of one; ``KafkaCluster`` builds several with a
    shared ``cluster_id`` and ``voters`` (node id -> controller port of every voter).
    """

    def __init__(
        self,
        *,
        node_id: int = 1,
        data_dir: Path | None = None,
        port: int = 0,
        controller_port: int = 0,
        listeners: Sequence[Listener] = (),
        overrides: Mapping[str, PropertyValue] | None = None,
        jvm_options: Sequence[str] = JVM_OPTIONS,
        cluster_id: str | None = None,
        voters: Mapping[int, int] | None = None,
        controller: bool = True,
        cluster_size: int | None = None,
    ) -> None:
        """``controller=False``: a broker only, for a cluster whose quorum is a subset of its
        nodes (``voters``); ``cluster_size``: the cluster's broker count, for the replication
        defaults (default: the number of voters)."""
        wanted = [port, controller_port, *(listener.port for listener in listeners)]
        chosen = iter(free_ports(wanted.count(0)))
        ports = [p or next(chosen) for p in wanted]
        self.node_id = node_id
        self.port = ports[0]
        self.controller_port = ports[1]
        self.listener_ports: dict[str, int] = {CLIENT_LISTENER: self.port}
        for listener, listener_port in zip(listeners, ports[2:], strict=True):
            self.listener_ports[listener.name] = listener_port
        self.cluster_id = cluster_id or kafka_uuid()
        self.voters: dict[int, int] = dict(voters or {node_id: self.controller_port})
        self.controller = controller
        self.cluster_size = cluster_size or len(self.voters)
        if controller and self.voters.get(node_id, self.controller_port) != self.controller_port:
            raise ValueError(f"voters name another controller port for node {node_id}")
        self.jvm_options = tuple(jvm_options)
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix=f"kafka-node{node_id}-"))
            if data_dir is None
            else Path(data_dir)
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.data_dir / "data"
        self.log_path = self.data_dir / "kafka.log"
        self.console_path = self.data_dir / "console.log"
        self.properties_path = self.data_dir / "server.properties"
        # Written to server.properties at every start: change it, then restart() to apply.
        self.properties = self._build_properties(listeners, overrides or {})
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False

    def _build_properties(
        self, listeners: Sequence[Listener], overrides: Mapping[str, PropertyValue]
    ) -> dict[str, str]:
        protocols = {CLIENT_LISTENER: "PLAINTEXT", CONTROLLER_LISTENER: "PLAINTEXT"}
        protocols.update({listener.name: listener.protocol for listener in listeners})
        advertised = ",".join(
            f"{name}://{HOST}:{port}" for name, port in self.listener_ports.items()
        )
        own_controller = f",{CONTROLLER_LISTENER}://{HOST}:{self.controller_port}"
        return {
            "process.roles": "broker,controller" if self.controller else "broker",
            "node.id": str(self.node_id),
            "listeners": advertised + (own_controller if self.controller else ""),
            "advertised.listeners": advertised,
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols.items()),
            "inter.broker.listener.name": CLIENT_LISTENER,
            "controller.listener.names": CONTROLLER_LISTENER,
            # A static quorum: formatting needs no directory ids, a restart needs nothing.
            "controller.quorum.voters": ",".join(
                f"{node}@{HOST}:{port}" for node, port in sorted(self.voters.items())
            ),
            "log.dirs": str(self.log_dir),
            **default_properties(self.cluster_size),
            **{key: _property_text(value) for key, value in overrides.items()},
        }

    # -- what tests read

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def address(self, listener: str = CLIENT_LISTENER) -> str:
        """``host:port`` of a listener (``PLAINTEXT`` or an extra one)."""
        return f"{HOST}:{self.listener_ports[listener]}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """The JVM is alive (paused counts as alive)."""
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ERROR lines (stack traces bury them) and the last ``lines`` lines of
        ``kafka.log``, and the end of ``console.log``."""
        parts = []
        for path in (self.log_path, self.console_path):
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace").rstrip("\n")
                if not text:
                    continue
                all_lines = text.splitlines()
                errors = [line for line in all_lines if re.match(r"\[[^]]+\] (ERROR|FATAL) ", line)]
                if errors:
                    parts.append(f"--- last errors in {path} ---\n" + "\n".join(errors[-5:]))
                tail = "\n".join(all_lines[-lines:])
                parts.append(f"--- last lines of {path} ---\n{tail}")
        return "\n".join(parts) or f"(no log in {self.data_dir})"

    # -- lifecycle

    def format_arguments(self) -> list[str]:
        """More arguments of ``StorageTool format`` (a subclass adds SCRAM users)."""
        return []

    def format(self) -> None:
        """``kafka.tools.StorageTool format`` unless the data dir already is (a restart)."""
        if (self.log_dir / "meta.properties").exists():
            return
        write_properties(self.properties_path, self.properties)
        command = _java_command(
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(self.properties_path),
            *self.format_arguments(),
            log_file=self.log_path,
            jvm_options=self.jvm_options,
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KafkaStartError(
                f"formatting the storage of kafka node {self.node_id} failed "
                f"(exit {done.returncode}):\n{done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def spawn(self) -> None:
        """Format if need be and start the JVM; no waiting (see ``wait_ready``)."""
        if self._closed:
            raise RuntimeError(f"kafka node {self.node_id} is closed")
        if self.running:
            raise RuntimeError(f"kafka node {self.node_id} is already running")
        self.format()
        write_properties(self.properties_path, self.properties)
        self.starts += 1
        command = _java_command(
            "kafka.Kafka",
            str(self.properties_path),
            log_file=self.log_path,
            jvm_options=self.jvm_options,
        )
        with self.console_path.open("ab") as console:
            console.write(f"----- start {self.starts} at {time.ctime()} -----\n".encode())
            console.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        self._paused = False
        self._watchdog = _watchdog(self._process.pid)

    async def start(self, timeout: float = 60) -> None:
        """Spawn, then wait until ready; a node that does not come up is killed and the
        error carries its log."""
        await asyncio.to_thread(self.format)
        self.spawn()
        try:
            await self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    async def wait_ready(self, timeout: float = 60, brokers: Collection[int] = ()) -> None:
        """Until this node answers a Metadata request listing itself (registered, unfenced)
        and every node id in ``brokers``."""
        wanted = {self.node_id, *brokers}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: set[int] | None = None
        while True:
            if not self.running:
                raise KafkaStartError(
                    f"kafka node {self.node_id} exited with {self.returncode} while "
                    f"starting\n{self.log_tail()}"
                )
            seen = await metadata_brokers(self.bootstrap_servers)
            if seen is not None and wanted <= seen:
                return
            if loop.time() >= deadline:
                raise KafkaStartError(
                    f"kafka node {self.node_id} not ready after {timeout:g} s (wanted brokers "
                    f"{sorted(wanted)}, it lists {sorted(seen) if seen else seen})\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_SECONDS)

    async def stop(self, timeout: float = 30) -> float:
        """SIGTERM (a controlled shutdown) and wait; SIGKILL after ``timeout``. The seconds
        it took; 0 if not running."""
        process = self._process
        if process is None or process.poll() is not None:
            self._reap_watchdog()
            return 0.0
        started = time.monotonic()
        process.terminate()
        self.resume()
        try:
            await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap_watchdog()
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a crash; no-op if not running."""
        process = self._process
        self._reap_watchdog()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._paused = False

    async def restart(self, timeout: float = 60) -> None:
        """Same data, same ports: a graceful ``stop()`` first if it runs (``kill()`` it
        first for a crash)."""
        await self.stop()
        await self.start(timeout)

    def signal(self, sig: int) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"kafka node {self.node_id} is not running")
        self._process.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing."""
        self.signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT; no-op unless paused."""
        if self._paused and self.running:
            self.signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Kill the JVM and remove the data dir if it is a temporary one. Idempotent."""
        self.kill()
        if self._owns_dir and not self._closed:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._closed = True

    def _reap_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
            if watchdog.stdin is not None:
                watchdog.stdin.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "down"
        return f"<KafkaNode {self.node_id} {self.bootstrap_servers} {state}>"


# --- Several nodes -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class KafkaCluster(_Managed):
    """``size`` nodes (ids 1..size); the first ``controllers`` of them (default: all) are
    combined broker and controller nodes forming the quorum, the rest brokers only. Topics
    default to min(3, size) replicas and ``min.insync.replicas`` to min(2, size).

    A quorum smaller than the cluster keeps its controller while most brokers are down:
    the in-sync replicas of a partition can then shrink below ``min.insync.replicas``."""

    def __init__(
        self,
        size: int = 3,
        *,
        min_insync_replicas: int | None = None,
        data_dir: Path | None = None,
        listeners: Sequence[Listener] = (),
        overrides: Mapping[str, PropertyValue] | None = None,
        jvm_options: Sequence[str] = JVM_OPTIONS,
        controllers: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        controllers = size if controllers is None else controllers
        if not 1 <= controllers <= size:
            raise ValueError("a cluster needs 1 to size controllers")
        if any(listener.port for listener in listeners):
            raise ValueError("the listeners of a cluster take free ports: leave port=0")
        self._owns_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="kafka-cluster-") if data_dir is None else data_dir
        )
        cluster_id = kafka_uuid()
        # Every port of every node at once, so that no two are the same.
        ports = iter(free_ports(size * (2 + len(listeners))))
        controller_ports = {node_id: next(ports) for node_id in range(1, size + 1)}
        voters = {n: port for n, port in controller_ports.items() if n <= controllers}
        min_isr = min(2, size) if min_insync_replicas is None else min_insync_replicas
        settings = {"min.insync.replicas": min_isr, **(overrides or {})}
        self.nodes = [
            KafkaNode(
                node_id=node_id,
                data_dir=self.data_dir / f"node{node_id}",
                port=next(ports),
                controller_port=controller_port,
                listeners=[
                    dataclasses.replace(listener, port=listener.port or next(ports))
                    for listener in listeners
                ],
                overrides=settings,
                jvm_options=jvm_options,
                cluster_id=cluster_id,
                voters=voters,
                controller=node_id in voters,
                cluster_size=size,
            )
            for node_id, controller_port in controller_ports.items()
        ]
        self.cluster_id = cluster_id

    @property
    def bootstrap_servers(self) -> str:
        """Every node (clients skip the ones that are down)."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no kafka node {node_id} (nodes: {[n.node_id for n in self.nodes]})")

    def running_nodes(self) -> list[KafkaNode]:
        return [node for node in self.nodes if node.running and not node.paused]

    async def start(self, timeout: float = 120) -> None:
        """Format and start every node; ready once each one lists every other."""
        try:
            await asyncio.gather(*(asyncio.to_thread(node.format) for node in self.nodes))
            for node in self.nodes:
                node.spawn()
            await self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until every running node lists every running node as a live broker."""
        up = [node.node_id for node in self.running_nodes()]
        await asyncio.gather(
            *(node.wait_ready(timeout, brokers=up) for node in self.nodes if node.node_id in up)
        )

    async def stop(self, timeout: float = 30) -> None:
        """Graceful stop of every node, all at once."""
        await asyncio.gather(*(node.stop(timeout) for node in self.nodes))

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def partition(
        self, topic: str, partition: int = 0, timeout: float = 30
    ) -> PartitionState:
        """The partition as a running node sees it (retried while the topic is unknown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for node in self.running_nodes():
                state = await partition_state(node.bootstrap_servers, topic, partition)
                if state is not None:
                    return state
            if loop.time() >= deadline:
                raise TimeoutError(f"no running kafka node knows {topic}[{partition}]")
            await asyncio.sleep(_POLL_SECONDS)

    async def leader(self, topic: str, partition: int = 0, timeout: float = 30) -> KafkaNode:
        """The node leading ``topic[partition]`` (waits while it has none)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await self.partition(topic, partition, max(deadline - loop.time(), 0.1))
            if state.leader >= 0:
                return self.node(state.leader)
            if loop.time() >= deadline:
                raise TimeoutError(f"{topic}[{partition}] has no leader: {state}")
            await asyncio.sleep(_POLL_SECONDS)

    async def kill_leader(self, topic: str, partition: int = 0) -> KafkaNode:
        """SIGKILL the leader of ``topic[partition]``; the node killed."""
        node = await self.leader(topic, partition)
        node.kill()
        return node

    async def wait_partition(
        self,
        topic: str,
        partition: int = 0,
        *,
        isr: int | None = None,
        leader_not: int | None = None,
        timeout: float = 60,
    ) -> PartitionState:
        """Until ``topic[partition]`` has a leader (other than ``leader_not``) and at least
        ``isr`` in-sync replicas, as the running nodes see it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await self.partition(topic, partition, max(deadline - loop.time(), 0.1))
            if (
                state.leader >= 0
                and state.leader != leader_not
                and (isr is None or len(state.isr) >= isr)
            ):
                return state
            if loop.time() >= deadline:
                raise TimeoutError(f"{topic}[{partition}] still {state}")
            await asyncio.sleep(_POLL_SECONDS)


# --- Helpers -----------------------------------------------------------------------------


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a new event loop in a helper thread: works from sync code whether
    or not the calling thread runs a loop (which then stays blocked)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-test") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _watchdog(pid: int) -> subprocess.Popen[bytes]:
    """A ``sh`` that SIGKILLs ``pid`` once its stdin closes: when this Python process dies
    without cleaning up, the kernel closes the pipe and no JVM outlives it."""
    return subprocess.Popen(
        ["sh", "-c", f"read _ignored; kill -9 {pid} 2>/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _metadata(bootstrap: str, topics: Iterable[str]) -> dict[str, Any] | None:
    host, _, port = bootstrap.rpartition(":")
    conn = None
    try:
        async with asyncio.timeout(_PROBE_SECONDS):
            conn = await create_conn(
                host, int(port), client_id="test-kafka-probe", request_timeout_ms=2000
            )
            response = await conn.send(MetadataRequest(list(topics)))
    except (OSError, KafkaError, TimeoutError):
        return None
    finally:
        if conn is not None:
            conn.close()
    result: dict[str, Any] = response.to_object()
    return result


async def metadata_brokers(bootstrap: str) -> set[int] | None:
    """The live broker ids one node (``host:port``) lists; None if it does not answer."""
    metadata = await _metadata(bootstrap, [])
    if metadata is None:
        return None
    return {int(broker["node_id"]) for broker in metadata["brokers"]}


async def partition_state(bootstrap: str, topic: str, partition: int) -> PartitionState | None:
    """``topic[partition]`` as one node sees it; None if it does not answer or know it."""
    metadata = await _metadata(bootstrap, [topic])
    if metadata is None:
        return None
    for entry in metadata["topics"]:
        if entry["topic"] != topic or entry["error_code"] != 0:
            continue
        for part in entry["partitions"]:
            if part["partition"] == partition:
                return PartitionState(
                    topic,
                    partition,
                    int(part["leader"]),
                    tuple(part["replicas"]),
                    tuple(part["isr"]),
                )
    return None
