"""Admission of a shipment to its provider account: now, or parked and until when."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.core.accounts import Admitted, Deferred, ProviderAccount
from consumer.core.breaker import CircuitBreaker, CircuitState
from consumer.core.pacing import Pace
from consumer.core.parking import ParkReason
from consumer.core.retry import AccountGate
from consumer.providers.base import CancelOutcome, CancelRequest
from tests.polling import eventually


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Idle:
    kind = "shipstation"

    async def cancel(self, request: CancelRequest) -> CancelOutcome:
        raise AssertionError("admission makes no call")


def account(
    clock: Clock, *, pace: Pace | None = None, gate: AccountGate | None = None
) -> ProviderAccount:
    return ProviderAccount(
        "ss-main",
        Idle(),
        gate or AccountGate(4),
        CircuitBreaker("ss-main", 2, 30.0, clock),
        pace,
    )


def test_without_a_rate_limit_admission_claims_no_slot() -> None:
    assert account(Clock()).admit(5.0) == Admitted(None)


def test_admitted_shipments_claim_the_pace_until_the_queue_is_too_long() -> None:
    clock = Clock()
    pace = Pace(60, clock)  # one slot every 60/59 s
    acct = account(clock, pace=pace)
    admitted = [acct.admit(5.0) for _ in range(5)]
    tickets = [a.ticket for a in admitted if isinstance(a, Admitted) and a.ticket is not None]
    assert len(tickets) == 5
    assert pace.wait() == pytest.approx(5 * pace.interval), "each claim is counted"
    busy = acct.admit(5.0)
    assert isinstance(busy, Deferred)
    assert busy.reason is ParkReason.ACCOUNT_BUSY
    assert pace.wait() == pytest.approx(5 * pace.interval), "a park claims no real slot"
    for ticket in tickets:
        ticket.release()
    assert isinstance(acct.admit(5.0), Admitted), "claims given back make room"


def test_a_shipment_parked_behind_booked_slots_comes_back_before_its_turn() -> None:
    clock = Clock()
    pace = Pace(60, clock)
    acct = account(clock, pace=pace)
    for _ in range(6):
        pace.book()
    busy = acct.admit(5.0)
    assert isinstance(busy, Deferred)
    # Back half a queue (2.5 s) before its slot, which comes after every booked one.
    assert busy.until == pytest.approx(1000.0 + 7 * pace.interval - 2.5)


def test_a_shipment_parked_behind_admitted_ones_comes_back_after_them() -> None:
    clock = Clock()
    pace = Pace(60, clock)
    acct = account(clock, pace=pace)
    for _ in range(5):
        assert isinstance(acct.admit(5.0), Admitted)
    busy = acct.admit(5.0)
    assert isinstance(busy, Deferred)
    assert busy.until >= 1000.0 + 5 * pace.interval - 2.5


async def test_a_full_gate_defers_the_shipment_for_the_park_time() -> None:
    clock = Clock()
    gate = AccountGate(1)
    acct = account(clock, gate=gate)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate:
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    try:
        await eventually(lambda: gate.full)
        before = time.monotonic()
        deferred = acct.admit(5.0)
        assert isinstance(deferred, Deferred)
        assert deferred.reason is ParkReason.ACCOUNT_BUSY
        assert before + 5.0 <= deferred.until <= time.monotonic() + 5.0
    finally:
        release.set()
        await asyncio.gather(*tasks)


def test_an_open_circuit_defers_until_its_cooldown_ends() -> None:
    clock = Clock()
    acct = account(clock)
    acct.breaker.failed()
    acct.breaker.failed()
    deferred = acct.admit(5.0)
    assert isinstance(deferred, Deferred)
    assert deferred.reason is ParkReason.CIRCUIT_OPEN
    # Spread over a cool-down after it: the parked ones do not all come back at once.
    assert 1030.0 <= deferred.until < 1060.0


def test_a_half_open_circuit_admits_one_probe_and_defers_the_rest_until_its_expiry() -> None:
    clock = Clock()
    acct = account(clock)
    acct.breaker.failed()
    acct.breaker.failed()
    clock.now = 1030.0
    assert acct.admit(5.0) == Admitted(None)
    deferred = acct.admit(5.0)
    assert isinstance(deferred, Deferred)
    assert deferred.reason is ParkReason.CIRCUIT_OPEN
    assert 1060.0 <= deferred.until < 1090.0


def test_a_busy_account_does_not_take_the_probe() -> None:
    clock = Clock()
    pace = Pace(60, clock)
    acct = account(clock, pace=pace)
    acct.breaker.failed()
    acct.breaker.failed()
    clock.now = 1030.0  # half-open, and the pace's queue is too long
    for _ in range(6):
        pace.book()
    deferred = acct.admit(5.0)
    assert isinstance(deferred, Deferred)
    assert deferred.reason is ParkReason.ACCOUNT_BUSY
    assert acct.breaker.state is CircuitState.HALF_OPEN
    assert acct.breaker.blocked_until() is None, "the probe is still there to take"


async def test_a_full_gate_does_not_take_the_probe() -> None:
    clock = Clock()
    gate = AccountGate(1)
    acct = account(clock, gate=gate)
    acct.breaker.failed()
    acct.breaker.failed()
    clock.now = 1030.0
    release = asyncio.Event()

    async def hold() -> None:
        async with gate:
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    try:
        await eventually(lambda: gate.full)
        deferred = acct.admit(5.0)
        assert isinstance(deferred, Deferred)
        assert deferred.reason is ParkReason.ACCOUNT_BUSY
    finally:
        release.set()
        await asyncio.gather(*tasks)
    assert acct.admit(5.0) == Admitted(None), "the probe"
    deferred = acct.admit(5.0)
    assert isinstance(deferred, Deferred)
    assert deferred.reason is ParkReason.CIRCUIT_OPEN


def test_a_default_breaker_is_made_per_account() -> None:
    first = ProviderAccount("a", Idle(), AccountGate(1))
    second = ProviderAccount("b", Idle(), AccountGate(1))
    assert first.breaker is not second.breaker
    assert first.kind == "shipstation"
