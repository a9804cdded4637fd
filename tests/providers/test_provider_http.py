"""The HTTP helpers both adapters share."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from consumer.core.errors import InternalError
from consumer.providers.client import HttpClient, TransportClient
from consumer.providers.http import (
    describe,
    json_body,
    path_segment,
    redact,
    request_id,
    request_url,
    send,
)


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
