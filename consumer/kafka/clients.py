"""The processor's Kafka clients: the options shared by every client we create (security,
client id), the consumer and producer settings, and the check that the broker accepts our
credentials and certificate before we start."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownError,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
    UnsupportedVersionError,
)
from aiokafka.helpers import create_ssl_context

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.errors import ConfigError
from consumer.kafka.seams import KafkaConsumer, KafkaProducer

_SASL_REFUSALS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
)

# How long a refused login waits for its connection to close.
_CLOSE_SECONDS = 2.0


class _Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


C = TypeVar("C", bound=_Startable)


@contextlib.asynccontextmanager
async def started(client: C) -> AsyncIterator[C]:
    """Start an aiokafka client and always stop it, also when its start fails: a client
    left unstopped warns "Unclosed" at exit."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()


# A new group starts from the oldest retained event: no cancellation is skipped.
AUTO_OFFSET_RESET = "earliest"


class KafkaSecurityError(ConfigError):
    """The broker refused our credentials or certificate: waiting will not fix it."""


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"kafka TLS files (ssl_cafile, ssl_certfile, ssl_keyfile) unusable: {exc}"
            ) from None
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_password is not None  # guaranteed by KafkaSettings validation
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options


async def check_security(kafka: KafkaSettings) -> None:
    """Raise ``KafkaSecurityError`` when a reachable bootstrap server refuses our TLS or SASL.

    aiokafka reports a refused login like an unreachable broker ("Unable to bootstrap"), so
    the runner would wait forever for a broker that is there; one direct connection tells
    them apart. Unreachable servers are not an error here.
    """
    if kafka.security_protocol == "PLAINTEXT":
        return
    options = client_options(kafka)
    for server in kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        where = f"{host}:{port}"
        conn = AIOKafkaConnection(
            host.strip("[]"),
            int(port),
            client_id=kafka.client_id,
            request_timeout_ms=kafka.request_timeout_ms,
            ssl_context=options.get("ssl_context"),
            security_protocol=kafka.security_protocol,
            sasl_mechanism=options.get("sasl_mechanism", "PLAIN"),
            sasl_plain_username=options.get("sasl_plain_username"),
            sasl_plain_password=options.get("sasl_plain_password"),
        )
        try:
            await conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise KafkaSecurityError(
                f"kafka broker {where}: TLS certificate not trusted ({exc.verify_message});"
                " check kafka.ssl_cafile"
            ) from None
        except ssl.SSLError as exc:
            raise KafkaSecurityError(
                f"kafka broker {where}: TLS handshake failed ({exc.reason or exc})"
            ) from None
        except UnsupportedSaslMechanismError:
            await _closed(conn)
            # Kafka answers the handshake with the mechanisms of the listener; aiokafka
            # keeps none of them in the exception.
            raise KafkaSecurityError(
                f"kafka broker {where}: SASL mechanism {kafka.sasl_mechanism} not enabled on"
                " this listener; check kafka.sasl_mechanism"
            ) from None
        except _SASL_REFUSALS as exc:
            await _closed(conn)
            raise KafkaSecurityError(_sasl_refused(kafka, where, str(exc))) from None
        except (KeyError, ValueError) as exc:
            await _closed(conn)
            # aiokafka's SCRAM client fails this way on a server-final message with an error
            # (e=...) instead of a signature: a refused login.
            raise KafkaSecurityError(
                _sasl_refused(kafka, where, f"error reply to SCRAM ({type(exc).__name__})")
            ) from None
        except (OSError, TimeoutError, KafkaConnectionError, KafkaError):
            continue
        await _closed(conn)
        return


async def _closed(conn: AIOKafkaConnection) -> None:
    """Close a connection that was made (TCP and TLS up) and wait, briefly, until its socket
    is: a TLS connection closes after a goodbye with the broker, and a process that exits
    before then (a refused start) warns "unclosed transport"."""
    closing = conn.close()
    if closing is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing), _CLOSE_SECONDS)


def _sasl_refused(kafka: KafkaSettings, where: str, detail: str) -> str:
    return (
        f"kafka broker {where}: SASL {kafka.sasl_mechanism} login as {kafka.sasl_username!r}"
        f" refused ({detail}); check kafka.sasl_username and kafka.sasl_password"
    )


def aiokafka_clients(
    kafka: KafkaSettings, processing: ProcessingSettings
) -> tuple[KafkaConsumer, KafkaProducer]:
    """The consumer (manual commits) and the producer (``acks=all``) of the processor."""
    consumer = AIOKafkaConsumer(
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset=AUTO_OFFSET_RESET,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        # The group waits this long for us to rejoin: long enough for a full drain.
        rebalance_timeout_ms=max(
            kafka.session_timeout_ms,
            int(processing.drain_grace_seconds * 1000) + kafka.request_timeout_ms,
        ),
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        fetch_max_bytes=kafka.fetch_max_bytes,
        request_timeout_ms=kafka.request_timeout_ms,
        # The range assignor gives partition n of the input and of the retry topic (same
        # partition count) to the same member: whoever handles an event also holds every
        # park of its shipments. Round robin stays listed so that a rolling upgrade from a
        # version that used only it can form a group.
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
        **client_options(kafka),
    )
    producer = AIOKafkaProducer(
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=5,
        # aiokafka's 16 KiB default fills in a few ms at thousands of results per second,
        # and a full batch makes every send wait for it to drain.
        max_batch_size=256 * 1024,
        max_request_size=kafka.max_request_bytes,
        request_timeout_ms=kafka.request_timeout_ms,
        **client_options(kafka),
    )
    return consumer, producer


def producer_refusal(exc: Exception, kafka: KafkaSettings) -> KafkaSecurityError | None:
    """A producer start the broker refused for good, as one line naming the key to change
    (``None``: not a refusal)."""
    name = type(exc).__name__
    if not kafka.enable_idempotence:
        return None
    if isinstance(exc, ClusterAuthorizationFailedError | TransactionalIdAuthorizationFailed):
        # Kafka 3.0+ allows an idempotent producer Write on any topic or IdempotentWrite
        # on the cluster (KIP-679); older brokers ask for IdempotentWrite only.
        return KafkaSecurityError(
            f"kafka broker refused the idempotent producer of {_principal(kafka)} ({name}):"
            " grant it Write on the output topics or IdempotentWrite on the cluster,"
            " or set kafka.enable_idempotence = false"
        )
    if isinstance(exc, UnknownError | UnsupportedVersionError):
        return KafkaSecurityError(
            f"kafka broker refused the idempotent producer ({name}), as a broker without one"
            " answers; if it has none, set kafka.enable_idempotence = false"
        )
    return None


def consumer_refusal(exc: Exception, kafka: KafkaSettings) -> ConfigError | None:
    """A consumer start or poll the broker answered with a denial that waiting will not
    change, as one line naming the key to change (``None``: not a refusal). Apache Kafka
    denies a topic when the consumer starts (its metadata), the group when it joins."""
    name = type(exc).__name__
    if isinstance(exc, GroupAuthorizationFailedError):
        return KafkaSecurityError(
            f"kafka broker denied the consumer group {kafka.group_id!r} to {_principal(kafka)}"
            f" ({name}): grant Read on the group, or change kafka.group_id"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        return KafkaSecurityError(
            f"kafka broker denied reading topic {kafka.input_topic!r} or"
            f" {kafka.retry_topic!r} to {_principal(kafka)} ({name}): grant Read and Describe"
            " on both, or change kafka.input_topic / kafka.retry_topic"
        )
    if isinstance(exc, UnknownTopicOrPartitionError):
        return ConfigError(
            f"kafka broker has no topic {kafka.input_topic!r} or {kafka.retry_topic!r}"
            f" ({name}): create them with `cancel-processor topics`, or change"
            " kafka.input_topic / kafka.retry_topic"
        )
    return None


def _principal(kafka: KafkaSettings) -> str:
    if kafka.sasl_username:
        return f"User:{kafka.sasl_username}"
    return "this client's principal"


async def topic_partitions(kafka: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of these topics (none for a topic the broker does not know), for
    readers that assign partitions themselves: an unsubscribed consumer knows of none."""
    admin = AIOKafkaAdminClient(
        **client_options(kafka), request_timeout_ms=kafka.request_timeout_ms
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in topic["partitions"]
    ]
