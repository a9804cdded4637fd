"""A circuit breaker per provider account: stop calling a provider that is down.

Closed: calls go. After ``failure_threshold`` consecutive transient failures (5xx, timeouts,
connection errors; a 429 is the pace's business, not an outage) it opens: no calls for
``cooldown_seconds``, and new work is parked at once. Then half-open: one probe call goes;
its success closes the circuit, its failure opens it for another cool-down. Any answer that
is not a transient failure (a success, a 404, a refusal) shows the provider is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

log = logging.getLogger(__name__)


class CircuitState(IntEnum):
    """The values of the ``circuit_state`` metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        account: str,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._account = account
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        # While a probe is out, until when: a probe that never reports (its shipment was
        # interrupted) must not keep the circuit half-open for ever.
        self._probe_until = 0.0

    @property
    def cooldown_seconds(self) -> float:
        return self._cooldown

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            return CircuitState.HALF_OPEN
        return self._state

    def blocked_until(self) -> float | None:
        """``None`` when a call may go now (taking the probe when half-open); otherwise the
        clock time after which to ask again."""
        now = self._clock()
        if self._state is CircuitState.CLOSED:
            return None
        if self._state is CircuitState.OPEN:
            if now < self._open_until:
                return self._open_until
            self._change(CircuitState.HALF_OPEN)
        if now < self._probe_until:
            # One probe at a time; the others come back after it has had its chance.
            return self._probe_until
        self._probe_until = now + self._cooldown
        return None

    def succeeded(self) -> None:
        self._failures = 0
        self._probe_until = 0.0
        if self._state is not CircuitState.CLOSED:
            self._change(CircuitState.CLOSED)

    def failed(self) -> None:
        """A transient failure: counts toward opening, or reopens a half-open circuit."""
        self._failures += 1
        probe_failed = self.state is CircuitState.HALF_OPEN
        self._probe_until = 0.0
        if probe_failed or (
            self._state is CircuitState.CLOSED and self._failures >= self._threshold
        ):
            self._open_until = self._clock() + self._cooldown
            self._change(CircuitState.OPEN)

    def _change(self, state: CircuitState) -> None:
        if state is self._state:
            return
        self._state = state
        fields = {"provider": self._account, "failures": self._failures}
        if state is CircuitState.OPEN:
            log.warning(
                "circuit opened: provider calls stop, new shipments are parked",
                extra={**fields, "cooldown_seconds": self._cooldown},
            )
        elif state is CircuitState.HALF_OPEN:
            log.info("circuit half-open: one probe call goes", extra=fields)
        else:
            log.info("circuit closed: provider answers again", extra=fields)
