"""Concurrency across keys, strict order within a key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class KeyOrderedScheduler:
    """Starts each job as a task that first waits for the previous job of the same key.

    Jobs of one key run one at a time in submission order; jobs of different keys run
    concurrently. A job whose predecessor was cancelled is cancelled too, never run. Only
    the tail task of each key is remembered, so memory is bounded by the jobs in flight.
    """

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}

    def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        previous = self._tails.get(key)
        task = asyncio.create_task(self._run_after(previous, job))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    @property
    def keys_in_flight(self) -> int:
        return len(self._tails)

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    @staticmethod
    async def _run_after(
        previous: asyncio.Task[None] | None, job: Callable[[], Awaitable[None]]
    ) -> None:
        if previous is not None and not previous.done():
            # asyncio.wait never raises the predecessor's error or cancellation into us.
            await asyncio.wait([previous])
        if previous is not None and previous.cancelled():
            # The key's earlier job was interrupted (revocation, shutdown) and will be redone
            # later; running this one now would put its outcome before the earlier one's.
            raise asyncio.CancelledError
        await job()
