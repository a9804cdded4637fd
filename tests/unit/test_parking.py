"""Parked shipments: the retry topic's record, and the registry of parks not yet settled."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from consumer.core.errors import UnavailableError
from consumer.core.events import OrderCancelled, ShipmentRef, dump_event
from consumer.core.examples import order_cancelled_example
from consumer.core.parking import (
    InvalidParked,
    Origin,
    ParkedShipment,
    ParkedShipments,
    ParkReason,
    RetryState,
    park_of,
    parse_parked,
)
from consumer.core.pipeline import error_detail, shipment_result_id

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SECRET = "sk_live_do-not-echo-0123456789"
SS = ShipmentRef(provider="ss", shipment_id="se-1")
MV = ShipmentRef(provider="mv", shipment_id="se-1")


def parked(**overrides: Any) -> ParkedShipment:
    event = OrderCancelled.model_validate(
        order_cancelled_example(shipments=[{"provider": "ss", "shipment_id": "se-1"}])
    )
    fields: dict[str, Any] = {
        "event": event,
        "due_at": NOW + timedelta(seconds=30),
        "first_parked_at": NOW,
        "attempts": 4,
        "rounds": 1,
        "reason": ParkReason.TRANSIENT_FAILURE,
        "last_error": error_detail(UnavailableError("503 from the provider", http_status=503)),
    }
    return ParkedShipment(**{**fields, **overrides})


def wire(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(dump_event(parked()))
    return {**data, **overrides}


def test_a_park_survives_the_retry_topic_unchanged() -> None:
    original = parked()
    value = dump_event(original)
    assert orjson.loads(value)["event_type"] == "shipment.cancel_retry"
    assert parse_parked(value) == original


@pytest.mark.parametrize("reason", list(ParkReason))
def test_every_reason_round_trips_without_an_error(reason: ParkReason) -> None:
    original = parked(reason=reason, last_error=None, attempts=0, rounds=0)
    back = parse_parked(dump_event(original))
    assert back == original
    assert isinstance(back, ParkedShipment)
    assert back.shipment == SS


def test_the_input_offset_round_trips_and_is_optional() -> None:
    assert parse_parked(dump_event(parked(input_offset=42))) == parked(input_offset=42)
    data = wire()
    del data["input_offset"]
    back = parse_parked(orjson.dumps(data))
    assert isinstance(back, ParkedShipment)
    assert back.input_offset is None


def test_unknown_fields_of_a_newer_writer_are_ignored() -> None:
    back = parse_parked(orjson.dumps(wire(priority="high")))
    assert isinstance(back, ParkedShipment)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "null"),
        (f"not json {SECRET}".encode(), "not a shipment.cancel_retry v1"),
        (b"\xff\xfe" + SECRET.encode(), "not a shipment.cancel_retry v1"),
        (orjson.dumps([SECRET]), "not a shipment.cancel_retry v1"),
        (orjson.dumps(wire(event_type="order.cancelled", order_id=SECRET)), "v1"),
        (orjson.dumps(wire(schema_version=2)), "v1"),
        (orjson.dumps(wire(attempts=-1)), "v1"),
        (orjson.dumps(wire(input_offset=-1)), "v1"),
        (orjson.dumps(wire(reason=SECRET)), "v1"),
        (orjson.dumps(wire(due_at=SECRET)), "v1"),
        (orjson.dumps({"event_type": "shipment.cancel_retry", "token": SECRET}), "v1"),
    ],
)
def test_an_invalid_record_says_why_without_echoing_it(value: bytes | None, says: str) -> None:
    result = parse_parked(value)
    assert isinstance(result, InvalidParked)
    assert says in result.message
    assert SECRET not in result.message
    assert "sk_live" not in result.message


def test_a_record_naming_two_shipments_is_invalid() -> None:
    data = wire()
    data["event"]["shipments"].append({"provider": "mv", "shipment_id": SECRET})
    result = parse_parked(orjson.dumps(data))
    assert result == InvalidParked("retry record must name exactly one shipment")


def test_a_record_naming_no_shipment_is_invalid() -> None:
    data = wire()
    data["event"]["shipments"] = []
    assert isinstance(parse_parked(orjson.dumps(data)), InvalidParked)


def test_retry_state_carries_the_park_on() -> None:
    assert RetryState.of(parked()) == RetryState(4, 1, NOW)
    assert RetryState() == RetryState(0, 0, None)


def test_the_horizon_counts_from_the_first_park() -> None:
    horizon = timedelta(hours=24)
    state = RetryState(4, 1, NOW)
    assert not state.past_horizon(NOW + horizon - timedelta(seconds=1), horizon)
    assert state.past_horizon(NOW + horizon, horizon)
    assert not RetryState().past_horizon(NOW + 10 * horizon, horizon), "never parked"


def test_a_shipment_waits_behind_the_latest_park_of_an_earlier_event() -> None:
    registry = ParkedShipments()
    first, second = uuid.uuid4(), uuid.uuid4()
    registry.add(SS, first, origin=Origin(0, 5), due=500.0, since=100.0)
    registry.add(SS, second, origin=Origin(0, 7), due=700.0, since=200.0)
    assert registry.due_of_earlier(SS, Origin(0, 9)) == 700.0
    assert registry.due_of_earlier(SS, Origin(0, 7)) == 500.0, "not behind itself"
    assert registry.due_of_earlier(SS, Origin(0, 6)) == 500.0
    assert registry.due_of_earlier(SS, Origin(0, 5)) is None
    assert registry.due_of_earlier(SS, Origin(0, 4)) is None, "a later event's park"
    assert registry.due_of_earlier(SS, Origin(1, 9)) is None, "another input partition"
    assert registry.due_of_earlier(MV, Origin(0, 9)) is None, "another provider's shipment"
    registry.settled(SS, second)
    assert registry.due_of_earlier(SS, Origin(0, 9)) == 500.0
    registry.settled(SS, first)
    registry.settled(SS, first)  # settling twice is harmless
    assert registry.due_of_earlier(SS, Origin(0, 9)) is None
    assert registry.per_account(1000.0) == {}


def test_a_park_added_again_is_updated_not_doubled() -> None:
    registry = ParkedShipments()
    rid = uuid.uuid4()
    registry.add(SS, rid, origin=Origin(0, 5), due=500.0, since=100.0)
    registry.add(SS, rid, origin=Origin(0, 5), due=900.0, since=100.0)
    assert registry.due_of_earlier(SS, Origin(0, 6)) == 900.0
    assert registry.per_account(1000.0) == {"ss": (1, 900.0)}


def test_forgetting_partitions_drops_only_their_parks() -> None:
    registry = ParkedShipments()
    registry.add(SS, uuid.uuid4(), origin=Origin(0, 1), due=500.0, since=100.0)
    registry.add(SS, uuid.uuid4(), origin=Origin(1, 1), due=700.0, since=100.0)
    registry.add(MV, uuid.uuid4(), origin=Origin(1, 2), due=800.0, since=100.0)
    registry.forget_partitions({1})
    assert registry.due_of_earlier(SS, Origin(0, 9)) == 500.0
    assert registry.due_of_earlier(SS, Origin(1, 9)) is None
    assert registry.per_account(1000.0) == {"ss": (1, 900.0)}
    registry.forget_partitions({0})
    assert registry.per_account(1000.0) == {}


def test_per_account_counts_parks_and_the_oldest_age() -> None:
    registry = ParkedShipments()
    se_2 = ShipmentRef(provider="ss", shipment_id="se-2")
    registry.add(SS, uuid.uuid4(), origin=Origin(0, 1), due=500.0, since=100.0)
    registry.add(SS, uuid.uuid4(), origin=Origin(0, 2), due=500.0, since=400.0)
    registry.add(se_2, uuid.uuid4(), origin=Origin(1, 1), due=500.0, since=300.0)
    registry.add(MV, uuid.uuid4(), origin=Origin(0, 3), due=500.0, since=900.0)
    assert registry.per_account(1000.0) == {"ss": (3, 900.0), "mv": (1, 100.0)}


def test_a_park_read_back_is_registered_under_its_result_id_and_origin() -> None:
    registry = ParkedShipments()
    park = parked(input_offset=42)
    park_of(registry, park, partition=3)
    assert registry.due_of_earlier(SS, Origin(3, 43)) == park.due_at.timestamp()
    assert registry.due_of_earlier(SS, Origin(3, 42)) is None
    assert registry.per_account(NOW.timestamp() + 60) == {"ss": (1, 60.0)}
    registry.settled(SS, shipment_result_id(park.event, park.shipment))
    assert registry.per_account(NOW.timestamp()) == {}


def test_a_park_without_an_input_offset_orders_nothing() -> None:
    registry = ParkedShipments()
    park_of(registry, parked(), partition=3)
    assert registry.per_account(NOW.timestamp()) == {}
