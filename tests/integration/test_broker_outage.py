"""A broker that stops answering mid-stream: reported once, no unobserved commit failures,
and a stop still finishes within the grace period. Regression test of the fault suite's
scenario 5 (``tests/faults/test_broker.py``), on a broker of its own so it can be paused."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from consumer.app import run_service
from consumer.config import Settings, settings_from_mapping
from consumer.simulator import Simulator
from consumer.tools.topics import ensure_topics
from kafka_local.broker import KafkaNode
from tests.integration.kafka_helpers import Cluster, order_event

GRACE = 3


@pytest.fixture
async def paused_broker() -> AsyncIterator[KafkaNode]:
    """A broker of its own, which the test pauses."""
    async with KafkaNode() as node:
        yield node


def outage_settings(bootstrap: str, simulator: Simulator) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings_from_mapping(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"outage-{run}",
                "input_topic": f"in-{run}",
                "cancelled_topic": f"ok-{run}",
                "failed_topic": f"failed-{run}",
                "dlq_topic": f"dlq-{run}",
                "retry_topic": f"retry-{run}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "request_timeout_ms": 4000,
                "commit_interval_seconds": 0.1,
            },
            "processing": {"drain_grace_seconds": GRACE},
            "telemetry": {"log_level": "INFO", "log_format": "text"},
            "providers": simulator.provider_accounts(),
        },
        {},
    )


@pytest.mark.skipif(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") is not None, reason="own broker")
async def test_a_paused_broker_is_reported_and_stop_stays_within_the_grace_period(
    paused_broker: KafkaNode,
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = outage_settings(paused_broker.bootstrap_servers, simulator)
    await ensure_topics(settings.kafka)
    stop = asyncio.Event()
    service = asyncio.create_task(run_service(settings, stop))
    async with Cluster(settings) as cluster:
        for i in range(40):
            await cluster.send(order_event(f"SO-{i}", ("shipstation", f"se-{i}-slow100")))
        await cluster.results(count=5, timeout=60)
    # Frozen with commits and results in flight.
    paused_broker.pause()
    # Two request timeouts: the commit and the produce requests have timed out.
    await asyncio.sleep(8)
    stopping = time.monotonic()
    stop.set()
    await asyncio.wait_for(service, timeout=60)
    took = time.monotonic() - stopping

    ours = [r for r in caplog.records if r.name.startswith("consumer.kafka.")]
    trouble = [
        r.getMessage()
        for r in ours
        if r.levelno == logging.WARNING
        and r.getMessage().startswith(("producing results failed", "kafka broker not a"))
    ]
    assert trouble, "the outage went unreported"
    assert len(trouble) == len(set(trouble)), "each said once, not once per event and retry"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert took < GRACE + 3, f"stop took {took:.1f}s with the broker paused"
