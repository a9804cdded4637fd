"""Broker refusals that waiting will not change end the run with one line naming the key to
change: a refused idempotent producer, a denied group or input topic."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownError,
)
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.retry import RetryPolicy
from consumer.kafka.clients import KafkaSecurityError
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, memory_clients
from consumer.kafka.runner import Runner
from consumer.kafka.seams import Records

TP = TopicPartition("orders.cancelled", 0)


class RefusingProducer(MemoryProducer):
    def __init__(self, refusal: KafkaError) -> None:
        super().__init__()
        self.refusal = refusal
        self.stopped = False

    async def start(self) -> None:
        raise self.refusal

    async def stop(self) -> None:
        self.stopped = True


class DeniedConsumer(MemoryConsumer):
    def __init__(self, refusal: KafkaError) -> None:
        super().__init__(TP)
        self.refusal = refusal

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records:
        raise self.refusal


def runner(consumer: MemoryConsumer, producer: MemoryProducer, **kafka: object) -> Runner:
    return Runner(
        KafkaSettings.model_validate({"bootstrap_servers": "127.0.0.1:9", **kafka}),
        ProcessingSettings(),
        Canceller({}, RetryPolicy()),
        NoOpTracer(),
        clients=memory_clients(consumer, producer),
    )


async def run(runner: Runner) -> None:
    await asyncio.wait_for(runner.run(asyncio.Event()), timeout=5)


async def test_a_refused_idempotent_producer_names_the_acl_and_the_key() -> None:
    producer = RefusingProducer(ClusterAuthorizationFailedError())
    with pytest.raises(KafkaSecurityError) as refused:
        await run(runner(MemoryConsumer(TP), producer))
    message = str(refused.value)
    assert "IdempotentWrite" in message
    assert "kafka.enable_idempotence = false" in message
    assert producer.stopped, "the clients of a refused start are closed"


async def test_a_broker_without_the_idempotent_producer_names_the_key() -> None:
    with pytest.raises(KafkaSecurityError, match=r"kafka\.enable_idempotence = false"):
        await run(runner(MemoryConsumer(TP), RefusingProducer(UnknownError())))


async def test_without_idempotence_a_producer_error_is_not_taken_for_a_refusal() -> None:
    producer = RefusingProducer(ClusterAuthorizationFailedError())
    with pytest.raises(ClusterAuthorizationFailedError):
        await run(runner(MemoryConsumer(TP), producer, enable_idempotence=False))


async def test_a_denied_group_names_the_group_and_the_key() -> None:
    consumer = DeniedConsumer(GroupAuthorizationFailedError())
    with pytest.raises(KafkaSecurityError) as refused:
        await run(runner(consumer, MemoryProducer(), group_id="billing", sasl_mechanism=None))
    assert "'billing'" in str(refused.value)
    assert "kafka.group_id" in str(refused.value)


async def test_a_denied_input_topic_names_the_topic_and_the_key() -> None:
    consumer = DeniedConsumer(TopicAuthorizationFailedError())
    with pytest.raises(KafkaSecurityError, match=r"kafka\.input_topic"):
        await run(runner(consumer, MemoryProducer()))


class DeniedAtStart(MemoryConsumer):
    """Apache Kafka denies a topic when the consumer starts (loading its metadata)."""

    def __init__(self, refusal: KafkaError) -> None:
        super().__init__(TP)
        self.refusal = refusal

    async def start(self) -> None:
        raise self.refusal


async def test_a_topic_denied_at_start_names_the_topic_and_the_key() -> None:
    consumer = DeniedAtStart(TopicAuthorizationFailedError())
    with pytest.raises(KafkaSecurityError, match=r"kafka\.input_topic"):
        await run(runner(consumer, MemoryProducer()))
