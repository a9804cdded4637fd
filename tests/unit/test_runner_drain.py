"""The runner's drain on revocation: no work starts for partitions being handed over.

Regression test from the fault suite (scenario 4 under heavy load): records fetched while a
revoked partition was draining were dispatched after the drain's snapshot, so they escaped
it and ran on while the next owner processed the same records, the later event of an order
possibly before an interrupted earlier one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, consumer_record, memory_clients
from consumer.kafka.runner import Runner
from consumer.providers.base import CancelOutcome, CancelRequest, Provider
from tests.integration.kafka_helpers import order_event
from tests.polling import eventually

TP = TopicPartition("orders.cancelled", 0)


class GatedProvider:
    """Cancels a gated shipment once its gate opens, others at once; ``asked`` is set when
    a shipment is asked for."""

    def __init__(self, *gated: str) -> None:
        self.gates = {shipment: asyncio.Event() for shipment in gated}
        self.asked: dict[str, asyncio.Event] = {}

    @property
    def kind(self) -> str:
        return "shipstation"

    def was_asked(self, shipment: str) -> asyncio.Event:
        return self.asked.setdefault(shipment, asyncio.Event())

    def asked_for(self) -> list[str]:
        return [s for s, event in self.asked.items() if event.is_set()]

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        self.was_asked(request.shipment_id).set()
        gate = self.gates.get(request.shipment_id)
        if gate is not None:
            await gate.wait()
        return CancelOutcome("cancelled")


def event_record(offset: int, order: str, shipment: str) -> ConsumerRecord[bytes, bytes]:
    value = orjson.dumps(order_event(order, ("ss", shipment)))
    return consumer_record(TP, offset, value, key=order.encode())


@asynccontextmanager
async def running(
    provider: Provider, consumer: MemoryConsumer, producer: MemoryProducer, grace: float = 10
) -> AsyncIterator[Runner]:
    """The runner consuming ``consumer`` until the block ends."""
    canceller = Canceller(
        {"ss": ProviderAccount("ss", provider, AccountGate(4))}, RetryPolicy(budget_seconds=30)
    )
    runner = Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(drain_grace_seconds=grace),
        canceller,
        NoOpTracer(),
        clients=memory_clients(consumer, producer),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_records_fetched_during_a_drain_are_left_to_the_next_owner() -> None:
    provider = GatedProvider("se-first")
    consumer, producer = MemoryConsumer(TP, [event_record(0, "SO-1", "se-first")]), MemoryProducer()
    async with running(provider, consumer, producer) as runner:
        await asyncio.wait_for(provider.was_asked("se-first").wait(), timeout=5)
        draining = asyncio.create_task(consumer.revoke())
        await eventually(lambda: consumer.fetched == 1)
        # A fetch that returns while the partition drains.
        consumer.add(event_record(1, "SO-1", "se-second"))
        await eventually(lambda: consumer.fetched == 2)
        assert runner.events_in_flight == 1, "nothing new starts for a draining partition"
        provider.gates["se-first"].set()
        await asyncio.wait_for(draining, timeout=5)
    assert provider.asked_for() == ["se-first"]
    assert consumer.committed == {TP: 1}, "committed up to the drained work, not past"
    assert [topic for topic, *_ in producer.sent] == ["shipments.cancelled"]


async def test_a_later_event_of_an_interrupted_order_is_not_processed() -> None:
    provider = GatedProvider("se-stuck")
    consumer = MemoryConsumer(
        TP, [event_record(0, "SO-1", "se-stuck"), event_record(1, "SO-1", "se-after")]
    )
    producer = MemoryProducer()
    async with running(provider, consumer, producer, grace=0.1) as runner:
        await asyncio.wait_for(provider.was_asked("se-stuck").wait(), timeout=5)
        assert runner.events_in_flight == 2, "the later event waits behind the stuck one"
        await asyncio.wait_for(consumer.revoke(), timeout=5)
    assert provider.asked_for() == ["se-stuck"]
    assert producer.sent == [], "the later event must not overtake the interrupted one"
    assert consumer.committed == {}


async def test_work_from_before_a_rewind_never_moves_the_commit_past_replayed_records() -> None:
    provider = GatedProvider("se-old", "se-new")
    consumer, producer = MemoryConsumer(TP, [event_record(10, "SO-A", "se-old")]), MemoryProducer()
    async with running(provider, consumer, producer, grace=0.1) as runner:
        await asyncio.wait_for(provider.was_asked("se-old").wait(), timeout=5)
        # The position goes back (an offset reset): offsets 3 and 10 are read again, and
        # offset 10 is now another record that has not finished.
        consumer.add(event_record(3, "SO-B", "se-rewound"), event_record(10, "SO-D", "se-new"))
        await asyncio.wait_for(provider.was_asked("se-new").wait(), timeout=5)
        await eventually(lambda: len(producer.sent) == 1)  # se-rewound's result
        provider.gates["se-old"].set()
        await eventually(lambda: runner.events_in_flight == 1)  # se-new's, still gated
        await asyncio.wait_for(consumer.revoke(), timeout=5)
    assert consumer.committed == {TP: 4}, "only the replayed offset 3 is done"
