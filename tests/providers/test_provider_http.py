"""The HTTP helpers both adapters share."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from consumer.core.errors import InternalError, RejectedError
from consumer.providers.base import ErrorBody, ErrorBodyReader
from consumer.providers.client import HttpClient, TransportClient
from consumer.providers.http import (
    describe,
    error_from_response,
    json_body,
    path_segment,
    read_error,
    redact,
    request_id,
    request_url,
    send,
    text_field,
)
from tests.providers.provider_fakes import client_spans, reply


def test_redact_replaces_secrets_anywhere_in_nested_values() -> None:
    value = {"a": ["x-KEY-y", {"KEY": 3}], "b": "plain", "c": None}

    assert redact(value, ["KEY", ""]) == {
        "a": ["x-REDACTED-y", {"REDACTED": 3}],
        "b": "plain",
        "c": None,
    }


def test_redact_without_secrets_returns_the_value() -> None:
    assert redact("text", [""]) == "text"


@pytest.mark.parametrize(
    ("base", "path", "params"),
    [
        ("https://api.example.test/v1", "/shipments/SHP-1/cancel", {"by": "id"}),
        ("https://api.example.test/v1/", "", None),
        ("http://127.0.0.1:8080/mvmnt/v1", f"/shipments/{path_segment('a/b?c#d é%')}", None),
        ("https://user:pw@API.Example.test:443/v2", "/x", {"q": "a b&c=é", "api_key": "k"}),
        ("https://api.example.test/v1?tenant=7", "/x", {"by": "key"}),
        ("https://api.example.test/v1", "/not encoded é", {"by": "id"}),
        ("https://xn--bcher-kva.example/v1", "/x#frag", None),
        ("https://api.example.test/v1", "/x?by=key", None),
        ("https://api.example.test/v1", "/100%zz/%41", {"by": "id"}),
    ],
)
def test_request_url_is_the_url_httpx_parses_from_the_whole_string(
    base: str, path: str, params: dict[str, str] | None
) -> None:
    whole = httpx.URL(f"{base}{path}?{urlencode(params)}" if params else f"{base}{path}")

    built = request_url(base, path, params)

    assert built == whole
    assert (str(built), built.raw_path, built.path, built.query, built.host, built.port) == (
        str(whole),
        whole.raw_path,
        whole.path,
        whole.query,
        whole.host,
        whole.port,
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000],
)
def test_json_body_of_garbage_is_none(content: bytes) -> None:
    assert json_body(httpx.Response(200, content=content)) is None


def test_request_id_comes_from_the_header() -> None:
    assert request_id(httpx.Response(200, headers={"X-Request-Id": " r-1 "})) == "r-1"
    assert request_id(httpx.Response(200, headers={"X-Request-Id": ""})) is None


def test_describe_quotes_a_non_json_body_on_one_short_line() -> None:
    response = httpx.Response(502, content=b"<h1>Bad\n   gateway</h1>" + b"!" * 1000)

    text = describe(response)

    assert text.startswith("HTTP 502 Bad Gateway (non-JSON body: '<h1>Bad gateway</h1>!!!")
    assert len(text) < 300


def test_describe_leaves_json_bodies_to_the_adapters() -> None:
    assert describe(httpx.Response(400, json={"error": "x"})) == "HTTP 400 Bad Request"


@pytest.mark.parametrize("client_type", [TransportClient, httpx.AsyncClient])
async def test_an_undecodable_body_is_an_internal_error(client_type: type[HttpClient]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    transport = httpx.MockTransport(handler)
    client = (
        TransportClient(transport)
        if client_type is TransportClient
        else httpx.AsyncClient(transport=transport)
    )
    async with client:
        with pytest.raises(InternalError, match="DecodingError"):
            await send(client, "GET", "https://x.test/", what="probe", http_timeout=1, headers={})


# --- error bodies: each provider reads its own ---------------------------------------------


def acme_error_body(body: dict[str, Any]) -> ErrorBody:
    """A provider this module has never heard of: ``{"fault": {"ref", "kind", "text"}}``."""
    fault = body.get("fault")
    if not isinstance(fault, dict):
        return ErrorBody()
    return ErrorBody(
        code=text_field(fault, "kind"),
        message=text_field(fault, "text"),
        request_id=text_field(fault, "ref"),
        errors=(fault,),
    )


ACME_FAULT = {"ref": "acme-req-1", "kind": "frozen", "text": "shipment is frozen"}


async def acme_call(
    answer: httpx.Response, error_body: ErrorBodyReader | None = None
) -> httpx.Response:
    """One call answered ``answer``, sent as the acme adapter would (or without a reader)."""
    async with TransportClient(httpx.MockTransport(lambda request: answer)) as client:
        return await send(
            client,
            "PUT",
            "https://acme.test",
            what="acme cancel",
            http_timeout=1,
            headers={},
            error_body=error_body,
        )


def test_an_error_answer_says_what_the_providers_reader_finds() -> None:
    response = reply(400, {"fault": ACME_FAULT}, headers={"X-Request-Id": "header-id"})

    said = read_error(response, acme_error_body)
    error = error_from_response(RejectedError, "acme cancel", response, said, secrets=["frozen"])

    assert said == ErrorBody("frozen", "shipment is frozen", "acme-req-1", (ACME_FAULT,))
    assert isinstance(error, RejectedError)
    assert error.message == "acme cancel: HTTP 400 Bad Request: shipment is REDACTED"
    assert error.provider_code == "REDACTED"
    assert error.provider_request_id == "acme-req-1"
    assert error.provider_errors == [
        {**ACME_FAULT, "kind": "REDACTED", "text": "shipment is REDACTED"}
    ]


@pytest.mark.parametrize("content", [b"", b"<html>", b"[1]"])
def test_a_body_that_is_no_json_object_says_nothing(content: bytes) -> None:
    response = httpx.Response(502, content=content, headers={"X-Request-Id": "header-id"})

    said = read_error(response, acme_error_body)
    error = error_from_response(RejectedError, "acme cancel", response, said, secrets=[])

    assert said == ErrorBody()
    assert error.provider_code is None
    assert error.provider_request_id == "header-id"
    assert error.provider_errors == []


async def test_a_calls_span_names_what_the_providers_reader_finds() -> None:
    answer = reply(409, {"fault": ACME_FAULT}, headers={"X-Request-Id": "header-id"})

    with client_spans() as spans:
        await acme_call(answer, error_body=acme_error_body)

    [call] = spans.attributes()
    assert call["provider.request_id"] == "acme-req-1"
    assert call["provider.error_code"] == "frozen"


async def test_without_a_reader_a_calls_span_names_only_the_request_id_header() -> None:
    body = {"fault": ACME_FAULT, "code": "c", "request_id": "r"}
    answer = reply(409, body, headers={"X-Request-Id": "header-id"})

    with client_spans() as spans:
        await acme_call(answer)

    [call] = spans.attributes()
    assert call["provider.request_id"] == "header-id"
    assert "provider.error_code" not in call


async def test_a_problem_type_names_the_error_on_the_span_when_no_code_does() -> None:
    problem = {"type": "https://acme.test/problems/frozen", "title": "Frozen"}
    answer = reply(409, problem, content_type="application/problem+json")

    with client_spans() as spans:
        await acme_call(answer, error_body=acme_error_body)

    [call] = spans.attributes()
    assert call["provider.error_code"] == "https://acme.test/problems/frozen"
