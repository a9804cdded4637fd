"""The ops endpoints, and the contract's Prometheus names as scraped from /metrics after the
real runner, canceller and HTTP layer recorded them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
from aiohttp import web
from aiokafka import TopicPartition
from opentelemetry.sdk.trace import TracerProvider

from consumer import app
from consumer.config import TelemetrySettings, settings_from_mapping
from consumer.core.examples import order_cancelled_example
from consumer.kafka.memory import (
    MemoryConsumer,
    MemoryProducer,
    consumer_record,
    memory_clients,
    run_until,
)
from consumer.observability.metrics import AccountPressure, Metrics
from consumer.observability.ops_http import add_ops_routes, serve_ops
from consumer.observability.telemetry import build_meter_provider
from tests.providers.provider_fakes import FakeApi, reply
from tests.telemetry.series import SERIES_LABELS, label_sets, label_values, samples

INPUT = TopicPartition("orders.cancelled", 0)


class FakeProcessor:
    """What the gauges and /readyz read from a running processor."""

    def __init__(self) -> None:
        self.ready = (False, "not joined to the consumer group yet")

    @property
    def events_in_flight(self) -> int:
        return 3

    def lag(self) -> Mapping[tuple[str, int], int]:
        return {("orders.cancelled", 0): 7, ("orders.cancelled", 1): 0}

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def back_pressure(self) -> Mapping[str, AccountPressure]:
        return {"shipstation": AccountPressure(2, 30.0, circuit_state=2, pace_per_minute=100.0)}


@pytest.fixture
def processor() -> FakeProcessor:
    return FakeProcessor()


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    provider = build_meter_provider(TelemetrySettings())
    yield Metrics(provider)
    provider.shutdown()  # unregisters from the default registry


@pytest.fixture
async def ops(processor: FakeProcessor) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_ops("127.0.0.1", 0, processor.readiness) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        yield client


def order(key: str, shipment_id: str) -> bytes:
    return orjson.dumps(
        order_cancelled_example(
            event_id=str(uuid.uuid4()),
            order_id=key,
            shipments=[{"provider": "ss-main", "shipment_id": shipment_id}],
        )
    )


async def test_metrics_has_every_contract_series_with_its_labels(
    metrics: Metrics, ops: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded by the service's own code: the runner over fake Kafka clients, the accounts
    as ``app.open_accounts`` builds them (rate limit, concurrency cap) over a fake API."""
    api = FakeApi()
    api.on("PUT", "/v2/shipments/se-1/cancel", reply(204))
    api.on("PUT", "/v2/shipments/se-9/cancel", reply(404, {"request_id": "r-9", "errors": []}))
    api.on("PUT", "/v2/shipments/se-5/cancel", reply(503), reply(204))

    def fake_network(_base_url: str, _max_connections: int) -> httpx.AsyncBaseTransport:
        return api.transport()

    monkeypatch.setattr(app, "provider_transport", fake_network)
    settings = settings_from_mapping(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9", "commit_interval_seconds": 0.05},
            "processing": {"retry": {"backoff_initial_seconds": 0}},
            "providers": {
                "ss-main": {
                    "kind": "shipstation",
                    "base_url": "https://ss.test",
                    "api_key": "k-1",
                    "rate_limit_per_minute": 6000,
                }
            },
        },
        {},
    )
    consumer = MemoryConsumer(
        INPUT,
        [
            consumer_record(INPUT, 0, order("SO-1", "se-1"), key=b"SO-1"),
            consumer_record(INPUT, 1, order("SO-2", "se-9"), key=b"SO-2"),
            consumer_record(INPUT, 2, order("SO-3", "se-5"), key=b"SO-3"),
            consumer_record(INPUT, 3, b"{not json", key=b"SO-4"),
        ],
    )
    producer = MemoryProducer()
    tracer = TracerProvider().get_tracer("test")
    async with AsyncExitStack() as stack:
        runner = await app.build_runner(
            settings, stack, tracer, metrics, clients=memory_clients(consumer, producer)
        )
        # Until every output is acknowledged and the lag of the partition was measured.
        await run_until(runner.run, lambda: len(producer.sent) == 4 and bool(runner.lag()))

    response = await ops.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    scraped = samples(response.text)
    assert label_sets(scraped) == {name: set(labels) for name, labels in SERIES_LABELS.items()}
    consumed = "messaging_client_consumed_messages_total"
    assert label_values(scraped, consumed, "messaging_operation_name") == {"poll"}
    assert label_values(scraped, consumed, "messaging_system") == {"kafka"}
    sent = "messaging_client_sent_messages_total"
    assert label_values(scraped, sent, "messaging_operation_name") == {"send"}
    processed = "messaging_process_duration_seconds_count"
    assert label_values(scraped, processed, "messaging_operation_name") == {"process"}
    waits = "cancel_processor_rate_limiter_wait_duration_seconds_count"
    assert label_values(scraped, waits, "limiter") == {"slot", "token"}
    calls = "http_client_request_duration_seconds_count"
    assert label_values(scraped, calls, "server_port") == {"443"}
    # The exporter gives a call without error.type an empty label.
    assert label_values(scraped, calls, "error_type") == {"", "404", "503"}
    assert sum(v for _, v in scraped["cancel_processor_results_total"]) == 3
    assert scraped["cancel_processor_events_in_flight"] == [({}, 0.0)]
    assert scraped["cancel_processor_consumer_lag"] == [
        (
            {
                "messaging_destination_name": "orders.cancelled",
                "messaging_destination_partition_id": "0",
            },
            4.0,
        )
    ]


async def test_gauges_read_the_processor(
    metrics: Metrics, processor: FakeProcessor, ops: httpx.AsyncClient
) -> None:
    metrics.observe(processor)
    scraped = samples((await ops.get("/metrics")).text)
    assert [v for _, v in scraped["cancel_processor_events_in_flight"]] == [3]
    assert sorted(v for _, v in scraped["cancel_processor_consumer_lag"]) == [0, 7]
    assert [v for _, v in scraped["cancel_processor_ready"]] == [0]


async def test_ready_gauge_follows_readiness(
    metrics: Metrics, processor: FakeProcessor, ops: httpx.AsyncClient
) -> None:
    metrics.observe(processor)
    processor.ready = (True, "ready")
    text = (await ops.get("/metrics")).text
    assert "cancel_processor_ready 1.0" in text


async def test_healthz_answers_while_alive(ops: httpx.AsyncClient) -> None:
    response = await ops.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_says_why_it_is_not_ready(
    processor: FakeProcessor, ops: httpx.AsyncClient
) -> None:
    response = await ops.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "reason": "not joined to the consumer group yet",
    }
    processor.ready = (True, "ready")
    response = await ops.get("/readyz")
    assert response.status_code == 200


async def test_ops_routes_can_join_another_app(processor: FakeProcessor) -> None:
    app = web.Application()
    add_ops_routes(app, processor.readiness)
    paths = {resource.canonical for resource in app.router.resources()}
    assert {"/healthz", "/readyz", "/metrics"} <= paths


async def test_a_taken_port_is_an_os_error_at_start(processor: FakeProcessor) -> None:
    async with serve_ops("127.0.0.1", 0, processor.readiness) as port:
        with pytest.raises(OSError, match="address already in use"):
            async with serve_ops("127.0.0.1", port, processor.readiness):
                pass
