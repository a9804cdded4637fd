"""Capped backoff: a fixed series of waits whose last step repeats."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``steps[attempt]`` for the first attempts, then the last step for every later one."""

    steps: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a backoff needs at least one step")

    def delay(self, attempt: int) -> float:
        """The wait after the given (0-based) failed attempt."""
        return self.steps[min(attempt, len(self.steps) - 1)]
