"""Kafka clients for running the real ``Runner`` without a broker: a consumer that hands out
scripted records on one assigned partition and records commits, and a producer that
acknowledges every send at once and keeps what was sent. Given to the runner through its
``clients`` factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from consumer.kafka.runner import KafkaClients, Runner

Sent = tuple[str, bytes | None, bytes | None, dict[str, bytes]]


class FakeConsumer:
    """One partition, assigned on start; ``records`` are fetched once, in order."""

    def __init__(self, partition: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]):
        self.partition = partition
        self.committed: dict[TopicPartition, int] = {}
        self._pending = list(records)
        self._end = max((r.offset + 1 for r in records), default=0)
        self._listener: ConsumerRebalanceListener | None = None
        self._assigned: set[TopicPartition] = set()

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        assert topics == [self.partition.topic]
        self._listener = listener

    async def start(self) -> None:
        self._assigned = {self.partition}
        assert self._listener is not None
        await self._listener.on_partitions_assigned({self.partition})

    async def stop(self) -> None:
        self._assigned = set()

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if not self._pending:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch, self._pending = self._pending[:max_records], self._pending[max_records:]
        return {self.partition: batch}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        pass

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def last_poll_timestamp(self, partition: TopicPartition) -> int:
        return int(time.time() * 1000)

    def highwater(self, partition: TopicPartition) -> int:
        return self._end

    async def position(self, partition: TopicPartition) -> int:
        return self.committed.get(partition, 0)

    async def topics(self) -> set[str]:
        return {self.partition.topic}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})


SendHook = Callable[[str, bytes | None], Awaitable[None]]


class RecordingProducer:
    """Acknowledges every send at once and keeps what was sent; ``before_send`` may raise
    to play a broker refusing a record."""

    def __init__(self, before_send: SendHook | None = None) -> None:
        self.sent: list[Sent] = []
        self._before_send = before_send

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[RecordMetadata]:
        if self._before_send is not None:
            await self._before_send(topic, value)
        self.sent.append((topic, key, value, dict(headers)))
        acked: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        tp = TopicPartition(topic, 0)
        acked.set_result(RecordMetadata(topic, 0, tp, len(self.sent) - 1, -1, 0, 0))
        return acked

    def headers_of(self, topic: str) -> list[dict[str, bytes]]:
        return [headers for t, _, _, headers in self.sent if t == topic]


def clients(consumer: FakeConsumer, producer: RecordingProducer) -> KafkaClients:
    """The runner's ``clients`` factory, handing out these fakes."""

    def make() -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        return cast(AIOKafkaConsumer, consumer), cast(AIOKafkaProducer, producer)

    return make


async def run_until(runner: Runner, done: Callable[[], bool], timeout: float = 20) -> None:
    """Run the runner (consume, handle, publish, commit) until ``done()``, then stop it the
    way SIGTERM does: drain, final commit, leave."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not done():
                if task.done():
                    task.result()  # raises what ended it
                    raise AssertionError("the runner stopped early")
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=timeout)


def record(
    partition: TopicPartition,
    offset: int,
    value: bytes | None,
    *,
    key: bytes | None = b"SO-1",
    headers: list[tuple[str, bytes]] | None = None,
    timestamp_ms: int | None = None,
) -> ConsumerRecord[bytes, bytes]:
    found: Any = ConsumerRecord(
        topic=partition.topic,
        partition=partition.partition,
        offset=offset,
        timestamp=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )
    return cast(ConsumerRecord[bytes, bytes], found)
