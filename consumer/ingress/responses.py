"""Response bodies of the ingress. The app writes them; the OpenAPI document is generated
from these models, so the two cannot drift."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from consumer.ingress.signature import SignatureFailure


class ErrorCode(StrEnum):
    """``error`` of a non-2xx body, besides the 401 reasons of ``SignatureFailure``."""

    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_EVENT = "invalid_event"
    EVENT_ID_CONFLICT = "event_id_conflict"
    RECORD_TOO_LARGE = "record_too_large"
    RECORD_REJECTED = "record_rejected"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INTERNAL_ERROR = "internal_error"


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Accepted(_Body):
    """202: the event is on the topic (acknowledged by all in-sync replicas)."""

    model_config = ConfigDict(title="Accepted")

    event_id: uuid.UUID = Field(description="The event_id of the accepted event.")


class Error(_Body):
    """4xx/5xx: what was wrong, in one sentence. Never echoes the request's values."""

    model_config = ConfigDict(title="Error")

    error: ErrorCode | SignatureFailure = Field(description="A stable, machine-readable code.")
    message: str = Field(description="For people; wording may change.")


class FieldError(_Body):
    model_config = ConfigDict(title="FieldError")

    loc: list[str | int] = Field(
        description="Path to the offending field ([] for the body as a whole)."
    )
    msg: str
    type: str = Field(description="pydantic error type, e.g. missing, uuid_parsing, too_long.")


class InvalidEvent(_Body):
    """422: the body is not a valid order.cancelled v1 event."""

    model_config = ConfigDict(title="InvalidEvent")

    error: Literal["invalid_event"]
    message: str
    errors: list[FieldError] = Field(min_length=1)
