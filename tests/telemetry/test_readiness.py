"""/readyz of the processor: joined the group and heard from the broker recently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.retry import RetryPolicy
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, memory_clients
from consumer.kafka.runner import Runner
from tests.polling import eventually
from tests.telemetry.conftest import Telemetry


class Clock:
    """The wall clock, moved forward by a test."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runner(telemetry: Telemetry, clock: Clock) -> Runner:
    return Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(),
        Canceller({}, RetryPolicy()),
        telemetry.tracer,
        metrics=telemetry.metrics,
        clients=memory_clients(
            MemoryConsumer(TopicPartition("orders.cancelled", 0)), MemoryProducer()
        ),
        clock=clock,
    )


@pytest.fixture
async def joined(runner: Runner) -> AsyncIterator[Runner]:
    """The runner running, once the group assigned it its partition."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await eventually(lambda: runner.readiness() == (True, "ready"))
    yield runner
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_not_ready_until_the_group_assigns_partitions(runner: Runner) -> None:
    assert runner.readiness() == (False, "not joined to the consumer group yet")


async def test_ready_once_the_group_assigned_partitions(joined: Runner) -> None:
    assert joined.readiness() == (True, "ready")


async def test_not_ready_when_the_broker_went_quiet(joined: Runner, clock: Clock) -> None:
    clock.ahead = 120
    ready, reason = joined.readiness()
    assert not ready
    assert reason.startswith("no answer from the Kafka broker for 12")


async def test_the_ready_gauge_reads_the_runner(telemetry: Telemetry, runner: Runner) -> None:
    assert telemetry.points("cancel_processor.ready") == [({}, 0)]


async def test_the_ready_and_in_flight_gauges_read_the_running_runner(
    telemetry: Telemetry, joined: Runner
) -> None:
    assert telemetry.points("cancel_processor.ready") == [({}, 1)]
    assert telemetry.points("cancel_processor.events.in_flight") == [({}, 0)]
