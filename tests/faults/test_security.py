"""Scenarios 10-11: secrets never leak; Kafka over TLS and SASL, and refused logins."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.tools.embedded_broker import free_port
from kafka_local.security import (
    CLUSTER,
    Acl,
    Operation,
    Resource,
    SecureKafkaNode,
    make_certificates,
    processor_acls,
)
from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    Input,
    OutputReader,
    ProcessorProcess,
    Topology,
    cluster_for,
    deep_merge,
    dlq_sources,
    poison_record,
    produce,
    produce_steadily,
    result_ids,
)
from tests.faults.streams import expected_ids, order_stream, single

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]


SHIPSTATION_KEY = "ssk_live_4f9a2c7e1b8d3f6a0c5e9b2d7f1a4c8e"
REVOKED_KEY = "ssk_live_0d3b8f2a6c1e9f4b7a2d5c8e1f3b6a9d"
CLIENT_SECRET = "mvcs_7Kq2xW9pL4mN8vB3cZ6tY1rH5jD0fG2s"
# The header of every JWT the MVMNT simulator issues: finds OAuth tokens we never saw.
JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
STATIC_TOKEN = (
    JWT_HEADER
    + ".eyJzdWIiOiJjYW5jZWwtcHJvY2Vzc29yIiwiaWF0IjoxNzk1MjQ3MDAwfQ"
    + ".Yk3vQ0m1r8pZ2tX6nW4cL9aJ7dF5hG3sK1eB0uI8oM2"
)
SECRETS = {
    "shipstation api_key": SHIPSTATION_KEY,
    "revoked api_key": REVOKED_KEY,
    "mvmnt client_secret": CLIENT_SECRET,
    "mvmnt static token": STATIC_TOKEN,
    "an issued OAuth token": JWT_HEADER,
}


def output_texts(reader: OutputReader) -> list[bytes]:
    texts = []
    for record in [*reader.results, *reader.dead_letters, *reader.parks]:
        texts += [record.key or b"", record.value or b""]
        texts += [name.encode() + b"=" + (value or b"") for name, value in record.headers]
    return texts


async def test_10_secrets_never_reach_logs_spans_events_or_dlq(faults: FaultEnv) -> None:
    sim = faults.simulator(
        api_key=SHIPSTATION_KEY, client_secret=CLIENT_SECRET, static_token=STATIC_TOKEN
    )
    async with sim:
        accounts = sim.accounts()
        accounts["mvmnt-static"] = {
            "kind": "mvmnt",
            "base_url": accounts["mvmnt"]["base_url"],
            "access_token": "${FAULTS_MVMNT_TOKEN}",
        }
        accounts["shipstation-revoked"] = {**accounts["shipstation"]}
        accounts["shipstation-revoked"]["api_key"] = "${FAULTS_REVOKED_KEY}"
        accounts["shipstation-down"] = {
            **accounts["shipstation"],
            "base_url": f"http://127.0.0.1:{free_port()}/shipstation",
            "timeout_seconds": 1,
        }
        config = faults.topology.config(
            accounts,
            {
                "telemetry": {"log_level": "DEBUG", "traces_exporter": "console"},
                "processing": {
                    # The unreachable account's shipments are parked, retried, and fail as
                    # `network` past a horizon of about 11 s; the circuit stays out of it,
                    # so that every failure is of its own kind.
                    "retry": {
                        "max_attempts": 2,
                        "budget_seconds": 5,
                        "schedule_seconds": [1],
                        "horizon_hours": 0.003,
                    },
                    "breaker": {"failure_threshold": 1000},
                },
            },
        )
        env = {
            **sim.secrets_env(),
            "FAULTS_MVMNT_TOKEN": STATIC_TOKEN,
            "FAULTS_REVOKED_KEY": REVOKED_KEY,
        }
        settings = await faults.provision(config, env)
        records: list[Input] = []
        for account in accounts:
            prefix = "se" if "shipstation" in account else "SHP"
            for case in ("ok", "authfail", "notfound", "reject", "flaky1", "delivered"):
                records.append(single(f"SO-{account}-{case}", account, f"{prefix}-{case}-1"))
        records.append(poison_record("SO-poison", b'{"api_key": "' + b"x" * 64))
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            sent = await produce(cluster, records)
            wanted = expected_ids(sent)
            dead = {(r.partition, r.offset) for r in sent if r.poison}
            await reader.wait_for(
                lambda r: wanted <= result_ids(r) and dead <= dlq_sources(r), timeout=120
            )
            await processor.stop()
            report = await faults.finish("10 secrets", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    categories = {v["error"]["category"] for v in reader.result_values() if "error" in v}
    assert {"auth", "not_found", "rejected", "conflict", "network"} <= categories, categories
    assert '"name": "process ' in processor.stdout(), "spans were exported to stdout"
    leaks = []
    sources: dict[str, list[bytes]] = {
        "stderr (logs, exceptions)": [processor.stderr().encode()],
        "stdout (span attributes)": [processor.stdout().encode()],
        "results, DLQ and retry records": output_texts(reader),
    }
    for what, secret in SECRETS.items():
        for where, texts in sources.items():
            if any(secret.encode() in text for text in texts):
                leaks.append(f"{what} in {where}")
    assert leaks == []
    report.notes["log_lines"] = len(processor.stderr().splitlines())


# --- 11: Apache Kafka with SASL_SSL (SCRAM-SHA-512 over TLS) and ACLs --------------------

PROCESSOR = "cancel-processor"
NO_WRITE = "cancel-processor-no-write"  # may read, may write no topic: no idempotent producer
PASSWORD = "kafka-pw-8f2d6b1a9c4e7f3b"
# A refused start must end this quickly (the CLI's own start takes about a second).
REFUSAL_SECONDS = 10.0


@dataclass(frozen=True)
class Refusal:
    """One ``cancel-processor run`` the broker refuses, and what its one line must say."""

    name: str
    kafka: dict[str, Any]  # merged into [kafka] of the working config
    env: dict[str, str]
    says: tuple[str, ...]  # the cause, the key to change


def _secure(bootstrap: str, cafile: Path) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": PROCESSOR,
            "sasl_password": "${FAULTS_KAFKA_PASSWORD}",
            "ssl_cafile": str(cafile),
            "enable_idempotence": True,
        }
    }


def _internal(config: dict[str, Any], bootstrap: str) -> dict[str, Any]:
    """``config`` through the broker's PLAINTEXT listener: no TLS, no login."""
    kafka = {k: v for k, v in config["kafka"].items() if not k.startswith(("sasl_", "ssl_"))}
    kafka.update(bootstrap_servers=bootstrap, security_protocol="PLAINTEXT")
    return {**config, "kafka": kafka}


async def test_11_kafka_over_tls_and_sasl_and_refused_logins(faults: FaultEnv) -> None:
    """Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512 over TLS, certificates made
    here) and ACLs: the processor, as a principal with just the ACLs it needs and an
    idempotent producer, cancels a stream of orders; then every refusal ends a start with
    one line naming the cause and the key to change, exit code 2."""
    tls = make_certificates(faults.workdir / "tls")
    untrusted_ca = make_certificates(faults.workdir / "other", name="other").ca
    broker = SecureKafkaNode(
        tls,
        {PROCESSOR: PASSWORD, NO_WRITE: PASSWORD},
        data_dir=faults.workdir / "kafka",
    )
    faults.own_broker(broker)
    await broker.start()
    faults.topology = Topology(broker.secure_bootstrap_servers)
    sim = faults.simulator()
    async with sim:
        config = faults.config(sim, _secure(broker.secure_bootstrap_servers, tls.ca))
        env = {**sim.secrets_env(), "FAULTS_KAFKA_PASSWORD": PASSWORD}
        # The test's own clients (topics, input, output, commits) use the PLAINTEXT
        # listener, whose User:ANONYMOUS is a super user.
        admin = _internal(config, broker.bootstrap_servers)
        settings = await faults.provision(admin, env)
        kafka = settings.kafka
        outputs = [kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic]
        refusals = await _prepare_refusals(faults, broker, admin, env, untrusted_ca)
        await broker.create_acls(
            processor_acls(
                PROCESSOR,
                group=kafka.group_id,
                input_topic=kafka.input_topic,
                retry_topic=kafka.retry_topic,
                output_topics=outputs,
            )
        )

        # 1. The processor through SASL_SSL, with its ACLs and an idempotent producer.
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            sent = await produce_steadily(cluster, order_stream(300, 30), per_second=150)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=120)
            await processor.stop()
            assert processor.returncode == 0, processor.stderr()
            report = await faults.finish("11 Kafka SASL_SSL + refusals", sent, reader, cluster, sim)

        # 2. The refusals: one line each, exit code 2, in seconds.
        lines: dict[str, str] = {}
        seconds: dict[str, float] = {}
        for refusal in refusals:
            refused_config = deep_merge(config, {"kafka": refusal.kafka})
            process = faults.processor(refused_config, {**env, **refusal.env}, name=refusal.name)
            lines[refusal.name], seconds[refusal.name] = await _one_line_refusal(process)

    assert report.lost == 0, report.row()
    assert report.duplicates == 0, report.row()
    assert report.committed_equals_end
    for refusal in refusals:
        line = lines[refusal.name]
        assert line.startswith("error: kafka "), (refusal.name, line)
        for text in refusal.says:
            assert text in line, (refusal.name, text, line)
        assert PASSWORD not in line
        assert "not-the-password" not in line
    report.notes.update(refusal_lines=lines, refusal_seconds=seconds)


async def _prepare_refusals(
    faults: FaultEnv,
    broker: SecureKafkaNode,
    admin: dict[str, Any],
    env: dict[str, str],
    untrusted_ca: Path,
) -> list[Refusal]:
    """The topics and ACLs of every refused start (the ACLs deny explicitly, as an
    operator revoking a right would), and what each start must answer."""
    kafka = faults.settings(admin, env).kafka
    group, topic = kafka.group_id, kafka.input_topic
    outputs = [kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic]
    hidden, unreadable = f"{topic}.hidden", f"{topic}.unreadable"
    for extra in (hidden, unreadable):
        await faults.topology.create_topics(
            deep_merge(admin, {"kafka": {"input_topic": extra}}), env
        )
    acls = [
        # A group of its own, denied.
        *Acl.deny(PROCESSOR, Resource.GROUP, f"{group}.denied", Operation.READ),
        # An input topic it may not even see: refused at the consumer's start.
        *Acl.deny(PROCESSOR, Resource.TOPIC, hidden, Operation.DESCRIBE, Operation.READ),
        # An input topic it may see but not read: refused at the first fetch.
        *Acl.allow(PROCESSOR, Resource.TOPIC, unreadable, Operation.DESCRIBE),
        *Acl.deny(PROCESSOR, Resource.TOPIC, unreadable, Operation.READ),
        # Rights on its topics and group, none on the cluster, no Write: since Kafka 3.0
        # Write on any topic would allow the idempotent producer (KIP-679).
        *Acl.allow(NO_WRITE, Resource.TOPIC, topic, Operation.READ, Operation.DESCRIBE),
        *Acl.allow(NO_WRITE, Resource.GROUP, group, Operation.READ),
        *[a for t in outputs for a in Acl.allow(NO_WRITE, Resource.TOPIC, t, Operation.DESCRIBE)],
        *Acl.deny(NO_WRITE, Resource.CLUSTER, CLUSTER, Operation.IDEMPOTENT_WRITE),
    ]
    await broker.create_acls(acls)
    principal = f"User:{PROCESSOR}"
    return [
        Refusal(
            "wrong-password",
            {},
            {"FAULTS_KAFKA_PASSWORD": "not-the-password"},
            (
                f"kafka broker {broker.secure_bootstrap_servers}: SASL SCRAM-SHA-512 login as"
                f" '{PROCESSOR}' refused",
                "SaslAuthenticationFailed",
                "kafka.sasl_password",
            ),
        ),
        Refusal(
            "untrusted-ca",
            {"ssl_cafile": str(untrusted_ca)},
            {},
            ("TLS certificate not trusted", "kafka.ssl_cafile"),
        ),
        Refusal(
            "denied-group",
            {"group_id": f"{group}.denied"},
            {},
            (
                f"denied the consumer group '{group}.denied' to {principal}",
                "GroupAuthorizationFailedError",
                "kafka.group_id",
            ),
        ),
        Refusal(
            "hidden-topic",
            {"input_topic": hidden},
            {},
            (
                f"denied reading topic '{hidden}' or",
                "TopicAuthorizationFailedError",
                "kafka.input_topic",
            ),
        ),
        Refusal(
            "unreadable-topic",
            {"input_topic": unreadable},
            {},
            (
                f"denied reading topic '{unreadable}' or",
                "TopicAuthorizationFailedError",
                "kafka.input_topic",
            ),
        ),
        Refusal(
            "no-idempotent-write",
            {"sasl_username": NO_WRITE},
            {},
            (
                f"refused the idempotent producer of User:{NO_WRITE}",
                "ClusterAuthorizationFailedError",
                "IdempotentWrite",
                "kafka.enable_idempotence = false",
            ),
        ),
    ]


async def _one_line_refusal(process: ProcessorProcess) -> tuple[str, float]:
    """The one line a refused start ends with, and how long the start took."""
    code = await process.wait(timeout=60)
    took = time.monotonic() - process.started_at
    stderr = process.stderr()
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "nclosed" not in stderr, stderr  # "Unclosed AIOKafka...", "unclosed transport"
    assert took < REFUSAL_SECONDS, f"{process.name} took {took:.1f} s to refuse:\n{stderr}"
    return lines[0], round(took, 2)
