"""The per-account rate limit: one token per HTTP request, a sliding minute never exceeded."""

from __future__ import annotations

import asyncio
import selectors

import httpx
from aiolimiter import AsyncLimiter

from consumer.core.retry import AccountGate, RetryPolicy, cancel_with_retries
from consumer.providers.base import CancelOutcome, CancelRequest
from consumer.providers.ratelimit import RateLimitedTransport, rate_limited, token_bucket
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings


class CountingTransport(httpx.AsyncBaseTransport):
    """Answers every request from ``answer`` and counts them."""

    def __init__(self, answer: httpx.Response | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._answer = answer or httpx.Response(204)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(
            self._answer.status_code, headers=self._answer.headers, content=self._answer.content
        )


class SkippingSelector(selectors.DefaultSelector):
    """A selector that, rather than sleep until the loop's next timer, moves ``now`` there.

    Every turn of the loop takes at least a microsecond, as on a real clock: a timer set a
    rounding error ahead (aiolimiter sets those) still comes due.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None:
            self.now += max(timeout, 1e-6)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer instead of waiting: minutes of
    token bucket pass in milliseconds, and the limiter knows no difference."""

    def __init__(self) -> None:
        self._virtual_clock = SkippingSelector()
        super().__init__(self._virtual_clock)

    def time(self) -> float:
        return self._virtual_clock.now


def admissions(limiter: AsyncLimiter, seconds: float) -> list[float]:
    """When a caller that always wants a token gets one, over ``seconds`` of virtual time."""

    async def saturate() -> list[float]:
        loop = asyncio.get_running_loop()
        admitted = []
        while loop.time() < seconds:
            await limiter.acquire()
            admitted.append(loop.time())
        return admitted

    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(saturate())
    finally:
        loop.close()


def max_in_window(times: list[float], window: float) -> int:
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_the_bucket_never_lets_more_than_the_limit_into_any_minute() -> None:
    for rate in (1.0, 60.0, 200.0, 1000.0):
        times = admissions(token_bucket(rate), seconds=300)
        assert max_in_window(times, 60.0) <= rate, rate
    for rate in (60.0, 200.0, 1000.0):
        # ... and it is not needlessly slow: a saturated bucket uses most of the limit.
        assert len(admissions(token_bucket(rate), seconds=300)) >= 0.95 * rate * 5, rate


async def test_every_http_request_takes_a_token() -> None:
    inner = CountingTransport()
    limiter = AsyncLimiter(max_rate=2, time_period=3600)
    async with httpx.AsyncClient(transport=RateLimitedTransport(inner, limiter)) as client:
        await client.get("https://p.test/a")
        await client.get("https://p.test/b")
        with_third = asyncio.ensure_future(client.get("https://p.test/c"))
        await asyncio.sleep(0.05)
        assert not with_third.done(), "the third request waits for a token"
        with_third.cancel()
    assert len(inner.requests) == 2


async def test_a_confirming_read_after_a_refusal_takes_its_own_token() -> None:
    refusal = httpx.Response(
        400,
        json={
            "request_id": "r",
            "errors": [
                {
                    "error_source": "shipstation",
                    "error_type": "business_rules",
                    "error_code": "invalid_status",
                    "message": "already cancelled",
                }
            ],
        },
    )
    shipment = httpx.Response(200, json={"shipment_id": "se-1", "shipment_status": "cancelled"})

    class Api(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            answer = refusal if request.method == "PUT" else shipment
            return httpx.Response(answer.status_code, content=answer.content)

    api = Api()
    waits: list[float] = []
    limiter = AsyncLimiter(max_rate=10, time_period=60)
    transport = RateLimitedTransport(api, limiter, on_wait=waits.append)
    settings = ShipStationSettings(kind="shipstation", base_url="https://ss.test", api_key="k")
    async with httpx.AsyncClient(transport=transport) as client:
        provider = ShipStationProvider("ss", settings, client)
        outcome = await provider.cancel(CancelRequest("se-1", "idem"))
    assert outcome.outcome == "already_cancelled"
    assert api.calls == 2
    assert len(waits) == 2, "one token per request, not per attempt"
    # Two tokens of ten are taken (less the trickle that leaked back since): 8.1 more won't fit.
    assert limiter.has_capacity(8)
    assert not limiter.has_capacity(8.1)


async def test_running_out_of_budget_while_waiting_for_a_token_is_rate_limited() -> None:
    limiter = AsyncLimiter(max_rate=1, time_period=3600)
    transport = RateLimitedTransport(CountingTransport(), limiter)
    async with httpx.AsyncClient(transport=transport) as client:

        async def attempt() -> CancelOutcome:
            await client.get("https://p.test/x")
            return CancelOutcome("cancelled")

        gate = AccountGate(max_concurrency=4)
        first = await cancel_with_retries(attempt, gate, RetryPolicy(budget_seconds=0.2))
        second = await cancel_with_retries(attempt, gate, RetryPolicy(budget_seconds=0.2))
    assert first.outcome is not None
    assert second.error is not None
    assert second.error.category == "rate_limited"
    assert second.error.retryable


async def test_a_hanging_call_with_tokens_to_spare_is_still_a_timeout() -> None:
    class Hang(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    transport = RateLimitedTransport(Hang(), AsyncLimiter(max_rate=5, time_period=1))
    async with httpx.AsyncClient(transport=transport) as client:

        async def attempt() -> CancelOutcome:
            await client.get("https://p.test/x")
            return CancelOutcome("cancelled")

        result = await cancel_with_retries(
            attempt, AccountGate(max_concurrency=1), RetryPolicy(budget_seconds=0.1)
        )
    assert result.error is not None
    assert result.error.category == "timeout"


def test_an_account_without_a_limit_keeps_its_transport() -> None:
    inner = CountingTransport()
    assert rate_limited(inner, None) is inner
    assert isinstance(rate_limited(inner, 200), RateLimitedTransport)
