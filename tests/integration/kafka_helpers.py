"""Small aiokafka helpers for tests: produce input, collect output, read commits, run the
processor in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import RecordMetadata

from consumer.app import run_service
from consumer.config import Settings
from consumer.core.examples import order_cancelled_example
from consumer.kafka.clients import client_options, topic_partitions

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def order_event(order_id: str, *shipments: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """The shared example event as a new event (its own id) of ``order_id``, cancelling
    ``shipments`` (provider, shipment id), with ``extra`` fields replaced or added."""
    shipment_list = [
        {"provider": provider, "shipment_id": shipment_id} for provider, shipment_id in shipments
    ]
    fields = {"event_id": str(uuid.uuid4()), "order_id": order_id, "shipments": shipment_list}
    return order_cancelled_example(**{**fields, **extra})


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self._producer = AIOKafkaProducer(
            **client_options(self.kafka),
            acks="all",
            enable_idempotence=self.kafka.enable_idempotence,
            max_request_size=4 * 1024 * 1024,
        )

    async def __aenter__(self) -> Cluster:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(
        self,
        value: bytes | dict[str, Any] | None,
        key: str | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata:
        if isinstance(value, dict):
            key = key if key is not None else str(value.get("order_id"))
            value = orjson.dumps(value)
        return await self._producer.send_and_wait(
            self.kafka.input_topic,
            value,
            key=key.encode() if key is not None else None,
            partition=partition,
            headers=headers or [],
        )

    async def send_many(
        self, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> list[RecordMetadata]:
        """Produce ``(key, value, headers)`` records in order, acknowledged together."""
        futures = [
            await self._producer.send(self.kafka.input_topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        return list(await asyncio.gather(*futures))

    async def collect(self, topics: list[str], count: int, timeout: float = 30) -> list[Record]:
        """Read ``count`` records from the start of the topics (fails on timeout)."""
        consumer = AIOKafkaConsumer(**client_options(self.kafka), enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await topic_partitions(self.kafka, topics)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[Record] = []
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    records.extend(batch)
            assert len(records) >= count, f"only {len(records)} of {count} records arrived"
            # A short extra read proves nothing more was produced.
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
            return records
        finally:
            await consumer.stop()

    async def results(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        records = await self.collect(
            [self.kafka.cancelled_topic, self.kafka.failed_topic], count, timeout
        )
        return [orjson.loads(r.value) for r in records if r.value is not None]

    async def committed(self) -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(
            **client_options(self.kafka), group_id=self.kafka.group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = await topic_partitions(self.kafka, [self.kafka.input_topic])
            return {tp.partition: await consumer.committed(tp) for tp in partitions}
        finally:
            await consumer.stop()


@contextlib.asynccontextmanager
async def running_processor(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The real service in this event loop; stopped (drained) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def end_offsets(sent: list[RecordMetadata]) -> dict[int, int]:
    """Per partition, one past the last offset we produced."""
    ends: dict[int, int] = {}
    for meta in sent:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends
