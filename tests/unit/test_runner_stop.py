"""Stopping the runner while its poll waits without limit, as aiokafka's ``getmany`` does
while a rebalance settles: the stop request must not wait with it."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.trace import NoOpTracer

from consumer.canceller import Canceller
from consumer.config import KafkaSettings, ProcessingSettings
from consumer.retry import RetryPolicy
from consumer.runner import Runner
from tests.telemetry.fake_kafka import FakeConsumer, RecordingProducer, clients

TP = TopicPartition("orders.cancelled", 0)


class RebalancingConsumer(FakeConsumer):
    """A consumer whose polls never return: a rebalance that does not settle."""

    def __init__(self) -> None:
        super().__init__(TP, [])
        self.polls = 0
        self.polling = asyncio.Event()

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.polls += 1
        self.polling.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def polling_runner() -> tuple[Runner, RebalancingConsumer, asyncio.Event, asyncio.Task[None]]:
    consumer = RebalancingConsumer()
    runner = Runner(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        ProcessingSettings(),
        Canceller({}, RetryPolicy()),
        NoOpTracer(),
        clients=clients(consumer, RecordingProducer()),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(consumer.polling.wait(), timeout=5)
    return runner, consumer, stop, task


async def test_stop_ends_a_poll_that_waits_for_a_rebalance() -> None:
    _, consumer, stop, task = await polling_runner()
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}, "the stop request waited for the rebalance"
    assert not task.cancelled()
    task.result()  # ended by the stop, not by an error
    assert consumer.polls == 1


async def test_cancelling_the_service_while_it_polls_still_cancels_it() -> None:
    _, _, _, task = await polling_runner()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)
