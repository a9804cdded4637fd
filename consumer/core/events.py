"""Wire models of the three event types (v1). These models are the contract's source of truth;
``schemas/`` is generated from them (``python -m consumer.tools.schemas``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from consumer.core.errors import ErrorCategory

Lookup = Literal["id", "key"]

# Namespace of the deterministic result ids (uuid5; the name is built in result_event_id).
RESULT_ID_NAMESPACE = uuid.UUID("5b0c3b8e-2f57-4d0e-9a38-4f1d3c3f7a10")


class ShipmentRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    provider: str = Field(
        min_length=1,
        max_length=64,
        description="The provider account, by its name under [providers] in the config.",
    )
    shipment_id: str = Field(
        min_length=1, max_length=256, description="The shipment's id at that provider."
    )
    lookup: Lookup | None = Field(
        default=None, description="How MVMNT should find the shipment: by id or client key."
    )


class OrderCancelled(BaseModel):
    """Input, topic ``orders.cancelled``: an ERP cancelled an order."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="order.cancelled v1")

    event_id: uuid.UUID = Field(
        description="Unique per event; the result ids are derived from it, so a redelivered "
        "event yields the same results."
    )
    event_type: Literal["order.cancelled"] = Field(description="Always order.cancelled.")
    schema_version: Literal[1] = Field(
        description="Always the integer 1; any other version is an invalid event."
    )
    occurred_at: datetime = Field(description="When the ERP cancelled the order (RFC 3339).")
    order_id: str = Field(
        min_length=1, max_length=128, description="The order; also the record key."
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Why the order was cancelled, for people."
    )
    shipments: list[ShipmentRef] = Field(
        min_length=1, max_length=50, description="The shipments to cancel, each at its provider."
    )

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_is_not_a_bool(cls, value: object) -> object:
        # True == 1 in Python, so JSON `true` would pass as version 1; the schema says no.
        if isinstance(value, bool):
            raise ValueError("schema_version must be the integer 1")
        return value


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(
        description="uuid5 of the source event id, provider account and shipment id: the "
        "same on every redelivery, so downstream can dedupe."
    )
    schema_version: Literal[1] = Field(default=1, description="Always the integer 1.")
    occurred_at: datetime = Field(description="When the processor settled the shipment.")
    source_event_id: uuid.UUID | None = Field(
        description="The event_id of the order.cancelled event this result answers."
    )
    order_id: str = Field(description="The order; also the record key.")
    provider: str | None = Field(description="The provider account named by the input event.")
    provider_kind: str | None = Field(
        description="Which provider API that account is: shipstation or mvmnt."
    )
    shipment_id: str | None = Field(description="The shipment's id at its provider.")
    attempts: int = Field(ge=0, description="Provider calls made for this shipment, in all.")
    trace_id: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description="The OpenTelemetry trace of the input event: search the trace backend by it.",
    )


class ShipmentCancelled(_Result):
    """Output, topic ``shipments.cancelled``: the shipment is now cancelled."""

    model_config = ConfigDict(title="shipment.cancelled v1")

    event_type: Literal["shipment.cancelled"] = Field(
        default="shipment.cancelled", description="Always shipment.cancelled."
    )
    provider: str = Field(description="The provider account named by the input event.")
    provider_kind: str = Field(description="Which provider API that account is.")
    shipment_id: str = Field(description="The shipment's id at its provider.")
    outcome: Literal["cancelled", "already_cancelled"] = Field(
        description="cancelled by this call, or already cancelled before it."
    )
    provider_status: str | None = Field(
        default=None, description="The shipment's status as the provider reported it."
    )
    provider_request_id: str | None = Field(
        default=None, description="The provider's id of the request, for its support."
    )


class ErrorDetail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    category: ErrorCategory = Field(description="What kind of failure; retryable follows from it.")
    retryable: bool = Field(
        description="True when redriving later may succeed (rate_limited, unavailable, "
        "timeout, network)."
    )
    message: str = Field(description="For people; never holds a credential.")
    http_status: int | None = Field(
        default=None, description="The provider's HTTP status, when it answered."
    )
    provider_code: str | None = Field(
        default=None, description="The provider's own error code, when it gave one."
    )
    provider_request_id: str | None = Field(
        default=None, description="The provider's id of the request, for its support."
    )
    provider_errors: list[dict[str, Any]] = Field(
        default_factory=list, description="The provider's error objects, as it sent them."
    )


class CancelFailed(_Result):
    """Output, topic ``shipments.cancel-failed``: the shipment could not be cancelled.

    ``provider``, ``provider_kind`` and ``shipment_id`` are null only for an invalid input
    event that still names an order; ``source_event_id`` is null when its id is unreadable.
    """

    model_config = ConfigDict(title="shipment.cancel_failed v1")

    event_type: Literal["shipment.cancel_failed"] = Field(
        default="shipment.cancel_failed", description="Always shipment.cancel_failed."
    )
    span_id: str = Field(
        pattern=r"^[0-9a-f]{16}$", description="The span that settled the shipment."
    )
    error: ErrorDetail = Field(description="Why it failed.")


ResultEvent = ShipmentCancelled | CancelFailed


def result_event_id(source_event_id: uuid.UUID, provider: str, shipment_id: str) -> uuid.UUID:
    """Deterministic: a redelivered input yields the same result id (downstream dedupes)."""
    # A JSON array, not a joined string: provider "a" + shipment "b|c" must not collide with
    # provider "a|b" + shipment "c" (event fields may hold any character).
    name = orjson.dumps([str(source_event_id), provider, shipment_id]).decode()
    return uuid.uuid5(RESULT_ID_NAMESPACE, name)


def invalid_record_event_id(topic: str, partition: int, offset: int) -> uuid.UUID:
    """Deterministic id for the cancel-failed of an unreadable input record."""
    return uuid.uuid5(RESULT_ID_NAMESPACE, f"invalid|{topic}|{partition}|{offset}")


def utc_now() -> datetime:
    return datetime.now(UTC)


def dump_event(event: BaseModel) -> bytes:
    """The event as compact UTF-8 JSON, straight from pydantic's serializer: the same bytes
    as ``model_dump_json``, without building a dict of it first or decoding to ``str``."""
    return event.__pydantic_serializer__.to_json(event)
