"""Refused Kafka logins, certificates and ACLs end the run with one clear line.

Against Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512 over TLS, certificates made by
the test) and ACLs (``kafka_local/security.py``). The whole processor through it, and every
refusal of a ``cancel-processor run``, is the fault suite's scenario 11
(``tests/faults/test_security.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError
from opentelemetry.trace import NoOpTracer
from pydantic import SecretStr

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.retry import RetryPolicy
from consumer.kafka.clients import (
    KafkaSecurityError,
    aiokafka_clients,
    check_security,
    client_options,
    producer_refusal,
)
from consumer.kafka.runner import Runner
from consumer.kafka.seams import KafkaConsumer, KafkaProducer
from consumer.tools.topics import ensure_topics
from kafka_local.security import (
    CLUSTER,
    Acl,
    Certificates,
    Operation,
    Resource,
    SecureKafkaNode,
    make_certificates,
    processor_acls,
)

pytestmark = pytest.mark.integration

USER = "cancel-processor"
NO_WRITE = "cancel-processor-no-write"
DENIED_IDEMPOTENCE = "cancel-processor-denied-idempotence"
PASSWORD = "s3cret-kafka-password"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaNode]:
    """A node with the SASL_SSL listener, ACLs on, and the users of these tests."""
    tls = make_certificates(tmp_path_factory.mktemp("tls"))
    users = {USER: PASSWORD, NO_WRITE: PASSWORD, DENIED_IDEMPOTENCE: PASSWORD}
    with SecureKafkaNode(tls, users) as node:
        yield node


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The SASL_PLAINTEXT (SCRAM) listener of a node of its own, where a login with a wrong
    password is refused (the ops tests use it too: ``tests/ops/conftest.py``)."""
    tls = make_certificates(tmp_path_factory.mktemp("strict-tls"))
    with SecureKafkaNode(tls, {USER: PASSWORD}, sasl_plaintext=True) as node:
        yield node.sasl_bootstrap_servers


@pytest.fixture(scope="module")
def certificates(secure_broker: SecureKafkaNode) -> Certificates:
    return secure_broker.certificates


@pytest.fixture(scope="module")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("other-tls"), name="other").ca


def sasl_ssl(node: SecureKafkaNode, ca: Path, **extra: object) -> KafkaSettings:
    run = uuid.uuid4().hex[:8]
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": node.secure_bootstrap_servers,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": PASSWORD,
            "ssl_cafile": str(ca),
            "request_timeout_ms": 5000,
            "group_id": f"security-{run}",
            "input_topic": f"orders.cancelled.{run}",
            "cancelled_topic": f"shipments.cancelled.{run}",
            "failed_topic": f"shipments.cancel-failed.{run}",
            "dlq_topic": f"orders.cancelled.dlq.{run}",
            "retry_topic": f"orders.cancelled.retry.{run}",
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def processor_clients(
    kafka: KafkaSettings,
) -> AsyncIterator[tuple[KafkaConsumer, KafkaProducer]]:
    """The processor's consumer and producer (not started), both stopped at the end."""
    consumer, producer = aiokafka_clients(kafka, ProcessingSettings())
    try:
        yield consumer, producer
    finally:
        await consumer.stop()
        await producer.stop()


async def create_topics(node: SecureKafkaNode, kafka: KafkaSettings) -> None:
    """The four topics of ``kafka``, created over the PLAINTEXT listener (a super user)."""
    plain = KafkaSettings.model_validate(
        {
            "bootstrap_servers": node.bootstrap_servers,
            "input_topic": kafka.input_topic,
            "cancelled_topic": kafka.cancelled_topic,
            "failed_topic": kafka.failed_topic,
            "dlq_topic": kafka.dlq_topic,
            "retry_topic": kafka.retry_topic,
        }
    )
    await ensure_topics(plain, partitions=1)


async def test_a_refused_login_is_named_not_taken_for_an_unreachable_broker(
    secure_broker: SecureKafkaNode, certificates: Certificates
) -> None:
    await check_security(sasl_ssl(secure_broker, certificates.ca))  # the right password
    wrong = sasl_ssl(secure_broker, certificates.ca, sasl_password="not-the-password")
    with pytest.raises(KafkaSecurityError) as refused:
        await check_security(wrong)
    message = str(refused.value)
    where = secure_broker.secure_bootstrap_servers
    assert message.startswith(f"kafka broker {where}: SASL SCRAM-SHA-512 login")
    assert f"'{USER}' refused" in message
    assert "SaslAuthenticationFailed" in message
    assert "kafka.sasl_password" in message
    assert "not-the-password" not in message
    assert PASSWORD not in message


async def test_a_refused_login_without_tls_is_named_too(strict_broker: str) -> None:
    plaintext = KafkaSettings.model_validate(
        {
            "bootstrap_servers": strict_broker,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": "not-the-password",
            "request_timeout_ms": 5000,
        }
    )
    with pytest.raises(KafkaSecurityError) as refused:
        await check_security(plaintext)
    message = str(refused.value)
    assert message.startswith(f"kafka broker {strict_broker}: SASL SCRAM-SHA-512 login")
    assert "not-the-password" not in message
    await check_security(plaintext.model_copy(update={"sasl_password": SecretStr(PASSWORD)}))


async def test_an_untrusted_certificate_is_named(
    secure_broker: SecureKafkaNode, untrusted_ca: Path
) -> None:
    with pytest.raises(KafkaSecurityError) as refused:
        await check_security(sasl_ssl(secure_broker, untrusted_ca))
    message = str(refused.value)
    assert message.startswith(f"kafka broker {secure_broker.secure_bootstrap_servers}: ")
    assert "TLS certificate not trusted" in message
    assert "kafka.ssl_cafile" in message


async def test_a_mechanism_the_listener_does_not_offer_is_named(
    secure_broker: SecureKafkaNode, certificates: Certificates
) -> None:
    plain = sasl_ssl(secure_broker, certificates.ca, sasl_mechanism="PLAIN")
    with pytest.raises(KafkaSecurityError, match=r"SASL mechanism PLAIN not enabled.*sasl_mech"):
        await check_security(plain)
    # SCRAM-SHA-256 is offered too, and the user has credentials for it.
    await check_security(sasl_ssl(secure_broker, certificates.ca, sasl_mechanism="SCRAM-SHA-256"))


async def test_an_unreachable_broker_is_not_a_security_error(
    secure_broker: SecureKafkaNode, certificates: Certificates
) -> None:
    await check_security(sasl_ssl(secure_broker, certificates.ca, bootstrap_servers="127.0.0.1:1"))


async def test_unreadable_tls_files_are_one_line_errors(tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "missing-ca.pem"),
    )
    with pytest.raises(KafkaSecurityError, match="kafka TLS files"):
        client_options(kafka)


async def test_a_denied_group_or_topic_is_refused_at_the_consumers_start(
    secure_broker: SecureKafkaNode, certificates: Certificates
) -> None:
    """Apache Kafka denies the input topic (its metadata) and the group (joining it) while
    the consumer starts: the runner's start ends in the one-line error."""
    kafka = sasl_ssl(secure_broker, certificates.ca)
    await create_topics(secure_broker, kafka)
    outputs = [kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic]
    acls = processor_acls(
        USER,
        group=kafka.group_id,
        input_topic=kafka.input_topic,
        retry_topic=kafka.retry_topic,
        output_topics=outputs,
    )
    denied_group = f"{kafka.group_id}.denied"
    acls += Acl.deny(USER, Resource.GROUP, denied_group, Operation.READ)
    await secure_broker.create_acls(acls)
    hidden = kafka.model_copy(update={"input_topic": f"{kafka.input_topic}.hidden"})
    await create_topics(secure_broker, hidden)

    cases = [
        (kafka.model_copy(update={"group_id": denied_group}), "kafka.group_id"),
        (hidden, "kafka.input_topic"),
    ]
    for settings, key in cases:
        runner = Runner(settings, ProcessingSettings(), Canceller({}, RetryPolicy()), NoOpTracer())
        with pytest.raises(KafkaSecurityError, match=key.replace(".", r"\.")):
            await asyncio.wait_for(runner.run(asyncio.Event()), timeout=30)


async def test_the_idempotent_producer_is_refused_only_without_write_on_any_topic(
    secure_broker: SecureKafkaNode, certificates: Certificates
) -> None:
    """Kafka 3.0+ (KIP-679) lets an idempotent producer in with IdempotentWrite on the
    cluster or Write on any topic: a DENY of IdempotentWrite alone refuses nothing."""
    kafka = sasl_ssl(secure_broker, certificates.ca)
    await create_topics(secure_broker, kafka)
    acls = Acl.allow(NO_WRITE, Resource.TOPIC, kafka.cancelled_topic, Operation.DESCRIBE)
    acls += Acl.allow(DENIED_IDEMPOTENCE, Resource.TOPIC, kafka.cancelled_topic, Operation.WRITE)
    for user in (NO_WRITE, DENIED_IDEMPOTENCE):
        acls += Acl.deny(user, Resource.CLUSTER, CLUSTER, Operation.IDEMPOTENT_WRITE)
    await secure_broker.create_acls(acls)

    no_write = kafka.model_copy(update={"sasl_username": NO_WRITE})
    async with processor_clients(no_write) as (_, producer):
        with pytest.raises(ClusterAuthorizationFailedError) as refused:
            await producer.start()
    line = str(producer_refusal(refused.value, no_write))
    assert f"refused the idempotent producer of User:{NO_WRITE}" in line
    assert "kafka.enable_idempotence = false" in line

    writer = kafka.model_copy(update={"sasl_username": DENIED_IDEMPOTENCE})
    async with processor_clients(writer) as (_, producer):
        await producer.start()
        await (await producer.send(kafka.cancelled_topic, b"idempotent"))


async def test_run_with_a_wrong_password_exits_with_one_line(
    secure_broker: SecureKafkaNode, certificates: Certificates, tmp_path: Path
) -> None:
    where = secure_broker.secure_bootstrap_servers
    config = tmp_path / "config.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{where}"\nenable_idempotence = true\n'
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        f'sasl_username = "{USER}"\nsasl_password = "${{KAFKA_TEST_PASSWORD}}"\n'
        f'ssl_cafile = "{certificates.ca}"\n'
        "[telemetry]\nhttp_port = 0\n"
        '[providers.ss]\nkind = "shipstation"\nbase_url = "http://127.0.0.1:1"\napi_key = "k"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        "--config",
        str(config),
        env={
            "KAFKA_TEST_PASSWORD": "not-the-password",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONWARNINGS": "default",
        },
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    text = stderr.decode()
    errors = [line for line in text.splitlines() if not line.startswith("{")]
    assert process.returncode == 2, text
    assert len(errors) == 1, text
    assert errors[0].startswith(f"error: kafka broker {where}: SASL SCRAM-SHA-512 login")
    assert "kafka.sasl_password" in errors[0]
    assert "Traceback" not in text
    assert "nclosed" not in text  # "Unclosed AIOKafka...", "unclosed transport"
    assert "not-the-password" not in text
