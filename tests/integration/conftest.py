"""Fixtures for tests against a real broker: the embedded Tansu broker, started once per
session, or the cluster named by KAFKA_BOOTSTRAP_SERVERS; plus the provider simulator."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from consumer.config import BOOTSTRAP_ENV, Settings, settings_from_mapping
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import EmbeddedBroker
from consumer.tools.topics import ensure_topics
from tests.integration.kafka_helpers import Cluster

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    broker = EmbeddedBroker()
    process = subprocess.Popen(
        broker.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(broker.host, broker.port, process)
        yield broker.bootstrap_servers
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded broker exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("embedded broker did not start")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


@pytest.fixture
async def settings(bootstrap_servers: str, simulator: Simulator) -> Settings:
    """Settings with topics and a group of this test's own, created with 3 partitions."""
    run = uuid.uuid4().hex[:10]
    accounts = simulator.provider_accounts()
    built = settings_from_mapping(
        {
            "kafka": {
                "bootstrap_servers": bootstrap_servers,
                "group_id": f"test-{run}",
                "input_topic": f"orders.cancelled.{run}",
                "cancelled_topic": f"shipments.cancelled.{run}",
                "failed_topic": f"shipments.cancel-failed.{run}",
                "dlq_topic": f"orders.cancelled.dlq.{run}",
                "enable_idempotence": os.environ.get(BOOTSTRAP_ENV) is not None,
                "commit_interval_seconds": 0.2,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "processing": {
                "max_in_flight": 64,
                "drain_grace_seconds": 10,
                "retry": {"backoff_initial_seconds": 0.05, "budget_seconds": 10},
            },
            "telemetry": {"log_level": "WARNING", "log_format": "text"},
            "providers": {
                **accounts,
                # The simulator has no limit; ShipStation's 200/min would slow tests.
                "shipstation": {**accounts["shipstation"], "rate_limit_per_minute": 60_000},
            },
        },
        {},
        source="test",
    )
    await ensure_topics(built.kafka, partitions=3)
    return built


@pytest.fixture
async def cluster(settings: Settings) -> AsyncIterator[Cluster]:
    async with Cluster(settings) as c:
        yield c
