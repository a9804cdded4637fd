"""After an assignment, input partition *n* waits until retry partition *n* is read back.

The parks of a shipment live in the retry partition of its input partition's number, and
the range assignor gives both to the same member. A new owner learns of those parks by
reading the retry partition; until it has read it up to where it ended at assignment, an
event of the input partition could overtake a park of one of its shipments. So the input
partition stays paused until then (or until the records held in memory are at their cap:
the retry partition then pauses too, and waiting longer would stall the input).

Reading back from the last commit also finds parks that were retried already: a held
record keeps its partition's commit behind it, and each retry of a shipment writes a new
park. While a partition is read back its records are all held, and once it is read to its
end, every park with a later one of the same shipment and event is dropped unrun: only the
latest is the shipment's live park.
"""

from __future__ import annotations

import logging
import uuid
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
        # Of a partition being read back: the latest offset of each result id's parks.
        self._latest: dict[int, dict[uuid.UUID, int]] = {}

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

    def reading(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is a retry partition still being read back."""
        return tp.topic == self._retry_topic and tp.partition in self._waiting

    def read(
        self, tp: TopicPartition, offset: int, result_id: uuid.UUID | None
    ) -> dict[uuid.UUID, int] | None:
        """A retry record of ``tp`` at ``offset`` (a park for ``result_id``) was fetched;
        when that ends the read-back, the latest offset of each result id's parks."""
        if not self.reading(tp):
            return None
        latest = self._latest.setdefault(tp.partition, {})
        if result_id is not None:
            latest[result_id] = offset
        if offset + 1 < self._waiting[tp.partition]:
            return None
        del self._waiting[tp.partition]
        return self._latest.pop(tp.partition)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._waiting.pop(tp.partition, None)
            self._latest.pop(tp.partition, None)

    def gated(self, assignment: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The input partitions to keep paused."""
        if not self._waiting:
            return set()
        return {
            tp
            for tp in assignment
            if tp.topic == self._input_topic and tp.partition in self._waiting
        }
