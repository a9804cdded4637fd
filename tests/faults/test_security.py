"""Scenarios 10-11: secrets never leak; Kafka over TLS and SASL, and refused logins."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from consumer.kafka.clients import KafkaSecurityError, check_security
from consumer.tools.embedded_broker import free_port
from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    BrokerProcess,
    Input,
    OutputReader,
    ProcessorProcess,
    Topology,
    cluster_for,
    deep_merge,
    dlq_sources,
    poison_record,
    produce,
    result_ids,
)
from tests.faults.kafka_front import SecureFront, make_certificates
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
    for record in [*reader.results, *reader.dead_letters]:
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
                "processing": {"retry": {"max_attempts": 2, "budget_seconds": 5}},
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
        "results and DLQ records": output_texts(reader),
    }
    for what, secret in SECRETS.items():
        for where, texts in sources.items():
            if any(secret.encode() in text for text in texts):
                leaks.append(f"{what} in {where}")
    assert leaks == []
    report.notes["log_lines"] = len(processor.stderr().splitlines())


async def _one_line_refusal(process: ProcessorProcess) -> str:
    code = await process.wait(timeout=60)
    lines = [line for line in process.stderr().splitlines() if not line.startswith("{")]
    assert code == 2, process.stderr()
    assert len(lines) == 1, process.stderr()
    assert "Traceback" not in process.stderr()
    return lines[0]


def _secure_kafka(
    protocol: str, mechanism: str | None, password: str | None, ca: Any
) -> dict[str, Any]:
    kafka: dict[str, Any] = {"security_protocol": protocol}
    if mechanism is not None:
        kafka.update(
            sasl_mechanism=mechanism,
            sasl_username="cancel-processor",
            sasl_password="${FAULTS_KAFKA_PASSWORD}",
        )
    if ca is not None:
        kafka["ssl_cafile"] = str(ca)
    return {"kafka": kafka}


async def test_11_kafka_over_tls_and_sasl_and_refused_logins(faults: FaultEnv) -> None:
    certificates = make_certificates(faults.workdir / "tls")
    if certificates is None:
        pytest.skip("openssl is needed to make the test certificates")
    other_ca = make_certificates(faults.workdir / "other", name="other")
    assert other_ca is not None
    password = "kafka-pw-8f2d6b1a9c4e7f3b"
    sim = faults.simulator()
    async with sim:
        # 1. Tansu itself requiring authentication: a wrong password is one clear line.
        strict = BrokerProcess(faults.workdir, extra_args=["--authentication"], name="strict")
        faults.processes.append(strict)
        await strict.__aenter__()
        refused_config = deep_merge(
            Topology(strict.bootstrap_servers).config(sim.accounts()),
            _secure_kafka("SASL_PLAINTEXT", "SCRAM-SHA-512", password, None),
        )
        env = {**sim.secrets_env(), "FAULTS_KAFKA_PASSWORD": "not-the-password"}
        tansu_refusal = await _one_line_refusal(faults.processor(refused_config, env))
        assert tansu_refusal.startswith("error: kafka broker 127.0.0.1:"), tansu_refusal
        assert "SASL SCRAM-SHA-512 login as 'cancel-processor' refused" in tansu_refusal

        # 2. SASL_SSL (SCRAM-SHA-512 over TLS) through the front, end to end.
        front_port = free_port()
        broker = BrokerProcess(faults.workdir, advertised_port=front_port, name="plain")
        faults.processes.append(broker)
        await broker.__aenter__()
        async with SecureFront(
            upstream=(broker.broker.host, broker.broker.port),
            port=front_port,
            certificates=certificates,
            users={"cancel-processor": password},
        ) as front:
            faults.topology = Topology(f"127.0.0.1:{front_port}")
            secure = _secure_kafka("SASL_SSL", "SCRAM-SHA-512", password, certificates.ca)
            config = faults.config(sim, secure)
            env = {**sim.secrets_env(), "FAULTS_KAFKA_PASSWORD": password}
            settings = await faults.provision(config, env)
            async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
                processor = faults.processor(config, env)
                sent = await produce(cluster, order_stream(100, 10))
                wanted = expected_ids(sent)
                await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=120)
                await processor.stop()
                report = await faults.finish(
                    "11 Kafka SASL_SSL + refusals", sent, reader, cluster, sim
                )

            # 3. Refusals at the front: wrong password, wrong CA, one clear line each.
            wrong_password, untrusted = await _refusals(faults, config, env, other_ca.ca)
            await _other_mechanisms(faults, config, env)
            logins = list(front.logins)

    assert report.lost == 0, report.row()
    assert report.duplicates == 0, report.row()
    assert report.committed_equals_end
    assert ("SCRAM-SHA-512", "cancel-processor", True) in logins
    assert ("SCRAM-SHA-512", "cancel-processor", False) in logins
    assert {
        ("PLAIN", "cancel-processor", True),
        ("SCRAM-SHA-256", "cancel-processor", True),
    } <= set(logins)
    assert "SASL SCRAM-SHA-512 login as 'cancel-processor' refused" in wrong_password
    assert "TLS certificate not trusted" in untrusted, untrusted
    for line in (tansu_refusal, wrong_password, untrusted):
        assert password not in line
        assert "wrong" not in line
    report.notes.update(
        tansu_refusal=tansu_refusal, front_refusal=wrong_password, untrusted_ca=untrusted
    )


async def _refusals(
    faults: FaultEnv, config: dict[str, Any], env: dict[str, str], other_ca: Path
) -> tuple[str, str]:
    """The one line a wrong password and an untrusted certificate each end the run with."""
    wrong_password = await _one_line_refusal(
        faults.processor(config, {**env, "FAULTS_KAFKA_PASSWORD": "wrong"})
    )
    untrusted_config = deep_merge(config, {"kafka": {"ssl_cafile": str(other_ca)}})
    untrusted = await _one_line_refusal(faults.processor(untrusted_config, env))
    return wrong_password, untrusted


async def _other_mechanisms(faults: FaultEnv, config: dict[str, Any], env: dict[str, str]) -> None:
    """PLAIN and SCRAM-SHA-256 logins are accepted too; a wrong PLAIN password is not."""
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        other = deep_merge(config, {"kafka": {"sasl_mechanism": mechanism}})
        await check_security(faults.settings(other, env).kafka)
    plain = deep_merge(config, {"kafka": {"sasl_mechanism": "PLAIN"}})
    wrong = faults.settings(plain, {**env, "FAULTS_KAFKA_PASSWORD": "wrong"}).kafka
    with pytest.raises(KafkaSecurityError, match="PLAIN login as 'cancel-processor'"):
        await check_security(wrong)
