"""After an assignment, input partition *n* waits until retry partition *n* is read back.

The parks of a shipment live in the retry partition of its input partition's number, and
the range assignor gives both to the same member. A new owner learns of those parks by
reading the retry partition; until it has read it up to where it ended at assignment, an
event of the input partition could overtake a park of one of its shipments. So the input
partition stays paused until then (or until the records held in memory are at their cap:
the retry partition then pauses too, and waiting longer would stall the input).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import TopicPartition

from consumer.kafka.seams import KafkaConsumer

log = logging.getLogger(__name__)


class CatchUp:
    def __init__(self, input_topic: str, retry_topic: str) -> None:
        self._input_topic = input_topic
        self._retry_topic = retry_topic
        # Retry partition number -> the offset it must be read to.
        self._waiting: dict[int, int] = {}

    async def assigned(self, consumer: KafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
        retry = [tp for tp in partitions if tp.topic == self._retry_topic]
        if not retry:
            return
        ends = await consumer.end_offsets(retry)
        for tp in retry:
            if await consumer.position(tp) < ends[tp]:
                self._waiting[tp.partition] = ends[tp]
        if self._waiting:
            log.info(
                "reading parked shipments back before new input",
                extra={"partitions": sorted(self._waiting)},
            )

    def read(self, tp: TopicPartition, offset: int) -> None:
        """A record of ``tp`` at ``offset`` was fetched."""
        end = self._waiting.get(tp.partition)
        if end is not None and tp.topic == self._retry_topic and offset + 1 >= end:
            del self._waiting[tp.partition]

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._waiting.pop(tp.partition, None)

    def gated(self, assignment: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The input partitions to keep paused."""
        if not self._waiting:
            return set()
        return {
            tp
            for tp in assignment
            if tp.topic == self._input_topic and tp.partition in self._waiting
        }
