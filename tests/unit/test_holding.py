"""Retry records held until due: earliest first, ties in arrival order, capped."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import TopicPartition

from consumer.core.events import OrderCancelled
from consumer.core.examples import order_cancelled_example
from consumer.core.parking import ParkedShipment, ParkReason
from consumer.kafka.holding import Held, HeldRecords
from consumer.kafka.inflight import InFlight
from consumer.kafka.memory import consumer_record

RETRY = "orders.cancelled.retry"
P0 = TopicPartition(RETRY, 0)
P1 = TopicPartition(RETRY, 1)
NOW = datetime(2026, 11, 21, tzinfo=UTC)
PARKED = ParkedShipment(
    event=OrderCancelled.model_validate(
        order_cancelled_example(shipments=[{"provider": "ss", "shipment_id": "se-1"}])
    ),
    due_at=NOW,
    first_parked_at=NOW,
    attempts=0,
    rounds=0,
    reason=ParkReason.ACCOUNT_BUSY,
)


class Records:
    """Holds records of the retry partitions, each tracked by one ``InFlight``."""

    def __init__(self, capacity: int = 100) -> None:
        self.held = HeldRecords(capacity)
        self._in_flight = InFlight(max_in_flight=10)
        self._offsets = {P0: 0, P1: 0}

    def hold(self, due: float, tp: TopicPartition = P0) -> int:
        offset = self._offsets[tp]
        self._offsets[tp] += 1
        hold = self._in_flight.hold(tp, offset, lambda: {P0, P1})
        assert hold is not None
        self.held.hold(due, tp, consumer_record(tp, offset, b"{}"), PARKED, hold)
        return offset


def where(held: list[Held]) -> list[tuple[int, int]]:
    return [(h.tp.partition, h.record.offset) for h in held]


def test_records_come_out_earliest_due_first() -> None:
    records = Records()
    records.hold(30.0)
    records.hold(10.0)
    records.hold(20.0)
    assert records.held.next_due() == 10.0
    assert where(records.held.pop_due(100.0, limit=10)) == [(0, 1), (0, 2), (0, 0)]
    assert records.held.next_due() is None


def test_records_due_together_come_out_in_arrival_order() -> None:
    records = Records()
    for _ in range(5):
        records.hold(10.0)
    records.hold(10.0, P1)
    assert where(records.held.pop_due(10.0, limit=10)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 0),
    ]


def test_only_records_due_by_now_come_out() -> None:
    records = Records()
    records.hold(10.0)
    records.hold(20.0)
    assert records.held.pop_due(9.9, limit=10) == []
    assert where(records.held.pop_due(10.0, limit=10)) == [(0, 0)]
    assert len(records.held) == 1
    assert records.held.next_due() == 20.0


def test_at_most_limit_records_come_out_at_once() -> None:
    records = Records()
    for due in (5.0, 1.0, 4.0, 2.0, 3.0):
        records.hold(due)
    assert [h.due for h in records.held.pop_due(10.0, limit=2)] == [1.0, 2.0]
    assert [h.due for h in records.held.pop_due(10.0, limit=0)] == []
    assert [h.due for h in records.held.pop_due(10.0, limit=10)] == [3.0, 4.0, 5.0]


def test_a_held_record_keeps_what_it_was_held_with() -> None:
    records = Records()
    records.hold(10.0, P1)
    [held] = records.held.pop_due(10.0, limit=1)
    assert held.tp == P1
    assert held.parked is PARKED
    assert held.record.topic == RETRY
    assert held.hold.progress is not None


def test_releasing_partitions_forgets_only_their_records() -> None:
    records = Records()
    records.hold(30.0, P0)
    records.hold(10.0, P1)
    records.hold(20.0, P0)
    records.hold(5.0, P1)
    records.held.release([P1])
    assert len(records.held) == 2
    assert records.held.next_due() == 20.0
    assert where(records.held.pop_due(100.0, limit=10)) == [(0, 1), (0, 0)]
    records.held.release([P0, P1])  # nothing left to release
    assert len(records.held) == 0


def test_full_at_capacity() -> None:
    records = Records(capacity=2)
    assert not records.held.full
    records.hold(10.0)
    assert not records.held.full
    records.hold(20.0)
    assert records.held.full
    records.held.pop_due(10.0, limit=1)
    assert not records.held.full


def test_parks_superseded_by_a_later_one_of_their_result_are_taken_out() -> None:
    records = Records()
    first, second = records.hold(5.0), records.hold(6.0)  # both parks of PARKED's result
    other = records.hold(7.0, P1)
    gone = records.held.superseded(P0, {PARKED.result_id: second})
    assert where(gone) == [(0, first)]
    assert where(records.held.pop_due(10.0, limit=10)) == [(0, second), (1, other)]


def test_the_latest_park_of_a_result_stays() -> None:
    records = Records()
    only = records.hold(5.0)
    assert records.held.superseded(P0, {PARKED.result_id: only}) == []
    assert len(records.held) == 1
