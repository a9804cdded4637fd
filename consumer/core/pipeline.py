"""Pure mapping: record bytes -> event, event -> cancel requests, outcomes -> result events.

No awaits, no clients, no Kafka: everything here is tested without a broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from consumer.core.errors import CancelError, ErrorCategory
from consumer.core.events import (
    CancelFailed,
    ErrorDetail,
    OrderCancelled,
    ShipmentCancelled,
    ShipmentRef,
    invalid_record_event_id,
    result_event_id,
)
from consumer.providers.base import CancelOutcome, CancelRequest

# Long enough to say what is wrong, short enough for a header and a log line.
_MAX_ERROR_MESSAGE = 500
# Provider error details kept per result; a result record must always fit the broker.
_MAX_PROVIDER_ERRORS_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """Why an input record cannot be processed; it goes to the DLQ with this message."""

    message: str
    # The order the record names, when it names one: it also gets a cancel-failed.
    order_id: str | None = None
    source_event_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class TraceRef:
    trace_id: str
    span_id: str


def parse_order_cancelled(value: bytes | None, max_bytes: int) -> OrderCancelled | InvalidRecord:
    if value is None:
        return InvalidRecord("record value is null (tombstone)")
    if len(value) > max_bytes:
        return InvalidRecord(f"record value is {len(value)} bytes, over the {max_bytes} limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidRecord(f"record value is not UTF-8 (byte {exc.start})")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return InvalidRecord(f"record value is not JSON: {exc.msg} at char {exc.pos}")
    if not isinstance(data, dict):
        return InvalidRecord(f"record value is JSON {type(data).__name__}, not an object")
    try:
        return OrderCancelled.model_validate(data)
    except ValidationError as exc:
        return InvalidRecord(
            _describe_validation(exc),
            order_id=_named_order(data),
            source_event_id=_named_event_id(data),
        )


def _describe_validation(exc: ValidationError) -> str:
    # Never the input values: an invalid event may carry anything, secrets included.
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{loc}: {error['msg']}")
    return truncate("invalid order.cancelled event: " + "; ".join(parts))


def _named_order(data: dict[str, object]) -> str | None:
    order_id = data.get("order_id")
    if isinstance(order_id, str) and 0 < len(order_id) <= 128:
        return order_id
    return None


def _named_event_id(data: dict[str, object]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(data.get("event_id")))
    except ValueError:
        return None


def truncate(message: str, limit: int = _MAX_ERROR_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def shipment_result_id(event: OrderCancelled, shipment: ShipmentRef) -> uuid.UUID:
    """The id of the shipment's result event; also its calls' ``Idempotency-Key``.

    Computed once per shipment and handed to both: a cache of ids would keep thousands of
    objects alive for every garbage collection to traverse (docs/performance.md).
    """
    return result_event_id(event.event_id, shipment.provider, shipment.shipment_id)


def cancel_request(
    event: OrderCancelled, shipment: ShipmentRef, result_id: uuid.UUID
) -> CancelRequest:
    return CancelRequest(
        shipment_id=shipment.shipment_id,
        idempotency_key=str(result_id),
        reason=event.reason,
        lookup=shipment.lookup,
    )


def cancelled_result(
    event: OrderCancelled,
    shipment: ShipmentRef,
    *,
    result_id: uuid.UUID,
    provider_kind: str,
    outcome: CancelOutcome,
    attempts: int,
    trace: TraceRef,
    now: datetime,
) -> ShipmentCancelled:
    return ShipmentCancelled(
        event_id=result_id,
        occurred_at=now,
        source_event_id=event.event_id,
        order_id=event.order_id,
        provider=shipment.provider,
        provider_kind=provider_kind,
        shipment_id=shipment.shipment_id,
        outcome=outcome.outcome,
        provider_status=outcome.provider_status,
        provider_request_id=outcome.provider_request_id,
        attempts=attempts,
        trace_id=trace.trace_id,
    )


def failed_result(
    event: OrderCancelled,
    shipment: ShipmentRef,
    *,
    result_id: uuid.UUID,
    provider_kind: str | None,
    error: CancelError,
    attempts: int,
    trace: TraceRef,
    now: datetime,
) -> CancelFailed:
    return CancelFailed(
        event_id=result_id,
        occurred_at=now,
        source_event_id=event.event_id,
        order_id=event.order_id,
        provider=shipment.provider,
        provider_kind=provider_kind,
        shipment_id=shipment.shipment_id,
        attempts=attempts,
        trace_id=trace.trace_id,
        span_id=trace.span_id,
        error=error_detail(error),
    )


def error_detail(error: CancelError) -> ErrorDetail:
    return ErrorDetail(
        category=error.category,
        retryable=error.retryable,
        message=truncate(error.message),
        http_status=error.http_status,
        provider_code=error.provider_code,
        provider_request_id=error.provider_request_id,
        provider_errors=bounded_provider_errors(error.provider_errors),
    )


def bounded_provider_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The provider's errors as given, as many as fit the size budget, then a marker."""
    kept: list[dict[str, Any]] = []
    used = 0
    for index, entry in enumerate(errors):
        used += len(orjson.dumps(entry, default=str))
        if used > _MAX_PROVIDER_ERRORS_BYTES:
            kept.append({"truncated": True, "omitted": len(errors) - index})
            break
        kept.append(entry)
    return kept


def invalid_record_result(
    invalid: InvalidRecord,
    *,
    topic: str,
    partition: int,
    offset: int,
    trace: TraceRef,
    now: datetime,
) -> CancelFailed | None:
    """The cancel-failed an invalid record gets when it still names an order."""
    if invalid.order_id is None:
        return None
    return CancelFailed(
        event_id=invalid_record_event_id(topic, partition, offset),
        occurred_at=now,
        source_event_id=invalid.source_event_id,
        order_id=invalid.order_id,
        provider=None,
        provider_kind=None,
        shipment_id=None,
        attempts=0,
        trace_id=trace.trace_id,
        span_id=trace.span_id,
        error=ErrorDetail(
            category=ErrorCategory.INVALID_EVENT, retryable=False, message=invalid.message
        ),
    )
