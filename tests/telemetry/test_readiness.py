"""/readyz of the processor: joined the group and heard from the broker recently."""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.retry import RetryPolicy
from consumer.kafka.runner import Runner
from tests.telemetry.conftest import Telemetry
from tests.telemetry.fake_kafka import FakeConsumer, RecordingProducer, clients


@pytest.fixture
def runner(telemetry: Telemetry) -> Runner:
    return Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(),
        Canceller({}, RetryPolicy()),
        telemetry.tracer,
        metrics=telemetry.metrics,
        clients=clients(
            FakeConsumer(TopicPartition("orders.cancelled", 0), []), RecordingProducer()
        ),
    )


async def test_not_ready_until_the_group_assigns_partitions(runner: Runner) -> None:
    assert runner.readiness() == (False, "not joined to the consumer group yet")
    runner.joined()  # an empty assignment counts: this member is in the group
    assert runner.readiness() == (True, "ready")


async def test_not_ready_when_the_broker_went_quiet(runner: Runner) -> None:
    runner.joined()
    runner._broker_seen_at = time.time() - 120
    ready, reason = runner.readiness()
    assert not ready
    assert reason.startswith("no answer from the Kafka broker for 12")


async def test_the_ready_gauge_and_in_flight_gauge_read_the_runner(
    telemetry: Telemetry, runner: Runner
) -> None:
    assert telemetry.points("cancel_processor.ready") == [({}, 0)]
    runner.joined()
    assert telemetry.points("cancel_processor.ready") == [({}, 1)]
    assert telemetry.points("cancel_processor.events.in_flight") == [({}, 0)]
