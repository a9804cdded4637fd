"""A fixed one-minute window per provider, the shape of the limits both providers publish."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: int
    retry_after_seconds: int
    # Unix time at which the window resets, for X-RateLimit-Reset.
    reset_at: int


class FixedWindowLimiter:
    def __init__(
        self, limit: int, window_seconds: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        if limit < 1:
            raise ValueError("rate limit must be at least 1 request per window")
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._window_start = -math.inf
        self._used = 0

    def acquire(self) -> Refusal | None:
        """Count one request; a ``Refusal`` when the window is already full."""
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start = now
            self._used = 0
        if self._used < self._limit:
            self._used += 1
            return None
        reset_at = self._window_start + self._window
        return Refusal(
            limit=self._limit,
            retry_after_seconds=max(1, math.ceil(reset_at - now)),
            reset_at=math.ceil(reset_at),
        )

    def reset(self) -> None:
        self._window_start = -math.inf
        self._used = 0
