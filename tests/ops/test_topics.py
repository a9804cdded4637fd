"""``cancel-processor topics``: creates the four topics with the [topics] settings, is safe to
run twice, and reports how existing topics differ, one line each."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumer.config import BOOTSTRAP_ENV, KafkaSettings, TopicsSettings, settings_from_mapping
from consumer.core.errors import ConfigError
from consumer.kafka.clients import client_options
from consumer.tools.embedded_broker import free_port
from consumer.tools.topics import (
    Finding,
    TopicsError,
    TopicsReport,
    ensure_topics,
    provision_topics,
    topic_names,
    topic_specs,
)

DAY_MS = 86_400_000


def kafka_settings(bootstrap: str, run: str | None = None) -> KafkaSettings:
    run = run or uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        input_topic=f"orders.cancelled.{run}",
        cancelled_topic=f"shipments.cancelled.{run}",
        failed_topic=f"shipments.cancel-failed.{run}",
        dlq_topic=f"orders.cancelled.dlq.{run}",
        retry_topic=f"orders.cancelled.retry.{run}",
    )


def single_node(**overrides: object) -> TopicsSettings:
    base: dict[str, object] = {
        "partitions": 3,
        "replication_factor": 1,
        "min_insync_replicas": 1,
    }
    return TopicsSettings.model_validate({**base, **overrides})


# --- pure parts --------------------------------------------------------------------------------


def test_specs_give_each_topic_its_retention_and_the_shared_settings() -> None:
    kafka = KafkaSettings(bootstrap_servers="b:9092")
    topics = TopicsSettings()
    specs = {s.name: s for s in topic_specs(kafka, topics)}
    assert list(specs) == topic_names(kafka)
    retention = {name: int(s.configs["retention.ms"]) for name, s in specs.items()}
    assert retention == {
        "orders.cancelled": 7 * DAY_MS,
        "orders.cancelled.retry": 7 * DAY_MS,
        "shipments.cancelled": 14 * DAY_MS,
        "shipments.cancel-failed": 14 * DAY_MS,
        "orders.cancelled.dlq": 30 * DAY_MS,
    }
    for spec in specs.values():
        assert spec.partitions == 6
        assert spec.replication_factor == 3
        assert spec.configs["cleanup.policy"] == "delete"
        assert spec.configs["min.insync.replicas"] == "2"
        assert spec.configs["compression.type"] == "producer"
    # What the processor writes takes the largest record its producer may send.
    produced = {n: s.configs.get("max.message.bytes") for n, s in specs.items()}
    assert produced == {
        "orders.cancelled": None,
        "orders.cancelled.retry": str(kafka.max_request_bytes),
        "shipments.cancelled": str(kafka.max_request_bytes),
        "shipments.cancel-failed": str(kafka.max_request_bytes),
        "orders.cancelled.dlq": str(kafka.max_request_bytes),
    }


def test_min_insync_above_the_replication_factor_is_a_config_error() -> None:
    raw = {
        "kafka": {"bootstrap_servers": "b:9092"},
        "topics": {"replication_factor": 1, "min_insync_replicas": 2},
    }
    with pytest.raises(ConfigError, match="min_insync_replicas must not exceed") as info:
        settings_from_mapping(raw, {})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("factor", "insync"), [(3, 3), (2, 2)])
def test_min_insync_equal_to_a_replication_factor_above_one_is_a_config_error(
    factor: int, insync: int
) -> None:
    # acks=all would stop every write while one broker is down (any rolling upgrade).
    raw = {
        "kafka": {"bootstrap_servers": "b:9092"},
        "topics": {"replication_factor": factor, "min_insync_replicas": insync},
    }
    with pytest.raises(ConfigError, match="min_insync_replicas must be below") as info:
        settings_from_mapping(raw, {})
    assert str(info.value).startswith("config: topics: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("factor", "insync"), [(1, 1), (2, 1), (3, 2)])
def test_min_insync_below_the_replication_factor_or_single_copies_are_fine(
    factor: int, insync: int
) -> None:
    raw = {
        "kafka": {"bootstrap_servers": "b:9092"},
        "topics": {"replication_factor": factor, "min_insync_replicas": insync},
    }
    assert settings_from_mapping(raw, {}).topics.min_insync_replicas == insync


def test_an_unknown_codec_is_refused_naming_the_key() -> None:
    raw = {"kafka": {"bootstrap_servers": "b:9092"}, "topics": {"compression_type": "brotli"}}
    with pytest.raises(ConfigError, match=r"topics\.compression_type"):
        settings_from_mapping(raw, {})


def test_report_fails_on_errors_missing_topics_and_differences() -> None:
    # A difference fails in create mode too: a topic auto-created with broker defaults must
    # stop the deployment.
    differs = TopicsReport([Finding("t", "ok"), Finding("t", "mismatch", "partitions is 1")])
    assert differs.failed()
    assert TopicsReport([Finding("t", "missing")]).failed()
    assert TopicsReport([Finding("t", "error", "cannot create")]).failed()
    assert not TopicsReport([Finding("t", "unverified", "x"), Finding("t", "ok")]).failed()
    assert Finding("t", "mismatch", "partitions is 1, expected 3").line() == (
        "t: mismatch: partitions is 1, expected 3"
    )


# --- against the broker ------------------------------------------------------------------------


@pytest.mark.integration
async def test_creates_the_four_topics_and_a_second_run_finds_them_as_configured(
    bootstrap_servers: str,
) -> None:
    kafka = kafka_settings(bootstrap_servers)
    topics = single_node(dlq_retention_days=45)

    first = await provision_topics(kafka, topics)
    second = await provision_topics(kafka, topics)
    check = await provision_topics(kafka, topics, create=False)

    names = topic_names(kafka)
    assert [(f.topic, f.kind) for f in first.findings] == [(n, "created") for n in names]
    assert [(f.topic, f.kind) for f in second.findings] == [(n, "ok") for n in names]
    assert check.findings == second.findings
    assert not check.failed()
    assert "3 partitions, replication factor 1, retention 45 days" in second.findings[-1].line()
    reported = await topic_configs(kafka, kafka.dlq_topic)
    assert int(reported["retention.ms"]) == 45 * DAY_MS
    assert reported["cleanup.policy"] == "delete"
    assert int(reported["max.message.bytes"]) == kafka.max_request_bytes


@pytest.mark.integration
async def test_check_mode_creates_nothing_and_reports_missing_topics(
    bootstrap_servers: str,
) -> None:
    kafka = kafka_settings(bootstrap_servers)

    report = await provision_topics(kafka, single_node(), create=False)

    assert [(f.topic, f.kind) for f in report.findings] == [
        (n, "missing") for n in topic_names(kafka)
    ]
    assert report.failed()
    assert not set(topic_names(kafka)) & set(await list_topics(kafka))


@pytest.mark.integration
async def test_differences_are_reported_one_line_each(bootstrap_servers: str) -> None:
    kafka = kafka_settings(bootstrap_servers)
    await provision_topics(kafka, single_node())

    report = await provision_topics(kafka, single_node(partitions=4, input_retention_days=8))

    lines = [f.line() for f in report.findings if f.topic == kafka.input_topic]
    assert lines == [
        f"{kafka.input_topic}: mismatch: partitions is 3, expected 4",
        f"{kafka.input_topic}: mismatch: retention.ms is {7 * DAY_MS}, expected {8 * DAY_MS}",
    ]
    other = [f.line() for f in report.findings if f.topic == kafka.dlq_topic]
    assert other == [f"{kafka.dlq_topic}: mismatch: partitions is 3, expected 4"]
    assert report.failed(), "differences are reported (never altered) and fail"


@pytest.mark.integration
async def test_a_replication_factor_differing_from_the_config_is_a_mismatch(
    bootstrap_servers: str,
) -> None:
    kafka = kafka_settings(bootstrap_servers)
    await ensure_topics(kafka, partitions=3, replication_factor=1)

    report = await provision_topics(
        kafka, single_node(replication_factor=2, min_insync_replicas=1), create=False
    )

    lines = [f.line() for f in report.findings if f.topic == kafka.input_topic]
    assert f"{kafka.input_topic}: mismatch: replication factor is 1, expected 2" in lines


async def test_an_unreachable_broker_is_one_clear_error() -> None:
    kafka = kafka_settings(f"127.0.0.1:{free_port()}")
    with pytest.raises(TopicsError, match=r"kafka broker unreachable at 127\.0\.0\.1:\d+"):
        await provision_topics(kafka, single_node())


# --- the command --------------------------------------------------------------------------------

CONFIG = """
[kafka]
bootstrap_servers = "{bootstrap}"
input_topic = "orders.cancelled.{run}"
cancelled_topic = "shipments.cancelled.{run}"
failed_topic = "shipments.cancel-failed.{run}"
dlq_topic = "orders.cancelled.dlq.{run}"
retry_topic = "orders.cancelled.retry.{run}"

[topics]
partitions = {partitions}
replication_factor = 1
min_insync_replicas = 1

# The topics command needs none of these secrets.
[providers.shipstation]
kind = "shipstation"
base_url = "https://api.shipstation.com"
api_key = "${{TOPICS_TEST_UNSET_KEY}}"
"""


def write_config(tmp_path: Path, bootstrap: str, run: str, partitions: int = 3) -> Path:
    path = tmp_path / f"config-{partitions}.toml"
    path.write_text(CONFIG.format(bootstrap=bootstrap, run=run, partitions=partitions))
    return path


async def topics_command(config: Path, *args: str) -> tuple[int, list[str], list[str]]:
    return await cli_command("topics", "--config", str(config), *args)


async def cli_command(*args: str) -> tuple[int, list[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k != BOOTSTRAP_ENV}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode().splitlines()


@pytest.mark.integration
async def test_command_creates_then_checks_then_flags_a_difference(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    run = uuid.uuid4().hex[:10]
    config = write_config(tmp_path, bootstrap_servers, run)

    created = await topics_command(config)
    checked = await topics_command(config, "--check")
    differs = await topics_command(write_config(tmp_path, bootstrap_servers, run, 5), "--check")
    # Create mode too: the topics exist, but not as configured.
    differs_on_create = await topics_command(write_config(tmp_path, bootstrap_servers, run, 5))

    code, out, err = created
    assert (code, err) == (0, [])
    assert [line.split(": ")[:2] for line in out] == [
        [f"{topic}.{run}", "created"]
        for topic in (
            "orders.cancelled",
            "orders.cancelled.retry",
            "shipments.cancelled",
            "shipments.cancel-failed",
            "orders.cancelled.dlq",
        )
    ]
    code, out, err = checked
    assert (code, err) == (0, [])
    assert all(": ok: " in line for line in out)
    for code, out, err in (differs, differs_on_create):
        assert code == 1
        assert f"orders.cancelled.{run}: mismatch: partitions is 3, expected 5" in out
        assert err == []


async def test_command_reports_an_unreachable_broker_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"127.0.0.1:{free_port()}", "x")
    code, out, err = await topics_command(config)
    assert code == 1
    assert out == []
    assert len(err) == 1
    assert err[0].startswith("error: kafka broker unreachable at 127.0.0.1:")


# The one-shot commands that talk to the broker; demo-traffic sends one event at most.
BROKER_COMMANDS = [("topics",), ("demo-traffic", "--count", "1")]


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: c[0])
async def test_unusable_tls_files_are_one_line_not_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{free_port()}"\nsecurity_protocol = "SSL"\n'
        f'ssl_cafile = "{tmp_path / "missing-ca.pem"}"\n'
    )
    code, _, err = await cli_command(command[0], "--config", str(config), *command[1:])
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("error: kafka TLS files (ssl_cafile, ssl_certfile, ssl_keyfile)")


@pytest.mark.integration
@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: c[0])
async def test_a_refused_login_is_named_not_reported_as_unreachable(
    tmp_path: Path, strict_broker: str, command: tuple[str, ...]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{strict_broker}"\nrequest_timeout_ms = 5000\n'
        'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "cancel-processor"\nsasl_password = "wrong-password-123"\n'
    )
    code, _, err = await cli_command(command[0], "--config", str(config), *command[1:])
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"error: kafka broker {strict_broker}: SASL SCRAM-SHA-512 login")
    assert "wrong-password-123" not in err[0]


@pytest.mark.parametrize("command", ["topics", "redrive"])
async def test_one_shot_commands_stop_on_sigterm(tmp_path: Path, command: str) -> None:
    # In the image tini (PID 1) passes SIGTERM on; the command must then stop, not wait out
    # a broker that accepts connections and never answers.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, writer: held.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{port}"\n')
    env = {k: v for k, v in os.environ.items() if k != BOOTSTRAP_ENV}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumer", command, "--config", str(config), env=env
    )
    try:
        await asyncio.sleep(1.5)
        assert process.returncode is None, "it should still be waiting for the broker"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == -signal.SIGTERM
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_command_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[kafka]\nbootstrap_servers = "b:9092"\n[topics]\npartitions = 0\n')
    code, _, err = await topics_command(config)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(f"error: {config}: topics.partitions:")


# --- helpers ---------------------------------------------------------------------------------


async def topic_configs(kafka: KafkaSettings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def list_topics(kafka: KafkaSettings) -> list[str]:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()
