"""Retrying one shipment cancel: which errors, how often, how long, honouring Retry-After.

Only ``TransientError``s are retried, with exponential backoff and full jitter, never
sooner than the provider's ``Retry-After``, and never past the shipment's budget (attempts
and seconds). Waiting for the account's concurrency cap (here, per attempt) or rate limit
(``consumer.providers.ratelimit``, per HTTP request) counts toward the budget, so an
overloaded account cannot hold an order forever.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumer.core.errors import CancelError, ProviderTimeoutError, RateLimitedError
from consumer.providers.base import CancelOutcome
from consumer.providers.ratelimit import tracking_token_waits


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

    The rate limit is not here: it takes a token per HTTP request, in the account's
    transport (``consumer.providers.ratelimit``).
    """

    def __init__(self, max_concurrency: int) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)

    async def __aenter__(self) -> None:
        await self._slots.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


@dataclass(frozen=True, slots=True)
class Attempted:
    """What a shipment cancel came to: an outcome or the last error, after n attempts."""

    attempts: int
    outcome: CancelOutcome | None = None
    error: CancelError | None = None


Sleep = Callable[[float], Awaitable[None]]


async def cancel_with_retries(
    attempt: Callable[[], Awaitable[CancelOutcome]],
    gate: AccountGate,
    policy: RetryPolicy,
    *,
    on_retry: Callable[[CancelError, float], None] | None = None,
    on_gate_wait: Callable[[float], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> Attempted:
    deadline = clock() + policy.budget_seconds
    attempts = 0
    while True:
        attempts += 1
        called = False
        budget = asyncio.timeout(max(0.0, deadline - clock()))
        queued = clock()
        try:
            with tracking_token_waits() as tokens:
                async with budget, gate:
                    called = True
                    if on_gate_wait is not None:
                        on_gate_wait(clock() - queued)
                    outcome = await attempt()
            return Attempted(attempts, outcome=outcome)
        except TimeoutError:
            if not budget.expired():
                raise
            error: CancelError
            if not called:
                error = RateLimitedError("no call slot free at this account within the budget")
            elif tokens.waiting:
                error = RateLimitedError("the account's rate limit left no call within the budget")
            else:
                error = ProviderTimeoutError(
                    f"no answer within the {policy.budget_seconds:g}s budget"
                )
            return Attempted(attempts, error=error)
        except CancelError as exc:
            if not exc.retryable or attempts >= policy.max_attempts:
                return Attempted(attempts, error=exc)
            wait = max(policy.backoff(attempts, rand), exc.retry_after or 0.0)
            if math.isinf(wait) or clock() + wait >= deadline:
                return Attempted(attempts, error=exc)
            if on_retry is not None:
                on_retry(exc, wait)
            await sleep(wait)
