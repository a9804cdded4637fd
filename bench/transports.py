"""Requests per second of httpx transports against the provider simulator.

    python -m bench.transports [--seconds 3] [--json FILE]

Each variant sends ShipStation cancel calls (distinct shipment ids, 204 answers) through
httpx at concurrency 1, 50 and 500 with a connection limit equal to the concurrency, as a
provider account with that ``max_concurrency`` would, and reports requests per second and
the client's CPU time per request. ``aiohttp (raw)`` is the same calls without httpx.

The candidates: httpx's default transport (httpcore); the ``httpx-aiohttp`` package when
installed (``pip install httpx-aiohttp``); ``AiohttpSessionTransport`` below, the transport
over an aiohttp session we wrote first; ``consumer.providers.transport.HttpTransport`` under
``httpx.AsyncClient``; and the same transport under ``TransportClient``, as the processor
sends (an ``httpx.Request`` straight to the transport, no ``AsyncClient.send``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import httpx
import yarl

from bench import procs
from consumer.providers.client import TransportClient
from consumer.providers.transport import HttpTransport

API_KEY = "sim-shipstation-key"
CONCURRENCY = (1, 50, 500)

Send = Callable[[str], Awaitable[int]]
_ids = itertools.count()


def _httpx_default(limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    )


def _httpx_aiohttp_package(limit: int) -> httpx.AsyncClient:
    package = importlib.import_module("httpx_aiohttp")
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    return httpx.AsyncClient(transport=package.AiohttpTransport(limits=limits))


def _httpx_session(limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpSessionTransport(limit))


def _httpx_ours(limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=HttpTransport(max_connections=limit))


def _transport_client_ours(limit: int) -> TransportClient:
    return TransportClient(HttpTransport(max_connections=limit))


class AiohttpSessionTransport(httpx.AsyncBaseTransport):
    """httpx over one aiohttp session (the first design; error mapping left out here)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        timeout = request.extensions.get("timeout", {})
        async with self._session.request(
            request.method,
            yarl.URL(str(request.url), encoded=True),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            data=await request.aread() or None,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(
                connect=timeout.get("pool"),
                sock_connect=timeout.get("connect"),
                sock_read=timeout.get("read"),
            ),
        ) as response:
            content = await response.read()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _variants() -> dict[str, Callable[[int], Any]]:
    variants: dict[str, Callable[[int], Any]] = {
        "httpx default (httpcore)": _httpx_default,
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        variants["httpx + httpx-aiohttp (package)"] = _httpx_aiohttp_package
    variants["httpx + AiohttpSessionTransport"] = _httpx_session
    variants["httpx + consumer HttpTransport"] = _httpx_ours
    variants["TransportClient + HttpTransport"] = _transport_client_ours
    variants["aiohttp (raw, no httpx)"] = _aiohttp_raw
    return variants


def _aiohttp_raw(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))


def _sender(client: Any, base: str) -> Send:
    headers = {"API-Key": API_KEY}
    if isinstance(client, TransportClient):

        async def send_direct(shipment: str) -> int:
            request = httpx.Request(
                "PUT",
                f"{base}/shipstation/v2/shipments/{shipment}/cancel",
                headers=headers,
                extensions={"timeout": httpx.Timeout(10).as_dict()},
            )
            response = await client.send(request)
            return response.status_code

        return send_direct

    if isinstance(client, httpx.AsyncClient):

        async def send_httpx(shipment: str) -> int:
            response = await client.put(
                f"{base}/shipstation/v2/shipments/{shipment}/cancel", headers=headers, timeout=10
            )
            return response.status_code

        return send_httpx

    async def send_aiohttp(shipment: str) -> int:
        async with client.put(
            f"{base}/shipstation/v2/shipments/{shipment}/cancel", headers=headers
        ) as response:
            await response.read()
            return int(response.status)

    return send_aiohttp


async def _run(send: Send, concurrency: int, seconds: float) -> tuple[float, float]:
    """Requests per second, and the client's CPU microseconds per request."""
    done = 0
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status = await send(f"se-t{next(_ids)}")
            if status != 204:
                raise RuntimeError(f"unexpected status {status}")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    return rate, (time.process_time() - cpu) * 1e6 / max(done, 1)


async def measure(base: str, seconds: float) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, factory in _variants().items():
        results[name] = {}
        for concurrency in CONCURRENCY:
            client: AbstractAsyncContextManager[Any] = factory(concurrency)
            async with client as opened:
                send = _sender(opened, base)
                await _run(send, concurrency, min(0.5, seconds))  # warm up connections
                rate, cpu_us = await _run(send, concurrency, seconds)
            results[name][str(concurrency)] = {
                "requests_per_s": round(rate),
                "cpu_us": round(cpu_us),
            }
            print(
                f"{name:36} c={concurrency:<4} {rate:8.0f} req/s {cpu_us:6.0f} us CPU/request",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with procs.simulator(latency_ms=0) as base:
        results = asyncio.run(measure(base, args.seconds))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"transports": results, "machine": procs.machine()}, out, indent=2)


if __name__ == "__main__":
    main()
