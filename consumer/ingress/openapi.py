"""The OpenAPI 3.1 document of the ingress, generated from the code it describes.

``consumer.tools.schemas`` writes it to ``schemas/ingress-openapi.yaml`` with the other generated
files (``make schemas``; a test fails when it drifts). The request body is the generated
``order.cancelled.v1.json``; response bodies come from ``consumer.ingress.responses``.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic.json_schema import models_json_schema

from consumer.core import headers as h
from consumer.core.examples import ORDER_CANCELLED_EXAMPLE
from consumer.ingress.responses import Accepted, Error, InvalidEvent
from consumer.ingress.server import RETRY_AFTER_SECONDS, ROUTE
from consumer.ingress.signature import (
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    TOLERANCE_SECONDS,
    SignatureFailure,
)

INGRESS_OPENAPI_FILE: Final = "ingress-openapi.yaml"

_SCHEMA_REF: Final = "#/components/schemas/{model}"
# Comma-separated key=value items in any order, spaces around them allowed, with one t= and
# at least one v1= (the lookaheads); the server's parser is the authority on the rest.
SIGNATURE_PATTERN: Final = (
    r"^(?=(.*,)?\s*t=[0-9]{1,12}\s*(,|$))"
    r"(?=(.*,)?\s*v1=[0-9A-Fa-f]{64}\s*(,|$))"
    r"\s*[A-Za-z0-9]+=[^,]*(,\s*[A-Za-z0-9]+=[^,]*)*$"
)
_SIGNATURE_EXAMPLE: Final = (
    "t=1795255200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
)
# The request body example of the OpenAPI document.
EXAMPLE_EVENT: Final = ORDER_CANCELLED_EXAMPLE

_DESCRIPTION: Final = (
    "For senders that cannot publish to Kafka: a signed HTTP request becomes the same "
    "order.cancelled v1 record on the input topic (key order_id), with nothing lost and "
    "nothing accepted twice per instance. 202 is answered only after the broker "
    "acknowledged the record with acks=all."
)

_SIGNING: Final = (
    f"{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>' under the "
    f"source's secret>. Several v1 entries are allowed while a secret is rotated; one match "
    f"is enough. The timestamp must be within {TOLERANCE_SECONDS} s of the server's clock. "
    f"{SOURCE_HEADER} names the source (its secret is configured in [ingress.sources.NAME])."
)

_IDEMPOTENCY: Final = (
    "Events are identified by source and event_id. A repeated event is answered 202 again "
    "without a second publish while this instance remembers it (ingress.idempotency_window "
    "entries, least recently seen forgotten first; remembered once the broker acknowledged "
    "it, even after a 503, and a repeat arriving while its record is unanswered waits for "
    "that record). The same event_id from the same source with different content is "
    "refused with 409; from another source it is another event. Another instance does not "
    "know an event and publishes it again; the processor's result ids are deterministic per "
    "event_id, so that is harmless."
)


def ingress_openapi_document() -> dict[str, Any]:
    schemas = _component_schemas()
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Shipment cancel processor: webhook ingress",
            "version": "1.0.0",
            "description": _DESCRIPTION,
        },
        "servers": [
            {
                "url": "http://{host}:{port}",
                "description": "cancel-processor ingress ([ingress] host and port).",
                "variables": {
                    "host": {"default": "localhost"},
                    "port": {"default": "8080"},
                },
            }
        ],
        "paths": {
            ROUTE: {"post": _post_order_cancelled()},
            "/healthz": {"get": _healthz()},
            "/readyz": {"get": _readyz()},
            "/metrics": {"get": _metrics()},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "cancelSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SIGNATURE_HEADER,
                    "description": _SIGNING,
                },
                "cancelSource": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SOURCE_HEADER,
                    "description": "The sender's name, as configured in [ingress.sources.NAME].",
                },
            },
        },
    }


def _component_schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [
            (Accepted, "serialization"),
            (Error, "serialization"),
            (InvalidEvent, "serialization"),
        ],
        ref_template=_SCHEMA_REF,
    )
    schemas: dict[str, Any] = top["$defs"]
    return dict(sorted(schemas.items()))


def _header_param(
    name: str, description: str, *, required: bool, example: str | None = None, **schema: Any
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }
    if example is not None:
        param["example"] = example
    return param


def _json(model: str, example: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": _SCHEMA_REF.format(model=model)}}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _error_response(description: str, error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json("Error", {"error": error, "message": message}),
        **extra,
    }


def _post_order_cancelled() -> dict[str, Any]:
    return {
        "operationId": "postOrderCancelled",
        "summary": "Publish an order.cancelled v1 event",
        "description": f"{_SIGNING} {_IDEMPOTENCY}",
        "security": [{"cancelSignature": [], "cancelSource": []}],
        "parameters": [
            _header_param(
                SOURCE_HEADER,
                "The source name configured in [ingress.sources.NAME].",
                required=True,
                pattern="^[A-Za-z0-9_.-]{1,64}$",
            ),
            _header_param(
                SIGNATURE_HEADER,
                _SIGNING,
                required=True,
                pattern=SIGNATURE_PATTERN,
                example=_SIGNATURE_EXAMPLE,
            ),
            _header_param(
                h.TRACEPARENT,
                "W3C trace context: the ingress span, and the published record, continue "
                "this trace. Ignored when malformed.",
                required=False,
                pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            ),
            _header_param(h.TRACESTATE, "W3C trace state.", required=False),
        ],
        "requestBody": {
            "required": True,
            "description": "The order.cancelled v1 event, UTF-8 JSON, uncompressed, at most "
            "ingress.max_body_bytes (default 262144). These exact bytes are published.",
            "content": {
                "application/json": {
                    "schema": {"$ref": "./order.cancelled.v1.json"},
                    "example": EXAMPLE_EVENT,
                }
            },
        },
        "responses": {
            "202": {
                "description": "Accepted: the record is on the topic (acks=all), or this "
                "event_id was accepted before.",
                "content": _json("Accepted", {"event_id": EXAMPLE_EVENT["event_id"]}),
            },
            "409": _error_response(
                "This event_id was already accepted from this source with different content "
                "(compared as parsed, so formatting and unknown fields do not count). "
                "Nothing was published; give a different event its own event_id.",
                "event_id_conflict",
                "this event_id was already accepted from this source with a different event; "
                "give a different event its own event_id",
            ),
            "401": _error_response(
                "Not authenticated: source missing or unknown, signature missing, malformed, "
                "expired (or in the future), or not matching. Nothing was published.",
                SignatureFailure.INVALID_SIGNATURE.value,
                "no v1 signature matches the body and timestamp for this source",
                headers={
                    "WWW-Authenticate": {
                        "description": f"Names the {SIGNATURE_HEADER} scheme.",
                        "schema": {"type": "string"},
                    }
                },
            ),
            "413": _error_response(
                "The body (declared or actually sent) is over ingress.max_body_bytes "
                "(payload_too_large), or the broker refused the record as over its size "
                "limit (record_too_large). Nothing was published; retrying will not help.",
                "payload_too_large",
                "the body is over 262144 bytes",
            ),
            "415": _error_response(
                "Content-Type is not application/json (UTF-8), or the body is compressed.",
                "unsupported_media_type",
                "Content-Type must be application/json (UTF-8)",
            ),
            "422": {
                "description": "The body is not a valid order.cancelled v1 event (not UTF-8, "
                "not JSON, or a field error). Nothing was published.",
                "content": _json(
                    "InvalidEvent",
                    {
                        "error": "invalid_event",
                        "message": "the body is not a valid order.cancelled v1 event",
                        "errors": [
                            {
                                "loc": ["shipments"],
                                "msg": "List should have at least 1 item after validation, not 0",
                                "type": "too_short",
                            }
                        ],
                    },
                ),
            },
            "500": _error_response(
                "internal_error: an unexpected error; the event may or may not be published, "
                "retry. record_rejected: the broker refused this record for good (e.g. the "
                "ingress may not write to the topic); nothing was published and retrying "
                "will not help until the operator fixes it.",
                "internal_error",
                "internal error; retry later",
            ),
            "503": _error_response(
                "The broker did not acknowledge in time (or is unreachable). Retrying the "
                "same request is safe.",
                "broker_unavailable",
                "the event could not be stored: the broker did not acknowledge within 10 s; "
                "retry later",
                headers={
                    "Retry-After": {
                        "description": "Seconds to wait before retrying.",
                        "schema": {"type": "integer", "const": RETRY_AFTER_SECONDS},
                    }
                },
            ),
        },
    }


def _status_body(*fields: str) -> dict[str, Any]:
    return {
        "application/json": {
            "schema": {
                "type": "object",
                "required": list(fields),
                "properties": {name: {"type": "string"} for name in fields},
            }
        }
    }


def _healthz() -> dict[str, Any]:
    return {
        "operationId": "getHealthz",
        "summary": "Liveness: 200 while the process runs",
        "responses": {"200": {"description": "Alive.", "content": _status_body("status")}},
    }


def _readyz() -> dict[str, Any]:
    return {
        "operationId": "getReadyz",
        "summary": "Readiness: the producer is connected and the broker answers",
        "responses": {
            "200": {"description": "Ready.", "content": _status_body("status")},
            "503": {
                "description": "Not ready (connecting, broker unreachable, shutting down).",
                "content": _status_body("status", "reason"),
            },
        },
    }


def _metrics() -> dict[str, Any]:
    return {
        "operationId": "getMetrics",
        "summary": "Prometheus metrics (text format 0.0.4)",
        "responses": {
            "200": {
                "description": "cancel_ingress_requests_total{source,status}, "
                "http_server_request_duration_seconds and the process metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
