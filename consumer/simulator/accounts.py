"""Each provider's account as the simulator plays it: rate limit, extra latency, outage.

Changed at run time by ``PUT /_admin/accounts/{provider}`` or
``SimulatorContext.set_account_mode``; ``reset`` brings back the startup options.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from consumer.simulator.ratelimit import Refusal, SlidingWindowLimiter

# unavailable: 503 in the provider's error shape; refuse: the connection is dropped unanswered.
DownMode = Literal["unavailable", "refuse"]

_FIELDS = ("rate_limit_per_minute", "latency_ms", "down_seconds", "down_mode")
_LIMIT_ERROR = "rate_limit_per_minute must be a whole number >= 1, or null for no limit"
_LATENCY_ERROR = "latency_ms must be a number >= 0"
_DOWN_ERROR = "down_seconds must be a number >= 0 (0 ends an outage)"
_MODE_ERROR = 'down_mode must be "unavailable" or "refuse"'


class Keep(enum.Enum):
    """Leave the rate limit as it is (``None`` already means "no limit")."""

    KEEP = enum.auto()


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class AccountChange:
    """What to change; ``KEEP`` and ``None`` leave a setting as it is."""

    rate_limit_per_minute: int | Keep | None = KEEP
    latency_ms: float | None = None
    # From now; 0 ends an outage at once.
    down_seconds: float | None = None
    # How calls fail during the outage; "unavailable" when left out.
    down_mode: DownMode | None = None

    def __post_init__(self) -> None:
        limit = self.rate_limit_per_minute
        if isinstance(limit, bool) or (isinstance(limit, int) and limit < 1):
            raise ValueError(_LIMIT_ERROR)
        if self.latency_ms is not None and not 0 <= self.latency_ms < math.inf:
            raise ValueError(_LATENCY_ERROR)
        if self.down_seconds is not None and not 0 <= self.down_seconds < math.inf:
            raise ValueError(_DOWN_ERROR)
        if self.down_mode is not None:
            if self.down_mode not in ("unavailable", "refuse"):
                raise ValueError(_MODE_ERROR)
            if self.down_seconds is None:
                raise ValueError("down_mode needs down_seconds")


def parse_change(body: Mapping[str, object]) -> AccountChange:
    """The change a JSON body asks for; ``ValueError`` with a message for the client."""
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; expected any of {list(_FIELDS)}")
    return AccountChange(
        rate_limit_per_minute=_limit(body),
        latency_ms=_number(body, "latency_ms", _LATENCY_ERROR),
        down_seconds=_number(body, "down_seconds", _DOWN_ERROR),
        down_mode=_down_mode(body.get("down_mode")),
    )


def _limit(body: Mapping[str, object]) -> int | Keep | None:
    if "rate_limit_per_minute" not in body:
        return KEEP
    value = body["rate_limit_per_minute"]
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(_LIMIT_ERROR)


def _number(body: Mapping[str, object], name: str, error: str) -> float | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(error)
    return float(value)


def _down_mode(value: object) -> DownMode | None:
    if value is None:
        return None
    if value == "unavailable":
        return "unavailable"
    if value == "refuse":
        return "refuse"
    raise ValueError(_MODE_ERROR)


@dataclass(frozen=True, slots=True)
class AccountMode:
    """One provider's account at one moment, as ``GET /_admin/accounts/{provider}`` shows it."""

    rate_limit_per_minute: int | None
    # On top of the simulator-wide latency.
    latency_ms: float
    # None while the provider is up.
    down_mode: DownMode | None
    # Unix time the outage ends, None while up.
    down_until: float | None
    down_seconds_left: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ProviderAccount:
    def __init__(self, rate_limit_per_minute: int | None, clock: Callable[[], float]) -> None:
        self._startup_limit = rate_limit_per_minute
        self._clock = clock
        self._limiter = self._new_limiter(rate_limit_per_minute)
        self.latency_ms = 0.0
        self._down_until = -math.inf
        self._down_mode: DownMode = "unavailable"

    def _new_limiter(self, limit: int | None) -> SlidingWindowLimiter | None:
        return SlidingWindowLimiter(limit, clock=self._clock) if limit is not None else None

    def change(self, change: AccountChange) -> AccountMode:
        limit = change.rate_limit_per_minute
        if not isinstance(limit, Keep):
            if limit is not None and self._limiter is not None:
                # The calls of the last minute still count: a lowered limit bites at once.
                self._limiter.limit = limit
            else:
                self._limiter = self._new_limiter(limit)
        if change.latency_ms is not None:
            self.latency_ms = change.latency_ms
        if change.down_seconds is not None:
            self._down_until = self._clock() + change.down_seconds
            self._down_mode = change.down_mode or "unavailable"
        return self.mode()

    def acquire(self) -> Refusal | None:
        """Count one call against the rate limit; a ``Refusal`` when it is used up."""
        return self._limiter.acquire() if self._limiter is not None else None

    def outage(self) -> DownMode | None:
        """How calls fail right now; None while the provider is up."""
        return self._down_mode if self._clock() < self._down_until else None

    def mode(self) -> AccountMode:
        now = self._clock()
        down = now < self._down_until
        return AccountMode(
            rate_limit_per_minute=self._limiter.limit if self._limiter is not None else None,
            latency_ms=self.latency_ms,
            down_mode=self._down_mode if down else None,
            down_until=self._down_until if down else None,
            down_seconds_left=self._down_until - now if down else 0.0,
        )

    def reset(self) -> None:
        """Back to the startup options: their rate limit, with an empty window, and up."""
        self._limiter = self._new_limiter(self._startup_limit)
        self.latency_ms = 0.0
        self._down_until = -math.inf
        self._down_mode = "unavailable"
