"""Garbage collection on a clock rather than on allocation counts (README "Performance").

A processed event leaves no cyclic garbage: its objects die by reference counting
(``providers.http.send`` breaks the one cycle httpx leaves per response). CPython's
collector still runs every few thousand allocations, and then traverses what is alive at
that moment, the in-flight events, only to find nothing. That cost a tenth of the
processor's CPU and paused it for 4-50 ms, several times a second. Collecting once a
second costs the same pause about once a second, and frees any cycle that does appear
(an exception kept with its traceback, say) within a second of it becoming garbage.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from consumer.periodic import every

PERIOD_SECONDS = 1.0
# Every Nth tick collects the middle generation, every Mth all of them: older objects are
# fewer to become garbage and more to traverse.
MIDDLE_EVERY = 10
FULL_EVERY = 60
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
