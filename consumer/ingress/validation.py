"""Validate a webhook body exactly as the processor will read the record: UTF-8, JSON object,
then the same ``OrderCancelled`` model. What the ingress accepts, the processor accepts."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from consumer.core.events import OrderCancelled

FieldErrors = list[dict[str, Any]]


def validate_event(body: bytes) -> OrderCancelled | FieldErrors:
    """The event, or the field errors (``loc``, ``msg``, ``type``; never the input values)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [_body_error(f"body is not UTF-8 (byte {exc.start})", "utf8_invalid")]
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return [_body_error(f"Invalid JSON: {exc.msg} at char {exc.pos}", "json_invalid")]
    if not isinstance(data, dict):
        return [_body_error("body must be a JSON object", "model_type")]
    try:
        return OrderCancelled.model_validate(data)
    except ValidationError as exc:
        return [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_input=False, include_url=False, include_context=False)
        ]


def _body_error(msg: str, kind: str) -> dict[str, Any]:
    return {"loc": [], "msg": msg, "type": kind}
