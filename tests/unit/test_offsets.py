import pytest

from consumer.kafka.offsets import PartitionProgress


def test_nothing_to_commit_until_the_first_offset_finishes() -> None:
    progress = PartitionProgress()
    progress.start(10)
    progress.start(11)
    assert progress.pending_commit() is None
    progress.finish(11)
    assert progress.pending_commit() is None, "offset 10 is unfinished, so 11 must not commit"


def test_commit_position_is_one_past_the_last_contiguous_finished_offset() -> None:
    progress = PartitionProgress()
    for offset in (5, 6, 7, 9):
        progress.start(offset)
    progress.finish(6)
    progress.finish(5)
    assert progress.pending_commit() == 7
    progress.finish(9)
    assert progress.pending_commit() == 7
    progress.finish(7)
    assert progress.pending_commit() == 10, "gaps in offsets (compaction) are fine"
    assert progress.unfinished == 0


def test_a_committed_position_is_not_offered_again() -> None:
    progress = PartitionProgress()
    progress.start(0)
    progress.finish(0)
    assert progress.pending_commit() == 1
    progress.committed(1)
    assert progress.pending_commit() is None


def test_offsets_must_start_in_fetch_order() -> None:
    progress = PartitionProgress()
    progress.start(3)
    with pytest.raises(ValueError, match="out of order"):
        progress.start(3)
