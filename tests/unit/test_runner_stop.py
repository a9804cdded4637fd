"""Stopping the runner while its poll waits without limit, as aiokafka's ``getmany`` does
while a rebalance settles: the stop request must not wait with it."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, memory_clients
from consumer.kafka.runner import Runner
from consumer.providers.base import CancelOutcome, CancelRequest
from tests.unit.test_runner_drain import event_record

TP = TopicPartition("orders.cancelled", 0)


class RebalancingConsumer(MemoryConsumer):
    """A consumer whose polls never return: a rebalance that does not settle."""

    def __init__(self, *first: ConsumerRecord[bytes, bytes]) -> None:
        super().__init__(TP, [])
        self.polls = 0
        self.polling = asyncio.Event()
        self._first = {TP: list(first)} if first else None

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.polls += 1
        if self._first is not None:  # the first poll hands out these records
            first, self._first = self._first, None
            return first
        self.polling.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class UnansweredProvider:
    """Never answers a cancel; sets ``asked`` once one is made."""

    def __init__(self, asked: asyncio.Event) -> None:
        self.asked = asked

    @property
    def kind(self) -> str:
        return "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def running(
    consumer: RebalancingConsumer,
    stop: asyncio.Event,
    processing: ProcessingSettings | None = None,
    canceller: Canceller | None = None,
) -> asyncio.Task[None]:
    """The runner over ``consumer``, running until ``stop``."""
    runner = Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        processing or ProcessingSettings(),
        canceller or Canceller({}, RetryPolicy()),
        NoOpTracer(),
        clients=memory_clients(consumer, MemoryProducer()),
    )
    return asyncio.create_task(runner.run(stop))


async def polling_runner() -> tuple[RebalancingConsumer, asyncio.Event, asyncio.Task[None]]:
    consumer, stop = RebalancingConsumer(), asyncio.Event()
    task = running(consumer, stop)
    await asyncio.wait_for(consumer.polling.wait(), timeout=5)
    return consumer, stop, task


def tasks_left() -> list[asyncio.Task[object]]:
    """Tasks still running besides the test's own."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


async def test_stop_ends_a_poll_that_waits_for_a_rebalance() -> None:
    consumer, stop, task = await polling_runner()
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}, "the stop request waited for the rebalance"
    assert not task.cancelled()
    task.result()  # ended by the stop, not by an error
    assert consumer.polls == 1
    await asyncio.sleep(0)
    assert tasks_left() == [], "the runner left a task behind"


async def test_cancelling_the_service_while_it_polls_still_cancels_it() -> None:
    _, _, task = await polling_runner()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}
    assert task.cancelled()


async def test_a_cancel_that_comes_with_the_stop_is_not_swallowed() -> None:
    _, stop, task = await polling_runner()
    stop.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}
    assert task.cancelled(), "the service's own cancellation was taken for the stop's"


async def test_stop_while_waiting_for_a_free_slot_does_not_poll_into_a_rebalance() -> None:
    # The in-flight window is full (one event the provider never answers), so the loop
    # waits for a slot; stop comes then (when the provider is asked), and the next poll
    # would wait for a rebalance.
    consumer = RebalancingConsumer(event_record(0, "SO-1", "se-1"))
    stop = asyncio.Event()
    provider = UnansweredProvider(asked=stop)
    task = running(
        consumer,
        stop,
        ProcessingSettings(max_in_flight=1, drain_grace_seconds=0.1),
        Canceller(
            {"ss": ProviderAccount("ss", provider, AccountGate(4))},
            RetryPolicy(budget_seconds=30),
        ),
    )
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}, "the stop request waited for the rebalance"
    task.result()
    assert consumer.polls == 1
