"""Connecting to the broker: retried while unreachable, ended by a refusal or a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from consumer.core.backoff import Backoff
from consumer.kafka.connect import connect

FAST = Backoff((0.01,))


class Unreachable(Exception):
    pass


class Refused(Exception):
    pass


async def nothing_to_release(started: object) -> None:
    raise AssertionError(f"{started} was released although the caller took it")


def connect_to_test_broker(
    attempt: Callable[[], Awaitable[str]],
    *,
    stop: asyncio.Event | None = None,
    backoff: Backoff = FAST,
    release: Callable[[str], Awaitable[None]] = nothing_to_release,
    on_unreachable: Callable[[Exception], None] | None = None,
) -> Coroutine[Any, Any, str | None]:
    """``connect`` to a broker at b:9092 whose ``Unreachable`` is retried."""
    return connect(
        attempt,
        bootstrap_servers="b:9092",
        stop=stop or asyncio.Event(),
        unreachable=(Unreachable,),
        backoff=backoff,
        release=release,
        on_unreachable=on_unreachable,
    )


async def test_backoff_repeats_its_last_step() -> None:
    backoff = Backoff((1.0, 2.0, 5.0))
    assert [backoff.delay(n) for n in range(5)] == [1.0, 2.0, 5.0, 5.0, 5.0]


async def test_a_backoff_without_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        Backoff(())


async def test_unreachable_attempts_are_retried_until_one_succeeds() -> None:
    tries: list[int] = []
    seen: list[Exception] = []

    async def attempt() -> str:
        tries.append(len(tries))
        if len(tries) < 3:
            raise Unreachable("no route")
        return "clients"

    started = await connect_to_test_broker(attempt, on_unreachable=seen.append)
    assert started == "clients"
    assert len(tries) == 3
    assert [str(e) for e in seen] == ["no route", "no route"]


async def test_a_refusal_is_raised_at_once() -> None:
    async def attempt() -> str:
        raise Refused("bad password")

    with pytest.raises(Refused):
        await connect_to_test_broker(attempt)


async def test_a_stop_cancels_an_attempt_under_way() -> None:
    stop = asyncio.Event()
    attempting = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def attempt() -> str:
        attempting.set()
        try:
            await asyncio.Event().wait()  # a broker that takes its time
        except asyncio.CancelledError:
            cleaned_up.set()
            raise
        raise AssertionError("unreachable")

    connecting = asyncio.create_task(connect_to_test_broker(attempt, stop=stop))
    await asyncio.wait_for(attempting.wait(), timeout=2)
    stop.set()
    assert await asyncio.wait_for(connecting, timeout=2) is None
    assert cleaned_up.is_set(), "the attempt was cancelled, so it closed its clients"


async def test_a_stop_ends_the_wait_between_attempts() -> None:
    stop = asyncio.Event()

    async def attempt() -> str:
        stop.set()
        raise Unreachable("no route")

    result = await asyncio.wait_for(
        connect_to_test_broker(
            attempt,
            stop=stop,
            backoff=Backoff((3600.0,)),
        ),
        timeout=2,
    )
    assert result is None


async def test_what_an_attempt_started_is_released_when_the_caller_is_cancelled() -> None:
    released: list[str] = []
    finished = asyncio.Event()

    async def attempt() -> str:
        finished.set()
        return "clients"

    async def release(started: object) -> None:
        released.append(str(started))

    connecting = asyncio.create_task(connect_to_test_broker(attempt, release=release))
    await finished.wait()  # the attempt is done; the connecting task has not resumed yet
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert released == ["clients"], "clients started for a caller that left were stopped"
