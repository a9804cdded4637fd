import uuid
from datetime import UTC, datetime

import orjson
import pytest

from consumer.core.errors import ConflictError
from consumer.core.events import OrderCancelled, result_event_id
from consumer.core.examples import order_cancelled_example
from consumer.core.pipeline import (
    InvalidRecord,
    TraceRef,
    cancel_request,
    failed_result,
    invalid_record_result,
    parse_order_cancelled,
    shipment_result_id,
)

EVENT = order_cancelled_example()
TRACE = TraceRef("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def test_a_valid_event_parses() -> None:
    parsed = parse_order_cancelled(orjson.dumps(EVENT), max_bytes=10_000)
    assert isinstance(parsed, OrderCancelled)
    assert parsed.shipments[1].lookup == "key"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "null"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b"x" * 2_000, "over the 1000 limit"),
        (orjson.dumps({**EVENT, "schema_version": 2}), "schema_version"),
        (orjson.dumps({**EVENT, "shipments": []}), "shipments"),
    ],
)
def test_unreadable_records_are_invalid_with_a_reason(value: bytes | None, fragment: str) -> None:
    parsed = parse_order_cancelled(value, max_bytes=1_000)
    assert isinstance(parsed, InvalidRecord)
    assert fragment in parsed.message


def test_an_invalid_event_that_names_its_order_keeps_the_order_and_event_id() -> None:
    parsed = parse_order_cancelled(orjson.dumps({**EVENT, "shipments": []}), max_bytes=10_000)
    assert isinstance(parsed, InvalidRecord)
    assert parsed.order_id == "SO-1001"
    assert parsed.source_event_id == uuid.UUID(EVENT["event_id"])
    failed = invalid_record_result(
        parsed, topic="orders.cancelled", partition=2, offset=41, trace=TRACE, now=NOW
    )
    assert failed is not None
    assert failed.error.category == "invalid_event"
    assert failed.shipment_id is None
    again = invalid_record_result(
        parsed, topic="orders.cancelled", partition=2, offset=41, trace=TRACE, now=NOW
    )
    assert again is not None
    assert again.event_id == failed.event_id, "redelivery yields the same result id"


def test_validation_messages_never_echo_input_values() -> None:
    secret = "sk_live_do_not_log_me"
    parsed = parse_order_cancelled(orjson.dumps({**EVENT, "occurred_at": secret}), max_bytes=10_000)
    assert isinstance(parsed, InvalidRecord)
    assert secret not in parsed.message


def test_an_invalid_record_without_an_order_gets_no_cancel_failed() -> None:
    assert (
        invalid_record_result(
            InvalidRecord("bad"), topic="t", partition=0, offset=1, trace=TRACE, now=NOW
        )
        is None
    )


def test_cancel_requests_carry_an_idempotency_key_equal_to_the_result_id() -> None:
    event = OrderCancelled.model_validate(EVENT)
    result_id = shipment_result_id(event, event.shipments[1])
    request = cancel_request(event, event.shipments[1], result_id)
    expected = result_event_id(event.event_id, "mvmnt", "SHP-12345")
    assert result_id == expected
    assert request.idempotency_key == str(expected)
    assert request.lookup == "key"
    assert request.reason == "Customer changed their mind"


def test_failed_results_keep_the_provider_details() -> None:
    event = OrderCancelled.model_validate(EVENT)
    error = ConflictError(
        "label not voided",
        http_status=400,
        provider_code="invalid_status",
        provider_request_id="req-1",
        provider_errors=[{"error_code": "invalid_status", "extra": 1}],
    )
    failed = failed_result(
        event,
        event.shipments[0],
        result_id=shipment_result_id(event, event.shipments[0]),
        provider_kind="shipstation",
        error=error,
        attempts=1,
        trace=TRACE,
        now=NOW,
    )
    assert failed.error.model_dump() == {
        "category": "conflict",
        "retryable": False,
        "message": "label not voided",
        "http_status": 400,
        "provider_code": "invalid_status",
        "provider_request_id": "req-1",
        "provider_errors": [{"error_code": "invalid_status", "extra": 1}],
    }
    assert failed.span_id == TRACE.span_id


def test_huge_provider_error_details_are_cut_to_fit_a_kafka_record() -> None:
    event = OrderCancelled.model_validate(EVENT)
    errors = [{"message": "x" * 1000, "n": i} for i in range(100)]
    error = ConflictError("refused", provider_errors=errors)
    failed = failed_result(
        event,
        event.shipments[0],
        result_id=shipment_result_id(event, event.shipments[0]),
        provider_kind="shipstation",
        error=error,
        attempts=1,
        trace=TRACE,
        now=NOW,
    )
    kept = failed.error.provider_errors
    assert kept[:3] == errors[:3], "the first errors are kept as the provider sent them"
    assert kept[-1] == {"truncated": True, "omitted": 100 - (len(kept) - 1)}
    assert len(orjson.dumps(kept)) < 20_000
