"""An input partition waits until the retry partition of its number is read back."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from consumer.kafka.catchup import CatchUp

INPUT, RETRY = "orders.cancelled", "orders.cancelled.retry"
FIRST, SECOND = uuid.uuid4(), uuid.uuid4()


class Positions:
    """The two consumer calls CatchUp makes, answered from dicts."""

    def __init__(self, ends: dict[int, int], positions: dict[int, int]) -> None:
        self._ends = ends
        self._positions = positions

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._ends[tp.partition] for tp in partitions}

    async def position(self, partition: TopicPartition) -> int:
        return self._positions[partition.partition]


def assignment(*numbers: int) -> set[TopicPartition]:
    return {TopicPartition(t, n) for t in (INPUT, RETRY) for n in numbers}


async def test_input_waits_until_its_retry_partition_is_read_to_its_end() -> None:
    catch_up = CatchUp(INPUT, RETRY)
    # Partition 0 has parks past its committed position; partition 1 has none.
    await catch_up.assigned(Positions({0: 10, 1: 4}, {0: 7, 1: 4}), assignment(0, 1))  # type: ignore[arg-type]
    assert catch_up.gated(assignment(0, 1)) == {TopicPartition(INPUT, 0)}

    assert catch_up.reading(TopicPartition(RETRY, 0))
    assert not catch_up.reading(TopicPartition(RETRY, 1))
    assert catch_up.read(TopicPartition(RETRY, 0), 8, FIRST) is None
    assert catch_up.gated(assignment(0, 1)) == {TopicPartition(INPUT, 0)}
    # An input record says nothing of the parks.
    assert catch_up.read(TopicPartition(INPUT, 0), 9, None) is None
    assert catch_up.gated(assignment(0, 1)) == {TopicPartition(INPUT, 0)}
    latest = catch_up.read(TopicPartition(RETRY, 0), 9, SECOND)
    assert catch_up.gated(assignment(0, 1)) == set()
    assert not catch_up.reading(TopicPartition(RETRY, 0))
    assert latest == {FIRST: 8, SECOND: 9}


async def test_the_read_back_tells_the_latest_park_of_each_shipment() -> None:
    catch_up = CatchUp(INPUT, RETRY)
    await catch_up.assigned(Positions({0: 13}, {0: 10}), assignment(0))  # type: ignore[arg-type]
    retry = TopicPartition(RETRY, 0)
    assert catch_up.read(retry, 10, FIRST) is None
    assert catch_up.read(retry, 11, SECOND) is None
    assert catch_up.read(retry, 12, FIRST) == {FIRST: 12, SECOND: 11}
    # Read back: nothing more is collected.
    assert catch_up.read(retry, 13, FIRST) is None


async def test_a_revoked_partition_is_no_longer_waited_for() -> None:
    catch_up = CatchUp(INPUT, RETRY)
    await catch_up.assigned(Positions({2: 5}, {2: 0}), assignment(2))  # type: ignore[arg-type]
    assert catch_up.gated(assignment(2)) == {TopicPartition(INPUT, 2)}
    catch_up.revoked({TopicPartition(RETRY, 2)})
    assert catch_up.gated(assignment(2)) == set()


async def test_an_assignment_without_retry_partitions_gates_nothing() -> None:
    catch_up = CatchUp(INPUT, RETRY)
    await catch_up.assigned(Positions({}, {}), {TopicPartition(INPUT, 0)})  # type: ignore[arg-type]
    assert catch_up.gated({TopicPartition(INPUT, 0)}) == set()
