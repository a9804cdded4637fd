"""An account's pace: a schedule no sliding minute overfills, and its AIMD adaptation."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque

import pytest

from consumer.core.pacing import Pace


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def saturate(pace: Pace, clock: Clock, bookings: int) -> list[float]:
    """Book ``bookings`` slots back to back, the clock moved to each one as it comes."""
    sent = []
    for _ in range(bookings):
        clock.now = max(clock.now, pace.book())
        sent.append(clock.now)
    return sent


def max_in_window(times: list[float], window: float = 60.0) -> int:
    """The most of ``times`` (sorted) that any half-open window of ``window`` seconds holds."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("limit", [20, 60, 200, 300, 600, 1000])
def test_no_sliding_minute_holds_more_than_the_limit(limit: int) -> None:
    clock = Clock()
    sent = saturate(Pace(limit, clock), clock, max(2000, 10 * limit))
    assert max_in_window(sent) <= limit


@pytest.mark.parametrize("limit", [20, 60, 200, 600, 1000])
def test_bursts_after_quiet_spells_never_overfill_a_minute(limit: int) -> None:
    clock = Clock()
    pace = Pace(limit, clock)
    rng = random.Random(limit)
    sent: list[float] = []
    while len(sent) < 3000:
        clock.now += rng.choice([0.0, 0.5, 5.0, 30.0, 90.0])
        for _ in range(rng.randint(1, 2 * int(pace.burst) + 3)):
            clock.now = max(clock.now, pace.book())
            sent.append(clock.now)
    assert max_in_window(sent) <= limit


def _within_two_percent_of_the_limit(limit: int) -> None:
    clock = Clock()
    bookings = 20 * limit  # twenty minutes' worth
    sent = saturate(Pace(limit, clock), clock, bookings)
    cleared_minutes = sent[-1] / 60
    assert cleared_minutes == pytest.approx(bookings / limit, rel=0.02)


@pytest.mark.parametrize("limit", [60, 200, 300, 600, 1000])
def test_a_long_queue_clears_at_the_limit(limit: int) -> None:
    _within_two_percent_of_the_limit(limit)


def test_a_small_limit_keeps_one_request_in_hand() -> None:
    """Under 60/min the burst is one request, and the spacing counts it as one of the
    minute's: 20/min is paced at 19/min, so that a request delayed on the way never puts
    a 21st into a provider's minute."""
    clock = Clock()
    pace = Pace(20, clock)
    assert pace.interval == pytest.approx(60 / 19)
    slots = [pace.book() for _ in range(200)]
    assert max(sum(1 for s in slots if start <= s < start + 60) for start in slots) <= 20
    assert (slots[-1] - slots[0]) / 60 == pytest.approx(199 / 19)


def test_a_burst_goes_at_once_then_one_per_interval() -> None:
    clock = Clock(100.0)
    pace = Pace(300, clock)
    assert pace.burst == pytest.approx(5)
    assert pace.interval == pytest.approx(60 / 295)
    slots = [pace.book() for _ in range(8)]
    assert slots[:5] == [100.0] * 5
    assert slots[5:] == pytest.approx([100.0 + k * pace.interval for k in (1, 2, 3)])


def test_wait_is_what_the_next_booking_waits() -> None:
    clock = Clock()
    pace = Pace(200, clock)
    rng = random.Random(7)
    for step in range(2000):
        clock.now += rng.choice([0.0, 0.0, 0.1, 1.0, 20.0])
        if step % 500 == 499:
            pace.throttled(rng.choice([None, 3.0]))
        expected = pace.wait()
        assert pace.book() - clock.now == pytest.approx(expected, abs=1e-9)


def test_parked_slots_are_consecutive_and_after_the_schedules_tail() -> None:
    clock = Clock(50.0)
    pace = Pace(60, clock)
    for _ in range(10):
        pace.book()
    tail = clock.now + pace.wait()
    lead = 2.0
    parked = [pace.book_parked(lead) for _ in range(5)]
    assert parked[0] + lead > tail
    assert [b - a for a, b in itertools.pairwise(parked)] == pytest.approx([pace.interval] * 4)
    assert clock.now + pace.wait() == tail, "parking books nothing on the real schedule"


def test_a_parked_slot_is_never_in_the_past() -> None:
    clock = Clock(50.0)
    pace = Pace(60, clock)
    assert pace.book_parked(lead_seconds=3600) == 50.0


def test_a_429_halves_the_pace_at_most_once_a_minute() -> None:
    clock = Clock(1000.0)
    pace = Pace(300, clock)
    pace.throttled(None)
    assert pace.per_minute == 150
    assert pace.interval > 60 / 300, "the slots are spaced out with the pace"
    clock.now += 59.9
    pace.throttled(None)
    assert pace.per_minute == 150, "429s of requests still in the provider's minute"
    clock.now += 0.1
    pace.throttled(None)
    assert pace.per_minute == 75
    assert pace.limit_per_minute == 300


def test_retry_after_holds_every_slot() -> None:
    clock = Clock(1000.0)
    pace = Pace(300, clock)
    pace.throttled(10.0)
    # The halving respaces the slots too: the hold may end up to an interval later.
    assert 10.0 <= pace.wait() <= 10.0 + pace.interval
    first = pace.book()
    assert first == pytest.approx(1000.0 + 10.0, abs=pace.interval)
    clock.now += 1.0
    pace.throttled(30.0)  # within a minute: the pace stays, the hold grows
    assert pace.per_minute == 150
    assert pace.book() == pytest.approx(clock.now + 30.0)


def test_a_429_voids_the_slots_booked_before_it() -> None:
    """Their requests book again: kept, the void slots would push every new one further
    out, and an account refused now and then would send less and less."""
    clock = Clock(1000.0)
    pace = Pace(120, clock)
    for _ in range(20):
        pace.book()  # twenty requests waiting for their slots, the last ~9 s out
    pace.throttled(1.0)
    assert pace.next_slot() == pytest.approx(1001.0)
    rebooked = [pace.book() for _ in range(20)]
    assert rebooked[0] == pytest.approx(1001.0)
    assert rebooked[-1] == pytest.approx(1001.0 + 19 * pace.interval)


def test_a_later_shorter_retry_after_does_not_cut_the_hold() -> None:
    clock = Clock(1000.0)
    pace = Pace(300, clock)
    pace.throttled(10.0)
    clock.now += 1.0
    pace.throttled(1.0)
    assert pace.next_slot() == pytest.approx(1010.0)


def test_next_slot_is_what_a_booking_gets_and_books_nothing() -> None:
    clock = Clock(1000.0)
    pace = Pace(60, clock)
    saturate(pace, clock, 3)
    peeked = [pace.next_slot() for _ in range(3)]
    assert peeked == [pace.book()] * 3


@pytest.mark.parametrize("retry_after", [None, 0.0, 0.1])
def test_after_a_429_the_next_request_waits_an_interval_after_the_last_sent(
    retry_after: float | None,
) -> None:
    """The void schedule is dropped, not the requests that went out: one refusal after
    another must not let requests out a round trip apart."""
    clock = Clock(1000.0)
    pace = Pace(60, clock)
    pace.throttled(None)  # the pace halves now; the next 429s change only the schedule
    for _ in range(5):
        clock.now = pace.book()
        assert pace.hold_send() == 0.0
        sent = clock.now
        clock.now += 0.2  # its answer, a 429, a round trip later
        pace.throttled(retry_after)
        assert pace.next_slot() >= sent + pace.interval


@pytest.mark.parametrize("retry_after", [None, 0.0])
def test_without_retry_after_nothing_is_held(retry_after: float | None) -> None:
    clock = Clock(1000.0)
    pace = Pace(300, clock)
    pace.throttled(retry_after)
    assert pace.wait() == 0.0


def test_the_climb_back_stops_at_the_ceiling() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    pace.throttled(None)  # at 300: pace 150, ceiling 270
    clock.now = 60.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(180), "10 % of the limit per minute"
    clock.now = 300.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(270)
    clock.now = 599.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(270)


def test_the_ceiling_is_lifted_after_ten_minutes_without_a_429() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    pace.throttled(None)
    clock.now = 590.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(270)
    for second in range(600, 1200):
        clock.now = float(second)
        pace.succeeded()
    assert pace.per_minute == 300, "back to the configured limit, never above"


def test_after_the_ceiling_is_lifted_the_pace_climbs_from_it() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    pace.throttled(None)
    clock.now = 60.0
    pace.throttled(None)  # pace 75, ceiling 135
    clock.now = 180.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(135)
    clock.now = 660.0  # ten minutes since the last 429: the ceiling goes
    pace.succeeded()
    assert pace.per_minute < 140, "10 % of the limit per minute from 135, not 300 at once"


def test_a_429_after_a_busy_minute_sets_the_ceiling_from_what_the_provider_took() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    for _ in range(200):  # the provider took 200 in the last minute
        clock.now += 0.25
        pace.succeeded()
    pace.throttled(None)
    # At once to 90 % of the 200 it took: not half of our 300, and not again and again.
    assert pace.per_minute == pytest.approx(180)
    clock.now += 300.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(180), "and no climb past it"


def test_a_429_after_a_quiet_minute_measures_nothing() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    for _ in range(100):  # under half our pace: another client may share the account
        clock.now += 0.5
        pace.succeeded()
    pace.throttled(None)
    clock.now += 300.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(270)


def test_only_the_last_minute_is_measured() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    for _ in range(200):
        clock.now += 0.25
        pace.succeeded()
    clock.now += 61.0
    pace.throttled(None)
    clock.now += 300.0
    pace.succeeded()
    assert pace.per_minute == pytest.approx(270)


def test_a_measured_limit_below_half_the_pace_sets_the_pace_too() -> None:
    clock = Clock()
    pace = Pace(300, clock)
    for _ in range(150):
        clock.now += 0.4
        pace.succeeded()
    pace.throttled(None)
    assert pace.per_minute == pytest.approx(135)


def test_admitted_shipments_count_in_the_wait_until_they_book() -> None:
    clock = Clock(100.0)
    pace = Pace(60, clock)  # no burst: every claim is one interval more
    first, second = pace.admit(), pace.admit()
    assert pace.wait() == pytest.approx(2 * pace.interval)
    assert first.book() == 100.0, "the first slot is free"
    assert pace.wait() == pytest.approx(2 * pace.interval), "booked instead of claimed"
    second.release()
    second.release()  # idempotent
    first.release()  # used: nothing to give back
    assert pace.wait() == pytest.approx(pace.interval)


def test_parked_slots_come_after_the_admitted_shipments() -> None:
    clock = Clock(100.0)
    pace = Pace(60, clock)
    pace.book()
    for _ in range(3):
        pace.admit()
    assert pace.book_parked(lead_seconds=0.0) == pytest.approx(100.0 + 5 * pace.interval)


def test_parked_slots_come_after_the_admitted_shipments_of_an_idle_schedule() -> None:
    clock = Clock(100.0)
    pace = Pace(60, clock)  # nothing booked yet: the schedule's tail is in the past
    for _ in range(8):
        pace.admit()
    assert pace.wait() == pytest.approx(8 * pace.interval)
    assert pace.book_parked(lead_seconds=2.5) >= 100.0 + 8 * pace.interval - 2.5


class SlidingWindowProvider:
    """At most ``limit`` accepted calls in any 60 s; a refusal's Retry-After (whole seconds,
    at least one) says when the oldest accepted call leaves the window."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._accepted: deque[float] = deque()

    def call(self, now: float) -> float | None:
        while self._accepted and self._accepted[0] <= now - 60:
            self._accepted.popleft()
        if len(self._accepted) < self.limit:
            self._accepted.append(now)
            return None
        return float(max(1, math.ceil(self._accepted[0] + 60 - now)))


# The canceller parks rather than queue more than this much pace (park_after_wait_seconds).
_QUEUE_SECONDS = 5.0
_LATENCY_SECONDS = 0.2


def against_a_lower_limit(provider_limit: int, minutes: int) -> tuple[list[float], list[float]]:
    """Our pace at 300/min, saturated, against a provider that allows ``provider_limit``:
    the times of its accepted calls and of its 429s.

    Requests are booked while the queue is at most ``_QUEUE_SECONDS`` long; each goes in
    its slot and its answer reaches the pace ``_LATENCY_SECONDS`` later. As in the
    transport, a request whose slot was booked before a 429 (another epoch) books again.
    """
    clock = Clock()
    pace = Pace(300, clock)
    provider = SlidingWindowProvider(provider_limit)
    # (time, sequence, kind: send / answer / 429 / wake, a send's epoch or a 429's Retry-After)
    events: list[tuple[float, int, str, float | None]] = []
    sequence = 0
    accepted: list[float] = []
    refused: list[float] = []

    def push(at: float, kind: str, retry_after: float | None = None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, kind, retry_after))

    woken = True

    def book() -> None:
        nonlocal woken
        while pace.wait() <= _QUEUE_SECONDS:
            push(pace.book(), "send", pace.epoch)
        if woken:  # one wake-up pending at a time, for when the queue has room again
            push(clock.now + pace.wait() - _QUEUE_SECONDS + 0.001, "wake")
            woken = False

    book()
    while clock.now < minutes * 60:
        at, _, kind, retry_after = heapq.heappop(events)
        clock.now = max(clock.now, at)
        woken = woken or kind == "wake"
        if kind == "send" and retry_after != pace.epoch:
            push(pace.book(), "send", pace.epoch)
        elif kind == "send":
            refusal = provider.call(clock.now)
            (accepted if refusal is None else refused).append(clock.now)
            push(clock.now + _LATENCY_SECONDS, "answer" if refusal is None else "429", refusal)
        elif kind == "answer":
            pace.succeeded()
        elif kind == "429":
            pace.throttled(retry_after)
        book()
    return accepted, refused


def per_minute(times: list[float], minutes: int) -> list[int]:
    counts = [0] * minutes
    for t in times:
        if t < minutes * 60:
            counts[int(t // 60)] += 1
    return counts


def test_a_lower_provider_limit_stops_drawing_429s_and_settles_below_it() -> None:
    accepted, refused = against_a_lower_limit(provider_limit=60, minutes=10)
    assert refused, "the provider's limit is lower than ours: it must refuse some at first"
    assert max(refused) < 3 * 60, "no 429s after the first few minutes"
    rates = per_minute(accepted, 10)
    assert all(40 <= rate <= 60 for rate in rates[3:]), rates


def test_a_provider_limit_just_below_ours_is_still_mostly_used() -> None:
    accepted, _ = against_a_lower_limit(provider_limit=250, minutes=10)
    rates = per_minute(accepted, 10)
    assert all(200 <= rate <= 250 for rate in rates[3:]), rates


def send_when_allowed(pace: Pace, clock: Clock, woken: list[float]) -> list[float]:
    """Requests woken at ``woken`` (their slots' sleeps ended, maybe late) going through the
    guard at sending as the transport does: each held one sleeps what the guard says and
    asks again. The times they went out, in order."""
    sleeping = [(at, n) for n, at in enumerate(woken)]
    heapq.heapify(sleeping)
    sent = []
    while sleeping:
        at, n = heapq.heappop(sleeping)
        clock.now = max(clock.now, at)
        hold = pace.hold_send()
        if hold > 0:
            heapq.heappush(sleeping, (clock.now + hold, n))
        else:
            sent.append(clock.now)
    return sent


def test_requests_woken_late_and_together_go_out_in_the_schedules_shape() -> None:
    """Slots are spaced when booked; a busy event loop may wake many at one instant. The
    guard at sending lets at most the burst out at once, then one an interval."""
    clock = Clock(1000.0)
    pace = Pace(120, clock)  # a burst of 2, then one every 60/118 s
    slots = [pace.book() for _ in range(8)]
    stalled = slots[-1] + 3.0  # the loop was blocked past every slot
    sent = send_when_allowed(pace, clock, [stalled] * len(slots))
    assert sent[:2] == [stalled, stalled]
    # Then one an interval; a held request is woken a little early (the event loop's
    # lateness is then no time lost), never more than the guard's 50 ms.
    assert sent[2] - sent[1] == pytest.approx(pace.interval, abs=0.05)
    for earlier, later in itertools.pairwise(sent[2:]):
        assert later - earlier == pytest.approx(pace.interval)


def test_a_send_a_little_late_or_early_is_not_held() -> None:
    """The event loop's ordinary lateness costs no extra wait: a request a few milliseconds
    ahead of the shape left by the one sent late before it still goes."""
    clock = Clock(1000.0)
    pace = Pace(60, clock)  # no burst: one every 60/59 s
    first, second = pace.book(), pace.book()
    clock.now = first + 0.03  # sent 30 ms late
    assert pace.hold_send() == 0.0
    clock.now = second  # on time, so 30 ms closer to the first than an interval
    assert pace.hold_send() == 0.0


def test_after_the_pace_halves_the_last_minutes_sends_still_count() -> None:
    """The provider still counts what went out at the old pace: the guard at sending holds
    the new pace's requests until the minute's sends fall within its limit."""
    clock = Clock(1000.0)
    pace = Pace(120, clock)
    sent = []
    for _ in range(100):
        clock.now = max(clock.now, pace.book())
        assert pace.hold_send() == 0.0
        sent.append(clock.now)
    pace.throttled(None)
    assert pace.per_minute == 60
    # 100 sent in the last minute, 60 allowed: the 41st must leave the window first. The
    # schedule says so (a request parks rather than wait that long), and so does the guard.
    leaves = sent[40] + 60.5
    assert pace.next_slot() == pytest.approx(leaves)
    assert pace.wait() == pytest.approx(leaves - clock.now)
    clock.now = leaves - 5.0
    assert pace.hold_send() == pytest.approx(5.0)
    clock.now = pace.book()
    assert pace.hold_send() == 0.0


@pytest.mark.parametrize("limit", [120, 590, 1200, 3000, 6000, 6050])
def test_the_guard_at_sending_never_lets_out_more_than_the_burst_at_once(limit: int) -> None:
    """Its allowance for the event loop's lateness is at most half an interval."""
    clock = Clock(1000.0)
    pace = Pace(limit, clock)
    at_once = 0
    while pace.hold_send() == 0.0:
        at_once += 1
    assert at_once <= pace.burst


def test_a_late_wake_after_a_stall_is_not_time_lost_for_good() -> None:
    """Held by the guard, a request is woken a little early: the loop's lateness on every
    wake must not add up, or a saturated account would fall further and further behind."""
    clock = Clock(1000.0)
    pace = Pace(30, clock)  # no burst: every request after the stall is held
    slots = [pace.book() for _ in range(200)]
    late = 0.02
    sent = []
    for k, slot in enumerate(slots):
        clock.now = max(clock.now, slot) + late + (2.0 if k == 5 else 0.0)
        while (hold := pace.hold_send()) > 0:
            clock.now += hold + late
        sent.append(clock.now)
    assert sent[-1] - slots[-1] == pytest.approx(2.0 + late, abs=0.05), "the stall, no more"


def test_no_slot_falls_within_a_retry_after_even_once_the_pace_climbs() -> None:
    """A climbing pace grows its burst; the schedule must not reach back into the hold."""
    clock = Clock(1000.0)
    pace = Pace(6000, clock)
    while pace.per_minute > 60:  # a provider whose limit is far below ours
        clock.now += 61.0
        pace.throttled(None)
    clock.now += 5.0
    pace.throttled(30.0)
    held_until = clock.now + 30.0
    clock.now += 3.0
    pace.succeeded()  # the answer to a request sent before the 429: the pace climbs
    assert pace.burst > 1.0
    assert pace.next_slot() >= held_until
    assert pace.wait() >= held_until - clock.now
    assert pace.hold_send() == pytest.approx(held_until - clock.now)
