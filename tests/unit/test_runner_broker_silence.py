"""A broker that stops acknowledging: the stall is said once and its end once; at exit the
clients that did not close in time have their connections dropped anyway."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.examples import order_cancelled_example
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, consumer_record, memory_clients
from consumer.kafka.runner import Runner
from consumer.kafka.seams import Headers
from consumer.providers.base import CancelOutcome, CancelRequest
from tests.polling import eventually

TP = TopicPartition("orders.cancelled", 0)
STALLED = (
    "kafka broker not acknowledging results, waiting; their offsets stay uncommitted until it does"
)


class Instant:
    @property
    def kind(self) -> str:
        return "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        return CancelOutcome("cancelled")


class SilentProducer(MemoryProducer):
    """Takes every record; acknowledges none until ``answer()``."""

    def __init__(self) -> None:
        super().__init__()
        self._unanswered: list[tuple[asyncio.Future[RecordMetadata], RecordMetadata]] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        taken = await super().send(topic, value, key, partition, headers=headers)
        pending: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._unanswered.append((pending, taken.result()))
        return pending

    def answer(self) -> None:
        for pending, meta in self._unanswered:
            pending.set_result(meta)
        self._unanswered.clear()


class HangingNetwork:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class UnstoppableProducer(MemoryProducer):
    """A producer whose goodbye (flush) never ends; its network client is ``client``, as
    aiokafka's producer's is."""

    def __init__(self) -> None:
        super().__init__()
        self.client = HangingNetwork()

    async def stop(self) -> None:
        await asyncio.Event().wait()


def runner(producer: MemoryProducer, consumer: MemoryConsumer) -> Runner:
    canceller = Canceller(
        {"ss": ProviderAccount("ss", Instant(), AccountGate(4))}, RetryPolicy(budget_seconds=30)
    )
    return Runner(
        KafkaSettings(
            bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000, commit_interval_seconds=0.05
        ),
        ProcessingSettings(drain_grace_seconds=0.1),
        canceller,
        NoOpTracer(),
        clients=memory_clients(consumer, producer),
    )


def event(offset: int) -> bytes:
    return orjson.dumps(
        order_cancelled_example(
            order_id=f"SO-{offset}", shipments=[{"provider": "ss", "shipment_id": f"se-{offset}"}]
        )
    )


async def test_a_stall_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumer.kafka")
    producer = SilentProducer()
    consumer = MemoryConsumer(TP, [consumer_record(TP, 0, event(0), key=b"SO-0")])
    stop = asyncio.Event()
    running = asyncio.create_task(runner(producer, consumer).run(stop))
    await eventually(lambda: STALLED in caplog.messages, timeout=5)
    await asyncio.sleep(0.3)  # several more commit intervals of silence
    producer.answer()
    await eventually(lambda: "kafka broker acknowledging results again" in caplog.messages, 5)
    stop.set()
    await asyncio.wait_for(running, timeout=5)
    assert caplog.messages.count(STALLED) == 1
    assert caplog.messages.count("kafka broker acknowledging results again") == 1
    assert consumer.committed == {TP: 1}, "committed once acknowledged"


async def test_a_producer_that_does_not_close_in_time_has_its_connections_dropped() -> None:
    producer = UnstoppableProducer()
    stop = asyncio.Event()
    running = asyncio.create_task(runner(producer, MemoryConsumer(TP)).run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(running, timeout=5)
    assert producer.client.closed
