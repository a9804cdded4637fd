"""Real processes for the fault suite: the provider simulator and the processor as
subprocesses of the CLI, a dedicated broker when a scenario must pause or withhold it,
config files, input streams and a reader of everything the processor produced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import RecordMetadata, TopicPartition

from consumer.config import Settings, settings_from_mapping
from consumer.kafka.clients import client_options, topic_partitions
from consumer.tools.topics import ensure_topics
from tests.integration.kafka_helpers import Cluster, Record

PARTITIONS = 3
_LISTENING = re.compile(r"provider simulator listening: shipstation=http://127\.0\.0\.1:(\d+)/")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cli() -> list[str]:
    """``cancel-processor`` of this virtualenv (``python -m consumer`` when not installed)."""
    script = Path(sys.executable).with_name("cancel-processor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumer"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    # ResourceWarnings ("unclosed transport") are hidden by default; the suite wants them.
    env["PYTHONWARNINGS"] = "default"
    env.update(extra)
    return env


# --- processes ------------------------------------------------------------------------


class Process:
    """A child process whose stdout and stderr go to files, with /proc readings."""

    def __init__(self, name: str, command: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self._env
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def kill9(self) -> None:
        """A crash: SIGKILL, nothing runs after it."""
        self.signal(signal.SIGKILL)
        assert self.popen is not None
        self.popen.wait()

    async def wait(self, timeout: float) -> int:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return self.popen.returncode

    async def stop(self, timeout: float = 30) -> float:
        """SIGTERM and wait; the seconds it took to exit."""
        started = time.monotonic()
        if self.running:
            self.signal(signal.SIGTERM)
            await self.wait(timeout)
        return time.monotonic() - started

    def ensure_dead(self) -> None:
        if self.running:
            self.kill9()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class ProcessorProcess(Process):
    """``cancel-processor run --config F``; its JSON log lines are parsed on demand."""

    def __init__(self, name: str, config: Path, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(name, [*cli(), "run", "--config", str(config)], workdir, env)

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    entries.append(orjson.loads(line))
        return entries

    def messages(self) -> list[str]:
        return [str(entry.get("msg")) for entry in self.logs()]

    async def wait_for_log(self, msg: str, timeout: float, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.logs() if entry.get("msg") == msg]
            if len(found) >= count:
                return found[count - 1]
            if not self.running:
                raise AssertionError(f"{self.name} exited before logging {msg!r}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not log {msg!r} within {timeout}s")
            await asyncio.sleep(0.1)


class SimulatorProcess(Process):
    """``cancel-processor simulate`` on a free port, steered through ``/_admin``."""

    def __init__(
        self,
        workdir: Path,
        *,
        api_key: str = "sim-shipstation-key",
        client_id: str = "sim-mvmnt-client",
        client_secret: str = "sim-mvmnt-secret",
        static_token: str | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        self.port = 0  # known once it listens: the OS picks it, so no one can take it first
        self.api_key = api_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.static_token = static_token
        command = [
            *cli(),
            "simulate",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
            "--shipstation-api-key",
            api_key,
            "--mvmnt-client-id",
            client_id,
            "--mvmnt-client-secret",
            client_secret,
            "--request-log-size",
            "50000",
        ]
        if static_token is not None:
            command += ["--mvmnt-static-token", static_token]
        super().__init__("simulator", command, workdir, child_env())
        self.base_url = ""
        self._http = httpx.AsyncClient(timeout=10)

    async def __aenter__(self) -> SimulatorProcess:
        self.start()
        deadline = time.monotonic() + 30
        while not (found := _LISTENING.search(self.stderr())):
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start:\n{self.stderr()}")
            await asyncio.sleep(0.1)
        self.port = int(found.group(1))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._http = httpx.AsyncClient(base_url=f"{self.base_url}/_admin", timeout=10)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()
        with contextlib.suppress(TimeoutError):
            await self.stop(timeout=10)
        self.ensure_dead()

    def accounts(self, shipstation_rate_per_minute: float | None = 60_000) -> dict[str, Any]:
        """``[providers]`` of one account per kind; the secrets come from the environment."""
        return {
            "shipstation": {
                "kind": "shipstation",
                "base_url": f"{self.base_url}/shipstation",
                "api_key": "${FAULTS_SHIPSTATION_KEY}",
                "rate_limit_per_minute": shipstation_rate_per_minute,
            },
            "mvmnt": {
                "kind": "mvmnt",
                "base_url": f"{self.base_url}/mvmnt/v1",
                "token_url": f"{self.base_url}/mvmnt/oauth2/token",
                "client_id": "${FAULTS_MVMNT_CLIENT_ID}",
                "client_secret": "${FAULTS_MVMNT_CLIENT_SECRET}",
            },
        }

    def secrets_env(self) -> dict[str, str]:
        return {
            "FAULTS_SHIPSTATION_KEY": self.api_key,
            "FAULTS_MVMNT_CLIENT_ID": self.client_id,
            "FAULTS_MVMNT_CLIENT_SECRET": self.client_secret,
        }

    async def stats(self) -> dict[str, Any]:
        response = await self._http.get("/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def requests(self) -> list[dict[str, Any]]:
        response = await self._http.get("/requests", params={"limit": "50000"})
        response.raise_for_status()
        requests: list[dict[str, Any]] = response.json()["requests"]
        return requests

    async def set_account_mode(self, provider: str, **mode: Any) -> dict[str, Any]:
        """``PUT /_admin/accounts/{provider}``: rate limit, latency, outage."""
        response = await self._http.put(f"/accounts/{provider}", json=mode)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def calls(self, provider: str | None = None) -> list[dict[str, Any]]:
        """Every provider call so far (``at``, ``path``, ``status``; None: not answered)."""
        params = {"provider": provider} if provider else {}
        response = await self._http.get("/calls", params=params)
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()["calls"]
        return calls

    async def cancel_calls(self) -> dict[tuple[str, str], int]:
        stats = await self.stats()
        return {
            (provider, shipment): count
            for provider, calls in stats["cancel_calls"].items()
            for shipment, count in calls.items()
        }


# --- configuration --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML for a config file: tables of scalars and lists, nested tables."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, Mapping) and v is not None]
    tables = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{key} = {_toml_value(value)}" for key, value in scalars]
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables:
        text += to_toml(table, f"{prefix}.{key}" if prefix else key)
    return text


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Topology:
    """Topics and group of one scenario, on one broker."""

    bootstrap_servers: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def kafka(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": f"faults-{self.run}",
            "input_topic": f"orders.cancelled.{self.run}",
            "cancelled_topic": f"shipments.cancelled.{self.run}",
            "failed_topic": f"shipments.cancel-failed.{self.run}",
            "dlq_topic": f"orders.cancelled.dlq.{self.run}",
            "retry_topic": f"orders.cancelled.retry.{self.run}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "commit_interval_seconds": 0.2,
        }

    def config(
        self, providers: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        base = {
            "kafka": self.kafka(),
            "processing": {
                "max_in_flight": 256,
                "drain_grace_seconds": 5,
                "retry": {"backoff_initial_seconds": 0.05, "budget_seconds": 10},
            },
            "telemetry": {
                "log_level": "INFO",
                "log_format": "json",
                "http_host": "127.0.0.1",
                "http_port": 0,
            },
            "providers": dict(providers),
        }
        return deep_merge(base, overrides or {})

    def settings(self, config: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
        return settings_from_mapping(config, env, source="faults")

    async def create_topics(self, config: Mapping[str, Any], env: Mapping[str, str]) -> None:
        await ensure_topics(self.settings(config, env).kafka, partitions=PARTITIONS)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(to_toml(config))
    return path


# --- input ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One produced input record and where it landed."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    event: dict[str, Any] | None
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = -1

    @property
    def poison(self) -> bool:
        return self.event is None


def event_record(event: dict[str, Any], headers: Iterable[tuple[str, bytes]] = ()) -> Input:
    return Input(
        key=str(event["order_id"]).encode(),
        value=orjson.dumps(event),
        headers=list(headers),
        event=event,
    )


def poison_record(key: str | None, value: bytes | None) -> Input:
    return Input(key=key.encode() if key is not None else None, value=value, headers=[], event=None)


async def produce(cluster: Cluster, records: list[Input]) -> list[Input]:
    """Send in order and return the records with their partition and offset."""
    metas: list[RecordMetadata] = await cluster.send_many(
        [(r.key, r.value, r.headers) for r in records]
    )
    return [
        Input(r.key, r.value, r.headers, r.event, m.partition, m.offset, m.timestamp)
        for r, m in zip(records, metas, strict=True)
    ]


async def produce_steadily(
    cluster: Cluster, records: list[Input], per_second: float, batch: int = 20
) -> list[Input]:
    """Send in batches at about ``per_second`` records a second (a stream, not a burst)."""
    sent: list[Input] = []
    started = time.monotonic()
    for start in range(0, len(records), batch):
        sent += await produce(cluster, records[start : start + batch])
        ahead = started + len(sent) / per_second - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return sent


# --- output ---------------------------------------------------------------------------


class OutputReader:
    """Reads the result, DLQ and retry topics from the beginning, keeps everything it saw."""

    def __init__(self, settings: Settings) -> None:
        self.kafka = settings.kafka
        self.results: list[Record] = []
        self.dead_letters: list[Record] = []
        self.parks: list[Record] = []
        self._consumer = AIOKafkaConsumer(
            **client_options(self.kafka), enable_auto_commit=False, fetch_max_wait_ms=100
        )

    async def __aenter__(self) -> OutputReader:
        await self._consumer.start()
        kafka = self.kafka
        topics = [kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic, kafka.retry_topic]
        partitions = await topic_partitions(self.kafka, topics)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        count = 0
        for tp, records in batches.items():
            if tp.topic == self.kafka.dlq_topic:
                self.dead_letters.extend(records)
            elif tp.topic == self.kafka.retry_topic:
                self.parks.extend(records)
            else:
                self.results.extend(records)
            count += len(records)
        return count

    def result_values(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.results if r.value is not None]

    async def wait_for(
        self, done: Callable[[OutputReader], bool], timeout: float, what: str = "outputs"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} incomplete after {timeout}s")
            await self.poll()

    async def result_ends(self) -> dict[TopicPartition, int]:
        """The result topics' end offsets now: every result acknowledged so far is below."""
        kafka = self.kafka
        partitions = await topic_partitions(kafka, [kafka.cancelled_topic, kafka.failed_topic])
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(partitions)
        return ends

    def result_ids_below(self, ends: Mapping[TopicPartition, int]) -> set[str]:
        """The ids of the results read whose offsets are below ``ends``."""
        return {
            str(orjson.loads(r.value)["event_id"])
            for r in self.results
            if r.value is not None and r.offset < ends[TopicPartition(r.topic, r.partition)]
        }

    async def settle(self, quiet_seconds: float = 1.0) -> None:
        """Read until nothing new arrives for ``quiet_seconds``."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            if await self.poll(timeout_ms=200):
                quiet_since = time.monotonic()


def result_ids(reader: OutputReader) -> set[str]:
    return {str(value["event_id"]) for value in reader.result_values()}


def dlq_sources(reader: OutputReader) -> set[tuple[int, int]]:
    found = set()
    for record in reader.dead_letters:
        headers = dict(record.headers)
        found.add(
            (int(headers["dlq-source-partition"].decode()), int(headers["dlq-source-offset"]))
        )
    return found


async def wait_committed(cluster: Cluster, sent: list[Input], timeout: float) -> None:
    """Until the group committed everything produced (a churning group commits late)."""
    ends: dict[int, int] = {}
    for record in sent:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    deadline = time.monotonic() + timeout
    while await cluster.committed() != ends:
        assert time.monotonic() < deadline, "offsets were not committed"
        await asyncio.sleep(0.5)


def cluster_for(settings: Settings) -> Cluster:
    """The shared test producer (``tests/integration/kafka_helpers.py``) for these topics."""
    return Cluster(settings)
