"""The account's pace in its HTTP transport: each request in its slot, 429s slow it down,
and waiting for our own pace never spends an attempt's budget."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from consumer.core.errors import RateLimitedError
from consumer.core.pacing import Pace
from consumer.core.retry import AccountGate, RetryPolicy, cancel_with_retries
from consumer.providers.base import CancelOutcome, CancelRequest, parse_retry_after
from consumer.providers.client import TransportClient
from consumer.providers.ratelimit import AttemptSlots, PacedTransport, paced
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings
from tests.providers.provider_fakes import FakeClock


class Recorded:
    """A MockTransport answering ``status`` (with ``headers``), noting when each request came."""

    def __init__(self, status: int = 204, headers: dict[str, str] | None = None) -> None:
        self.sent: list[float] = []
        self.status = status
        self.headers = headers or {}
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(time.monotonic())
        return httpx.Response(self.status, headers=self.headers)


def get(client: TransportClient) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.send(httpx.Request("GET", "https://p.test/x")))


async def test_requests_go_in_their_slots() -> None:
    api = Recorded()
    pace = Pace(1200)  # a burst of 20, then one every 60/1180 s
    waits: list[float] = []
    client = TransportClient(PacedTransport(api.transport, pace, on_wait=waits.append))
    started = time.monotonic()
    await asyncio.gather(*(get(client) for _ in range(25)))
    sent = sorted(t - started for t in api.sent)
    assert len(sent) == 25
    assert waits.count(0.0) == 20, "the burst goes at once"
    for k in range(1, 6):
        # asyncio's timers fire at their time or later, never earlier.
        assert sent[19 + k] >= k * pace.interval - 0.002, k
    assert sent[-1] < 5 * pace.interval + 0.25, "and not much later than their slots"
    assert sorted(waits)[-1] == pytest.approx(5 * pace.interval, abs=0.01)


async def test_a_429_with_retry_after_slows_the_pace_and_holds_it() -> None:
    api = Recorded(429, {"Retry-After": "30"})
    pace = Pace(300)
    client = TransportClient(PacedTransport(api.transport, pace))
    response = await client.send(httpx.Request("PUT", "https://p.test/cancel"))
    assert response.status_code == 429, "the transport paces; the adapter maps the answer"
    assert pace.per_minute == 150
    assert 29.0 <= pace.wait() <= 30.0 + pace.interval


@pytest.mark.parametrize(("status", "climbs"), [(200, True), (404, True), (503, False)])
async def test_an_answer_the_provider_took_lets_the_pace_climb_and_a_5xx_does_not(
    status: int, climbs: bool
) -> None:
    """A 404 was taken at our rate; a 5xx says nothing of the rate (the breaker's business),
    nor counts as taken when the pace measures the provider's minute."""
    api = Recorded(status)
    pace = Pace(300)
    pace.throttled(None)
    before = pace.per_minute
    client = TransportClient(PacedTransport(api.transport, pace))
    await asyncio.sleep(0.02)
    await client.send(httpx.Request("GET", "https://p.test/x"))
    assert (pace.per_minute > before) is climbs


async def test_a_wait_longer_than_the_most_parks_instead() -> None:
    """A Retry-After holding every slot: the request raises rate_limited at once, so the
    shipment is parked rather than holding its call slot for the whole hold."""
    api = Recorded()
    pace = Pace(300)
    pace.throttled(600.0)
    client = TransportClient(PacedTransport(api.transport, pace, max_wait_seconds=10))
    with pytest.raises(RateLimitedError) as raised:
        await client.send(httpx.Request("GET", "https://p.test/x"))
    assert raised.value.retry_after == pytest.approx(600, abs=1)
    assert api.sent == []


async def test_a_request_refused_for_a_long_wait_books_no_slot() -> None:
    """Booked and not used, its slot would be lost to the account for good."""
    pace = Pace(60)
    pace.throttled(30.0)
    tail = pace.next_slot()
    client = TransportClient(PacedTransport(Recorded().transport, pace, max_wait_seconds=10))
    for _ in range(5):
        with pytest.raises(RateLimitedError):
            await client.send(httpx.Request("GET", "https://p.test/x"))
    assert pace.next_slot() == pytest.approx(tail, abs=0.1)


async def test_a_request_whose_slot_a_429_voided_books_again_after_the_hold() -> None:
    """Slots booked before a 429 are void; the requests waiting for them book again, and
    one whose new slot is past the longest wait is refused without booking it."""
    api = Recorded()
    pace = Pace(600)  # a burst of 10, then one every 60/590 s
    client = TransportClient(PacedTransport(api.transport, pace, max_wait_seconds=10))
    for _ in range(10):
        pace.book()  # the burst is spent: the next request waits an interval
    waiting = get(client)
    await asyncio.sleep(0)
    pace.throttled(30.0)
    tail = pace.next_slot()
    with pytest.raises(RateLimitedError) as raised:
        await waiting
    assert raised.value.retry_after == pytest.approx(30, abs=1)
    assert api.sent == []
    assert pace.next_slot() == pytest.approx(tail, abs=0.01)


async def test_a_request_held_at_sending_waits_for_a_429_that_came_meanwhile() -> None:
    """Past its slot, held by the guard at sending (the requests before it went out late
    and together), it still heeds the provider's Retry-After."""
    api = Recorded()
    pace = Pace(600)  # a burst of 10, then one every 60/590 s
    client = TransportClient(PacedTransport(api.transport, pace, max_wait_seconds=10))
    for _ in range(10):
        assert pace.hold_send() == 0.0  # the burst went out just now
    held = get(client)
    await asyncio.sleep(0)
    assert not held.done()
    pace.throttled(30.0)
    with pytest.raises(RateLimitedError) as raised:
        await held
    assert raised.value.retry_after == pytest.approx(30, abs=1)
    assert api.sent == []


async def test_a_request_held_at_sending_books_again_after_a_short_retry_after() -> None:
    """A 429 while it is held at sending: it books again, after the hold, and goes."""
    api = Recorded()
    pace = Pace(600)
    client = TransportClient(PacedTransport(api.transport, pace, max_wait_seconds=10))
    for _ in range(10):
        assert pace.hold_send() == 0.0
    held = get(client)
    await asyncio.sleep(0)
    pace.throttled(0.3)
    throttled_at = time.monotonic()
    response = await held
    assert response.status_code == 204
    assert api.sent[0] - throttled_at >= 0.3 - 0.002, "asyncio's timers never fire early"


async def test_the_ticket_books_the_attempts_first_request_only() -> None:
    api = Recorded()
    # The pace's clock is moved by hand; the transport sleeps on ``time.monotonic()``, for
    # which every slot of this clock is long past, so nothing waits.
    clock = FakeClock(0.0)
    pace = Pace(60, clock)  # no burst: every slot booked or claimed is one interval
    client = TransportClient(PacedTransport(api.transport, pace))
    ticket = pace.admit()  # as the canceller's admission does
    assert pace.wait() == pytest.approx(pace.interval)
    with AttemptSlots(ticket) as slots:
        await client.send(httpx.Request("PUT", "https://p.test/cancel"))
        assert slots.ticket is None
        assert pace.wait() == pytest.approx(pace.interval), "the claim became the slot"
        clock.now = pace.next_slot()  # its turn
        await client.send(httpx.Request("GET", "https://p.test/cancel"))
        assert pace.next_slot() == pytest.approx(2 * pace.interval), "a slot of its own"
    assert pace.wait() == pytest.approx(pace.interval)
    assert len(api.sent) == 2


@pytest.mark.parametrize("fails", [False, True])
async def test_an_unused_ticket_is_given_back_when_the_attempt_ends(fails: bool) -> None:
    pace = Pace(60, FakeClock(0.0))
    with contextlib.suppress(KeyError), AttemptSlots(pace.admit()):
        if fails:
            raise KeyError("the adapter failed before its first request")
    assert pace.wait() == 0.0


async def test_a_ticket_waits_for_its_slot_like_any_request() -> None:
    api = Recorded()
    pace = Pace(60)
    waits: list[float] = []
    client = TransportClient(PacedTransport(api.transport, pace, on_wait=waits.append))
    pace.book()  # the next slot is about a second away
    with AttemptSlots(pace.admit()) as slots:
        request = get(client)
        await asyncio.sleep(0.02)
        assert not request.done()
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
    assert slots.ticket is None
    assert api.sent == []


async def test_requests_outside_an_attempt_book_their_own_slots() -> None:
    api = Recorded()
    pace = Pace(60)
    client = TransportClient(PacedTransport(api.transport, pace))
    await client.send(httpx.Request("GET", "https://p.test/x"))
    assert pace.wait() == pytest.approx(pace.interval, abs=0.1)


async def test_a_wait_moves_the_attempts_budget_on() -> None:
    async with asyncio.timeout(10.0) as budget:
        when = budget.when()
        assert when is not None
        with AttemptSlots(budget=budget) as slots:
            slots.waited_for(2.5)
            slots.waited_for(0.0)
            await asyncio.sleep(0)
        assert budget.when() == pytest.approx(when + 2.5)
        assert slots.waited == 2.5


async def test_waiting_for_the_pace_does_not_time_the_attempt_out() -> None:
    api = Recorded()
    pace = Pace(1200)  # a burst of 20, then one every ~0.05 s: the last waits ~0.5 s
    client = TransportClient(PacedTransport(api.transport, pace))

    async def attempt() -> CancelOutcome:
        await client.send(httpx.Request("PUT", "https://p.test/cancel"))
        return CancelOutcome("cancelled")

    policy = RetryPolicy(max_attempts=1, budget_seconds=0.05)
    gate = AccountGate(30)
    started = time.monotonic()
    results = await asyncio.gather(*(cancel_with_retries(attempt, gate, policy) for _ in range(30)))
    assert time.monotonic() - started < 2.0
    assert [r.error.category for r in results if r.error is not None] == []
    assert len(api.sent) == 30


async def test_a_hanging_call_with_slots_to_spare_is_still_a_timeout() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    client = TransportClient(PacedTransport(httpx.MockTransport(hang), Pace(600)))

    async def attempt() -> CancelOutcome:
        await client.send(httpx.Request("GET", "https://p.test/x"))
        return CancelOutcome("cancelled")

    result = await cancel_with_retries(
        attempt, AccountGate(1), RetryPolicy(max_attempts=1, budget_seconds=0.05)
    )
    assert result.error is not None
    assert result.error.category == "timeout"


async def test_a_confirming_read_after_a_refusal_takes_its_own_slot() -> None:
    refusal = {
        "request_id": "r",
        "errors": [
            {
                "error_source": "shipstation",
                "error_type": "business_rules",
                "error_code": "invalid_status",
                "message": "already cancelled",
            }
        ],
    }
    shipment = {"shipment_id": "se-1", "shipment_status": "cancelled"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(400, json=refusal)
        return httpx.Response(200, json=shipment)

    waits: list[float] = []
    clock = FakeClock(0.0)
    pace = Pace(60, clock)
    next_slots: list[float] = []

    def answer_in_an_interval(request: httpx.Request) -> httpx.Response:
        next_slots.append(pace.next_slot())
        clock.now = next_slots[-1]  # the answer comes as the next slot opens
        return answer(request)

    transport = PacedTransport(
        httpx.MockTransport(answer_in_an_interval), pace, on_wait=waits.append
    )
    settings = ShipStationSettings(kind="shipstation", base_url="https://ss.test", api_key="k")
    provider = ShipStationProvider("ss", settings, TransportClient(transport))
    with AttemptSlots(pace.admit()):
        outcome = await provider.cancel(CancelRequest("se-1", "idem"))
    assert outcome.outcome == "already_cancelled"
    assert len(waits) == 2
    assert next_slots == pytest.approx([pace.interval, 2 * pace.interval]), (
        "one slot per request, not per attempt"
    )


async def test_an_account_without_a_limit_keeps_its_transport() -> None:
    inner = httpx.MockTransport(lambda request: httpx.Response(204))
    assert paced(inner, None) is inner
    transport = paced(inner, Pace(200))
    assert isinstance(transport, PacedTransport)
    await transport.aclose()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("inf", 3600.0), ("1e400", 3600.0), ("1e10", 3600.0), ("nan", None), ("-5", 0.0), ("7", 7.0)],
)
def test_a_retry_after_is_a_number_of_seconds_within_an_hour(
    value: str, seconds: float | None
) -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": value})) == seconds
