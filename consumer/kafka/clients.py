"""Connection options shared by every Kafka client we create (security, client id), and
the check that the broker accepts our credentials and certificate before we start."""

from __future__ import annotations

import ssl
from typing import Any

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

from consumer.config import KafkaSettings
from consumer.core.errors import ConfigError

_SASL_REFUSALS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)


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
