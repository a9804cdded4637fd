"""The `run` service's ops HTTP server against a real broker: readiness, and the contract's
metric series scraped from /metrics while events flow."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson

from consumer.app import run_service
from consumer.config import Settings
from consumer.core import headers as h
from tests.integration.kafka_helpers import Cluster, order_event
from tests.telemetry.series import SERIES_LABELS, Samples, label_sets, label_values, samples

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{UPSTREAM_TRACE}-00f067aa0ba902b7-01".encode()
# Every processor series of the contract (the ingress ones belong to the ingress).
SERIES = tuple(SERIES_LABELS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The service as `run` starts it: with its ops HTTP server, on a free port."""
    port = free_port()
    telemetry = settings.telemetry.model_copy(update={"http_host": "127.0.0.1", "http_port": port})
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_service(settings.model_copy(update={"telemetry": telemetry}), stop, ops_http=True)
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_ops_server_reports_readiness_and_every_series(cluster: Cluster) -> None:
    async with serving(cluster.settings) as ops:

        async def ready() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await ops.get("/readyz")).status_code == 200
            return False

        await eventually(ready, "/readyz 200 after joining the group")
        assert (await ops.get("/healthz")).status_code == 200

        await cluster.send(
            order_event("SO-1", ("shipstation", "se-1")), headers=[("traceparent", TRACEPARENT)]
        )
        await cluster.send(order_event("SO-2", ("mvmnt", "SHP-2")))
        await cluster.send(order_event("SO-3", ("shipstation", "se-ratelimit2-3")))
        await cluster.send(order_event("SO-4", ("shipstation", "se-notfound-4")))
        await cluster.send(b"{not json", key="SO-5")
        records = await cluster.collect(
            [cluster.kafka.cancelled_topic, cluster.kafka.failed_topic, cluster.kafka.dlq_topic],
            count=5,
        )

        [first] = [r for r in records if r.key == b"SO-1"]
        assert dict(first.headers)[h.TRACEPARENT].startswith(f"00-{UPSTREAM_TRACE}-".encode())
        assert orjson.loads(first.value or b"")["trace_id"] == UPSTREAM_TRACE

        scraped: Samples = {}

        async def every_series() -> bool:
            nonlocal scraped
            scraped = samples((await ops.get("/metrics")).text)
            return all(name in scraped for name in SERIES)

        await eventually(every_series, "every contract series on /metrics")

    def total(name: str, **labels: str) -> float:
        return sum(v for got, v in scraped[name] if all(got.get(k) == x for k, x in labels.items()))

    assert total("messaging_client_consumed_messages_total") == 5
    assert total("cancel_processor_results_total", outcome="cancelled", category="none") == 3
    assert total("cancel_processor_results_total", outcome="failed", category="not_found") == 1
    assert total("cancel_processor_dlq_records_total", category="invalid_event") == 1
    assert total("messaging_client_sent_messages_total") == 5
    assert total("cancel_processor_provider_retries_total", category="rate_limited") == 2
    assert total("cancel_processor_ready") == 1
    assert {
        labels["provider"] for labels, _ in scraped["http_client_request_duration_seconds_count"]
    } >= {
        "shipstation",
        "mvmnt",
    }
    lag = scraped["cancel_processor_consumer_lag"]
    # The input topic's, and the retry topic's (its lag is how far parks are from read back).
    assert {labels["messaging_destination_name"] for labels, _ in lag} == {
        cluster.kafka.input_topic,
        cluster.kafka.retry_topic,
    }
    # The label sets as the live service exports them (the contract's, plus what the
    # semantic conventions require).
    assert label_sets(scraped) == {name: set(labels) for name, labels in SERIES_LABELS.items()}
    waits = "cancel_processor_rate_limiter_wait_duration_seconds_count"
    assert label_values(scraped, waits, "limiter") >= {"slot", "token"}
    consumed = "messaging_client_consumed_messages_total"
    assert label_values(scraped, consumed, "messaging_system") == {"kafka"}
