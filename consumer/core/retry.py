"""One round of in-memory attempts at a shipment cancel: which errors, how often, how long.

Only ``TransientError``s are retried, with exponential backoff and full jitter, never
sooner than the provider's ``Retry-After``, and never past the round's budget (attempts and
seconds). Waiting for the account's concurrency cap (here, per attempt) or pace
(``consumer.providers.ratelimit``, per HTTP request) is our own doing and does not count
toward the budget. A shipment still failing after its round is parked, not failed
(``consumer.core.canceller``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumer.core.breaker import CircuitBreaker
from consumer.core.errors import (
    CancelError,
    InternalError,
    ProviderTimeoutError,
    RateLimitedError,
)
from consumer.core.pacing import Ticket
from consumer.providers.base import CancelOutcome
from consumer.providers.ratelimit import AttemptSlots


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    budget_seconds: float = 30.0
    backoff_initial_seconds: float = 0.25
    backoff_max_seconds: float = 8.0

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter exponential backoff after the given (1-based) attempt."""
        ceiling = min(self.backoff_max_seconds, self.backoff_initial_seconds * 2.0 ** (attempt - 1))
        return ceiling * rand()


class AccountGate:
    """Concurrency cap of one provider account: attempts in flight at once.

    The rate limit is not here: the account's pace books a slot per HTTP request, in its
    transport (``consumer.providers.ratelimit``).
    """

    def __init__(self, max_concurrency: int) -> None:
        self._max = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0

    @property
    def full(self) -> bool:
        """A whole round of attempts is already queued behind the ones in flight."""
        return self._waiting >= self._max

    async def __aenter__(self) -> None:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


@dataclass(frozen=True, slots=True)
class Attempted:
    """What a round of attempts came to: an outcome or the last error, after n attempts."""

    attempts: int
    outcome: CancelOutcome | None = None
    error: CancelError | None = None


Sleep = Callable[[float], Awaitable[None]]


async def cancel_with_retries(
    attempt: Callable[[], Awaitable[CancelOutcome]],
    gate: AccountGate,
    policy: RetryPolicy,
    *,
    breaker: CircuitBreaker | None = None,
    ticket: Ticket | None = None,
    on_retry: Callable[[CancelError, float], None] | None = None,
    on_gate_wait: Callable[[float], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> Attempted:
    """One round of attempts. ``ticket``: the claim on the account's pace its admission
    took, for the first request.

    The budget counts the provider's time and the backoffs, not the waits for the
    account's own concurrency cap and pace. A round ends early when ``breaker`` opens.
    """
    claim = ticket
    spent = 0.0
    attempts = 0
    try:
        while True:
            attempts += 1
            queued = clock()
            async with gate:
                started = clock()
                if on_gate_wait is not None:
                    on_gate_wait(started - queued)
                with AttemptSlots(ticket) as slots:
                    ticket = None
                    try:
                        async with asyncio.timeout(policy.budget_seconds - spent) as budget:
                            slots.budget = budget
                            outcome = await attempt()
                    except TimeoutError:
                        if not budget.expired():
                            raise
                        error: CancelError = ProviderTimeoutError(
                            f"no answer within the {policy.budget_seconds:g}s budget"
                        )
                    except CancelError as exc:
                        error = exc
                    else:
                        if breaker is not None:
                            breaker.succeeded()
                        return Attempted(attempts, outcome=outcome)
                spent += clock() - started - slots.waited
            if breaker is not None:
                _report(breaker, error)
            if not error.retryable or attempts >= policy.max_attempts:
                return Attempted(attempts, error=error)
            wait = max(policy.backoff(attempts, rand), error.retry_after or 0.0)
            if math.isinf(wait) or spent + wait >= policy.budget_seconds:
                return Attempted(attempts, error=error)
            if on_retry is not None:
                on_retry(error, wait)
            await sleep(wait)
            spent += wait
            if breaker is not None and breaker.blocked_until() is not None:
                return Attempted(attempts, error=error)  # the provider is down: park instead
    finally:
        if claim is not None:
            claim.release()  # not used: the round ended before its first request


def _report(breaker: CircuitBreaker, error: CancelError) -> None:
    """A 429 is about our pace, not the provider's health; any other transient failure
    counts toward an outage; a permanent answer shows the provider is up."""
    if isinstance(error, RateLimitedError):
        return
    if error.retryable:
        breaker.failed()
    elif not isinstance(error, InternalError):
        breaker.succeeded()
