from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from consumer.core.errors import ErrorCategory
from consumer.core.events import (
    CancelFailed,
    ErrorDetail,
    OrderCancelled,
    ShipmentCancelled,
    dump_event,
    result_event_id,
)
from consumer.core.examples import order_cancelled_example

# The shared example's event id: the source of the result events below.
SOURCE_ID = uuid.UUID(order_cancelled_example()["event_id"])
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def shipments(count: int) -> list[dict[str, str]]:
    return [{"provider": "shipstation", "shipment_id": f"se-{n}"} for n in range(count)]


def cancelled(**overrides: Any) -> ShipmentCancelled:
    fields: dict[str, Any] = {
        "event_id": result_event_id(SOURCE_ID, "shipstation", "se-28529731"),
        "occurred_at": datetime(2026, 11, 21, 10, 0, 1, tzinfo=UTC),
        "source_event_id": SOURCE_ID,
        "order_id": "SO-1001",
        "provider": "shipstation",
        "provider_kind": "shipstation",
        "shipment_id": "se-28529731",
        "outcome": "cancelled",
        "attempts": 1,
        "trace_id": TRACE_ID,
    }
    fields.update(overrides)
    return ShipmentCancelled.model_validate(fields)


def failed(**overrides: Any) -> CancelFailed:
    fields: dict[str, Any] = {
        "event_id": result_event_id(SOURCE_ID, "shipstation", "se-1"),
        "occurred_at": datetime(2026, 11, 21, 10, 0, 2, tzinfo=UTC),
        "source_event_id": SOURCE_ID,
        "order_id": "SO-1001",
        "provider": "shipstation",
        "provider_kind": "shipstation",
        "shipment_id": "se-1",
        "attempts": 3,
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "error": ErrorDetail(
            category=ErrorCategory.CONFLICT,
            retryable=False,
            message="shipment se-1 has an active label",
            http_status=400,
            provider_code="invalid_status",
            provider_request_id="req-77",
            provider_errors=[{"error_code": "invalid_status", "field_name": "shipment_id"}],
        ),
    }
    fields.update(overrides)
    return CancelFailed.model_validate(fields)


def error_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {str(error["loc"][0]) for error in exc.value.errors()}


# --- OrderCancelled ---------------------------------------------------------------------------


def test_order_cancelled_accepts_the_shared_example() -> None:
    event = OrderCancelled.model_validate_json(orjson.dumps(order_cancelled_example()))

    assert event.event_id == SOURCE_ID
    assert event.order_id == "SO-1001"
    assert event.occurred_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert [(s.provider, s.shipment_id, s.lookup) for s in event.shipments] == [
        ("shipstation", "se-28529731", None),
        ("mvmnt", "SHP-12345", "key"),
    ]


def test_order_cancelled_reason_is_optional() -> None:
    payload = order_cancelled_example()
    del payload["reason"]
    assert OrderCancelled.model_validate(payload).reason is None


def test_order_cancelled_ignores_unknown_fields_for_forward_compatibility() -> None:
    payload = order_cancelled_example(priority="high", erp={"batch": 7})
    payload["shipments"][0]["carrier"] = "ups"

    event = OrderCancelled.model_validate(payload)

    assert event == OrderCancelled.model_validate(order_cancelled_example())
    assert "priority" not in event.model_dump()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("schema_version", 2, id="schema_version 2"),
        pytest.param("schema_version", "1", id="schema_version as a string"),
        pytest.param("schema_version", True, id="schema_version true"),
        pytest.param("event_type", "order.created", id="other event type"),
        pytest.param("event_id", "not-a-uuid", id="bad uuid"),
        pytest.param("occurred_at", "yesterday", id="bad timestamp"),
        pytest.param("order_id", "", id="empty order_id"),
        pytest.param("order_id", "O" * 129, id="order_id over 128"),
        pytest.param("reason", "r" * 1001, id="reason over 1000"),
        pytest.param("shipments", [], id="no shipments"),
        pytest.param("shipments", shipments(51), id="51 shipments"),
        pytest.param(
            "shipments",
            [{"provider": "mvmnt", "shipment_id": "SHP-1", "lookup": "name"}],
            id="bad lookup",
        ),
        pytest.param("shipments", [{"provider": "mvmnt"}], id="shipment without id"),
    ],
)
def test_order_cancelled_rejects_invalid_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        OrderCancelled.model_validate(order_cancelled_example(**{field: value}))
    assert error_fields(exc) == {field}


@pytest.mark.parametrize(
    "field", ["event_id", "event_type", "schema_version", "occurred_at", "order_id", "shipments"]
)
def test_order_cancelled_requires_field(field: str) -> None:
    payload = order_cancelled_example()
    del payload[field]
    with pytest.raises(ValidationError) as exc:
        OrderCancelled.model_validate(payload)
    assert error_fields(exc) == {field}


def test_order_cancelled_accepts_the_limits_themselves() -> None:
    # The other side of the rejections above: the limits are inclusive.
    event = OrderCancelled.model_validate(
        order_cancelled_example(order_id="O" * 128, reason="r" * 1000, shipments=shipments(50))
    )
    assert len(event.shipments) == 50


# --- result ids -------------------------------------------------------------------------------


def test_result_event_id_is_the_same_for_a_redelivered_input() -> None:
    first = result_event_id(SOURCE_ID, "shipstation", "se-28529731")
    again = result_event_id(uuid.UUID(str(SOURCE_ID)), "shipstation", "se-28529731")
    assert first == again
    assert first.version == 5


def test_result_event_id_is_stable_across_releases() -> None:
    # A redelivery may straddle a deploy: changing the derivation breaks downstream dedupe.
    expected = uuid.UUID("7637ebd2-c50c-5e5d-9033-3e408156da43")
    assert result_event_id(SOURCE_ID, "shipstation", "se-28529731") == expected


def test_result_event_id_differs_by_source_provider_and_shipment() -> None:
    other_source = uuid.UUID("6a3c1f7e-0d4b-4c2a-8e9f-1b2c3d4e5f60")
    ids = {
        result_event_id(SOURCE_ID, "shipstation", "se-1"),
        result_event_id(SOURCE_ID, "shipstation-eu", "se-1"),
        result_event_id(SOURCE_ID, "shipstation", "se-2"),
        result_event_id(other_source, "shipstation", "se-1"),
    }
    assert len(ids) == 4


def test_result_event_id_does_not_confuse_field_boundaries() -> None:
    assert result_event_id(SOURCE_ID, "a", "b|c") != result_event_id(SOURCE_ID, "a|b", "c")


# --- result events ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(cancelled(), id="shipment.cancelled"),
        pytest.param(
            cancelled(outcome="already_cancelled", provider_status="CANCELED"), id="already"
        ),
        pytest.param(failed(), id="shipment.cancel_failed"),
        pytest.param(
            failed(
                source_event_id=None,
                provider=None,
                provider_kind=None,
                shipment_id=None,
                attempts=0,
                error=ErrorDetail(
                    category=ErrorCategory.INVALID_EVENT, retryable=False, message="bad"
                ),
            ),
            id="cancel_failed of an invalid event",
        ),
    ],
)
def test_dump_event_round_trips(event: ShipmentCancelled | CancelFailed) -> None:
    raw = dump_event(event)
    assert type(event).model_validate_json(raw) == event
    assert dump_event(type(event).model_validate_json(raw)) == raw


def test_dump_event_writes_every_field_in_wire_form() -> None:
    wire = orjson.loads(dump_event(failed()))

    assert wire["event_type"] == "shipment.cancel_failed"
    assert wire["schema_version"] == 1
    assert wire["event_id"] == str(result_event_id(SOURCE_ID, "shipstation", "se-1"))
    assert wire["occurred_at"] == "2026-11-21T10:00:02Z"
    assert wire["error"]["category"] == "conflict"
    assert wire["error"]["provider_errors"] == [
        {"error_code": "invalid_status", "field_name": "shipment_id"}
    ]
    assert set(wire) == set(CancelFailed.model_fields)


def test_dump_event_is_compact_utf8_json_keeping_provider_details_as_they_came() -> None:
    details = [{"détail": "étiquette active — 标签", "n": 1.5, "big": 2**70, "x": [None, True]}]
    event = failed(
        error=ErrorDetail(
            category=ErrorCategory.CONFLICT,
            retryable=False,
            message="refusé",
            provider_errors=details,
        )
    )

    raw = dump_event(event)

    assert "refusé".encode() in raw  # UTF-8 as is, not \u escapes
    assert b", " not in raw
    assert b'": ' not in raw
    assert json.loads(raw)["error"]["provider_errors"] == details


def test_shipment_cancelled_wire_form_writes_every_field_its_nulls_too() -> None:
    wire = orjson.loads(dump_event(cancelled()))
    assert wire["event_type"] == "shipment.cancelled"
    assert wire["outcome"] == "cancelled"
    assert wire["provider_status"] is None
    assert wire["provider_request_id"] is None
    assert set(wire) == set(ShipmentCancelled.model_fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("span_id", SPAN_ID.upper(), id="span_id uppercase"),
        pytest.param("span_id", SPAN_ID[:-1], id="span_id 15 hex"),
        pytest.param("span_id", SPAN_ID + "0", id="span_id 17 hex"),
        pytest.param("trace_id", TRACE_ID.upper(), id="trace_id uppercase"),
        pytest.param("trace_id", TRACE_ID[:-1], id="trace_id 31 hex"),
        pytest.param("trace_id", "z" * 32, id="trace_id not hex"),
    ],
)
def test_cancel_failed_requires_w3c_trace_and_span_ids(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as exc:
        failed(**{field: value})
    assert error_fields(exc) == {field}


def test_cancel_failed_requires_a_span_id() -> None:
    fields = failed().model_dump()
    del fields["span_id"]
    with pytest.raises(ValidationError) as exc:
        CancelFailed.model_validate(fields)
    assert error_fields(exc) == {"span_id"}


def test_result_events_refuse_unknown_fields() -> None:
    # Producers own these models: a typo must fail here, not reach downstream.
    with pytest.raises(ValidationError) as exc:
        cancelled(outcom="cancelled")
    assert error_fields(exc) == {"outcom"}


def test_shipment_cancelled_refuses_an_unknown_outcome() -> None:
    with pytest.raises(ValidationError) as exc:
        cancelled(outcome="voided")
    assert error_fields(exc) == {"outcome"}


def test_error_detail_refuses_an_unknown_category() -> None:
    with pytest.raises(ValidationError):
        ErrorDetail.model_validate({"category": "teapot", "retryable": False, "message": "x"})
