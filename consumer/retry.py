"""Retrying one shipment cancel: which errors, how often, how long, honouring Retry-After.

Only ``TransientError``s are retried, with exponential backoff and full jitter, never
sooner than the provider's ``Retry-After``, and never past the shipment's budget (attempts
and seconds). Waiting for the account's rate limiter or concurrency cap counts toward the
budget, so an overloaded account cannot hold an order forever.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from consumer.errors import CancelError, ProviderTimeoutError, RateLimitedError
from consumer.providers.base import CancelOutcome


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
    """Rate limit (token bucket) and concurrency cap of one provider account."""

    def __init__(self, max_concurrency: int, rate_per_minute: float | None) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._bucket = _token_bucket(rate_per_minute) if rate_per_minute else None

    async def __aenter__(self) -> None:
        # Slot first: a token taken while queueing for a slot would be spent in a burst later.
        await self._slots.acquire()
        if self._bucket is not None:
            try:
                await self._bucket.acquire()
            except BaseException:
                self._slots.release()
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots.release()


def _token_bucket(rate_per_minute: float) -> AsyncLimiter:
    # A bucket of capacity C refilled at R/min lets C + R calls through in any minute;
    # refilling at (rate - C) keeps every 60 s window at or under the provider's limit.
    capacity = max(1.0, rate_per_minute / 60)
    refill_per_minute = max(rate_per_minute - capacity, rate_per_minute / 2)
    return AsyncLimiter(max_rate=capacity, time_period=capacity * 60 / refill_per_minute)


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
        try:
            async with budget, gate:
                called = True
                outcome = await attempt()
            return Attempted(attempts, outcome=outcome)
        except TimeoutError:
            if not budget.expired():
                raise
            error: CancelError = (
                ProviderTimeoutError(f"no answer within the {policy.budget_seconds:g}s budget")
                if called
                else RateLimitedError("no call slot free at this account within the budget")
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
