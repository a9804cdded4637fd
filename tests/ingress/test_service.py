"""serve_ingress end to end over a real socket, with a recording publisher (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from consumer.config import Settings, settings_from_mapping
from consumer.core.errors import ConfigError
from consumer.ingress.server import CLIENT_CLOSED_REQUEST, ROUTE
from consumer.ingress.service import serve_ingress
from tests.ingress.helpers import SECRET, RecordingPublisher, event_body, signed_headers


def settings(**ingress: object) -> Settings:
    return settings_from_mapping(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "telemetry": {"log_level": "WARNING", "log_format": "text"},
            "ingress": {
                "host": "127.0.0.1",
                "port": 0,
                "drain_grace_seconds": 10,
                "shutdown_delay_seconds": 0,
                "sources": {"erp": {"secret": SECRET.decode()}},
                **ingress,
            },
        },
        {},
    )


@contextlib.asynccontextmanager
async def serving(
    publisher: RecordingPublisher, stop: asyncio.Event, **ingress: object
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_ingress(settings(**ingress), stop, on_listening=port.set_result, publisher=publisher)
    )
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}", task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_sigterm_drain_finishes_requests_in_flight_then_stops_the_publisher() -> None:
    publisher, stop = RecordingPublisher(), asyncio.Event()
    publisher.gate = asyncio.Event()
    body = event_body()
    async with aiohttp.ClientSession() as http, serving(publisher, stop) as (url, task):
        in_flight = asyncio.create_task(
            http.post(url + ROUTE, data=body, headers=signed_headers(body, timestamp=time.time()))
        )
        await asyncio.wait_for(publisher.entered.wait(), 10)

        stop.set()
        await asyncio.sleep(0.2)
        # No new connections once draining...
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(url + "/healthz")
        assert not task.done()
        # ...but the request in flight completes with its 202.
        publisher.gate.set()
        response = await asyncio.wait_for(in_flight, 10)
        assert response.status == 202
        await asyncio.wait_for(task, 10)

    assert len(publisher.records) == 1
    assert publisher.started
    assert publisher.stopped


async def test_shutdown_delay_reports_not_ready_while_still_serving() -> None:
    publisher, stop = RecordingPublisher(), asyncio.Event()
    body = event_body()
    async with (
        aiohttp.ClientSession() as http,
        serving(publisher, stop, shutdown_delay_seconds=1.0) as (url, task),
    ):
        stop.set()
        await asyncio.sleep(0.05)
        # Load balancers see "not ready" and stop sending; what still arrives is served.
        async with http.get(url + "/readyz") as ready:
            assert ready.status == 503
            assert (await ready.json())["reason"] == "shutting down"
        headers = signed_headers(body, timestamp=time.time())
        async with http.post(url + ROUTE, data=body, headers=headers) as accepted:
            assert accepted.status == 202
        assert not task.done()
        # Then it stops accepting and leaves.
        await asyncio.wait_for(task, 10)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(url + "/healthz")

    assert len(publisher.records) == 1
    assert publisher.stopped


async def test_client_that_disconnects_mid_body_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher, stop = RecordingPublisher(), asyncio.Event()
    body = event_body()
    head = "".join(
        f"{name}: {value}\r\n"
        for name, value in signed_headers(body, timestamp=time.time()).items()
    )
    request = f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    caplog.set_level(logging.DEBUG, logger="consumer.ingress")
    async with aiohttp.ClientSession() as http, serving(publisher, stop) as (url, _):
        _, port = url.rsplit(":", 1)
        _, writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(request.encode() + body[:10])  # then hang up mid-body
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        expected = (
            f'cancel_ingress_requests_total{{source="erp",status="{CLIENT_CLOSED_REQUEST}"}} 1.0'
        )
        for _ in range(100):
            async with http.get(url + "/metrics") as metrics:
                if expected in await metrics.text():
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the abandoned request was not counted")

    ours = [r for r in caplog.records if r.name == "consumer.ingress.server"]
    assert [(r.levelno, r.exc_info) for r in ours] == [(logging.DEBUG, None)]
    assert publisher.calls == 0


async def test_ops_routes_are_served_on_the_ingress_port() -> None:
    publisher, stop = RecordingPublisher(), asyncio.Event()
    publisher.ready = (False, "connecting to the broker")
    body = event_body()
    async with aiohttp.ClientSession() as http, serving(publisher, stop) as (url, _):
        async with http.get(url + "/healthz") as health, http.get(url + "/readyz") as ready:
            assert (health.status, ready.status) == (200, 503)
            assert (await ready.json())["reason"] == "connecting to the broker"
        headers = signed_headers(body, timestamp=time.time())
        async with http.post(url + ROUTE, data=body, headers=headers) as accepted:
            assert accepted.status == 202
        async with http.get(url + "/metrics") as metrics:
            assert metrics.status == 200
            text = await metrics.text()

    # The Prometheus names of the contract's metric table.
    assert 'cancel_ingress_requests_total{source="erp",status="202"} 1.0' in text
    assert (
        'http_server_request_duration_seconds_count{http_request_method="POST",'
        'http_response_status_code="202",http_route="/v1/order-cancelled"} 1.0'
    ) in text


async def test_port_in_use_is_a_one_line_config_error() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(
            ConfigError, match=rf"^ingress.port: cannot listen on 127.0.0.1:{port}: "
        ):
            await serve_ingress(
                settings(port=port), asyncio.Event(), publisher=RecordingPublisher()
            )
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_no_sources_is_refused_before_anything_starts() -> None:
    publisher = RecordingPublisher()
    with pytest.raises(ConfigError, match="no webhook sources configured"):
        await serve_ingress(settings(sources={}), asyncio.Event(), publisher=publisher)
    assert not publisher.started
