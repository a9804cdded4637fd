"""The five topics: create them with documented settings, verify the ones that exist.

``provision_topics`` is the ``topics`` command: it creates what is missing with the
``[topics]`` settings (or, in check mode, creates nothing) and compares every existing topic
with them: partition count, replication factor and the topic configs (via DescribeConfigs).
It never alters an existing topic; it says what differs, one finding per line, and a
difference fails the command in both modes (a topic auto-created with broker defaults must
stop a deployment, not pass it).
``ensure_topics`` is the bare version the demo and the tests use.

Some brokers cannot answer every question (the embedded Tansu broker lists one broker as
every replica and reports only the configs set at creation); such answers become
``unverified`` findings, never a crash and never a false "ok".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code

from consumer.config import KafkaSettings, TopicsSettings
from consumer.kafka.clients import check_security, client_options

_TOPIC_ALREADY_EXISTS = 36
# Metadata of a topic created a moment ago may not have reached every broker yet.
_NOT_YET_KNOWN = {3, 5}  # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE
_DAY_MS = 86_400_000
_NUMERIC = {"retention.ms", "max.message.bytes", "min.insync.replicas"}


class TopicsError(Exception):
    """The broker could not be asked at all (unreachable, refused): one line for the user."""


def topic_names(kafka: KafkaSettings) -> list[str]:
    return [
        kafka.input_topic,
        kafka.retry_topic,
        kafka.cancelled_topic,
        kafka.failed_topic,
        kafka.dlq_topic,
    ]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


def topic_specs(kafka: KafkaSettings, topics: TopicsSettings) -> list[TopicSpec]:
    retention_days = {
        kafka.input_topic: topics.input_retention_days,
        kafka.retry_topic: topics.retry_retention_days,
        kafka.cancelled_topic: topics.results_retention_days,
        kafka.failed_topic: topics.results_retention_days,
        kafka.dlq_topic: topics.dlq_retention_days,
    }
    # What we produce must fit: a DLQ copy is as large as the input allowed, and the
    # producer sends batches up to kafka.max_request_bytes (broker default: about 1 MiB).
    produced = {"max.message.bytes": str(kafka.max_request_bytes)}
    # One partition count for all: the retry topic's partition n goes with the input's.
    return [
        TopicSpec(
            name=name,
            partitions=topics.partitions,
            replication_factor=topics.replication_factor,
            configs={
                "cleanup.policy": "delete",
                "retention.ms": str(round(retention_days[name] * _DAY_MS)),
                "compression.type": topics.compression_type,
                "min.insync.replicas": str(topics.min_insync_replicas),
                **(produced if name != kafka.input_topic else {}),
            },
        )
        for name in topic_names(kafka)
    ]


FindingKind = Literal["created", "ok", "missing", "mismatch", "unverified", "error"]


@dataclass(frozen=True, slots=True)
class Finding:
    topic: str
    kind: FindingKind
    detail: str = ""

    def line(self) -> str:
        return f"{self.topic}: {self.kind}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True, slots=True)
class TopicsReport:
    findings: list[Finding]

    def failed(self) -> bool:
        """Errors, missing topics (check mode) and differences fail; ``unverified`` does not."""
        return any(f.kind in ("error", "missing", "mismatch") for f in self.findings)


async def provision_topics(
    kafka: KafkaSettings, topics: TopicsSettings, *, create: bool = True
) -> TopicsReport:
    """Create missing topics (unless ``create`` is false) and verify all that exist."""
    specs = topic_specs(kafka, topics)
    async with _admin(kafka) as admin:
        findings: list[Finding] = []
        if create:
            codes = await _create(admin, specs)
            created = {name for name, (code, _) in codes.items() if code == 0}
            for spec in specs:
                code, message = codes[spec.name]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    findings.append(Finding(spec.name, "error", _cannot_create(code, message)))
        else:
            existing = set(await admin.list_topics())
            created = set()
            findings += [Finding(s.name, "missing") for s in specs if s.name not in existing]
        failed = {f.topic for f in findings}
        present = [s for s in specs if s.name not in failed]
        findings += await _verify(admin, present, created)
    order = {s.name: i for i, s in enumerate(specs)}
    return TopicsReport(sorted(findings, key=lambda f: order[f.topic]))


async def ensure_topics(
    kafka: KafkaSettings, partitions: int = 3, replication_factor: int = 1
) -> None:
    """Create the topics with broker-default configs when missing (demo, tests)."""
    specs = [TopicSpec(name, partitions, replication_factor, {}) for name in topic_names(kafka)]
    async with _admin(kafka) as admin:
        codes = await _create(admin, specs)
        for name, (code, message) in codes.items():
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {name}: {_cannot_create(code, message)}")
        # Created is not yet served: wait until every partition has a leader, so that a
        # client started next finds them.
        await _describe(admin, [spec.name for spec in specs])


@contextlib.asynccontextmanager
async def _admin(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; broker trouble at start becomes one ``TopicsError`` line."""
    # A refused login or certificate: KafkaSecurityError (a ConfigError), not "unreachable".
    await check_security(kafka)
    client = AIOKafkaAdminClient(
        **client_options(kafka), request_timeout_ms=kafka.request_timeout_ms
    )
    where = kafka.bootstrap_servers
    try:
        try:
            async with asyncio.timeout(kafka.request_timeout_ms / 1000):
                await client.start()
        except (KafkaConnectionError, TimeoutError) as exc:
            raise TopicsError(f"kafka broker unreachable at {where}: {_reason(exc)}") from None
        except KafkaError as exc:
            raise TopicsError(f"kafka broker at {where} refused us: {_reason(exc)}") from None
        try:
            yield client
        except KafkaError as exc:
            raise TopicsError(f"kafka broker at {where} failed: {_reason(exc)}") from None
    finally:
        await client.close()


async def _create(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
) -> dict[str, tuple[int, str | None]]:
    response = await admin.create_topics(
        [
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
            for s in specs
        ]
    )
    codes = {e[0]: (int(e[1]), e[2] if len(e) > 2 else None) for e in response.topic_errors}
    return {s.name: codes.get(s.name, (0, None)) for s in specs}


def _cannot_create(code: int, message: str | None) -> str:
    name = for_code(code).__name__
    return f"cannot create: {name}" + (f" ({message})" if message else "")


async def _verify(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], created: set[str]
) -> list[Finding]:
    if not specs:
        return []
    metadata = await _describe(admin, [s.name for s in specs])
    configs, configs_problem = await _describe_configs(admin, specs)
    findings: list[Finding] = []
    for spec in specs:
        topic_findings = [
            *_check_layout(spec, metadata.get(spec.name)),
            *_check_configs(spec, configs.get(spec.name), configs_problem),
        ]
        if not any(f.kind in ("mismatch", "error") for f in topic_findings):
            verdict: FindingKind = "created" if spec.name in created else "ok"
            topic_findings.insert(0, Finding(spec.name, verdict, _summary(spec)))
        findings += topic_findings
    return findings


def _summary(spec: TopicSpec) -> str:
    days = int(spec.configs["retention.ms"]) / _DAY_MS
    return (
        f"{spec.partitions} partitions, replication factor {spec.replication_factor}, "
        f"retention {days:g} days"
    )


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """Topic metadata by name; waits briefly for topics the controller just created to be
    known and led."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        topics = {t["topic"]: t for t in await admin.describe_topics(names)}
        pending = [n for n in names if not _served(topics.get(n))]
        if not pending or loop.time() > deadline:
            return topics
        await asyncio.sleep(0.1)


def _served(topic: dict[str, Any] | None) -> bool:
    if topic is None or topic.get("error_code", 3) in _NOT_YET_KNOWN:
        return False
    return all(p.get("leader", -1) >= 0 for p in topic.get("partitions", ()))


def _check_layout(spec: TopicSpec, topic: dict[str, Any] | None) -> Iterable[Finding]:
    code = topic["error_code"] if topic else 3
    if code:
        yield Finding(spec.name, "error", f"cannot describe: {for_code(code).__name__}")
        return
    assert topic is not None
    partitions = topic["partitions"]
    if len(partitions) != spec.partitions:
        yield Finding(
            spec.name, "mismatch", f"partitions is {len(partitions)}, expected {spec.partitions}"
        )
    replicas = [list(p["replicas"]) for p in partitions]
    if any(len(set(r)) != len(r) for r in replicas):
        sample = next(r for r in replicas if len(set(r)) != len(r))
        yield Finding(
            spec.name,
            "unverified",
            f"replication factor: the broker lists replicas {sample}, one broker repeated; "
            "it does not replicate (the embedded Tansu broker does this)",
        )
        return
    factor = min((len(r) for r in replicas), default=0)
    if factor != spec.replication_factor:
        yield Finding(
            spec.name,
            "mismatch",
            f"replication factor is {factor}, expected {spec.replication_factor}",
        )


async def _describe_configs(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
) -> tuple[dict[str, dict[str, str] | str], str | None]:
    """Per topic its reported configs (or an error name); or one reason nothing came back."""
    # All configs, filtered here: Tansu drops the connection when asked for named keys.
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    try:
        responses = await admin.describe_configs(resources)
    except KafkaError as exc:
        return {}, f"the broker does not answer DescribeConfigs ({_reason(exc)})"
    found: dict[str, dict[str, str] | str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"]:
                found[name] = for_code(resource["error_code"]).__name__
            else:
                found[name] = {
                    entry["config_names"]: entry["config_value"]
                    for entry in resource["config_entries"]
                }
    return found, None


def _check_configs(
    spec: TopicSpec, reported: dict[str, str] | str | None, problem: str | None
) -> Iterable[Finding]:
    if problem is not None or isinstance(reported, str) or reported is None:
        reason = problem or f"DescribeConfigs answered {reported or 'nothing'}"
        yield Finding(spec.name, "unverified", f"configs: {reason}")
        return
    unreported = [key for key in spec.configs if key not in reported]
    for key, expected in spec.configs.items():
        if key in reported and not _same(key, reported[key], expected):
            yield Finding(spec.name, "mismatch", f"{key} is {reported[key]}, expected {expected}")
    if unreported:
        yield Finding(
            spec.name, "unverified", f"the broker does not report {', '.join(unreported)}"
        )


def _same(key: str, actual: str | None, expected: str) -> bool:
    if actual is None:
        return False
    if key in _NUMERIC:
        try:
            return int(actual) == int(expected)
        except ValueError:
            return False
    return actual.strip().lower() == expected.lower()


def _reason(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc).strip()
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
