from __future__ import annotations

import asyncio

import pytest

from consumer.ingress.idempotency import Conflict, IdempotencyWindow

DIGEST = b"event-a"
TIMEOUT = 30.0


class Sends:
    """Counts records sent; the broker answers each once ``answer`` is set (or fails it)."""

    def __init__(self) -> None:
        self.count = 0
        self.failure: Exception | None = None
        self.answer = asyncio.Event()
        self.answer.set()
        self.entered = asyncio.Event()
        self.acks: list[asyncio.Future[int]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self) -> asyncio.Future[int]:
        self.count += 1
        self.entered.set()
        ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        task = asyncio.create_task(self._settle(ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ack

    async def _settle(self, ack: asyncio.Future[int]) -> None:
        await self.answer.wait()
        if self.failure is not None:
            ack.set_exception(self.failure)
        else:
            ack.set_result(self.count)


async def test_first_call_publishes_and_a_repeat_does_not() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    assert await window.publish_once("a", DIGEST, send) is True
    assert await window.publish_once("a", DIGEST, send) is False
    assert send.count == 1


async def test_same_key_with_another_digest_is_a_conflict_and_not_sent() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    await window.publish_once("a", DIGEST, send)
    with pytest.raises(Conflict):
        await window.publish_once("a", b"event-b", send)
    assert send.count == 1
    # The first event stays the one remembered.
    assert await window.publish_once("a", DIGEST, send) is False


async def test_conflict_is_seen_while_the_first_record_is_still_in_flight() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    send.answer.clear()
    first = asyncio.create_task(window.publish_once("a", DIGEST, send))
    await send.entered.wait()
    with pytest.raises(Conflict):
        await window.publish_once("a", b"event-b", send)
    send.answer.set()
    assert await first is True
    assert send.count == 1


async def test_failed_publish_is_not_remembered_so_a_retry_publishes() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    send.failure = RuntimeError("broker down")
    with pytest.raises(RuntimeError):
        await window.publish_once("a", DIGEST, send)
    assert "a" not in window

    send.failure = None
    assert await window.publish_once("a", DIGEST, send) is True
    assert send.count == 2
    assert "a" in window


async def test_a_send_that_cannot_queue_is_not_remembered() -> None:
    window = IdempotencyWindow(10, TIMEOUT)

    async def refuse() -> asyncio.Future[int]:
        raise RuntimeError("not connected")

    with pytest.raises(RuntimeError):
        await window.publish_once("a", DIGEST, refuse)
    assert await window.publish_once("a", DIGEST, Sends()) is True


async def test_concurrent_duplicates_share_one_publish() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    send.answer.clear()
    calls = [asyncio.create_task(window.publish_once("a", DIGEST, send)) for _ in range(5)]
    await send.entered.wait()
    await asyncio.sleep(0)
    send.answer.set()

    results = await asyncio.gather(*calls)
    assert send.count == 1
    assert sorted(results) == [False, False, False, False, True]


async def test_concurrent_duplicates_all_see_the_shared_failure() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    send.answer.clear()
    send.failure = RuntimeError("broker down")
    calls = [asyncio.create_task(window.publish_once("a", DIGEST, send)) for _ in range(3)]
    await send.entered.wait()
    await asyncio.sleep(0)
    send.answer.set()

    results = await asyncio.gather(*calls, return_exceptions=True)
    assert send.count == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert "a" not in window


async def test_late_acknowledgement_after_a_timeout_is_remembered() -> None:
    # The sender got a timeout (503) but the broker stored the record afterwards: its retry
    # must not publish a second record.
    window, send = IdempotencyWindow(10, 0.01), Sends()
    send.answer.clear()
    with pytest.raises(TimeoutError):
        await window.publish_once("a", DIGEST, send)
    assert "a" not in window

    send.answer.set()
    await send.acks[0]
    await asyncio.sleep(0)  # the window's callback runs after the future's waiters
    assert "a" in window
    assert await window.publish_once("a", DIGEST, send) is False
    assert send.count == 1


async def test_retry_while_the_timed_out_record_is_in_flight_waits_for_that_record() -> None:
    window, send = IdempotencyWindow(10, 0.3), Sends()
    send.answer.clear()
    with pytest.raises(TimeoutError):
        await window.publish_once("a", DIGEST, send)

    retry = asyncio.create_task(window.publish_once("a", DIGEST, send))
    await asyncio.sleep(0)
    assert not retry.done()
    send.answer.set()

    assert await retry is False
    assert send.count == 1
    assert "a" in window


async def test_retry_that_also_times_out_does_not_send_again() -> None:
    window, send = IdempotencyWindow(10, 0.01), Sends()
    send.answer.clear()
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await window.publish_once("a", DIGEST, send)
    assert send.count == 1


async def test_late_failure_after_a_timeout_lets_the_retry_publish() -> None:
    window, send = IdempotencyWindow(10, 0.01), Sends()
    send.answer.clear()
    send.failure = RuntimeError("batch expired")
    with pytest.raises(TimeoutError):
        await window.publish_once("a", DIGEST, send)
    send.answer.set()
    with pytest.raises(RuntimeError):
        await send.acks[0]
    await asyncio.sleep(0)

    send.failure = None
    assert await window.publish_once("a", DIGEST, send) is True
    assert send.count == 2


async def test_waiters_publish_themselves_when_the_first_caller_is_cancelled() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    queued = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_queue() -> asyncio.Future[int]:
        queued.set()
        await release.wait()
        return await send()

    first = asyncio.create_task(window.publish_once("a", DIGEST, slow_to_queue))
    await queued.wait()
    second = asyncio.create_task(window.publish_once("a", DIGEST, send))
    await asyncio.sleep(0)

    first.cancel()
    release.set()

    assert await second is True
    assert send.count == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_waiter_does_not_cancel_the_publish() -> None:
    window, send = IdempotencyWindow(10, TIMEOUT), Sends()
    send.answer.clear()
    first = asyncio.create_task(window.publish_once("a", DIGEST, send))
    await send.entered.wait()
    waiter = asyncio.create_task(window.publish_once("a", DIGEST, send))
    await asyncio.sleep(0)
    waiter.cancel()
    send.answer.set()

    assert await first is True
    assert "a" in window


async def test_window_is_bounded_and_forgets_the_least_recently_seen() -> None:
    window, send = IdempotencyWindow(3, TIMEOUT), Sends()
    for key in "abc":
        await window.publish_once(key, DIGEST, send)
    await window.publish_once("a", DIGEST, send)  # seen again: now the most recent
    await window.publish_once("d", DIGEST, send)  # evicts b

    assert len(window) == 3
    assert "b" not in window
    assert all(key in window for key in "acd")
    assert await window.publish_once("b", DIGEST, send) is True
    assert send.count == 5


async def test_zero_capacity_remembers_nothing_but_still_joins_concurrent_duplicates() -> None:
    window, send = IdempotencyWindow(0, TIMEOUT), Sends()
    send.answer.clear()
    calls = [asyncio.create_task(window.publish_once("a", DIGEST, send)) for _ in range(2)]
    await send.entered.wait()
    send.answer.set()
    await asyncio.gather(*calls)
    assert send.count == 1

    assert await window.publish_once("a", DIGEST, send) is True
    assert len(window) == 0
