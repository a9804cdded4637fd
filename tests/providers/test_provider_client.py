"""The client the service gives its provider adapters: requests straight to the transport."""

from __future__ import annotations

import httpx
import pytest

from consumer.providers.client import TransportClient, provider_transport
from consumer.providers.http import USER_AGENT, send
from consumer.providers.transport import HttpTransport


def recording(seen: list[httpx.Request], answer: httpx.Response) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer

    return httpx.MockTransport(handler)


async def test_sends_the_request_as_built_and_returns_the_answer_read() -> None:
    seen: list[httpx.Request] = []
    transport = recording(seen, httpx.Response(200, json={"ok": True}))
    async with TransportClient(transport) as client:
        response = await send(
            client,
            "POST",
            "https://p.test/v1/shipments/S%2F1/cancel",
            what="probe",
            http_timeout=7,
            headers={"Authorization": "Bearer t"},
            params={"by": "id"},
            json={"reason": "r"},
        )

    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.request is seen[0]
    (request,) = seen
    assert str(request.url) == "https://p.test/v1/shipments/S%2F1/cancel?by=id"
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"reason":"r"}'
    assert request.extensions["timeout"] == {"connect": 7, "read": 7, "write": 7, "pool": 7}


async def test_no_redirect_is_followed_and_no_cookie_kept() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(
        302, headers={"Location": "https://elsewhere.test/", "Set-Cookie": "a=b"}
    )
    async with TransportClient(recording(seen, answer)) as client:
        first = await client.send(httpx.Request("PUT", "https://p.test/x"))
        await client.send(httpx.Request("PUT", "https://p.test/x"))

    assert first.status_code == 302
    assert [str(r.url) for r in seen] == ["https://p.test/x", "https://p.test/x"]
    assert "cookie" not in seen[1].headers


async def test_a_transport_error_reaches_the_caller_as_it_is() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with TransportClient(httpx.MockTransport(refuse)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.send(httpx.Request("GET", "https://p.test/"))


async def test_a_closed_client_refuses_to_send_and_closes_its_transport_once() -> None:
    closed: list[bool] = []

    class Counting(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    client = TransportClient(Counting(lambda request: httpx.Response(204)))
    await client.aclose()
    await client.aclose()

    assert closed == [True]
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(httpx.Request("GET", "https://p.test/"))


def test_a_provider_is_reached_directly_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)

    assert isinstance(provider_transport("https://api.shipstation.com", 8), HttpTransport)


def test_the_environment_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    transport = provider_transport("https://api.shipstation.com", 8)

    assert isinstance(transport, httpx.AsyncHTTPTransport)


def test_no_proxy_sends_that_provider_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.test:3128")
    monkeypatch.setenv("NO_PROXY", "shipstation.com")

    assert isinstance(provider_transport("https://api.shipstation.com", 8), HttpTransport)
