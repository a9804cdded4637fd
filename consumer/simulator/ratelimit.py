"""A sliding one-minute window per provider: at most N accepted calls in any 60 seconds."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: int
    retry_after_seconds: int
    # Unix time at which the oldest counted call leaves the window, for X-RateLimit-Reset.
    reset_at: int


class SlidingWindowLimiter:
    """Counts accepted calls only; a refused call does not push the window on.

    A call leaves the window ``window_seconds`` after it was accepted, so any half-open
    interval of that length holds at most ``limit`` accepted calls.
    """

    def __init__(
        self, limit: int, window_seconds: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._window = window_seconds
        self._clock = clock
        self._accepted: deque[float] = deque()
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        """A new limit; calls accepted in the last window still count against it."""
        if limit < 1:
            raise ValueError("rate limit must be at least 1 request per window")
        self._limit = limit

    def acquire(self) -> Refusal | None:
        """Count one call; a ``Refusal`` when the window already holds ``limit`` calls."""
        now = self._clock()
        accepted = self._accepted
        horizon = now - self._window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if len(accepted) < self._limit:
            accepted.append(now)
            return None
        # After the limit was lowered, more than one call may have to leave first.
        frees_at = accepted[len(accepted) - self._limit] + self._window
        return Refusal(
            limit=self._limit,
            retry_after_seconds=max(1, math.ceil(frees_at - now)),
            reset_at=math.ceil(frees_at),
        )

    def reset(self) -> None:
        self._accepted.clear()
