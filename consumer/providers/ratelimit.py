"""A provider account's rate limit, applied to every HTTP request the account sends.

A cancel attempt may make several calls (the cancel, a confirming GET after a state refusal,
label voids, an OAuth token fetch); providers count each one against their limit, so the
token bucket sits in the HTTP transport, under all of them.

Waiting for a token happens inside the attempt, so it counts toward the shipment's budget
(``consumer.core.retry``); when the budget runs out during that wait, the retry loop learns it
from ``TokenWaits`` and reports ``rate_limited`` rather than a provider timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import httpx
from aiolimiter import AsyncLimiter


def token_bucket(rate_per_minute: float) -> AsyncLimiter:
    """A bucket that lets at most ``rate_per_minute`` calls into *any* 60 s window.

    A bucket of capacity C refilled at R/min lets C + R calls through in a minute, so it
    refills at R - C: one second's worth of burst, never more than R per sliding minute.
    """
    capacity = max(1.0, rate_per_minute / 60)
    refill_per_minute = max(rate_per_minute - capacity, rate_per_minute / 2)
    return AsyncLimiter(max_rate=capacity, time_period=capacity * 60 / refill_per_minute)


@dataclass(slots=True)
class TokenWaits:
    """Whether the current cancel attempt is blocked on its account's rate limit."""

    waiting: bool = False


_current: ContextVar[TokenWaits | None] = ContextVar("provider_token_waits", default=None)


class tracking_token_waits:
    """Let the transport report token waits of the calls made inside this block.

    A class, not ``@contextmanager``: it is entered once per cancel attempt, and the
    generator machinery costs several times more.
    """

    __slots__ = ("_reset", "_waits")

    def __enter__(self) -> TokenWaits:
        self._waits = TokenWaits()
        self._reset = _current.set(self._waits)
        return self._waits

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._reset)


class RateLimitedTransport(httpx.AsyncBaseTransport):
    """Takes one token of ``limiter`` per HTTP request, then hands it to ``inner``.

    ``on_wait`` hears how long each request waited for its token (a metric).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        limiter: AsyncLimiter,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._on_wait = on_wait

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        waits = _current.get()
        if waits is not None:
            waits.waiting = True
        started = time.monotonic()
        # On cancellation (the budget ran out) the flag stays set: that is the news.
        await self._limiter.acquire()
        if waits is not None:
            waits.waiting = False
        if self._on_wait is not None:
            self._on_wait(time.monotonic() - started)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def rate_limited(
    inner: httpx.AsyncBaseTransport,
    rate_per_minute: float | None,
    on_wait: Callable[[float], None] | None = None,
) -> httpx.AsyncBaseTransport:
    """``inner`` behind the account's token bucket; unchanged when it has no limit."""
    if rate_per_minute is None:
        return inner
    return RateLimitedTransport(inner, token_bucket(rate_per_minute), on_wait)
