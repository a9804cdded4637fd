"""Answer a repeated event without publishing it again (per process, bounded).

A key (the ingress uses ``(source, event_id)``) is remembered with a digest of its event;
the same key with another digest is a ``Conflict``, not a duplicate. A key is remembered once
the broker acknowledged its record, even when that happens after the request that sent it
stopped waiting (and was answered 503): the sender's retry then gets 202, not a second
record. A record the broker failed leaves nothing behind, so the retry publishes for real.
While a key's record is unanswered, requests with that key wait for the same record instead
of sending another.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any


class Conflict(Exception):
    """The key was used before for a different event."""


@dataclass(frozen=True, slots=True)
class _Pending:
    digest: bytes
    # Settles as the broker's answer does; cancelled when the sender gave up before the
    # record was queued, so that waiters send it themselves.
    verdict: asyncio.Future[Any]


# What send() returns: a future the broker's answer settles.
Send = Callable[[], Awaitable[asyncio.Future[Any]]]


class IdempotencyWindow:
    def __init__(self, capacity: int, timeout_seconds: float) -> None:
        self._capacity = capacity
        self._timeout = timeout_seconds
        self._done: OrderedDict[Hashable, bytes] = OrderedDict()
        self._in_flight: dict[Hashable, _Pending] = {}

    def __len__(self) -> int:
        return len(self._done)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._done

    async def publish_once(self, key: Hashable, digest: bytes, send: Send) -> bool:
        """Run ``send`` unless ``key`` was published before or its record is in flight.

        True when this call sent the record; False for a duplicate that is (or has now been)
        acknowledged. Within the timeout, from this call's start: raises ``TimeoutError``
        when the broker has not answered yet (a late acknowledgement is still remembered),
        what the shared record failed with, or ``Conflict`` for another digest.
        """
        deadline = asyncio.get_running_loop().time() + self._timeout
        while True:
            known = self._done.get(key)
            if known is not None:
                if known != digest:
                    raise Conflict
                self._done.move_to_end(key)
                return False
            pending = self._in_flight.get(key)
            if pending is not None:
                if pending.digest != digest:
                    raise Conflict
                if await _settled(pending.verdict, deadline):
                    return False
                continue  # abandoned: send it ourselves (or join whoever got there first)

            pending = self._in_flight[key] = _Pending(
                digest, asyncio.get_running_loop().create_future()
            )
            try:
                ack = await send()
            except BaseException as exc:
                del self._in_flight[key]
                if isinstance(exc, Exception):
                    pending.verdict.set_exception(exc)
                    pending.verdict.exception()  # retrieved: there may be no waiter
                else:  # cancelled: not a verdict on the record
                    pending.verdict.cancel()
                raise
            ack.add_done_callback(partial(self._settle, key, pending))
            if await _settled(pending.verdict, deadline):
                return True

    def _settle(self, key: Hashable, pending: _Pending, ack: asyncio.Future[Any]) -> None:
        if self._in_flight.get(key) is pending:
            del self._in_flight[key]
        verdict = pending.verdict
        if ack.cancelled():
            verdict.cancel()
            return
        exc = ack.exception()
        if exc is not None:
            verdict.set_exception(exc)
            verdict.exception()  # retrieved: the sender may have stopped waiting
            return
        self._remember(key, pending.digest)
        verdict.set_result(ack.result())

    def _remember(self, key: Hashable, digest: bytes) -> None:
        if self._capacity <= 0:
            return
        self._done[key] = digest
        self._done.move_to_end(key)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)


async def _settled(verdict: asyncio.Future[Any], deadline: float) -> bool:
    """True once acknowledged, False if abandoned; raises the failure or ``TimeoutError``.

    ``asyncio.wait``: a caller that gives up (timeout, cancellation) leaves the shared
    verdict alone for the others and for the late acknowledgement.
    """
    if not verdict.done():
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.wait((verdict,), timeout=max(remaining, 0.0))
        if not verdict.done():
            raise TimeoutError
    if verdict.cancelled():
        return False
    verdict.result()
    return True
