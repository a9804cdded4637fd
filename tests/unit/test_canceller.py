import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from consumer.core.breaker import CircuitBreaker
from consumer.core.canceller import Canceller, ParkingPolicy, ProviderAccount
from consumer.core.errors import CancelError, NotFoundError, RateLimitedError, UnavailableError
from consumer.core.events import (
    CancelFailed,
    OrderCancelled,
    ShipmentCancelled,
    ShipmentRef,
    dump_event,
)
from consumer.core.examples import order_cancelled_example
from consumer.core.pacing import Pace
from consumer.core.parking import Origin, ParkedShipment, ParkReason, park_of, parse_parked
from consumer.core.pipeline import TraceRef, shipment_result_id
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.providers.base import CancelOutcome, CancelRequest
from consumer.providers.client import TransportClient
from consumer.providers.ratelimit import PacedTransport

TRACE = TraceRef("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


class FakeProvider:
    """Answers from a script per shipment id and records every request."""

    def __init__(self, kind: str, script: dict[str, list[CancelError]] | None = None) -> None:
        self._kind = kind
        self._script = script or {}
        self.requests: list[CancelRequest] = []

    @property
    def kind(self) -> str:
        return self._kind

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        self.requests.append(request)
        errors = self._script.get(request.shipment_id, [])
        if errors:
            raise errors.pop(0)
        return CancelOutcome("cancelled", provider_status="CANCELED")


def event(*shipments: tuple[str, str]) -> OrderCancelled:
    return OrderCancelled.model_validate(
        order_cancelled_example(
            order_id="SO-1",
            shipments=[{"provider": p, "shipment_id": s} for p, s in shipments],
        )
    )


def canceller(**providers: FakeProvider) -> Canceller:
    accounts = {
        name: ProviderAccount(name, provider, AccountGate(4))
        for name, provider in providers.items()
    }
    policy = RetryPolicy(backoff_initial_seconds=0, budget_seconds=5)
    return Canceller(accounts, policy, now=lambda: datetime(2026, 11, 21, tzinfo=UTC))


async def test_one_result_per_shipment_in_event_order() -> None:
    ss, mv = FakeProvider("shipstation"), FakeProvider("mvmnt")
    results = await canceller(ss=ss, mv=mv).cancel_order(event(("ss", "a"), ("mv", "b")), TRACE)
    cancelled = [r for r in results if isinstance(r, ShipmentCancelled)]
    assert [(r.provider, r.shipment_id) for r in cancelled] == [("ss", "a"), ("mv", "b")]
    assert cancelled[1].provider_kind == "mvmnt"


async def test_unknown_provider_account_fails_without_any_call() -> None:
    ss = FakeProvider("shipstation")
    [result] = await canceller(ss=ss).cancel_order(event(("fedex", "x")), TRACE)
    assert isinstance(result, CancelFailed)
    assert result.error.category == "unknown_provider"
    assert result.attempts == 0
    assert ss.requests == []


async def test_retried_then_succeeded_reports_the_attempts() -> None:
    ss = FakeProvider("shipstation", {"a": [UnavailableError("503"), UnavailableError("503")]})
    [result] = await canceller(ss=ss).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(result, ShipmentCancelled)
    assert result.attempts == 3


async def test_a_permanent_failure_becomes_cancel_failed() -> None:
    ss = FakeProvider("shipstation", {"a": [NotFoundError("no such shipment", http_status=404)]})
    [result] = await canceller(ss=ss).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(result, CancelFailed)
    assert (result.error.category, result.error.retryable) == ("not_found", False)
    assert result.error.http_status == 404


async def test_a_shipment_listed_twice_is_cancelled_once() -> None:
    ss = FakeProvider("shipstation")
    results = await canceller(ss=ss).cancel_order(event(("ss", "a"), ("ss", "a")), TRACE)
    assert len(results) == 1
    assert len(ss.requests) == 1


async def test_an_adapter_bug_becomes_an_internal_failure_not_a_crash() -> None:
    class Broken(FakeProvider):
        async def cancel(self, request: CancelRequest) -> CancelOutcome:
            raise KeyError("oops")

    [result] = await canceller(ss=Broken("shipstation")).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(result, CancelFailed)
    assert result.error.category == "internal"


async def test_shipments_of_one_event_run_concurrently() -> None:
    both_started = asyncio.Barrier(2)

    class Waits(FakeProvider):
        async def cancel(self, request: CancelRequest) -> CancelOutcome:
            await asyncio.wait_for(both_started.wait(), timeout=1)
            return CancelOutcome("cancelled")

    results = await canceller(ss=Waits("shipstation")).cancel_order(
        event(("ss", "a"), ("ss", "b")), TRACE
    )
    assert all(isinstance(r, ShipmentCancelled) for r in results)


NOW = datetime(2026, 11, 21, tzinfo=UTC)
ROUND = 4  # RetryPolicy's max_attempts


def account(
    name: str,
    provider: FakeProvider,
    *,
    pace: Pace | None = None,
    breaker: CircuitBreaker | None = None,
) -> ProviderAccount:
    # A breaker that a few rounds of failures in one test do not open, unless given.
    return ProviderAccount(
        name, provider, AccountGate(4), breaker or CircuitBreaker(name, 100, 30.0), pace
    )


def parking_canceller(*accounts: ProviderAccount) -> Canceller:
    policy = RetryPolicy(max_attempts=ROUND, backoff_initial_seconds=0, budget_seconds=5)
    return Canceller(
        {a.name: a for a in accounts},
        policy,
        parking=ParkingPolicy(schedule_seconds=(30.0, 120.0, 600.0)),
        now=lambda: NOW,
    )


def failing(shipment_id: str, count: int) -> FakeProvider:
    errors: list[CancelError] = [
        UnavailableError("503 from the provider", http_status=503) for _ in range(count)
    ]
    return FakeProvider("shipstation", {shipment_id: errors})


def earlier(parked: ParkedShipment, *, first: timedelta, rounds: int = 1) -> ParkedShipment:
    """The same park, as if first made ``first`` ago after ``rounds`` rounds."""
    return parked.model_copy(update={"first_parked_at": NOW - first, "rounds": rounds})


async def test_a_transient_failure_after_a_round_is_parked() -> None:
    ss = failing("a", ROUND)
    [parked] = await parking_canceller(account("ss", ss)).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(parked, ParkedShipment)
    assert parked.reason is ParkReason.TRANSIENT_FAILURE
    assert (parked.rounds, parked.attempts) == (1, ROUND)
    assert parked.first_parked_at == NOW
    assert NOW + timedelta(seconds=27) <= parked.due_at <= NOW + timedelta(seconds=33)
    assert parked.last_error is not None
    assert (parked.last_error.category, parked.last_error.retryable) == ("unavailable", True)
    assert parked.last_error.http_status == 503
    assert len(ss.requests) == ROUND


async def test_a_parked_shipments_event_is_cut_to_that_shipment() -> None:
    ss = failing("b", ROUND)
    original = event(("ss", "a"), ("ss", "b"))
    cancelled, parked = await parking_canceller(account("ss", ss)).cancel_order(original, TRACE)
    assert isinstance(cancelled, ShipmentCancelled)
    assert isinstance(parked, ParkedShipment)
    assert parked.event.event_id == original.event_id
    assert parked.event.order_id == original.order_id
    assert [(s.provider, s.shipment_id) for s in parked.event.shipments] == [("ss", "b")]
    assert parked.shipment.shipment_id == "b"


async def test_parks_are_spread_by_jitter() -> None:
    dues = set()
    for _ in range(20):
        canceller = parking_canceller(account("ss", failing("a", ROUND)))
        [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE)
        assert isinstance(parked, ParkedShipment)
        dues.add(parked.due_at)
    assert len(dues) > 1


async def test_a_park_waits_at_least_the_retry_after() -> None:
    errors: list[CancelError] = [RateLimitedError("429", http_status=429, retry_after=100.0)]
    ss = FakeProvider("shipstation", {"a": errors})
    [parked] = await parking_canceller(account("ss", ss)).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(parked, ParkedShipment)
    assert parked.attempts == 1, "a Retry-After past the budget ends the round"
    assert parked.due_at == NOW + timedelta(seconds=100)


async def test_each_failed_round_takes_the_next_step_of_the_schedule() -> None:
    ss = failing("a", 3 * ROUND)
    canceller = parking_canceller(account("ss", ss))
    [first] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(first, ParkedShipment)
    second = await canceller.retry_parked(earlier(first, first=timedelta(minutes=1)), TRACE)
    assert isinstance(second, ParkedShipment)
    assert (second.rounds, second.attempts) == (2, 2 * ROUND)
    assert second.first_parked_at == NOW - timedelta(minutes=1)
    assert NOW + timedelta(seconds=108) <= second.due_at <= NOW + timedelta(seconds=132)
    third = await canceller.retry_parked(
        earlier(second, first=timedelta(minutes=5), rounds=5), TRACE
    )
    assert isinstance(third, ParkedShipment)
    assert third.rounds == 6
    assert NOW + timedelta(seconds=540) <= third.due_at <= NOW + timedelta(seconds=660), (
        "past the schedule's end its last step repeats"
    )


async def test_the_last_park_is_due_at_the_horizon() -> None:
    ss = failing("a", 2 * ROUND)
    canceller = parking_canceller(account("ss", ss))
    [first] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(first, ParkedShipment)
    almost = earlier(first, first=timedelta(hours=24) - timedelta(seconds=10))
    last = await canceller.retry_parked(almost, TRACE)
    assert isinstance(last, ParkedShipment)
    assert last.due_at == NOW + timedelta(seconds=10)


async def test_a_shipment_failing_past_the_horizon_fails_as_retryable() -> None:
    ss = failing("a", 2 * ROUND)
    canceller = parking_canceller(account("ss", ss))
    [first] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(first, ParkedShipment)
    result = await canceller.retry_parked(earlier(first, first=timedelta(hours=24)), TRACE)
    assert isinstance(result, CancelFailed)
    assert (result.error.category, result.error.retryable) == ("unavailable", True)
    assert result.attempts == 2 * ROUND
    assert result.event_id == shipment_result_id(first.event, first.shipment)


async def test_a_parked_shipment_that_succeeds_gets_the_result_an_immediate_success_would() -> None:
    original = event(("ss", "a"))
    [immediate] = await parking_canceller(account("ss", FakeProvider("shipstation"))).cancel_order(
        original, TRACE
    )
    assert isinstance(immediate, ShipmentCancelled)

    ss = failing("a", ROUND)
    canceller = parking_canceller(account("ss", ss))
    [parked] = await canceller.cancel_order(original, TRACE)
    assert isinstance(parked, ParkedShipment)
    read_back = parse_parked(dump_event(parked))  # through the retry topic
    assert isinstance(read_back, ParkedShipment)
    result = await canceller.retry_parked(read_back, TRACE)
    assert isinstance(result, ShipmentCancelled)
    assert result.event_id == immediate.event_id
    assert result.source_event_id == original.event_id
    assert result.attempts == ROUND + 1
    assert {r.idempotency_key for r in ss.requests} == {str(immediate.event_id)}


async def test_a_permanent_answer_to_a_parked_shipment_fails_at_once() -> None:
    errors: list[CancelError] = [
        *(UnavailableError("503") for _ in range(ROUND)),
        NotFoundError("no such shipment", http_status=404),
    ]
    ss = FakeProvider("shipstation", {"a": errors})
    canceller = parking_canceller(account("ss", ss))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(parked, ParkedShipment)
    result = await canceller.retry_parked(parked, TRACE)
    assert isinstance(result, CancelFailed)
    assert (result.error.category, result.error.retryable) == ("not_found", False)
    assert result.attempts == ROUND + 1
    assert len(ss.requests) == ROUND + 1


async def test_a_permanent_failure_is_never_parked() -> None:
    ss = FakeProvider("shipstation", {"a": [NotFoundError("gone", http_status=404)]})
    [result] = await parking_canceller(account("ss", ss)).cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(result, CancelFailed)
    assert result.attempts == 1


async def test_an_unknown_provider_fails_at_once_with_parking() -> None:
    ss = FakeProvider("shipstation")
    [result] = await parking_canceller(account("ss", ss)).cancel_order(event(("fedex", "x")), TRACE)
    assert isinstance(result, CancelFailed)
    assert (result.error.category, result.error.retryable) == ("unknown_provider", False)
    assert ss.requests == []


async def test_a_parked_shipment_whose_account_is_gone_keeps_its_attempts() -> None:
    canceller = parking_canceller(account("ss", failing("a", ROUND)))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(parked, ParkedShipment)
    reconfigured = parking_canceller(account("other", FakeProvider("shipstation")))
    result = await reconfigured.retry_parked(parked, TRACE)
    assert isinstance(result, CancelFailed)
    assert result.error.category == "unknown_provider"
    assert result.attempts == ROUND


async def test_a_busy_account_parks_the_shipment_without_a_call() -> None:
    pace = Pace(1)  # a slot every two minutes
    pace.book()
    ss = FakeProvider("shipstation")
    [parked] = await parking_canceller(account("ss", ss, pace=pace)).cancel_order(
        event(("ss", "a")), TRACE
    )
    assert isinstance(parked, ParkedShipment)
    assert parked.reason is ParkReason.ACCOUNT_BUSY
    assert (parked.attempts, parked.rounds, parked.last_error) == (0, 0, None)
    assert parked.first_parked_at == NOW
    # Back before its slot, which is after the one already booked (in two minutes).
    assert NOW + timedelta(seconds=110) <= parked.due_at <= NOW + timedelta(seconds=240)
    assert ss.requests == []


class PacedProvider(FakeProvider):
    """Cancels with one HTTP request through the account's pace."""

    def __init__(self, pace: Pace) -> None:
        super().__init__("shipstation")
        api = httpx.MockTransport(lambda request: httpx.Response(204))
        self._client = TransportClient(PacedTransport(api, pace))

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        self.requests.append(request)
        await self._client.send(httpx.Request("PUT", f"https://p.test/{request.shipment_id}"))
        return CancelOutcome("cancelled")


async def test_the_second_shipment_of_an_event_parks_when_the_first_fills_the_pace() -> None:
    pace = Pace(1)  # the first request takes the next two minutes
    ss = PacedProvider(pace)
    cancelled, parked = await parking_canceller(account("ss", ss, pace=pace)).cancel_order(
        event(("ss", "a"), ("ss", "b")), TRACE
    )
    assert isinstance(cancelled, ShipmentCancelled)
    assert isinstance(parked, ParkedShipment)
    assert parked.reason is ParkReason.ACCOUNT_BUSY
    assert [r.shipment_id for r in ss.requests] == ["a"]


async def test_an_open_circuit_parks_until_its_cooldown_ends() -> None:
    circuit = CircuitBreaker("ss", 1, 30.0)
    circuit.failed()
    ss = FakeProvider("shipstation")
    [parked] = await parking_canceller(account("ss", ss, breaker=circuit)).cancel_order(
        event(("ss", "a")), TRACE
    )
    assert isinstance(parked, ParkedShipment)
    assert parked.reason is ParkReason.CIRCUIT_OPEN
    # After the cool-down, spread over one more so the parked do not come back at once.
    assert NOW + timedelta(seconds=29) <= parked.due_at <= NOW + timedelta(seconds=60)
    assert ss.requests == []


@pytest.mark.parametrize(("busy", "category"), [(True, "rate_limited"), (False, "unavailable")])
async def test_a_shipment_deferred_past_the_horizon_fails_as_retryable(
    busy: bool, category: str
) -> None:
    pace = Pace(1) if busy else None
    circuit = CircuitBreaker("ss", ROUND + 1, 30.0)  # the round's failures leave it closed
    ss = failing("a", ROUND)
    canceller = parking_canceller(account("ss", ss, pace=pace, breaker=circuit))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE)
    assert isinstance(parked, ParkedShipment)
    assert parked.attempts == ROUND
    if pace is not None:
        pace.book()
    else:
        circuit.failed()
    result = await canceller.retry_parked(earlier(parked, first=timedelta(hours=25)), TRACE)
    assert isinstance(result, CancelFailed)
    assert (result.error.category, result.error.retryable) == (category, True)
    assert result.attempts == ROUND
    assert len(ss.requests) == ROUND, "no call once deferred past the horizon"


async def test_a_shipment_waits_behind_a_park_of_an_earlier_event() -> None:
    ss = FakeProvider("shipstation")
    canceller = parking_canceller(account("ss", ss))
    later = event(("ss", "a"))
    earlier_due = NOW.timestamp() + 500
    canceller.parked.add(
        later.shipments[0], uuid.uuid4(), origin=Origin(0, 5), due=earlier_due, since=0.0
    )
    [parked] = await canceller.cancel_order(later, TRACE, Origin(0, 10))
    assert isinstance(parked, ParkedShipment)
    assert parked.reason is ParkReason.BEHIND_PARKED
    assert NOW + timedelta(seconds=500) < parked.due_at < NOW + timedelta(seconds=501)
    assert (parked.attempts, parked.input_offset) == (0, 10)
    assert ss.requests == []


@pytest.mark.parametrize(
    "origin",
    [None, Origin(0, 3), Origin(1, 10)],
    ids=["no-origin", "park-is-later", "other-partition"],
)
async def test_a_park_of_a_later_or_unrelated_event_does_not_hold_a_shipment_back(
    origin: Origin | None,
) -> None:
    ss = FakeProvider("shipstation")
    canceller = parking_canceller(account("ss", ss))
    shipment = ShipmentRef(provider="ss", shipment_id="a")
    canceller.parked.add(shipment, uuid.uuid4(), origin=Origin(0, 5), due=1e12, since=0.0)
    [result] = await canceller.cancel_order(event(("ss", "a")), TRACE, origin)
    assert isinstance(result, ShipmentCancelled)


async def test_a_parked_shipment_is_not_behind_its_own_park() -> None:
    ss = failing("a", ROUND)
    canceller = parking_canceller(account("ss", ss))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE, Origin(2, 10))
    assert isinstance(parked, ParkedShipment)
    assert parked.input_offset == 10
    park_of(canceller.parked, parked, partition=2)  # as the runner does
    result = await canceller.retry_parked(parked, TRACE, partition=2)
    assert isinstance(result, ShipmentCancelled)


async def test_a_parked_shipment_stays_behind_an_earlier_events_park() -> None:
    ss = failing("a", ROUND)
    canceller = parking_canceller(account("ss", ss))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE, Origin(2, 10))
    assert isinstance(parked, ParkedShipment)
    earlier_due = NOW.timestamp() + 900
    canceller.parked.add(
        parked.shipment, uuid.uuid4(), origin=Origin(2, 4), due=earlier_due, since=0.0
    )
    again = await canceller.retry_parked(parked, TRACE, partition=2)
    assert isinstance(again, ParkedShipment)
    assert again.reason is ParkReason.BEHIND_PARKED
    assert (again.attempts, again.rounds, again.input_offset) == (ROUND, 1, 10)
    assert again.first_parked_at == parked.first_parked_at
    assert len(ss.requests) == ROUND


async def test_behind_an_overdue_park_a_shipment_still_waits_a_moment() -> None:
    """An earlier park whose due time has passed (being retried, or settled by another
    member): the later one never comes straight back, so it cannot spin."""
    ss = FakeProvider("shipstation")
    canceller = parking_canceller(account("ss", ss))
    later = event(("ss", "a"))
    overdue = NOW.timestamp() - 3600
    canceller.parked.add(
        later.shipments[0], uuid.uuid4(), origin=Origin(0, 5), due=overdue, since=0.0
    )
    [parked] = await canceller.cancel_order(later, TRACE, Origin(0, 10))
    assert isinstance(parked, ParkedShipment)
    assert parked.due_at >= NOW + timedelta(seconds=1)


async def test_behind_a_park_past_the_horizon_is_a_failure_too() -> None:
    ss = failing("a", ROUND)
    canceller = parking_canceller(account("ss", ss))
    [parked] = await canceller.cancel_order(event(("ss", "a")), TRACE, Origin(0, 10))
    assert isinstance(parked, ParkedShipment)
    old = earlier(parked, first=timedelta(hours=25))
    canceller.parked.add(old.shipment, uuid.uuid4(), origin=Origin(0, 3), due=1e12, since=0.0)
    result = await canceller.retry_parked(old, TRACE, partition=0)
    assert isinstance(result, CancelFailed)
    assert result.error.retryable


async def test_a_busy_park_is_due_no_later_than_the_horizon() -> None:
    busy = Pace(1)  # one request a minute: the second shipment waits past park_after
    busy.admit()
    ss = FakeProvider("shipstation")
    canceller = parking_canceller(account("ss", ss, pace=busy))
    first_parked = NOW - timedelta(hours=24) + timedelta(seconds=10)
    parked = ParkedShipment(
        event=event(("ss", "a")),
        due_at=NOW,
        first_parked_at=first_parked,
        attempts=4,
        rounds=1,
        reason=ParkReason.ACCOUNT_BUSY,
    )
    result = await canceller.retry_parked(parked, TRACE)
    assert isinstance(result, ParkedShipment)
    assert result.due_at <= first_parked + timedelta(hours=24)
