"""The processor's Kafka clients: the options shared by every client we create (security,
client id), the consumer and producer settings, and the check that the broker accepts our
credentials and certificate before we start."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.errors import ConfigError
from consumer.kafka.seams import KafkaConsumer, KafkaProducer

_SASL_REFUSALS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


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
        try:
            conn = await create_conn(
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
        except ssl.SSLCertVerificationError as exc:
            raise KafkaSecurityError(
                f"kafka broker {where}: TLS certificate not trusted ({exc.verify_message});"
                " check kafka.ssl_cafile"
            ) from None
        except ssl.SSLError as exc:
            raise KafkaSecurityError(
                f"kafka broker {where}: TLS handshake failed ({exc.reason or exc})"
            ) from None
        except _SASL_REFUSALS as exc:
            raise KafkaSecurityError(_sasl_refused(kafka, where, str(exc))) from None
        except (KeyError, ValueError) as exc:
            # aiokafka's SCRAM client fails this way on a server-final message with an error
            # (e=...) instead of a signature: a refused login.
            raise KafkaSecurityError(
                _sasl_refused(kafka, where, f"error reply to SCRAM ({type(exc).__name__})")
            ) from None
        except (OSError, TimeoutError, KafkaConnectionError, KafkaError):
            continue
        conn.close()
        return


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
