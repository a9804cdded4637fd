"""Response builders in each provider's wire shape; bodies are serialised with orjson."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
FORM = "application/x-www-form-urlencoded"

# Set by the middleware on every provider request; also sent back as X-Request-Id.
REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID]


def json_response(
    body: Any,
    status: int = 200,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = JSON,
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=content_type, headers=headers
    )


def empty_response(status: int, *, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers)


def shipstation_error(
    request_id: str,
    status: int,
    error_type: str,
    error_code: str,
    message: str,
    *,
    field_name: str | None = None,
    field_value: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """ShipStation's ``error_response_body``; field_name/value only for validation errors."""
    error = {
        "error_source": "ShipStation",
        "error_type": error_type,
        "error_code": error_code,
        "message": message,
    }
    if field_name is not None:
        error["field_name"] = field_name
        error["field_value"] = field_value if field_value is not None else ""
    return json_response({"request_id": request_id, "errors": [error]}, status, headers=headers)


def mvmnt_error(
    status: int,
    error: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = JSON,
) -> web.Response:
    return json_response(
        {"error": error, "message": message}, status, headers=headers, content_type=content_type
    )


def mvmnt_nested_error(status: int, code: str, message: str) -> web.Response:
    """The other error shape MVMNT's gateway answers with (5xx)."""
    return json_response({"error": {"code": code, "message": message}}, status)
