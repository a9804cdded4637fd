"""Garbage collection on a clock: which generation each tick collects, what is frozen, and
that a cycle made meanwhile is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.runtime.gc_schedule import clocked_collections
from tests.polling import eventually

PERIOD = 0.01


@pytest.fixture
def collections_seen() -> Iterator[list[int]]:
    """The generation of every collection that starts while the test runs."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


async def test_each_tick_collects_the_young_then_every_nth_older_generations(
    collections_seen: list[int],
) -> None:
    async with clocked_collections(PERIOD, middle_every=3, full_every=5):
        # An automatic collection may have started just before the block raised the
        # threshold (the allocation count of earlier tests decides): only the block's count.
        collections_seen.clear()
        await eventually(lambda: len(collections_seen) >= 6)
    assert collections_seen[:6] == [0, 0, 1, 0, 2, 1]


async def test_allocations_alone_no_longer_trigger_collections_until_the_block_ends() -> None:
    before = gc.get_threshold()
    async with clocked_collections(PERIOD):
        assert gc.get_threshold()[0] >= 1_000_000
        assert gc.get_threshold()[1:] == before[1:]
    assert gc.get_threshold() == before


async def test_what_exists_on_entry_is_frozen_out_of_collections_until_the_block_ends() -> None:
    async with clocked_collections(PERIOD):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


class _Node:
    def __init__(self) -> None:
        self.me = self


async def test_a_cycle_that_becomes_garbage_is_freed_by_the_next_tick() -> None:
    async with clocked_collections(PERIOD):
        node = _Node()
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # only a collection frees a cycle
        await eventually(lambda: alive() is None)
