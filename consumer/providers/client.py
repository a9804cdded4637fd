"""What the provider adapters send HTTP with: an httpx ``Request`` in, an httpx ``Response`` out.

``HttpClient`` is the one method the adapters call. ``httpx.AsyncClient`` has it; the service
hands them a ``TransportClient``, which gives each request straight to the account's httpx
transport. ``AsyncClient.send`` runs every request through an auth flow, redirect handling,
event hooks and a cookie jar, none of which a provider call uses, and at thousands of calls
a second that cost more CPU than the transport itself: 178 against 78 µs per call at
concurrency 50 (docs/performance.md). Requests, responses, timeouts and exceptions stay
httpx's, so adapters and their tests (``httpx.MockTransport``) are the same either way.
"""

from __future__ import annotations

import urllib.request
from typing import Protocol

import httpx

from consumer.providers.transport import HttpTransport


class HttpClient(Protocol):
    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the answer, its body read."""
        ...


class TransportClient:
    """Sends each request to one httpx transport, as it is: no defaults merged, no
    redirects followed, no cookies kept. The caller builds the whole request."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport
        self._closed = False

    async def send(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._transport.aclose()

    async def __aenter__(self) -> TransportClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def provider_transport(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """The transport of one provider account: ours, or httpx's own through the proxy the
    environment names for ``base_url`` (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``, as httpx reads them), since ours speaks only directly to the provider."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.host):
        limits = httpx.Limits(max_connections=max_connections)
        return httpx.AsyncHTTPTransport(proxy=proxy, limits=limits)
    return HttpTransport(max_connections=max_connections)
