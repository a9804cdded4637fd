"""A provider account's pace, applied to every HTTP request the account sends.

A cancel attempt may make several calls (the cancel, a confirming GET after a state refusal,
label voids, an OAuth token fetch); providers count each one against their limit, so the
pacing sits in the HTTP transport, under all of them. The transport also tells the pace how
the provider took each request (a 429 or not), which is how the pace adapts.

Waiting for a slot is our own doing, never the provider's, so it does not count toward a
shipment's retry budget: the transport moves the attempt's time box (``AttemptSlots``) on
by the time it waited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar

import httpx

from consumer.core.errors import RateLimitedError
from consumer.core.pacing import Pace, Ticket
from consumer.providers.base import parse_retry_after


class AttemptSlots:
    """The current cancel attempt's dealings with its account's pace.

    ``ticket``: the claim the canceller took on the pace when it admitted the shipment, used
    by the attempt's first request. ``budget``: the attempt's time box, moved on by every wait.
    A class, not ``@contextmanager``: it is entered once per cancel attempt, and the
    generator machinery costs several times more.
    """

    __slots__ = ("_reset", "budget", "ticket", "waited")

    def __init__(self, ticket: Ticket | None = None, budget: asyncio.Timeout | None = None):
        self.ticket = ticket
        self.budget = budget
        self.waited = 0.0

    def __enter__(self) -> AttemptSlots:
        self._reset = _current.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._reset)
        if self.ticket is not None:
            self.ticket.release()  # no request was made

    def slot(self, pace: Pace) -> float:
        """The clock time the next request may go at, booked now (with the ticket, once)."""
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            return ticket.book()
        return pace.book()

    def waited_for(self, seconds: float) -> None:
        self.waited += seconds
        budget = self.budget
        if budget is not None and seconds > 0 and (when := budget.when()) is not None:
            budget.reschedule(when + seconds)


_current: ContextVar[AttemptSlots | None] = ContextVar("provider_attempt_slots", default=None)


class PacedTransport(httpx.AsyncBaseTransport):
    """Sends each request in its slot of ``pace``, then hands it to ``inner``.

    ``on_wait`` hears how long each request waited for its slot (a metric).
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        pace: Pace,
        on_wait: Callable[[float], None] | None = None,
        max_wait_seconds: float | None = None,
    ) -> None:
        self._inner = inner
        self._pace = pace
        self._on_wait = on_wait
        self._max_wait = max_wait_seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = _current.get()
        pace = self._pace
        self._refuse_a_long_wait()
        epoch = pace.epoch
        start = attempt.slot(pace) if attempt is not None else pace.book()
        began = time.monotonic()
        slept = False
        # Until its slot, then until the guard at sending lets it go (a busy event loop
        # wakes requests late and together: they must not go out in a bunch).
        while (delay := start - time.monotonic()) > 0 or (delay := pace.hold_send()) > 0:
            if attempt is not None:
                attempt.waited_for(delay)  # before the sleep: the budget must not fire in it
            await asyncio.sleep(delay)
            slept = True
            if pace.epoch == epoch:
                start = 0.0  # its slot has come (a sleep may end a hair early)
                continue
            # Refused meanwhile: the slot was booked on a pace the provider does not take.
            self._refuse_a_long_wait()
            epoch, start = pace.epoch, pace.book()
        wait = time.monotonic() - began if slept else 0.0
        if self._on_wait is not None:
            self._on_wait(wait)
        response = await self._inner.handle_async_request(request)
        if response.status_code == 429:
            self._pace.throttled(parse_retry_after(response.headers))
        elif response.status_code < 500:  # a 5xx says nothing of the rate it takes
            self._pace.succeeded()
        return response

    def _refuse_a_long_wait(self) -> None:
        """Before booking, never after: a slot booked and not used is lost to the account."""
        if self._max_wait is None:
            return
        delay = self._pace.next_slot() - time.monotonic()
        if delay > self._max_wait:
            # The provider made the account wait (its Retry-After), or its pace is booked
            # that far ahead: park the shipment rather than hold its call slot and in-flight
            # slot that long.
            raise RateLimitedError(
                f"this account's next call slot is {delay:.0f}s away", retry_after=delay
            )

    async def aclose(self) -> None:
        await self._inner.aclose()


def paced(
    inner: httpx.AsyncBaseTransport,
    pace: Pace | None,
    on_wait: Callable[[float], None] | None = None,
    max_wait_seconds: float | None = None,
) -> httpx.AsyncBaseTransport:
    """``inner`` behind the account's pace; unchanged when it has no rate limit. A request
    that would wait more than ``max_wait_seconds`` for its slot raises ``RateLimitedError``."""
    if pace is None:
        return inner
    return PacedTransport(inner, pace, on_wait, max_wait_seconds)
