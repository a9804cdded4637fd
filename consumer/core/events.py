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

    provider: str = Field(min_length=1, max_length=64, description="A provider account name.")
    shipment_id: str = Field(min_length=1, max_length=256)
    lookup: Lookup | None = Field(
        default=None, description="How MVMNT should find the shipment: by id or client key."
    )


class OrderCancelled(BaseModel):
    """Input, topic ``orders.cancelled``: an ERP cancelled an order."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="order.cancelled v1")

    event_id: uuid.UUID
    event_type: Literal["order.cancelled"]
    schema_version: Literal[1]
    occurred_at: datetime
    order_id: str = Field(min_length=1, max_length=128)
    reason: str | None = Field(default=None, max_length=1000)
    shipments: list[ShipmentRef] = Field(min_length=1, max_length=50)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_is_not_a_bool(cls, value: object) -> object:
        # True == 1 in Python, so JSON `true` would pass as version 1; the schema says no.
        if isinstance(value, bool):
            raise ValueError("schema_version must be the integer 1")
        return value


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID
    schema_version: Literal[1] = 1
    occurred_at: datetime
    source_event_id: uuid.UUID | None
    order_id: str
    provider: str | None
    provider_kind: str | None
    shipment_id: str | None
    attempts: int = Field(ge=0)
    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")


class ShipmentCancelled(_Result):
    """Output, topic ``shipments.cancelled``: the shipment is now cancelled."""

    model_config = ConfigDict(title="shipment.cancelled v1")

    event_type: Literal["shipment.cancelled"] = "shipment.cancelled"
    provider: str
    provider_kind: str
    shipment_id: str
    outcome: Literal["cancelled", "already_cancelled"]
    provider_status: str | None = None
    provider_request_id: str | None = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    category: ErrorCategory
    retryable: bool
    message: str
    http_status: int | None = None
    provider_code: str | None = None
    provider_request_id: str | None = None
    provider_errors: list[dict[str, Any]] = Field(default_factory=list)


class CancelFailed(_Result):
    """Output, topic ``shipments.cancel-failed``: the shipment could not be cancelled.

    ``provider``, ``provider_kind`` and ``shipment_id`` are null only for an invalid input
    event that still names an order; ``source_event_id`` is null when its id is unreadable.
    """

    model_config = ConfigDict(title="shipment.cancel_failed v1")

    event_type: Literal["shipment.cancel_failed"] = "shipment.cancel_failed"
    span_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    error: ErrorDetail


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
