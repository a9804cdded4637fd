"""``periodic.every``: a tick per period while the block runs, none after it."""

from __future__ import annotations

import asyncio

from consumer.runtime.periodic import every


async def test_ticks_are_numbered_and_stop_with_the_block() -> None:
    ticks: list[int] = []
    third = asyncio.Event()

    def tick(n: int) -> None:
        ticks.append(n)
        if n == 3:
            third.set()

    async with every(0.01, tick):
        await asyncio.wait_for(third.wait(), timeout=5)
    seen = list(ticks)
    await asyncio.sleep(0.05)

    assert seen == [1, 2, 3]
    assert ticks == seen
