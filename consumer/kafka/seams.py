"""What the Kafka runtime needs of a consumer and a producer: aiokafka's clients satisfy
these Protocols, and so do the in-memory clients of ``consumer.kafka.memory`` (the
in-process benchmark and the tests), without casting one to the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

Records = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
Headers = list[tuple[str, bytes]]
# Seconds since the epoch: broker timestamps are wall-clock milliseconds.
Clock = Callable[[], float]


class KafkaConsumer(Protocol):
    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def position(self, partition: TopicPartition) -> int: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def topics(self) -> set[str]: ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None: ...


class KafkaProducer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]: ...


# Makes the Kafka consumer and producer (again after a failed start).
KafkaClients = Callable[[], tuple[KafkaConsumer, KafkaProducer]]
