"""HTTP bits the provider adapters share: one guarded send, tolerant bodies, secret redaction.

Provider answers are untrusted input: a proxy may answer HTML, a body may be empty or echo
what we sent. Nothing here raises on a bad body; the adapters decide what a missing field
means. Nothing here knows a provider's error shape either: each provider module has its
``ErrorBodyReader``, which ``send`` (for the call's span) and ``read_error`` apply.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import orjson

from consumer.core.errors import CancelError, ConflictError, InternalError, TransientError
from consumer.observability.tracing import ClientCall
from consumer.providers.base import (
    ErrorBody,
    ErrorBodyReader,
    parse_retry_after,
    transport_error,
)
from consumer.providers.client import HttpClient

USER_AGENT = f"shipment-cancel-processor/{importlib.metadata.version('shipment-cancel-processor')}"
# What replaces a secret wherever we copy provider data or a URL (the marker the semantic
# conventions prescribe for url.full).
REDACTED = "REDACTED"
# Enough of a non-JSON error body (an HTML error page, a proxy's text) to recognise it.
_EXCERPT_CHARS = 200
# Request headers whose values are credentials.
_CREDENTIAL_HEADERS = frozenset(
    ("authorization", "proxy-authorization", "api-key", "x-api-key", "cookie")
)
# Query parameters and form fields whose values are credentials by their name.
_SECRET_NAME_WORDS = ("key", "token", "secret", "password", "passwd", "sig", "auth", "credential")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A provider's request id or error code on a span stays this short.
_MAX_ID_CHARS = 128


# What a path or query may hold as it is: RFC 3986's unreserved and sub-delimiter
# characters, ``:@/`` and percent-escapes (what ``quote`` and ``urlencode`` produce).
_ENCODED = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def path_segment(value: str) -> str:
    """``value`` as one URL path segment: a ``/`` or ``?`` in an id must not change the path."""
    return quote(value, safe="")


@functools.lru_cache(maxsize=64)
def _parsed(base: str) -> httpx.URL:
    return httpx.URL(base)


def request_url(base: str, path: str = "", params: Mapping[str, str] | None = None) -> httpx.URL:
    """``base`` + ``path`` + ``?params`` as an httpx URL, ``base`` parsed once.

    httpx parses and checks a URL string whole for every request, most of what building a
    request costs (10 µs). Between calls only the path and query change, and those arrive
    percent-encoded (``path_segment``, ``urlencode``), so they go onto the parsed base
    without a second parse; anything else takes httpx's full parse.
    """
    query = urlencode(params) if params else ""
    url = _parsed(base)
    parts = url._uri_reference  # httpx's parsed form: a NamedTuple of its components
    if (
        parts.query is not None
        or parts.fragment is not None
        or not _ENCODED.fullmatch(path + query)
    ):
        return httpx.URL(f"{base}{path}?{query}" if query else f"{base}{path}")
    if not path and not query:
        return url
    fresh = httpx.URL.__new__(httpx.URL)
    fresh._uri_reference = parts._replace(path=parts.path + path, query=query or None)
    return fresh


async def send(
    client: HttpClient,
    method: str,
    url: str,
    *,
    path: str = "",
    what: str,
    http_timeout: float,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    json: Any = None,
    form: Mapping[str, str] | None = None,
    error_body: ErrorBodyReader | None = None,
) -> httpx.Response:
    """Send one request to ``url`` + ``path`` (percent-encoded); transport failures become
    our taxonomy, naming only ``what``.

    Each call is one CLIENT span and one ``http.client.request.duration`` sample (none for
    a call abandoned on cancellation). The span always ends, whatever happens. An error
    answer's request id and error code go on the span as ``error_body`` (the provider's
    reader) finds them.
    """
    target = request_url(url, path, params)
    content = None
    if json is not None:
        # orjson: httpx's json= builds a stdlib encoder per request, several times slower.
        content = orjson.dumps(json)
        headers = {**headers, "Content-Type": "application/json"}
    request = httpx.Request(
        method,
        target,
        headers={"User-Agent": USER_AGENT, **headers},
        content=content,
        data=form,
        extensions={"timeout": _timeouts(http_timeout)},
    )
    call = ClientCall(
        method,
        target.host,
        target.port or _DEFAULT_PORTS.get(target.scheme, 0),
        (method, url, path, tuple(params.items()) if params else None),
    )
    try:
        # Credentials are looked for only when a span will hold what the provider says.
        secrets = _credentials(headers, form) if call.recording else []
        if call.recording:
            call.describe(safe_url(target, secrets))
        response = await client.send(request)
        # httpx.AsyncClient leaves the response and its stream referring to each other, so
        # every answer would wait for the cyclic garbage collector; it is read whole: cut it.
        response.stream = httpx.ByteStream(response.content)
        if call.recording:
            call.answered(response.status_code, *_provider_ids(response, error_body, secrets))
        else:
            call.answered(response.status_code)
        return response
    except httpx.TransportError as exc:
        call.failed(type(exc).__name__)
        raise transport_error(exc, what) from exc
    except httpx.RequestError as exc:
        call.failed(type(exc).__name__)
        # Not a transport fault: an undecodable body or a redirect loop. Replaying won't help.
        raise InternalError(f"{what}: unusable response ({type(exc).__name__})") from exc
    except asyncio.CancelledError:  # the shipment's budget ran out, or a shutdown
        call.cancelled()
        raise
    except BaseException as exc:
        call.failed(type(exc).__name__)
        raise
    finally:
        call.end()


@functools.lru_cache(maxsize=64)
def _timeouts(seconds: float) -> dict[str, float | None]:
    """httpx's per-request ``timeout`` extension: connect, read, write and pool waits."""
    return httpx.Timeout(seconds).as_dict()


def safe_url(url: httpx.URL, secrets: Iterable[str] = ()) -> str:
    """``url`` for a span: userinfo and secret-named query values become ``REDACTED``, and
    so does any of ``secrets`` found elsewhere in it."""
    if url.userinfo:
        url = url.copy_with(username=REDACTED, password=REDACTED)
    if url.query:
        pairs = parse_qsl(url.query.decode("ascii", "replace"), keep_blank_values=True)
        if any(_secret_name(name) for name, _ in pairs):
            cleaned = [(n, REDACTED if _secret_name(n) else v) for n, v in pairs]
            url = url.copy_with(query=urlencode(cleaned, safe=REDACTED).encode("ascii"))
    return str(redact(str(url), secrets))


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_NAME_WORDS)


def _credentials(headers: Mapping[str, str], form: Mapping[str, str] | None) -> list[str]:
    """The credentials a request carries (header values, secret-named form fields), for
    ``redact``: a provider may echo any of them back."""
    found = []
    for name, value in headers.items():
        if value and name.lower() in _CREDENTIAL_HEADERS:
            found.append(value)
            _scheme, _, token = value.partition(" ")
            if token:
                found.append(token)
    if form:
        found.extend(value for name, value in form.items() if value and _secret_name(name))
    return found


def _provider_ids(
    response: httpx.Response, error_body: ErrorBodyReader | None, secrets: list[str]
) -> tuple[str | None, str | None]:
    """The provider's request id and, for an error answer, its error code, as the provider's
    ``error_body`` reads them from the body (failing a code, a problem+json ``type``, the
    RFC 9457 name of the problem); the ``x-request-id`` header names the request otherwise."""
    body = json_object(response) if response.status_code >= 400 else None
    said = error_body(body) if body is not None and error_body is not None else ErrorBody()
    code = said.code or text_field(body, "type")
    found = said.request_id or request_id(response)
    return _span_value(found, secrets), _span_value(code, secrets)


def _span_value(value: str | None, secrets: list[str]) -> str | None:
    return None if value is None else str(redact(value, secrets))[:_MAX_ID_CHARS]


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
    """``value`` (str, dict, list, nested) with every secret replaced by ``REDACTED``.

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


def read_error(response: httpx.Response, error_body: ErrorBodyReader) -> ErrorBody:
    """What an error answer says, as the provider's ``error_body`` reads it; nothing when
    the body is not a JSON object."""
    body = json_object(response)
    return ErrorBody() if body is None else error_body(body)


def error_from_response(
    error_class: type[CancelError],
    what: str,
    response: httpx.Response,
    said: ErrorBody,
    *,
    secrets: Iterable[str],
) -> CancelError:
    """An error of ``error_class`` for the call ``what``, carrying the response's details
    and what its body ``said`` (``read_error``), secrets redacted."""
    needles = list(secrets)
    message = f"{what}: {describe(response)}"
    if said.message:
        message += f": {said.message}"
    retry_after = (
        parse_retry_after(response.headers) if issubclass(error_class, TransientError) else None
    )
    return error_class(
        redact(message, needles),
        http_status=response.status_code,
        provider_code=redact(said.code, needles),
        provider_request_id=redact(said.request_id or request_id(response), needles),
        provider_errors=redact(list(said.errors), needles),
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
