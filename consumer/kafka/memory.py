"""In-memory Kafka clients implementing the seams of ``consumer.kafka.seams``, for running
the real runner without a broker (the in-process benchmark and the tests): a consumer with
one partition that hands out the records given to it and records commits, and a producer
that acknowledges every send at once and keeps what was sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, cast

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from consumer.kafka.seams import Headers, KafkaClients, KafkaConsumer, KafkaProducer, Records

Sent = tuple[str, bytes | None, bytes | None, dict[str, bytes]]


class MemoryConsumer:
    """One partition, assigned on start. Records given (at construction or by ``add``) are
    fetched once, in order; ``revoke`` plays a rebalance taking the partition away."""

    def __init__(
        self, partition: TopicPartition, records: Iterable[ConsumerRecord[bytes, bytes]] = ()
    ) -> None:
        self.partition = partition
        self.committed: dict[TopicPartition, int] = {}
        self.fetched = 0
        self._pending = list(records)
        self._end = max((r.offset + 1 for r in self._pending), default=0)
        self._arrived = asyncio.Event()
        self._listener: ConsumerRebalanceListener | None = None
        self._subscribed: list[str] = []
        self._assigned: set[TopicPartition] = set()

    def add(self, *records: ConsumerRecord[bytes, bytes]) -> None:
        self._pending.extend(records)
        self._end = max([self._end, *(r.offset + 1 for r in records)])
        self._arrived.set()

    async def revoke(self) -> None:
        """The group takes the partition away: the listener drains it first."""
        assert self._listener is not None
        await self._listener.on_partitions_revoked({self.partition})
        self._assigned = set()

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        assert self.partition.topic in topics
        self._subscribed = list(topics)
        self._listener = listener

    async def start(self) -> None:
        self._assigned = {self.partition}
        assert self._listener is not None
        await self._listener.on_partitions_assigned({self.partition})

    async def stop(self) -> None:
        self._assigned = set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records:
        if not self._pending:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._arrived.wait()
            except TimeoutError:
                return {}
        batch, self._pending = self._pending[:max_records], self._pending[max_records:]
        self.fetched += len(batch)
        return {self.partition: batch} if batch else {}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        pass

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None:
        return int(time.time() * 1000)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._end

    async def position(self, partition: TopicPartition) -> int:
        return self.committed.get(partition, 0)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end if tp == self.partition else 0 for tp in partitions}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """One partition of each subscribed topic (the retry topic's holds nothing)."""
        return {self.partition.partition} if topic in self._subscribed else None

    async def topics(self) -> set[str]:
        return {self.partition.topic}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})


SendHook = Callable[[str, bytes | None], Awaitable[None]]


class MemoryProducer:
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
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        if self._before_send is not None:
            await self._before_send(topic, value)
        self.sent.append((topic, key, value, dict(headers or [])))
        acked: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        tp = TopicPartition(topic, partition or 0)
        acked.set_result(RecordMetadata(topic, tp.partition, tp, len(self.sent) - 1, -1, 0, 0))
        return acked

    def headers_of(self, topic: str) -> list[dict[str, bytes]]:
        return [headers for t, _, _, headers in self.sent if t == topic]


def memory_clients(consumer: KafkaConsumer, producer: KafkaProducer) -> KafkaClients:
    """A runner's ``clients`` factory, handing out these clients."""

    def make() -> tuple[KafkaConsumer, KafkaProducer]:
        return consumer, producer

    return make


def consumer_record(
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


async def run_until(
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    done: Callable[[], bool],
    timeout: float = 20,
) -> None:
    """Run ``run`` (a runner's) until ``done()``, then stop it the way SIGTERM does: drain,
    final commit, leave."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))
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
