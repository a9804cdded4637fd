"""Fixtures for tests against a real broker: one Apache Kafka node started once per session
(``kafka_local/broker.py``), or the cluster named by KAFKA_BOOTSTRAP_SERVERS; plus the
provider simulator."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from consumer.config import BOOTSTRAP_ENV, Settings, settings_from_mapping
from consumer.simulator import Simulator
from consumer.tools.topics import ensure_topics
from kafka_local.broker import KafkaNode
from tests.integration.kafka_helpers import Cluster

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    """One Apache Kafka node (KRaft) for the session, or the cluster KAFKA_BOOTSTRAP_SERVERS
    names."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with KafkaNode() as node:
        yield node.bootstrap_servers


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
                "retry_topic": f"orders.cancelled.retry.{run}",
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
