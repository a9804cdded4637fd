"""A background task that does one small thing on a clock while a block of code runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


@contextlib.asynccontextmanager
async def every(period: float, tick: Callable[[int], None]) -> AsyncIterator[None]:
    """Call ``tick(n)`` (n = 1, 2, ...) each ``period`` seconds until the block ends."""

    async def ticking() -> None:
        n = 0
        while True:
            await asyncio.sleep(period)
            n += 1
            tick(n)

    task = asyncio.create_task(ticking())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
