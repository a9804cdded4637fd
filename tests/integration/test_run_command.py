"""``cancel-processor run`` as a real process, fed by an ordinary Kafka client."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

from consumer.config import Settings
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import free_port
from tests.integration.kafka_helpers import Cluster, order_event

CONFIG = """
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topic = "{input}"
cancelled_topic = "{cancelled}"
failed_topic = "{failed}"
dlq_topic = "{dlq}"
retry_topic = "{retry}"
enable_idempotence = {idempotence}
session_timeout_ms = 6000
heartbeat_interval_ms = 1000
commit_interval_seconds = 0.2

[processing]
drain_grace_seconds = 5

[telemetry]
# A free port: several processors may run on this machine at once.
http_host = "127.0.0.1"
http_port = 0

[providers.shipstation]
kind = "shipstation"
base_url = "{shipstation}"
api_key = "${{TEST_SHIPSTATION_KEY}}"
"""


def write_config(tmp_path: Path, settings: Settings, simulator: Simulator, bootstrap: str) -> Path:
    kafka = settings.kafka
    path = tmp_path / "config.toml"
    path.write_text(
        CONFIG.format(
            bootstrap=bootstrap,
            group=kafka.group_id,
            input=kafka.input_topic,
            cancelled=kafka.cancelled_topic,
            failed=kafka.failed_topic,
            dlq=kafka.dlq_topic,
            retry=kafka.retry_topic,
            idempotence=str(kafka.enable_idempotence).lower(),
            shipstation=simulator.shipstation_base_url,
        )
    )
    return path


@asynccontextmanager
async def started_run(config: Path, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``cancel-processor run`` as a subprocess; killed if the test leaves it running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        "--config",
        str(config),
        # ResourceWarnings (an "Unclosed" client) are shown, not filtered out by default.
        env={**os.environ, **env, "KAFKA_BOOTSTRAP_SERVERS": "", "PYTHONWARNINGS": "default"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_processes_events_and_exits_cleanly_on_sigterm(
    tmp_path: Path, settings: Settings, cluster: Cluster, simulator: Simulator
) -> None:
    config = write_config(tmp_path, settings, simulator, settings.kafka.bootstrap_servers)
    key = simulator.options.shipstation_api_key
    async with started_run(config, TEST_SHIPSTATION_KEY=key) as process:
        try:
            for i in range(20):
                await cluster.send(order_event(f"SO-{i}", ("shipstation", f"se-{i}")))
            results = await cluster.results(count=20, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)

    assert process.returncode == 0
    assert sorted(r["order_id"] for r in results) == sorted(f"SO-{i}" for i in range(20))
    assert all(r["outcome"] == "cancelled" for r in results)
    log_lines = [orjson.loads(line) for line in stderr.decode().splitlines()]
    messages = [line["msg"] for line in log_lines]
    assert "consuming" in messages
    assert messages[-1] == "stopped"
    assert sum(m == "shipment cancelled" for m in messages) == 20
    assert key not in stderr.decode(), "the API key never reaches the logs"


async def test_a_bad_config_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "x:9092"\n'
        '[providers.ss]\nkind = "shipstation"\nbase_url = "http://a"\napi_key = "${NOPE_KEY}"\n'
    )
    async with started_run(config) as process:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines() == [
        f"error: {config}: providers.ss.api_key: environment variable NOPE_KEY is not set"
    ]


async def test_an_unreachable_broker_is_reported_and_stop_still_works(
    tmp_path: Path, settings: Settings, simulator: Simulator
) -> None:
    config = write_config(tmp_path, settings, simulator, f"127.0.0.1:{free_port()}")
    async with started_run(config, TEST_SHIPSTATION_KEY="k") as process:
        assert process.stderr is not None
        entry = orjson.loads(await asyncio.wait_for(process.stderr.readline(), timeout=20))
        assert entry["msg"] == "ops http server listening"
        entry = orjson.loads(await asyncio.wait_for(process.stderr.readline(), timeout=20))
        assert entry["msg"] == "kafka broker unreachable, retrying"
        assert entry["level"] == "warning"
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    assert b"Traceback" not in rest
