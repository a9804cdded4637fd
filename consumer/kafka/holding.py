"""Retry records read back before they are due, held in memory until then.

Held records are tracked by ``InFlight`` as started, so their partition never commits past
them: a crash, a restart or a rebalance loses none, the next owner reads them again. They do
not take in-flight slots (waiting is not work), but their number is capped: at the cap the
retry partitions pause and only resume once some are dispatched. No task sleeps for them;
the consume loop polls no longer than until the earliest one is due.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from consumer.core.parking import ParkedShipment
from consumer.kafka.inflight import Hold


@dataclass(order=True, slots=True)
class Held:
    due: float
    # Ties in offset order: parks of one shipment come back in the order they were made.
    sequence: int
    tp: TopicPartition = field(compare=False)
    record: ConsumerRecord[bytes, bytes] = field(compare=False)
    parked: ParkedShipment = field(compare=False)
    hold: Hold = field(compare=False)


class HeldRecords:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._heap: list[Held] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def full(self) -> bool:
        return len(self._heap) >= self._capacity

    def hold(
        self,
        due: float,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parked: ParkedShipment,
        hold: Hold,
    ) -> None:
        heapq.heappush(self._heap, Held(due, next(self._sequence), tp, record, parked, hold))

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[Held]:
        """Up to ``limit`` records due by ``now``, earliest first."""
        due: list[Held] = []
        while self._heap and len(due) < limit and self._heap[0].due <= now:
            due.append(heapq.heappop(self._heap))
        return due

    def superseded(self, tp: TopicPartition, latest: Mapping[uuid.UUID, int]) -> list[Held]:
        """Take out the records of ``tp`` whose shipment and event have a later park there
        (``latest``: the latest offset of each result id's parks)."""
        gone, kept = [], []
        for held in self._heap:
            park = held.parked
            if held.tp == tp and latest.get(park.result_id, -1) > held.record.offset:
                gone.append(held)
            else:
                kept.append(held)
        if gone:
            heapq.heapify(kept)
            self._heap = kept
        return gone

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the records of these partitions: their next owner reads them again."""
        gone = set(partitions)
        kept = [held for held in self._heap if held.tp not in gone]
        if len(kept) != len(self._heap):
            heapq.heapify(kept)
            self._heap = kept
