"""The retry topic must exist with as many partitions as the input: else one clear line."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from opentelemetry.trace import NoOpTracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.errors import ConfigError
from consumer.core.retry import RetryPolicy
from consumer.kafka.memory import MemoryConsumer, MemoryProducer, memory_clients
from consumer.kafka.runner import Runner

KAFKA = KafkaSettings(bootstrap_servers="memory:9092", commit_interval_seconds=0.05)


class Partitioned(MemoryConsumer):
    """A consumer whose metadata gives each topic the partitions of ``counts``."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(TopicPartition(KAFKA.input_topic, 0))
        self._counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._counts.get(topic)
        return None if count is None else set(range(count))


def runner_on(consumer: Partitioned) -> Runner:
    return Runner(
        KAFKA,
        ProcessingSettings(),
        Canceller({}, RetryPolicy()),
        NoOpTracer(),
        clients=memory_clients(consumer, MemoryProducer()),
    )


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({KAFKA.input_topic: 6, KAFKA.retry_topic: 3}, "has 3 partitions and .* has 6"),
        ({KAFKA.input_topic: 6}, "does not exist; create it with `cancel-processor topics`"),
    ],
    ids=["fewer", "missing"],
)
async def test_a_retry_topic_unlike_the_input_stops_the_run_with_one_line(
    counts: dict[str, int], message: str
) -> None:
    runner = runner_on(Partitioned(counts))
    with pytest.raises(ConfigError, match=r"^kafka\.retry_topic: .*" + message):
        await asyncio.wait_for(runner.run(asyncio.Event()), timeout=10)


async def test_a_retry_topic_like_the_input_is_fine() -> None:
    runner = runner_on(Partitioned({KAFKA.input_topic: 6, KAFKA.retry_topic: 6}))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(0.3)  # several commit ticks, each checking
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
