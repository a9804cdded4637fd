"""HTTP bits the provider adapters share: one guarded send, tolerant bodies, secret redaction.

Provider answers are untrusted input: a proxy may answer HTML, a body may be empty or echo
what we sent. Nothing here raises on a bad body; the adapters decide what a missing field
means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from consumer.errors import CancelError, ConflictError, InternalError, TransientError
from consumer.providers.base import parse_retry_after, transport_error

REDACTED = "[redacted]"
# Enough of a non-JSON error body (an HTML error page, a proxy's text) to recognise it.
_EXCERPT_CHARS = 200


def path_segment(value: str) -> str:
    """``value`` as one URL path segment: a ``/`` or ``?`` in an id must not change the path."""
    return quote(value, safe="")


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    http_timeout: float,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    json: Any = None,
    form: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request; transport failures become our taxonomy, naming only ``what``."""
    try:
        return await client.request(
            method,
            url,
            headers=headers,
            params=params,
            json=json,
            data=form,
            timeout=http_timeout,
        )
    except httpx.TransportError as exc:
        raise transport_error(exc, what) from exc
    except httpx.RequestError as exc:
        # Not a transport fault: an undecodable body or a redirect loop. Replaying won't help.
        raise InternalError(f"{what}: unusable response ({type(exc).__name__})") from exc


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or ``None`` when it is empty or not JSON."""
    if not response.content:
        return None
    try:
        # orjson bounds nesting depth, so a hostile body cannot blow the stack.
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    body = json_body(response)
    return body if isinstance(body, dict) else None


def text_field(data: Mapping[str, Any] | None, key: str) -> str | None:
    """``data[key]`` when it is a non-empty string; anything else counts as absent."""
    if data is None:
        return None
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def request_id(response: httpx.Response) -> str | None:
    value = response.headers.get("x-request-id", "").strip()
    return value or None


def describe(response: httpx.Response) -> str:
    """``HTTP 503 Service Unavailable``, plus an excerpt when the body is not JSON."""
    text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if response.content and json_body(response) is None:
        excerpt = response.content[:_EXCERPT_CHARS].decode("utf-8", "replace")
        text += f" (non-JSON body: {' '.join(excerpt.split())!r})"
    return text


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (str, dict, list, nested) with every secret replaced by ``[redacted]``.

    Providers may echo a header or field back in an error body; whatever we copy from a
    response into an error passes through here first.
    """
    needles = [s for s in secrets if s]
    if not needles:
        return value
    return _redact(value, needles)


def _redact(value: Any, needles: list[str]) -> Any:
    if isinstance(value, str):
        for needle in needles:
            value = value.replace(needle, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, needles): _redact(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, needles) for v in value]
    return value


def error_from_response(
    error_class: type[CancelError],
    message: str,
    response: httpx.Response,
    *,
    secrets: Iterable[str],
    provider_code: str | None = None,
    provider_request_id: str | None = None,
    provider_errors: list[dict[str, Any]] | None = None,
) -> CancelError:
    """An error of ``error_class`` carrying the response's details, secrets redacted."""
    needles = list(secrets)
    retry_after = (
        parse_retry_after(response.headers) if issubclass(error_class, TransientError) else None
    )
    return error_class(
        redact(message, needles),
        http_status=response.status_code,
        provider_code=redact(provider_code, needles),
        provider_request_id=provider_request_id or request_id(response),
        provider_errors=redact(provider_errors or [], needles),
        retry_after=retry_after,
    )


def success_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else is a contract break we cannot act on."""
    body = json_object(response)
    if body is None:
        raise InternalError(
            f"{what}: HTTP {response.status_code} but the body is not a JSON object",
            http_status=response.status_code,
            provider_request_id=request_id(response),
        )
    return body


def conflict_keeping(message: str, refusal: CancelError) -> ConflictError:
    """A conflict found while confirming ``refusal``, keeping all the provider said in it."""
    return ConflictError(
        f"{message} ({refusal.message})",
        http_status=refusal.http_status,
        provider_code=refusal.provider_code,
        provider_request_id=refusal.provider_request_id,
        provider_errors=refusal.provider_errors,
    )
