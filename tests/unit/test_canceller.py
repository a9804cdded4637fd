import asyncio
from datetime import UTC, datetime

from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.errors import CancelError, NotFoundError, UnavailableError
from consumer.core.events import CancelFailed, OrderCancelled, ShipmentCancelled
from consumer.core.examples import order_cancelled_example
from consumer.core.pipeline import TraceRef
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.providers.base import CancelOutcome, CancelRequest

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
    assert [(r.provider, r.shipment_id) for r in results] == [("ss", "a"), ("mv", "b")]
    assert all(isinstance(r, ShipmentCancelled) for r in results)
    assert results[1].provider_kind == "mvmnt"


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
