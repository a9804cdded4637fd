"""The runner's drain on revocation: no work starts for partitions being handed over.

Regression test from the fault suite (scenario 4 under heavy load): records fetched while a
revoked partition was draining were dispatched after the drain's snapshot, so they escaped
it and ran on while the next owner processed the same records, the later event of an order
possibly before an interrupted earlier one.
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.runner import Runner
from consumer.providers.base import CancelOutcome, CancelRequest
from tests.integration.kafka_helpers import order_event
from tests.telemetry.fake_kafka import FakeConsumer, RecordingProducer, clients, record

TP = TopicPartition("orders.cancelled", 0)


class GatedProvider:
    """Cancels after ``release`` is set; records the shipments it was asked for."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked: list[str] = []

    @property
    def kind(self) -> str:
        return "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        self.asked.append(request.shipment_id)
        await self.release.wait()
        return CancelOutcome("cancelled")


def event_record(offset: int, order: str, shipment: str) -> ConsumerRecord[bytes, bytes]:
    value = orjson.dumps(order_event(order, ("ss", shipment)))
    return record(TP, offset, value, key=order.encode())


async def started_runner(
    provider: GatedProvider, grace: float = 10
) -> tuple[Runner, FakeConsumer, RecordingProducer]:
    consumer, producer = FakeConsumer(TP, []), RecordingProducer()
    canceller = Canceller(
        {"ss": ProviderAccount("ss", provider, AccountGate(4))}, RetryPolicy(budget_seconds=30)
    )
    runner = Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(drain_grace_seconds=grace),
        canceller,
        NoOpTracer(),
        clients=clients(consumer, producer),
    )
    await consumer.start()
    return runner, consumer, producer


async def test_records_fetched_during_a_drain_are_left_to_the_next_owner() -> None:
    provider = GatedProvider()
    runner, consumer, producer = await started_runner(provider)
    runner._dispatch(TP, event_record(0, "SO-1", "se-first"))
    await asyncio.sleep(0.01)
    draining = asyncio.create_task(runner.drain({TP}))
    await asyncio.sleep(0.01)
    # A fetch that returns while the partition drains.
    runner._dispatch(TP, event_record(1, "SO-1", "se-second"))
    assert runner.events_in_flight == 1, "nothing new starts for a draining partition"
    provider.release.set()
    await asyncio.wait_for(draining, timeout=5)
    await asyncio.sleep(0.05)
    assert provider.asked == ["se-first"]
    assert consumer.committed == {TP: 1}, "committed up to the drained work, not past"
    assert [topic for topic, *_ in producer.sent] == ["shipments.cancelled"]


async def test_a_later_event_of_an_interrupted_order_is_not_processed() -> None:
    provider = GatedProvider()
    runner, consumer, producer = await started_runner(provider, grace=0.1)
    runner._dispatch(TP, event_record(0, "SO-1", "se-stuck"))
    runner._dispatch(TP, event_record(1, "SO-1", "se-after"))
    await asyncio.wait_for(runner.drain({TP}), timeout=5)
    await asyncio.sleep(0.05)
    assert provider.asked == ["se-stuck"]
    assert producer.sent == [], "the later event must not overtake the interrupted one"
    assert consumer.committed == {}


class PerShipmentGates:
    """Cancels a shipment once its own gate opens; shipments without a gate cancel at once."""

    def __init__(self, *gated: str) -> None:
        self.gates = {shipment: asyncio.Event() for shipment in gated}

    @property
    def kind(self) -> str:
        return "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        gate = self.gates.get(request.shipment_id)
        if gate is not None:
            await gate.wait()
        return CancelOutcome("cancelled")


async def test_work_from_before_a_rewind_never_moves_the_commit_past_replayed_records() -> None:
    provider = PerShipmentGates("se-old", "se-new")
    consumer, producer = FakeConsumer(TP, []), RecordingProducer()
    canceller = Canceller(
        {"ss": ProviderAccount("ss", provider, AccountGate(4))}, RetryPolicy(budget_seconds=30)
    )
    runner = Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(drain_grace_seconds=0.1),
        canceller,
        NoOpTracer(),
        clients=clients(consumer, producer),
    )
    await consumer.start()
    runner._dispatch(TP, event_record(10, "SO-A", "se-old"))
    # The position goes back (an offset reset): offsets 3 and 10 are read again, and offset
    # 10 is now another record that has not finished.
    runner._dispatch(TP, event_record(3, "SO-B", "se-rewound"))
    runner._dispatch(TP, event_record(10, "SO-D", "se-new"))
    await asyncio.sleep(0.05)
    provider.gates["se-old"].set()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(runner.drain({TP}), timeout=5)
    assert consumer.committed == {TP: 4}, "only the replayed offset 3 is done"
