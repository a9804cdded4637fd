"""Garbage collection on a clock rather than on allocation counts (docs/performance.md).

A processed event leaves no cyclic garbage: its objects die by reference counting
(``providers.http.send`` breaks the one cycle httpx leaves per response). CPython's
collector still runs every few thousand allocations, and then traverses what is alive at
that moment, the in-flight events, only to find nothing. That cost a tenth of the
processor's CPU and paused it for 4-50 ms, several times a second. A collection on a
clock costs the same pause, but when the clock says: every 10 s, it frees any cycle that
does appear (an exception kept with its traceback, say) within 10 s of it becoming garbage.
Once a second was tried first: each young collection still traversed 16,000-25,000 live
objects of in-flight events and queued spans, 20-35 ms of CPU every second.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from consumer.runtime.periodic import every

PERIOD_SECONDS = 10.0
# Every Nth tick collects the middle generation (each minute), every Mth all of them (each
# five minutes): older objects are fewer to become garbage and more to traverse.
MIDDLE_EVERY = 6
FULL_EVERY = 30
# The allocation-driven collector stays as a safety net for a burst the clock is too slow
# for: a million more objects than freed within one period.
_SAFETY_NET_ALLOCATIONS = 1_000_000


@contextlib.asynccontextmanager
async def clocked_collections(
    period: float = PERIOD_SECONDS,
    *,
    middle_every: int = MIDDLE_EVERY,
    full_every: int = FULL_EVERY,
) -> AsyncIterator[None]:
    """Collect the youngest generation every ``period`` seconds while the block runs.

    What exists on entry (modules, settings, clients: alive until exit) is frozen out of
    every collection. On exit the previous thresholds come back.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(_SAFETY_NET_ALLOCATIONS, *previous[1:])

    def collect(tick: int) -> None:
        if tick % full_every == 0:
            gc.collect(2)
        elif tick % middle_every == 0:
            gc.collect(1)
        else:
            gc.collect(0)

    try:
        async with every(period, collect):
            yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
