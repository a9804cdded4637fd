"""A provider account and its admission: may a shipment be attempted now, or parked?

One account's backlog, rate limit or outage must never hold up other accounts' events, so a
shipment that its account cannot take soon is parked (``consumer.core.parking``) instead of
waiting in the in-flight window. Admission asks, in this order: is the account's queue for
its pace longer than ``park_after_wait_seconds``, is a whole round of attempts already
queued at its concurrency cap, is its circuit open. Admitted, it holds a ``Ticket`` on the
pace at once, so that shipments admitted together never overbook the account.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from consumer.core.breaker import CircuitBreaker
from consumer.core.pacing import Pace, Ticket
from consumer.core.parking import ParkReason
from consumer.core.retry import AccountGate
from consumer.providers.base import Provider

_DEFAULT_FAILURE_THRESHOLD = 5
_DEFAULT_COOLDOWN_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Admitted:
    # The claim on the account's pace; None without a rate limit.
    ticket: Ticket | None


@dataclass(frozen=True, slots=True)
class Deferred:
    reason: ParkReason
    # The ``time.monotonic()`` after which to try again.
    until: float


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    name: str
    provider: Provider
    gate: AccountGate
    breaker: CircuitBreaker = field(default=None)  # type: ignore[assignment]
    pace: Pace | None = None

    def __post_init__(self) -> None:
        if self.breaker is None:
            breaker = CircuitBreaker(
                self.name, _DEFAULT_FAILURE_THRESHOLD, _DEFAULT_COOLDOWN_SECONDS
            )
            object.__setattr__(self, "breaker", breaker)

    @property
    def kind(self) -> str:
        return self.provider.kind

    def admit(self, park_after_seconds: float) -> Admitted | Deferred:
        """Synchronous: shipments admitted in one go see each other's bookings."""
        pace = self.pace
        if pace is not None and pace.wait() > park_after_seconds:
            # Back half a queue's length before its turn: ready when the slot comes.
            return Deferred(ParkReason.ACCOUNT_BUSY, pace.book_parked(park_after_seconds / 2))
        if self.gate.full:
            return Deferred(ParkReason.ACCOUNT_BUSY, time.monotonic() + park_after_seconds)
        # Last: in a half-open circuit this takes the one probe, which must then be made.
        blocked = self.breaker.blocked_until()
        if blocked is not None:
            # Spread over a cool-down: the parked ones do not all come back at one instant.
            spread = random.random() * self.breaker.cooldown_seconds
            return Deferred(ParkReason.CIRCUIT_OPEN, blocked + spread)
        return Admitted(pace.admit() if pace is not None else None)
