import asyncio

import pytest

from consumer.core.errors import (
    CancelError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from consumer.core.retry import AccountGate, RetryPolicy, cancel_with_retries
from consumer.providers.base import CancelOutcome


class ScriptedAttempts:
    """Raises the scripted errors in turn, then succeeds; records every call."""

    def __init__(self, *errors: CancelError) -> None:
        self._errors = list(errors)
        self.calls = 0

    async def __call__(self) -> CancelOutcome:
        self.calls += 1
        if self._errors:
            raise self._errors.pop(0)
        return CancelOutcome("cancelled")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def gate() -> AccountGate:
    return AccountGate(max_concurrency=4)


async def test_transient_errors_are_retried_until_success() -> None:
    attempt = ScriptedAttempts(UnavailableError("503"), UnavailableError("503"))
    clock = FakeClock()
    result = await cancel_with_retries(
        attempt, gate(), RetryPolicy(), sleep=clock.sleep, clock=clock, rand=lambda: 1.0
    )
    assert result.outcome == CancelOutcome("cancelled")
    assert result.attempts == 3
    assert clock.sleeps == [0.25, 0.5], "exponential backoff from the initial delay"


async def test_permanent_errors_are_not_retried() -> None:
    attempt = ScriptedAttempts(NotFoundError("404"))
    result = await cancel_with_retries(attempt, gate(), RetryPolicy())
    assert isinstance(result.error, NotFoundError)
    assert attempt.calls == 1


async def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    attempt = ScriptedAttempts(RateLimitedError("429", retry_after=2.0))
    clock = FakeClock()
    result = await cancel_with_retries(
        attempt, gate(), RetryPolicy(), sleep=clock.sleep, clock=clock, rand=lambda: 0.1
    )
    assert result.attempts == 2
    assert clock.sleeps == [2.0]


async def test_gives_up_when_attempts_are_exhausted_keeping_the_last_error() -> None:
    attempt = ScriptedAttempts(*(UnavailableError(f"503 #{i}") for i in range(10)))
    clock = FakeClock()
    result = await cancel_with_retries(
        attempt, gate(), RetryPolicy(max_attempts=3), sleep=clock.sleep, clock=clock
    )
    assert result.attempts == 3
    assert result.error is not None
    assert result.error.message == "503 #2"
    assert result.error.retryable


async def test_gives_up_early_when_retry_after_exceeds_the_budget() -> None:
    attempt = ScriptedAttempts(RateLimitedError("429", retry_after=120))
    clock = FakeClock()
    result = await cancel_with_retries(
        attempt, gate(), RetryPolicy(budget_seconds=30), sleep=clock.sleep, clock=clock
    )
    assert isinstance(result.error, RateLimitedError)
    assert clock.sleeps == [], "no point sleeping past the budget"


async def test_a_hanging_call_ends_as_timeout_within_the_budget() -> None:
    async def hang() -> CancelOutcome:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    result = await cancel_with_retries(hang, gate(), RetryPolicy(budget_seconds=0.05))
    assert result.error is not None
    assert result.error.category == "timeout"
    assert result.error.retryable


async def test_concurrency_cap_is_shared_by_all_callers() -> None:
    shared = AccountGate(max_concurrency=2)
    running = 0
    peak = 0

    async def call() -> CancelOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return CancelOutcome("cancelled")

    await asyncio.gather(*(cancel_with_retries(call, shared, RetryPolicy()) for _ in range(8)))
    assert peak == 2


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_backoff_is_capped_and_jittered(attempt: int) -> None:
    policy = RetryPolicy(backoff_initial_seconds=1, backoff_max_seconds=4)
    assert policy.backoff(attempt, lambda: 1.0) == min(4, 2 ** (attempt - 1))
    assert policy.backoff(attempt, lambda: 0.0) == 0
