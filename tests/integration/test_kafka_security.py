"""Refused Kafka logins and unusable TLS files end the run with one clear line.

The embedded broker can require authentication (``--authentication``) but cannot be given a
user, so it refuses every login: exactly what a wrong password meets. Successful SASL and
TLS logins are proven by the fault suite (``tests/faults/test_security.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.config import KafkaSettings
from consumer.kafka.clients import KafkaSecurityError, check_security, client_options
from consumer.tools.embedded_broker import EmbeddedBroker
from tests.integration.conftest import wait_for_port

PASSWORD = "s3cret-kafka-password"


@pytest.fixture(scope="module")
def strict_broker() -> Iterator[str]:
    broker = EmbeddedBroker()
    process = subprocess.Popen(
        [*broker.command(), "--authentication"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(broker.host, broker.port, process)
        yield broker.bootstrap_servers
    finally:
        process.terminate()
        process.wait(timeout=5)


def sasl(bootstrap: str, **extra: object) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "cancel-processor",
            "sasl_password": PASSWORD,
            "request_timeout_ms": 5000,
            **extra,
        }
    )


async def test_a_refused_login_is_named_not_taken_for_an_unreachable_broker(
    strict_broker: str,
) -> None:
    with pytest.raises(KafkaSecurityError) as refused:
        await check_security(sasl(strict_broker))
    message = str(refused.value)
    assert message.startswith(f"kafka broker {strict_broker}: SASL SCRAM-SHA-512 login")
    assert "'cancel-processor' refused" in message
    assert PASSWORD not in message


async def test_an_unreachable_broker_is_not_a_security_error() -> None:
    await check_security(sasl("127.0.0.1:1"))


async def test_unreadable_tls_files_are_one_line_errors(tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "missing-ca.pem"),
    )
    with pytest.raises(KafkaSecurityError, match="kafka TLS files"):
        client_options(kafka)


async def test_run_with_a_wrong_password_exits_with_one_line(
    strict_broker: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{strict_broker}"\nenable_idempotence = false\n'
        'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "cancel-processor"\nsasl_password = "${KAFKA_TEST_PASSWORD}"\n'
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
        env={"KAFKA_TEST_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    text = stderr.decode()
    errors = [line for line in text.splitlines() if not line.startswith("{")]
    assert process.returncode == 2
    assert len(errors) == 1, text
    assert errors[0].startswith(f"error: kafka broker {strict_broker}: SASL SCRAM-SHA-512 login")
    assert "Traceback" not in text
    assert PASSWORD not in text
