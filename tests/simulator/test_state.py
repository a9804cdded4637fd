"""The pure parts: shipment stores, tokens, the rate-limit window, the call log."""

from __future__ import annotations

import base64
import uuid

import orjson
import pytest

from consumer.simulator.faults import FaultSpec
from consumer.simulator.ratelimit import SlidingWindowLimiter
from consumer.simulator.recorder import (
    MAX_KEPT_BODY,
    CallLog,
    ProviderCall,
    Recorder,
    RequestRecord,
)
from consumer.simulator.shipments import MvmntStore, ShipStationStore
from consumer.simulator.tokens import TokenStore

from .helpers import FakeClock


def test_limiter_frees_a_slot_when_the_oldest_call_leaves_the_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, window_seconds=60, clock=clock)
    assert limiter.acquire() is None
    clock.now += 10
    assert limiter.acquire() is None
    clock.now += 5.5
    refusal = limiter.acquire()
    assert refusal is not None
    # The first call leaves at +60: 44.5 s from now, rounded up.
    assert (refusal.limit, refusal.retry_after_seconds) == (2, 45)
    assert refusal.reset_at == 1_000_060
    clock.now = 1_000_060
    assert limiter.acquire() is None
    # A fixed window would have started afresh here; the call at +10 still counts.
    refusal = limiter.acquire()
    assert refusal is not None
    assert (refusal.retry_after_seconds, refusal.reset_at) == (10, 1_000_070)


def test_limiter_refusals_do_not_count_and_retry_after_is_at_least_a_second() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, window_seconds=60, clock=clock)
    assert limiter.acquire() is None
    clock.now += 59.8
    for _ in range(3):
        refusal = limiter.acquire()
        assert refusal is not None
        assert refusal.retry_after_seconds == 1
    clock.now += 0.2
    assert limiter.acquire() is None


def test_a_lowered_limit_still_counts_the_calls_of_the_last_minute() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, window_seconds=60, clock=clock)
    for _ in range(3):
        assert limiter.acquire() is None
        clock.now += 10
    limiter.limit = 2
    refusal = limiter.acquire()
    assert refusal is not None
    # Two of the three calls must leave: the second one does so at +70, 40 s from now.
    assert refusal.retry_after_seconds == 40
    limiter.reset()
    assert limiter.acquire() is None


def test_limiter_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SlidingWindowLimiter(0)


def test_call_log_keeps_arrival_order_and_fills_in_the_status_when_answered() -> None:
    log = CallLog()
    first = log.begin(1.0, "shipstation", "PUT", "/shipstation/a")
    second = log.begin(2.0, "mvmnt", "POST", "/mvmnt/b")
    log.answered(second, 200)
    assert log.calls() == [
        ProviderCall(1.0, "shipstation", "PUT", "/shipstation/a", None),
        ProviderCall(2.0, "mvmnt", "POST", "/mvmnt/b", 200),
    ]
    log.reset()
    # A call still in flight at the reset does not come back into the new log.
    log.answered(first, 204)
    assert log.calls() == []


def test_tokens_are_jwt_shaped_and_expire() -> None:
    clock = FakeClock()
    tokens = TokenStore(ttl_seconds=60, clock=clock)
    token = tokens.issue("client-a")
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "client-a"
    assert claims["exp"] - claims["iat"] == 60
    assert signature
    assert orjson.loads(base64.urlsafe_b64decode(header + "=="))["typ"] == "JWT"
    assert tokens.is_valid(token)
    clock.now += 60
    assert not tokens.is_valid(token)
    assert not tokens.is_valid("not-a-token")


def test_static_token_is_valid_without_being_issued() -> None:
    tokens = TokenStore(ttl_seconds=60, static_token="static-1")
    assert tokens.is_valid("static-1")
    assert not tokens.is_valid("static-2")


def test_shipstation_label_must_be_voided_before_cancel() -> None:
    store = ShipStationStore()
    shipment = store.get("se-labeled-1")
    assert shipment is not None
    statuses = [shipment.status]
    refusal = shipment.cancel()
    assert refusal is not None
    assert "void" in refusal
    (label,) = store.labels("se-labeled-1", None)
    assert store.void(label).approved
    statuses.append(shipment.status)
    again = store.void(label)
    assert (again.approved, again.reason_code) == (False, "label_already_voided")
    assert shipment.cancel() is None
    statuses.append(shipment.status)
    assert statuses == ["label_purchased", "pending", "cancelled"]


def test_shipstation_override_rebuilds_the_shipment_from_the_new_fault() -> None:
    store = ShipStationStore()
    assert store.get("se-1") is not None
    store.set_fault("se-1", FaultSpec(not_found=True))
    assert store.get("se-1") is None
    store.reset()
    assert store.get("se-1") is not None


def test_mvmnt_key_lookup_gives_a_stable_uuid_and_the_key_back() -> None:
    store = MvmntStore()
    by_key = store.get("SHP-12345", "key")
    assert by_key is not None
    assert by_key.key == "SHP-12345"
    assert uuid.UUID(by_key.id)
    assert store.get(by_key.id, "id") is by_key
    assert store.get(by_key.id, None) is by_key
    elsewhere = MvmntStore().get("SHP-12345", "key")
    assert elsewhere is not None
    assert elsewhere.id == by_key.id


def test_mvmnt_id_lookup_needs_a_uuid() -> None:
    store = MvmntStore()
    assert store.get("SHP-12345", "id") is None
    shipment_id = str(uuid.uuid4())
    shipment = store.get(shipment_id, "id")
    assert shipment is not None
    assert shipment.id == shipment_id
    assert shipment.key.startswith("SHP-")
    assert store.get(shipment.key, "key") is shipment


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        ("SHP-1", "BOOKED"),
        ("SHP-delivered-1", "DELIVERED"),
        ("SHP-labeled-1", "IN_TRANSIT"),
        ("SHP-cancelled-1", "CANCELED"),
    ],
)
def test_mvmnt_initial_status_follows_the_fault(ref: str, status: str) -> None:
    shipment = MvmntStore().get(ref, None)
    assert shipment is not None
    assert shipment.status == status
    assert (shipment.delivered_at is not None) == (status == "DELIVERED")


def test_request_log_is_bounded_and_keeps_large_bodies_only_in_part() -> None:
    recorder = Recorder(log_size=2)
    for n in range(3):
        record = RequestRecord(
            at=0.0,
            request_id=str(n),
            method="POST",
            path=f"/mvmnt/v1/shipments/SHP-{n}/cancel",
            query_string="",
            header_names=("Content-Type",),
            content_type="application/json",
            idempotency_key=None,
        )
        record.keep_body(b'{"reason": "' + b"x" * MAX_KEPT_BODY + b'"}')
        recorder.begin(record)
        recorder.answered(record, 200)
        recorder.end()
    entries = recorder.recent(10)
    assert [entry["request_id"] for entry in entries] == ["1", "2"]
    assert entries[0]["body_truncated"] is True
    assert "json" not in entries[0]
    assert entries[0]["body_size"] == MAX_KEPT_BODY + 14
    assert recorder.stats()["requests_total"] == 3
