"""Shared by the ingress tests: signing, a recording publisher, an app with in-memory telemetry."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.config import IngressSettings
from consumer.core.examples import order_cancelled_example
from consumer.ingress.publisher import Delivery, PublishError, Record
from consumer.ingress.server import build_app
from consumer.ingress.signature import SIGNATURE_HEADER, SOURCE_HEADER, sign

SOURCE = "erp"
SECRET = b"erp-webhook-secret-0123456789"
OLD_SECRET = b"erp-webhook-secret-previous-00"
OTHER_SOURCE = "tms"
OTHER_SECRET = b"tms-webhook-secret-9876543210"
NOW = 1_795_255_200.0
TOPIC = "orders.cancelled"


def ingress_settings(**overrides: Any) -> IngressSettings:
    return IngressSettings.model_validate(
        {
            "sources": {
                SOURCE: {"secret": SECRET.decode()},
                OTHER_SOURCE: {"secret": OTHER_SECRET.decode()},
            },
            **overrides,
        }
    )


def event_body(**overrides: Any) -> bytes:
    return orjson.dumps(order_cancelled_example(**overrides))


def signed_headers(
    body: bytes,
    *,
    secret: bytes | list[bytes] = SECRET,
    source: str = SOURCE,
    timestamp: float = NOW,
    **extra: str,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        SOURCE_HEADER: source,
        SIGNATURE_HEADER: sign(secret, body, int(timestamp)),
        **extra,
    }


class RecordingPublisher:
    """Keeps what it was asked to publish; can fail, or hold the broker's answers until
    ``gate`` is set (a record is kept when it is answered)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.calls = 0
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.ready: tuple[bool, str] = (True, "ok")
        self.started = False
        self.stopped = False
        self.entered = asyncio.Event()
        self.answered = asyncio.Event()
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, record: Record) -> asyncio.Future[Delivery]:
        self.calls += 1
        self.entered.set()
        ack: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._answer(record, ack))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)
        return ack

    async def _answer(self, record: Record, ack: asyncio.Future[Delivery]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            ack.set_exception(self.failure)
        else:
            self.records.append(record)
            ack.set_result(Delivery(partition=0, offset=len(self.records) - 1))
        self.answered.set()

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def fail_with_broker_down(self) -> None:
        self.failure = PublishError("the broker did not acknowledge within 10 s")


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


def make_app(
    publisher: RecordingPublisher,
    telemetry: Telemetry,
    *,
    settings: IngressSettings | None = None,
    clock: Any = lambda: NOW,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    return build_app(
        settings or ingress_settings(),
        topic=TOPIC,
        publisher=publisher,
        tracer=(tracer_provider or telemetry.tracer_provider).get_tracer("test"),
        meter=telemetry.meter_provider.get_meter("test"),
        clock=clock,
    )
