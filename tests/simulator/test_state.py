"""The pure parts: shipment stores, tokens, the rate-limit window."""

from __future__ import annotations

import base64
import uuid

import orjson
import pytest

from consumer.simulator.faults import FaultSpec
from consumer.simulator.ratelimit import FixedWindowLimiter
from consumer.simulator.recorder import MAX_KEPT_BODY, Recorder, RequestRecord
from consumer.simulator.shipments import MvmntStore, ShipStationStore
from consumer.simulator.tokens import TokenStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_limiter_refuses_once_the_window_is_full_and_resets_with_the_next() -> None:
    clock = FakeClock()
    limiter = FixedWindowLimiter(2, window_seconds=60, clock=clock)
    assert limiter.acquire() is None
    assert limiter.acquire() is None
    clock.now += 15.5
    refusal = limiter.acquire()
    assert refusal is not None
    assert (refusal.limit, refusal.retry_after_seconds) == (2, 45)
    assert refusal.reset_at == 1_000_060
    clock.now += 45
    assert limiter.acquire() is None


def test_limiter_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FixedWindowLimiter(0)


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
