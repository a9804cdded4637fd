import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from consumer.core.breaker import CircuitBreaker, CircuitState
from consumer.core.errors import (
    CancelError,
    InternalError,
    NetworkError,
    NotFoundError,
    ProviderTimeoutError,
    RateLimitedError,
    UnavailableError,
)
from consumer.core.pacing import Pace
from consumer.core.retry import AccountGate, RetryPolicy, cancel_with_retries
from consumer.providers.base import CancelOutcome
from consumer.providers.client import TransportClient
from consumer.providers.ratelimit import PacedTransport


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


class SlowGate(AccountGate):
    """The account's concurrency cap, behind a queue that takes ``seconds`` of the clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__(max_concurrency=4)
        self._clock = clock
        self._seconds = seconds

    async def __aenter__(self) -> None:
        self._clock.now += self._seconds
        await super().__aenter__()


async def test_waiting_for_the_gate_does_not_spend_the_budget() -> None:
    attempt = ScriptedAttempts(*(UnavailableError("503") for _ in range(3)))
    clock = FakeClock()
    gate_waits: list[float] = []
    result = await cancel_with_retries(
        attempt,
        SlowGate(clock, seconds=100.0),
        RetryPolicy(budget_seconds=30.0),
        on_gate_wait=gate_waits.append,
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 1.0,
    )
    assert result.outcome == CancelOutcome("cancelled")
    assert result.attempts == 4
    assert gate_waits == [100.0] * 4


async def test_a_long_real_gate_wait_does_not_time_the_attempt_out() -> None:
    shared = AccountGate(max_concurrency=1)
    holding = asyncio.Event()

    async def hold() -> None:
        async with shared:
            holding.set()
            await asyncio.sleep(0.15)

    holder = asyncio.create_task(hold())
    await holding.wait()
    gate_waits: list[float] = []
    result = await cancel_with_retries(
        ScriptedAttempts(),
        shared,
        RetryPolicy(budget_seconds=0.05),
        on_gate_wait=gate_waits.append,
    )
    await holder
    assert result.outcome == CancelOutcome("cancelled")
    assert gate_waits[0] >= 0.1


def breaker(clock: FakeClock, threshold: int = 2) -> CircuitBreaker:
    return CircuitBreaker("ss-main", threshold, 30.0, clock)


async def test_a_429_does_not_count_toward_the_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    attempt = ScriptedAttempts(*(RateLimitedError("429", retry_after=1.0) for _ in range(3)))
    await cancel_with_retries(
        attempt,
        gate(),
        RetryPolicy(max_attempts=3),
        breaker=circuit,
        sleep=clock.sleep,
        clock=clock,
    )
    circuit.failed()
    assert circuit.state is CircuitState.CLOSED, "only the one 503-like failure counted"


async def test_transient_failures_count_toward_the_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=3)
    attempt = ScriptedAttempts(
        UnavailableError("503"), ProviderTimeoutError("timeout"), NetworkError("reset")
    )
    result = await cancel_with_retries(
        attempt,
        gate(),
        RetryPolicy(max_attempts=3),
        breaker=circuit,
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.error is not None
    assert circuit.state is CircuitState.OPEN


async def test_the_round_ends_early_when_its_failures_open_the_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=2)
    attempt = ScriptedAttempts(*(UnavailableError(f"503 #{i}") for i in range(10)))
    result = await cancel_with_retries(
        attempt,
        gate(),
        RetryPolicy(max_attempts=5),
        breaker=circuit,
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.attempts == 2
    assert attempt.calls == 2
    assert isinstance(result.error, UnavailableError)
    assert circuit.state is CircuitState.OPEN


async def test_the_round_ends_early_when_other_calls_open_the_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=2)

    async def others_fail_meanwhile(seconds: float) -> None:
        await clock.sleep(seconds)
        circuit.failed()
        circuit.failed()

    attempt = ScriptedAttempts(UnavailableError("503"), UnavailableError("503"))
    result = await cancel_with_retries(
        attempt,
        gate(),
        RetryPolicy(max_attempts=5),
        breaker=circuit,
        sleep=others_fail_meanwhile,
        clock=clock,
    )
    assert result.attempts == 1
    assert isinstance(result.error, UnavailableError)


async def test_a_permanent_answer_closes_a_half_open_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.failed()
    circuit.failed()
    clock.now += 30.0
    assert circuit.blocked_until() is None  # the probe
    result = await cancel_with_retries(
        ScriptedAttempts(NotFoundError("404")), gate(), RetryPolicy(), breaker=circuit
    )
    assert isinstance(result.error, NotFoundError)
    assert circuit.state is CircuitState.CLOSED


async def test_a_success_closes_a_half_open_breaker() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.failed()
    circuit.failed()
    clock.now += 30.0
    assert circuit.blocked_until() is None
    result = await cancel_with_retries(ScriptedAttempts(), gate(), RetryPolicy(), breaker=circuit)
    assert result.outcome is not None
    assert circuit.state is CircuitState.CLOSED


async def test_an_internal_error_says_nothing_about_the_providers_health() -> None:
    clock = FakeClock()
    circuit = breaker(clock)
    circuit.failed()
    result = await cancel_with_retries(
        ScriptedAttempts(InternalError("unreadable")), gate(), RetryPolicy(), breaker=circuit
    )
    assert isinstance(result.error, InternalError)
    circuit.failed()
    assert circuit.state is CircuitState.OPEN, "the earlier failure still counted"


def hand_paced() -> tuple[Pace, FakeClock]:
    """60/min on a clock moved by hand: its slots are long past for the transport (which
    sleeps on ``time.monotonic()``), so nothing sleeps."""
    clock = FakeClock()
    return Pace(60, clock), clock


def paced_attempt(
    pace: Pace, clock: FakeClock, *answers: int
) -> Callable[[], Awaitable[CancelOutcome]]:
    """An attempt making one request through ``pace``, answered in turn by ``answers`` as
    the pace's next slot opens."""
    statuses = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        clock.now = pace.next_slot()
        return httpx.Response(statuses.pop(0))

    client = TransportClient(PacedTransport(httpx.MockTransport(answer), pace))

    async def attempt() -> CancelOutcome:
        response = await client.send(httpx.Request("PUT", "https://p.test/cancel"))
        if response.status_code == 503:
            raise UnavailableError("503", http_status=503)
        return CancelOutcome("cancelled")

    return attempt


async def test_the_ticket_goes_to_the_first_attempt_only() -> None:
    pace, clock = hand_paced()
    ticket = pace.admit()
    result = await cancel_with_retries(
        paced_attempt(pace, clock, 503, 503, 204),
        gate(),
        RetryPolicy(backoff_initial_seconds=0),
        ticket=ticket,
    )
    assert result.attempts == 3
    assert pace.next_slot() == pytest.approx(3 * pace.interval), "three slots"
    assert pace.wait() == 0.0, "no claim left"


async def test_a_round_ending_before_its_first_request_gives_the_ticket_back() -> None:
    pace, _ = hand_paced()
    result = await cancel_with_retries(
        ScriptedAttempts(NotFoundError("404")), gate(), RetryPolicy(), ticket=pace.admit()
    )
    assert isinstance(result.error, NotFoundError)
    assert pace.wait() == 0.0


async def test_an_adapter_bug_gives_the_ticket_back() -> None:
    pace, _ = hand_paced()

    async def broken() -> CancelOutcome:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        await cancel_with_retries(broken, gate(), RetryPolicy(), ticket=pace.admit())
    assert pace.wait() == 0.0
