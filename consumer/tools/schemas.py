"""Generate ``schemas/`` from the wire models: JSON Schema per event plus an AsyncAPI 3 document.

``python -m consumer.tools.schemas [--out DIR]`` (``make schemas``) writes the files; a unit test
fails when the files on disk differ from ``render_schemas()``. The models in
``consumer.core.events`` stay the source of truth: never edit ``schemas/`` by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeGuard

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema

from consumer.core import headers
from consumer.core.events import CancelFailed, OrderCancelled, ShipmentCancelled
from consumer.core.parking import ParkedShipment
from consumer.ingress.openapi import INGRESS_OPENAPI_FILE, ingress_openapi_document

# Stable identifiers: consumers may cache or reference the schemas by these URLs.
SCHEMA_BASE_URL: Final = "https://schemas.example.com/shipment-cancel-processor/"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

ORDER_CANCELLED_FILE: Final = "order.cancelled.v1.json"
SHIPMENT_CANCELLED_FILE: Final = "shipment.cancelled.v1.json"
CANCEL_FAILED_FILE: Final = "shipment.cancel_failed.v1.json"
CANCEL_RETRY_FILE: Final = "shipment.cancel_retry.v1.json"
ASYNCAPI_FILE: Final = "asyncapi.yaml"

# Input is described as what we accept; results as what we write.
_EVENT_SCHEMAS: Final[tuple[tuple[str, type[BaseModel], JsonSchemaMode], ...]] = (
    (ORDER_CANCELLED_FILE, OrderCancelled, "validation"),
    (SHIPMENT_CANCELLED_FILE, ShipmentCancelled, "serialization"),
    (CANCEL_FAILED_FILE, CancelFailed, "serialization"),
    (CANCEL_RETRY_FILE, ParkedShipment, "serialization"),
)

_KAFKA_BINDING_VERSION: Final = "0.5.0"
_DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"

Yaml: TypeAlias = Mapping[str, "Yaml"] | Sequence["Yaml"] | str | int | bool | None


class _EveryFieldWritten(GenerateJsonSchema):
    """``dump_event`` writes every field, defaults included, so a reader may rely on each key."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def event_json_schema(
    model: type[BaseModel], file_name: str, mode: JsonSchemaMode
) -> dict[str, Any]:
    body = model.model_json_schema(mode=mode, schema_generator=_EveryFieldWritten)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": SCHEMA_BASE_URL + file_name, **body}


def render_schemas() -> dict[str, str]:
    """File name -> exact file text of everything in ``schemas/``."""
    files = {
        name: json.dumps(event_json_schema(model, name, mode), indent=2, ensure_ascii=False) + "\n"
        for name, model, mode in _EVENT_SCHEMAS
    }
    files[ASYNCAPI_FILE] = to_yaml(asyncapi_document())
    files[INGRESS_OPENAPI_FILE] = to_yaml(ingress_openapi_document())
    return files


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --- AsyncAPI ---------------------------------------------------------------------------------


def _kafka(**fields: Yaml) -> dict[str, Yaml]:
    return {"kafka": {**fields, "bindingVersion": _KAFKA_BINDING_VERSION}}


def _trace_headers() -> dict[str, Yaml]:
    return {
        headers.TRACEPARENT: {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context of the span that produced this record.",
        },
        headers.TRACESTATE: {"type": "string", "description": "W3C trace state, when present."},
    }


def _result_headers(event_type: str, *, source_always_known: bool) -> dict[str, Yaml]:
    required: list[Yaml] = [headers.TRACEPARENT, headers.CONTENT_TYPE, headers.EVENT_TYPE]
    if source_always_known:
        required.append(headers.SOURCE_EVENT_ID)
    return {
        "type": "object",
        "required": required,
        "properties": {
            **_trace_headers(),
            headers.CONTENT_TYPE: {"type": "string", "const": "application/json"},
            headers.EVENT_TYPE: {"type": "string", "const": event_type},
            headers.SOURCE_EVENT_ID: {
                "type": "string",
                "format": "uuid",
                "description": "event_id of the order.cancelled event this result answers "
                "(absent only on a cancel_failed for an input whose event_id is unreadable).",
            },
        },
    }


def _input_headers() -> dict[str, Yaml]:
    """All optional for the ERP; the webhook ingress sets every one of them."""
    return {
        "type": "object",
        "properties": {
            **_trace_headers(),
            headers.CONTENT_TYPE: {"type": "string", "const": "application/json"},
            headers.EVENT_TYPE: {"type": "string", "const": "order.cancelled"},
            headers.INGRESS_SOURCE: {
                "type": "string",
                "description": "Set by the webhook ingress: the X-Cancel-Source that sent it.",
            },
        },
    }


_ORDER_KEY: Final[dict[str, Yaml]] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": "The order_id (UTF-8), so one order's events stay in one partition, in order.",
}


def _json_message(
    name: str, title: str, summary: str, schema_file: str, message_headers: Yaml
) -> dict[str, Yaml]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "headers": message_headers,
        "payload": {"$ref": f"./{schema_file}"},
        "bindings": _kafka(key=_ORDER_KEY),
    }


def _retry_headers() -> dict[str, Yaml]:
    return {
        "type": "object",
        "required": [
            headers.TRACEPARENT,
            headers.CONTENT_TYPE,
            headers.EVENT_TYPE,
            headers.SOURCE_EVENT_ID,
            headers.RETRY_DUE_AT,
        ],
        "properties": {
            **_trace_headers(),
            headers.CONTENT_TYPE: {"type": "string", "const": "application/json"},
            headers.EVENT_TYPE: {"type": "string", "const": "shipment.cancel_retry"},
            headers.SOURCE_EVENT_ID: {
                "type": "string",
                "format": "uuid",
                "description": "event_id of the order.cancelled event the shipment came in.",
            },
            headers.RETRY_DUE_AT: {
                "type": "string",
                "format": "date-time",
                "description": "due_at of the payload: not retried before this time.",
            },
        },
    }


def _dead_letter_message() -> dict[str, Yaml]:
    dlq_string = {"type": "string"}
    return {
        "name": "order.cancelled.dead_letter",
        "title": "Dead letter",
        "summary": "An input record that could not be parsed or validated, kept byte for byte.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "required": [
                headers.DLQ_SOURCE_TOPIC,
                headers.DLQ_SOURCE_PARTITION,
                headers.DLQ_SOURCE_OFFSET,
                headers.DLQ_ERROR_CATEGORY,
                headers.DLQ_ERROR_MESSAGE,
                headers.DLQ_FAILED_AT,
            ],
            "properties": {
                headers.DLQ_SOURCE_TOPIC: {**dlq_string, "description": "Topic of the input."},
                headers.DLQ_SOURCE_PARTITION: {
                    **dlq_string,
                    "pattern": "^[0-9]+$",
                    "description": "Partition of the input record, in decimal.",
                },
                headers.DLQ_SOURCE_OFFSET: {
                    **dlq_string,
                    "pattern": "^[0-9]+$",
                    "description": "Offset of the input record, in decimal.",
                },
                headers.DLQ_ERROR_CATEGORY: {
                    **dlq_string,
                    "description": "Why the record was refused (an error category).",
                },
                headers.DLQ_ERROR_MESSAGE: {
                    **dlq_string,
                    "description": "What was wrong, scrubbed of the record's values.",
                },
                headers.DLQ_FAILED_AT: {
                    **dlq_string,
                    "format": "date-time",
                    "description": "When the record was dead-lettered (UTC, ISO 8601).",
                },
            },
        },
        "payload": {
            "description": "The input record value, untouched: bad JSON, bad UTF-8, null, "
            "oversize or not a valid order.cancelled v1.",
        },
        "bindings": _kafka(
            key={"description": "The input record key, untouched (normally the order_id)."}
        ),
    }


def _channel(address: str, message_id: str, description: str) -> dict[str, Yaml]:
    return {
        "address": address,
        "description": description,
        "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        "bindings": _kafka(topic=address),
    }


def _operation(action: str, channel_id: str, message_id: str, summary: str) -> dict[str, Yaml]:
    operation: dict[str, Yaml] = {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
    }
    if action == "receive":
        operation["bindings"] = _kafka(
            groupId={
                "type": "string",
                "default": "shipment-cancel-processor",
                "description": "kafka.group_id: N processes share one group to scale out.",
            }
        )
    return operation


def asyncapi_document() -> dict[str, Yaml]:
    """The five topics as the service sees them (names are the configuration defaults)."""
    return {
        "asyncapi": "3.0.0",
        "id": SCHEMA_BASE_URL + ASYNCAPI_FILE,
        "info": {
            "title": "Shipment cancel processor",
            "version": "1.0.0",
            "description": "Consumes order-cancelled events, cancels each shipment at its "
            "provider, and publishes one result per shipment. Every record key is the "
            "order_id. Topic names are configurable (kafka.*_topic); these are the defaults.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{bootstrap_servers}",
                "protocol": "kafka",
                "description": "Any Kafka-compatible cluster (kafka.security_protocol).",
                "variables": {
                    "bootstrap_servers": {
                        "default": _DEFAULT_BOOTSTRAP,
                        "description": "kafka.bootstrap_servers, or KAFKA_BOOTSTRAP_SERVERS.",
                    }
                },
                "bindings": _kafka(),
            }
        },
        "channels": {
            "ordersCancelled": _channel(
                "orders.cancelled", "orderCancelled", "Orders the ERP cancelled."
            ),
            "shipmentsCancelled": _channel(
                "shipments.cancelled", "shipmentCancelled", "Shipments that are now cancelled."
            ),
            "shipmentsCancelFailed": _channel(
                "shipments.cancel-failed",
                "shipmentCancelFailed",
                "Shipments that could not be cancelled, and invalid events that name an order.",
            ),
            "ordersCancelledDlq": _channel(
                "orders.cancelled.dlq",
                "deadLetter",
                "Input records that could not be parsed or validated.",
            ),
            "ordersCancelledRetry": _channel(
                "orders.cancelled.retry",
                "cancelRetry",
                "The processor's own: shipments parked for a later attempt (transient provider "
                "failure, busy account, open circuit, or behind an earlier park of the same "
                "shipment). As many partitions as orders.cancelled; a park goes to the "
                "partition of the same number as its input.",
            ),
        },
        "operations": {
            "receiveOrderCancelled": _operation(
                "receive", "ordersCancelled", "orderCancelled", "Consume order-cancelled events."
            ),
            "sendShipmentCancelled": _operation(
                "send",
                "shipmentsCancelled",
                "shipmentCancelled",
                "One per shipment that is now cancelled (or already was).",
            ),
            "sendShipmentCancelFailed": _operation(
                "send",
                "shipmentsCancelFailed",
                "shipmentCancelFailed",
                "One per shipment that could not be cancelled.",
            ),
            "sendDeadLetter": _operation(
                "send", "ordersCancelledDlq", "deadLetter", "Set a poison input record aside."
            ),
            "sendCancelRetry": _operation(
                "send", "ordersCancelledRetry", "cancelRetry", "Park a shipment until due."
            ),
            "receiveCancelRetry": _operation(
                "receive",
                "ordersCancelledRetry",
                "cancelRetry",
                "Read parks back, hold each until due_at, then attempt the shipment again.",
            ),
        },
        "components": {
            "messages": {
                "orderCancelled": _json_message(
                    "order.cancelled",
                    "Order cancelled",
                    "An ERP cancelled an order; each listed shipment is to be cancelled.",
                    ORDER_CANCELLED_FILE,
                    _input_headers(),
                ),
                "shipmentCancelled": _json_message(
                    "shipment.cancelled",
                    "Shipment cancelled",
                    "The shipment is cancelled (outcome cancelled or already_cancelled).",
                    SHIPMENT_CANCELLED_FILE,
                    _result_headers("shipment.cancelled", source_always_known=True),
                ),
                "shipmentCancelFailed": _json_message(
                    "shipment.cancel_failed",
                    "Shipment cancel failed",
                    "The shipment could not be cancelled; error.retryable says whether a "
                    "replay may help.",
                    CANCEL_FAILED_FILE,
                    _result_headers("shipment.cancel_failed", source_always_known=False),
                ),
                "deadLetter": _dead_letter_message(),
                "cancelRetry": _json_message(
                    "shipment.cancel_retry",
                    "Shipment cancel retry",
                    "One parked shipment: its order-cancelled event cut to it, when it is "
                    "due, and how far its retries have come.",
                    CANCEL_RETRY_FILE,
                    _retry_headers(),
                ),
            }
        },
    }


# --- A small deterministic YAML emitter (block style; enough for the document above) ----------

_RESERVED_PLAIN: Final = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})
_PLAIN_START: Final = re.compile(r"[A-Za-z_$/]")


def to_yaml(document: Mapping[str, Yaml]) -> str:
    return "\n".join(_block(document, 0)) + "\n"


def _block(value: Mapping[str, Yaml] | Sequence[Yaml], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_nested(item):
                lines.append(f"{pad}{_string(key)}:")
                lines.extend(_block(item, indent + 2))
            else:
                lines.append(f"{pad}{_string(key)}: {_inline(item)}")
        return lines
    for item in value:
        if _is_nested(item):
            nested = _block(item, indent + 2)
            nested[0] = f"{pad}- {nested[0].lstrip(' ')}"
            lines.extend(nested)
        else:
            lines.append(f"{pad}- {_inline(item)}")
    return lines


def _is_nested(value: Yaml) -> TypeGuard[Mapping[str, Yaml] | Sequence[Yaml]]:
    return isinstance(value, Mapping | Sequence) and not isinstance(value, str) and len(value) > 0


def _inline(value: Yaml) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    return "{}" if isinstance(value, Mapping) else "[]"


def _string(text: str) -> str:
    """Plain when YAML would read it back as the same string, else quoted."""
    if (
        text
        and text.isascii()
        and text.isprintable()
        and _PLAIN_START.match(text)
        and ": " not in text
        and " #" not in text
        and not text.endswith((":", " "))
        and text.lower() not in _RESERVED_PLAIN
    ):
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    # JSON strings are valid YAML double-quoted scalars, escapes included.
    return json.dumps(text, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.tools.schemas",
        description="Write JSON Schema and AsyncAPI files generated from the event models.",
    )
    parser.add_argument("--out", type=Path, default=Path("schemas"), help="default: ./schemas")
    args = parser.parse_args(argv)
    for path in write_schemas(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
