"""The ingress against a real broker (the embedded one, or KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from consumer.config import IngressSettings, Settings
from consumer.ingress.server import RETRY_AFTER_SECONDS, ROUTE
from consumer.ingress.service import serve_ingress
from consumer.tools.embedded_broker import free_port
from consumer.tools.topics import ensure_topics
from kafka_local.broker import KafkaNode
from tests.ingress.helpers import SECRET, SOURCE, event_body, signed_headers
from tests.integration.kafka_helpers import Cluster, running_processor

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def with_ingress(settings: Settings, bootstrap: str | None = None, **ingress: Any) -> Settings:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "publish_timeout_seconds": 3,
        "drain_grace_seconds": 5,
        "sources": {SOURCE: {"secret": SECRET.decode()}},
        **ingress,
    }
    update: dict[str, Any] = {"ingress": IngressSettings.model_validate(options)}
    if bootstrap is not None:
        update["kafka"] = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    return settings.model_copy(update=update)


@contextlib.asynccontextmanager
async def ingress(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[str]:
    """The ingress in this event loop; yields its base URL."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_ingress(settings, stop, on_listening=port.set_result))
    try:
        url = f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}"
        if wait_ready:
            await _until_ready(url)
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _until_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(url + "/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the ingress did not become ready")


async def post(url: str, body: bytes, **headers: str) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + ROUTE,
            data=body,
            headers={**signed_headers(body, timestamp=time.time()), **headers},
        ) as response,
    ):
        return response.status, await response.json(), response.headers


async def test_signed_webhook_is_on_the_topic_with_key_and_headers(settings: Settings) -> None:
    body = event_body(event_id=str(uuid.uuid4()), order_id="SO-WEBHOOK-1")
    async with ingress(with_ingress(settings)) as url:
        status, payload, _ = await post(url, body, traceparent=TRACEPARENT)

    assert status == 202
    assert payload == {"event_id": orjson.loads(body)["event_id"]}
    async with Cluster(settings) as cluster:
        (record,) = await cluster.collect([settings.kafka.input_topic], 1)
    assert record.key == b"SO-WEBHOOK-1"
    assert record.value == body
    headers = dict(record.headers)
    assert headers["ingress-source"] == b"erp"
    assert headers["content-type"] == b"application/json"
    assert headers["event-type"] == b"order.cancelled"
    assert headers["traceparent"].decode().startswith(f"00-{TRACE_ID}-")


async def test_duplicate_event_id_is_one_record(settings: Settings) -> None:
    # A fresh id sent concurrently first: the race against the real broker's ack, then
    # sequential repeats once it is remembered.
    body = event_body(event_id=str(uuid.uuid4()))
    async with ingress(with_ingress(settings)) as url:
        concurrent = await asyncio.gather(*(post(url, body) for _ in range(5)))
        sequential = [await post(url, body) for _ in range(2)]

    assert [status for status, _, _ in [*concurrent, *sequential]] == [202] * 7
    async with Cluster(settings) as cluster:
        records = await cluster.collect([settings.kafka.input_topic], 1)
    assert len(records) == 1


async def test_record_over_the_producer_limit_is_413_and_stays_ready(
    settings: Settings,
) -> None:
    small = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_request_bytes": 1024})}
    )
    body = event_body(event_id=str(uuid.uuid4()), reason="x" * 1000)
    async with ingress(with_ingress(small)) as url:
        status, payload, _ = await post(url, body)
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as ready:
            ready_status = ready.status

    assert (status, payload["error"]) == (413, "record_too_large")
    # A refused record says nothing about the broker: no 503s for the next webhook.
    assert ready_status == 200


async def test_unreachable_broker_is_503_with_retry_after_and_not_ready(
    settings: Settings,
) -> None:
    closed_port = f"127.0.0.1:{free_port()}"
    async with ingress(with_ingress(settings, closed_port), wait_ready=False) as url:
        status, payload, headers = await post(url, event_body())
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as ready:
            reason = (await ready.json())["reason"]
            ready_status = ready.status

    assert status == 503
    assert payload["error"] == "broker_unavailable"
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert ready_status == 503
    assert "broker" in reason


async def test_broker_that_goes_away_is_503_then_ready_is_false(settings: Settings) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker of its own to stop")
    async with KafkaNode() as broker:
        own = with_ingress(settings, broker.bootstrap_servers, publish_timeout_seconds=2)
        await ensure_topics(own.kafka, partitions=1)
        async with ingress(own) as url:
            first, _, _ = await post(url, event_body(event_id=str(uuid.uuid4())))
            await broker.stop()
            started = time.monotonic()
            second, payload, headers = await post(url, event_body(event_id=str(uuid.uuid4())))
            waited = time.monotonic() - started
            async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as ready:
                ready_status = ready.status

    assert first == 202
    assert (second, payload["error"]) == (503, "broker_unavailable")
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert waited < 15  # bounded by publish_timeout_seconds, not the broker's timeouts
    assert ready_status == 503


async def test_processor_handles_what_the_ingress_accepted(settings: Settings) -> None:
    event_id = str(uuid.uuid4())
    body = event_body(
        event_id=event_id,
        order_id="SO-WEBHOOK-E2E",
        shipments=[{"provider": "shipstation", "shipment_id": "se-webhook-1"}],
    )
    async with running_processor(settings), ingress(with_ingress(settings)) as url:
        status, _, _ = await post(url, body, traceparent=TRACEPARENT)
        async with Cluster(settings) as cluster:
            (result,) = await cluster.results(1)

    assert status == 202
    assert result["source_event_id"] == event_id
    assert result["outcome"] == "cancelled"
    assert result["trace_id"] == TRACE_ID


async def test_ingress_command_serves_until_sigterm_then_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    kafka = settings.kafka
    config = tmp_path / "ingress.toml"
    config.write_text(
        f"""
[kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
input_topic = "{kafka.input_topic}"
enable_idempotence = {str(kafka.enable_idempotence).lower()}

[telemetry]
log_format = "json"

[ingress]
host = "127.0.0.1"
port = {free_port()}
drain_grace_seconds = 5

[ingress.sources.erp]
secret = "${{TEST_ERP_SECRET}}"
""",
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "ingress",
        "--config",
        str(config),
        env={**os.environ, "TEST_ERP_SECRET": SECRET.decode()},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        port = await asyncio.wait_for(_listening_port(process.stderr), 30)
        url = f"http://127.0.0.1:{port}"
        await _until_ready(url)
        status, _, _ = await post(url, event_body(event_id=str(uuid.uuid4())))
        assert status == 202

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        rest = (await process.stderr.read()).decode()
        assert "ingress stopped" in rest
        assert SECRET.decode() not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _listening_port(stream: asyncio.StreamReader) -> int:
    while line := await stream.readline():
        entry = orjson.loads(line) if line.startswith(b"{") else {}
        if entry.get("msg") == "ingress listening":
            return int(entry["port"])
    raise AssertionError("the ingress exited before listening")
