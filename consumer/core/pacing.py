"""The pace of one provider account: when its next HTTP request may go, and how that adapts.

A schedule, not a bucket one waits on blindly: every request books the next free slot
(GCRA, the generic cell rate algorithm) as it is about to be sent, so the account knows at
any moment how long a new request would wait. That lets the canceller park a shipment
instead of queueing it for minutes, and book slots ahead for the shipments it parks.
A shipment admitted now holds a ``Ticket``: counted in that wait until its first request
books its slot, so shipments admitted together never overbook the account, and no slot is
booked before its request can go (a slot booked early and used late would bunch requests
up when the event loop is busy).

Slots are spaced so that no sliding minute holds more than the configured limit: a burst of
``burst`` requests at once, then one every ``60 / (limit - burst)`` seconds.

The pace adapts (AIMD): a 429 the provider sends although we kept to our pace means its real
limit is lower. The pace halves (at most once a minute: the provider's window), every slot
waits for the ``Retry-After`` (the slots booked before are void: their requests book again
after it), and a ceiling of 90 % of the pace that drew the 429 stops the
climb back short of it. When we were sending near our pace (over the last minute, or since
we started sending if that is less), the requests the provider took in that time are a
measure of its real limit: the ceiling and the pace go at once to 90 % of that instead,
rather than halving again and again. Each successful
request then adds back a little, ``_CLIMB_SHARE`` of the limit per minute of successes;
after ``_CEILING_RESET_SECONDS`` without a 429 the ceiling is lifted again to find out
whether the provider raised its limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

# A provider counts requests over its minute: what we sent before a decrease still counts
# there for up to a minute, so its 429s in that minute are no news of our new pace.
_DECREASE_EVERY_SECONDS = 60.0
_CEILING_SHARE = 0.9
_CLIMB_SHARE = 0.1
_CEILING_RESET_SECONDS = 600.0
# Below this a provider is better served by the circuit breaker than by pacing.
_FLOOR_PER_MINUTE = 1.0
# The last minute's accepted requests measure the provider's limit only when we sent at
# least this share of what our pace allowed: a 429 after a quiet minute (another client of
# the same account) says nothing of how many we may send.
_MEASURED_SHARE = 0.5
# Nor when the provider took fewer than this: a 429 after a handful of requests is more
# likely about one request than a limit that low.
_MEASURED_MINIMUM = 20
_MINUTE = 60.0
# Requests sent are held to the limit over a minute and this much: arriving at the provider,
# they may bunch up again by as much.
_SEND_MARGIN_SECONDS = 0.5
_SEND_WINDOW_SECONDS = _MINUTE + _SEND_MARGIN_SECONDS
# A request may go out this much ahead of the pace's shape before the guard at sending holds
# it: the event loop's ordinary lateness, which costs no extra wait (less at a fast pace, so
# that it never lets one more out at once than the burst). A held request is woken half of
# it early, so that a late wake is not lost time.
_SEND_JITTER_SECONDS = 0.05
# A hold is never shorter: a request due at once by the float sums must still be held.
_MIN_HOLD_SECONDS = 1e-6


class Pace:
    def __init__(self, limit_per_minute: float, clock: Callable[[], float] = time.monotonic):
        self._limit = limit_per_minute
        self._clock = clock
        self._per_minute = limit_per_minute
        self._ceiling = limit_per_minute
        # Theoretical arrival time of the next request (GCRA): the schedule's tail.
        self._tat = 0.0
        # The end of the provider's latest Retry-After: no slot before it.
        self._held_until = 0.0
        # When the last request really went out, and the GCRA tail of the requests that did.
        self._last_sent = -_MINUTE
        self._sent_tat = 0.0
        # The tail of the slots booked for parked shipments, ahead of the real schedule.
        self._parked_tat = 0.0
        self._last_change = clock()
        self._last_decrease = -_DECREASE_EVERY_SECONDS
        self._last_throttled = -_CEILING_RESET_SECONDS
        # Tickets handed out and not yet used or returned.
        self._admitted = 0
        self._epoch = 0
        # When the provider took our requests, over the last minute.
        self._accepted: deque[float] = deque()
        # When requests really went out, over the last minute and a margin.
        self._sent: deque[float] = deque()
        self._interval = 0.0
        self._tolerance = 0.0
        self._send_jitter = 0.0
        self._space(limit_per_minute)

    @property
    def limit_per_minute(self) -> float:
        return self._limit

    @property
    def per_minute(self) -> float:
        """The pace now: at most the configured limit, less after the provider's 429s."""
        return self._per_minute

    @property
    def burst(self) -> float:
        """Requests that may go at once after a quiet spell, at the current pace."""
        return self._tolerance / self._interval + 1

    @property
    def interval(self) -> float:
        """Seconds between two slots at the current pace."""
        return self._interval

    def wait(self) -> float:
        """How long a request booked now, after the admitted ones, would wait for its slot."""
        now = self._clock()
        tail = max(self._tat, now) + self._admitted * self._interval
        return max(0.0, tail - self._tolerance - now, self._held_until - now)

    def admit(self) -> Ticket:
        """A shipment admitted: its first request is counted in ``wait`` until it books."""
        self._admitted += 1
        return Ticket(self)

    def next_slot(self) -> float:
        """The clock time a request booked now would go at; nothing is booked."""
        return self._slot_at(self._clock())

    def book(self) -> float:
        """Book the next slot; the ``time.monotonic()`` (of the clock) it may go at.

        A booked slot counts until the epoch changes: book only a request that will wait
        for it (a slot booked and left unused is capacity lost for good)."""
        now = self._clock()
        start = self._slot_at(now)
        self._tat = max(self._tat, now) + self._interval
        return start

    def _slot_at(self, now: float) -> float:
        # Never within a Retry-After, even once the pace has climbed and its burst grown.
        return max(now, self._held_until, max(self._tat, now) - self._tolerance)

    def hold_send(self) -> float:
        """The guard at the moment of sending: seconds to wait before asking again, or 0
        (the send is then counted). Nothing goes within a ``Retry-After``. Slots are spaced
        when booked, but a busy event loop sends late and bunches them: what really goes out
        keeps the schedule's shape (at most ``burst`` at once, then one an interval), and
        within the limit in every window of a minute plus ``_SEND_MARGIN_SECONDS`` (for the
        network's own bunching, and the sends made at a higher pace before a 429, which the
        provider still counts)."""
        now = self._clock()
        if now < self._held_until:
            return self._held_until - now
        shape = self._sent_tat - self._tolerance
        if now < shape - self._send_jitter:
            return shape - self._send_jitter / 2 - now
        sent = self._sent
        while sent and now - sent[0] >= _SEND_WINDOW_SECONDS:
            sent.popleft()
        if (room_at := self._window_room_at()) is not None:
            return max(_MIN_HOLD_SECONDS, room_at - now)
        sent.append(now)
        self._last_sent = now
        self._sent_tat = max(self._sent_tat, now) + self._interval
        return 0.0

    def book_parked(self, lead_seconds: float) -> float:
        """A slot for a shipment parked because the schedule is full: the clock time it
        should come back at, ``lead_seconds`` before its turn so that it is ready then.

        Parked shipments get consecutive slots after the schedule's tail, so a backlog
        comes back at the pace it can be served, not all at once.
        """
        now = self._clock()
        tail = max(self._tat, now) + self._admitted * self._interval
        self._parked_tat = max(self._parked_tat, tail) + self._interval
        return max(now, self._parked_tat - lead_seconds)

    @property
    def epoch(self) -> int:
        """Changes whenever the provider refuses a request: slots booked before it are void
        (a request waiting for one books again)."""
        return self._epoch

    def throttled(self, retry_after: float | None) -> None:
        """The provider answered 429 to a request sent on our pace."""
        now = self._clock()
        self._epoch += 1
        self._last_throttled = now
        if retry_after is not None and retry_after > 0:
            # Every slot waits: the provider refuses the account, not just this request.
            self._held_until = max(self._held_until, now + retry_after)
        self._decrease(now)
        # The new epoch voids every slot booked so far, and their requests book again: the
        # schedule starts afresh after the hold (kept, its void slots would never be used
        # and the account would send less and less), and no sooner than an interval after
        # the last request that went out, with no burst at the pace then; nor before the
        # sends of the last minute (made at the pace before, which the provider still
        # counts) allow one more.
        start = max(now, self._held_until, self._last_sent + self._interval)
        if (room_at := self._window_room_at()) is not None:
            start = max(start, room_at)
        self._tat = start + self._tolerance

    def _window_room_at(self) -> float | None:
        """When the sends counted in the window leave room for one more at the pace now;
        None if there is room already. (After the pace was lowered, more than one send may
        have to leave; a send older than the window only makes the answer a past time.)"""
        sent = self._sent
        limit = max(1, int(self._per_minute))
        if len(sent) < limit:
            return None
        return sent[len(sent) - limit] + _SEND_WINDOW_SECONDS

    def _decrease(self, now: float) -> None:
        if now - self._last_decrease < _DECREASE_EVERY_SECONDS:
            return  # the requests that were already on their way when the first 429 came
        self._last_decrease = now
        accepted = self._accepted_in_last_minute(now)
        if accepted >= _MEASURED_MINIMUM and accepted >= self._sendable(now) * _MEASURED_SHARE:
            # The provider took this many in its minute (or in the part of it we were
            # sending) before it refused: that is its limit; go just below it.
            self._ceiling = max(_FLOOR_PER_MINUTE, min(self._per_minute, accepted) * _CEILING_SHARE)
            self._set(self._ceiling, now)
            return
        self._ceiling = max(_FLOOR_PER_MINUTE, self._per_minute * _CEILING_SHARE)
        self._set(max(_FLOOR_PER_MINUTE, self._per_minute / 2), now)

    def succeeded(self) -> None:
        """The provider answered a request without refusing it for its rate."""
        now = self._clock()
        self._accepted.append(now)
        self._accepted_in_last_minute(now)  # keeps the record a minute long
        if self._ceiling < self._limit and now - self._last_throttled >= _CEILING_RESET_SECONDS:
            self._ceiling = self._limit
            self._last_change = now  # the climb starts now, from where the pace is
        if self._per_minute >= self._ceiling:
            self._last_change = now  # time spent at the ceiling is no climb
            return
        climbed = self._limit * _CLIMB_SHARE * (now - self._last_change) / 60
        self._set(min(self._ceiling, self._per_minute + climbed), now)

    def _sendable(self, now: float) -> float:
        """What our pace allowed since the oldest request of the last minute we know of."""
        span = min(_MINUTE, now - self._accepted[0]) if self._accepted else 0.0
        return self._per_minute * span / _MINUTE

    def _accepted_in_last_minute(self, now: float) -> int:
        accepted = self._accepted
        while accepted and now - accepted[0] > _MINUTE:
            accepted.popleft()
        return len(accepted)

    def _set(self, per_minute: float, now: float) -> None:
        self._per_minute = per_minute
        self._last_change = now
        self._space(per_minute)

    def _space(self, per_minute: float) -> None:
        # A burst of B requests plus one every T seconds puts B + 60/T requests into any
        # minute: T = 60 / (limit - B) keeps that at the limit.
        burst = max(1.0, per_minute / 60)
        self._interval = 60 / max(per_minute - burst, per_minute / 2)
        self._tolerance = (burst - 1) * self._interval
        # Half the room the burst leaves before one more request would fit.
        extra = burst - 1
        room = (math.floor(extra) + 1 - extra) * self._interval
        self._send_jitter = min(_SEND_JITTER_SECONDS, room / 2)


class Ticket:
    """An admitted shipment's claim on its account's pace, used by its first request."""

    __slots__ = ("_pace",)

    def __init__(self, pace: Pace) -> None:
        self._pace: Pace | None = pace

    def book(self) -> float:
        """Book the slot now (once); ``Pace.book``'s answer."""
        pace = self._pace
        assert pace is not None, "a ticket books one slot"
        self.release()
        return pace.book()

    def release(self) -> None:
        """Give the claim back unused (the attempt made no request); idempotent."""
        if self._pace is not None:
            self._pace._admitted -= 1
            self._pace = None
