"""Connecting to the broker: one attempt after another, with a capped backoff, until the
clients start, a refusal that waiting cannot fix is raised, or a stop is requested."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from consumer.core.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


async def connect(
    attempt: Callable[[], Awaitable[T]],
    *,
    bootstrap_servers: str,
    stop: asyncio.Event,
    unreachable: tuple[type[Exception], ...],
    backoff: Backoff,
    release: Callable[[T], Awaitable[None]],
    on_unreachable: Callable[[Exception], None] | None = None,
) -> T | None:
    """``attempt()`` until it returns; ``None`` once ``stop`` is set.

    ``attempt`` makes and starts fresh clients and stops them itself when it fails or is
    cancelled; ``release`` stops what an attempt started when the caller is cancelled just
    as it finished. Exceptions of the ``unreachable`` classes are retried (logged as one
    warning per attempt); anything else ends the connecting. A stop cancels an attempt
    under way: a broker that takes its time must not hold the exit.
    """
    tries = 0
    while not stop.is_set():
        try:
            started = await _unless_stopped(attempt(), stop, release)
        except unreachable as exc:
            wait = backoff.delay(tries)
            tries += 1
            log.warning(
                "kafka broker unreachable, retrying",
                extra={
                    "bootstrap_servers": bootstrap_servers,
                    "error": str(exc),
                    "retry_in_seconds": wait,
                },
            )
            if on_unreachable is not None:
                on_unreachable(exc)
            await wait_or_stop(stop, wait)
            continue
        if started is not None:
            return started
    return None


async def _unless_stopped(
    attempt: Awaitable[T], stop: asyncio.Event, release: Callable[[T], Awaitable[None]]
) -> T | None:
    task = asyncio.ensure_future(attempt)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # we are cancelled: what the attempt started is nobody's
        if task.done() and not task.cancelled() and task.exception() is None:
            await release(task.result())
        raise
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
