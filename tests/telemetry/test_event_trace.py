"""The span tree of one input record, trace continuity into the result headers, and the
per-event metrics: the real runner consuming, handling, publishing and committing, over
fake Kafka clients given through its ``clients`` factory."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller, ProviderAccount
from consumer.core.examples import order_cancelled_example
from consumer.core.retry import AccountGate, RetryPolicy
from consumer.kafka.memory import (
    MemoryConsumer,
    MemoryProducer,
    SendHook,
    memory_clients,
    run_until,
)
from consumer.kafka.memory import consumer_record as fake_record
from consumer.kafka.runner import Runner
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings
from tests.providers.provider_fakes import FakeApi, reply
from tests.telemetry.conftest import Telemetry

TOPIC = "orders.cancelled"
DLQ = "orders.cancelled.dlq"
PARTITION = TopicPartition(TOPIC, 2)
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01".encode()
KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:9", group_id="cancel-group")


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def canceller(telemetry: Telemetry, api: FakeApi) -> AsyncIterator[Canceller]:
    async with api.client() as client:
        provider = ShipStationProvider(
            "ss-main",
            ShipStationSettings(kind="shipstation", base_url="https://ss.test", api_key="k-1"),
            client,
        )
        yield Canceller(
            {"ss-main": ProviderAccount("ss-main", provider, AccountGate(4))},
            RetryPolicy(backoff_initial_seconds=0, budget_seconds=5),
            now=lambda: datetime(2026, 11, 21, tzinfo=UTC),
            tracer=telemetry.tracer,
            metrics=telemetry.metrics,
        )


@dataclass
class Processed:
    producer: MemoryProducer
    consumer: MemoryConsumer


Consume = Callable[..., Any]


@pytest.fixture
def consume(telemetry: Telemetry, canceller: Canceller) -> Consume:
    """Run the real runner over these input records until it has produced ``outputs``
    records, then stop it as SIGTERM would."""

    async def run(
        *records: ConsumerRecord[bytes, bytes],
        outputs: int,
        before_send: SendHook | None = None,
    ) -> Processed:
        consumer = MemoryConsumer(PARTITION, list(records))
        producer = MemoryProducer(before_send)
        runner = Runner(
            KAFKA,
            ProcessingSettings(),
            canceller,
            telemetry.tracer,
            metrics=telemetry.metrics,
            clients=memory_clients(consumer, producer),
        )
        await run_until(runner.run, lambda: len(producer.sent) >= outputs)
        # Every record handled and committed past.
        assert consumer.committed == {PARTITION: max(r.offset for r in records) + 1}
        return Processed(producer, consumer)

    return run


def record(
    value: bytes | None, *, key: bytes | None = b"SO-1", headers: list[tuple[str, bytes]]
) -> ConsumerRecord[bytes, bytes]:
    # Written 1.5 s before it is handled.
    return fake_record(
        PARTITION,
        41,
        value,
        key=key,
        headers=headers,
        timestamp_ms=int(time.time() * 1000) - 1500,
    )


def order(*shipments: str, provider: str = "ss-main") -> bytes:
    return orjson.dumps(
        order_cancelled_example(
            event_id=str(uuid.uuid4()),
            order_id="SO-1",
            shipments=[{"provider": provider, "shipment_id": s} for s in shipments],
        )
    )


def traceparent_ids(headers: dict[str, bytes]) -> tuple[str, str]:
    _version, trace_id, span_id, _flags = headers["traceparent"].decode().split("-")
    return trace_id, span_id


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


async def test_span_tree_continues_the_upstream_trace_into_the_result_headers(
    telemetry: Telemetry, api: FakeApi, consume: Consume
) -> None:
    api.on("PUT", "/v2/shipments/se-1/cancel", reply(204))
    api.on("PUT", "/v2/shipments/se-2/cancel", reply(204))
    done = await consume(
        record(order("se-1", "se-2"), headers=[("traceparent", TRACEPARENT)]), outputs=2
    )
    producer = done.producer

    process = telemetry.one("process orders.cancelled")
    assert process.kind == SpanKind.CONSUMER
    assert f"{process.context.trace_id:032x}" == UPSTREAM_TRACE
    assert parent_of(process) == int(UPSTREAM_SPAN, 16)
    [link] = process.links
    assert f"{link.context.span_id:016x}" == UPSTREAM_SPAN
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": TOPIC,
        "messaging.destination.partition.id": "2",
        "messaging.consumer.group.name": "cancel-group",
        "messaging.kafka.offset": 41,
        "messaging.kafka.message.key": "SO-1",
        "order.id": "SO-1",
        "cancel.outcome": "cancelled",
    }
    assert process.status.status_code == StatusCode.UNSET

    shipments = [s for s in telemetry.spans() if s.name == "cancel ss-main"]
    assert len(shipments) == 2
    assert all(parent_of(s) == process.context.span_id for s in shipments)
    clients = telemetry.kind(SpanKind.CLIENT)
    assert len(clients) == 2
    assert {parent_of(c) for c in clients} == {s.context.span_id for s in shipments}

    sends = telemetry.kind(SpanKind.PRODUCER)
    assert [s.name for s in sends] == ["send shipments.cancelled"] * 2
    assert all(parent_of(s) == process.context.span_id for s in sends)
    assert sends[0].attributes is not None
    assert sends[0].attributes["messaging.operation.type"] == "send"
    assert sends[0].attributes["messaging.kafka.message.key"] == "SO-1"
    assert "messaging.kafka.offset" in sends[0].attributes
    # Each result names its own PRODUCER span, in the ERP's trace.
    headers = producer.headers_of("shipments.cancelled")
    assert {traceparent_ids(h) for h in headers} == {
        (UPSTREAM_TRACE, f"{s.context.span_id:016x}") for s in sends
    }
    bodies = [orjson.loads(v or b"") for t, _, v, _ in producer.sent]
    assert {b["trace_id"] for b in bodies} == {UPSTREAM_TRACE}


@pytest.mark.parametrize(
    "traceparent",
    [
        b"00-not-a-trace-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"\xff\xfe",
        b"00-" + b"a" * 600,
    ],
    ids=["garbage", "zero trace id", "not ascii", "oversize"],
)
async def test_a_malformed_traceparent_starts_a_new_trace_without_error(
    telemetry: Telemetry, api: FakeApi, consume: Consume, traceparent: bytes
) -> None:
    api.on("PUT", "/v2/shipments/se-1/cancel", reply(204))
    done = await consume(record(order("se-1"), headers=[("traceparent", traceparent)]), outputs=1)
    producer = done.producer

    process = telemetry.one("process orders.cancelled")
    assert process.parent is None
    assert process.links == ()
    assert process.status.status_code == StatusCode.UNSET
    [headers] = producer.headers_of("shipments.cancelled")
    assert traceparent_ids(headers)[0] == f"{process.context.trace_id:032x}"


async def test_a_failed_cancel_marks_the_event_and_counts_by_category(
    telemetry: Telemetry, api: FakeApi, consume: Consume
) -> None:
    api.on("PUT", "/v2/shipments/se-9/cancel", reply(404, {"request_id": "r-9", "errors": []}))
    done = await consume(record(order("se-9"), headers=[]), outputs=1)
    producer = done.producer

    process = telemetry.one("process orders.cancelled")
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "not_found"
    assert process.attributes["cancel.outcome"] == "failed"
    assert process.attributes["cancel.provider"] == "ss-main"
    assert process.attributes["cancel.shipment_id"] == "se-9"
    [failed] = [orjson.loads(v or b"") for t, _, v, _ in producer.sent]
    assert failed["trace_id"] == f"{process.context.trace_id:032x}"
    # One shipment: the event's span is the shipment's too, and holds the failure.
    assert failed["span_id"] == f"{process.context.span_id:016x}"
    assert process.attributes["cancel.attempts"] == 1
    assert (
        telemetry.total(
            "cancel_processor.results", provider="ss-main", outcome="failed", category="not_found"
        )
        == 1
    )
    assert telemetry.total("messaging.client.sent.messages") == 1


async def test_a_retried_then_succeeded_event_is_not_failed(
    telemetry: Telemetry, api: FakeApi, consume: Consume
) -> None:
    api.on("PUT", "/v2/shipments/se-5/cancel", reply(429, headers={"retry-after": "0"}), reply(204))
    await consume(record(order("se-5"), headers=[]), outputs=1)

    process = telemetry.one("process orders.cancelled")
    assert process.status.status_code == StatusCode.UNSET
    assert process.attributes is not None
    assert process.attributes["cancel.outcome"] == "cancelled"
    assert "error.type" not in process.attributes
    assert [c.status.status_code for c in telemetry.kind(SpanKind.CLIENT)] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert telemetry.total("cancel_processor.results", outcome="cancelled", category="none") == 1
    assert telemetry.total("cancel_processor.provider.retries", category="rate_limited") == 1


async def test_an_invalid_record_is_dead_lettered_with_its_own_send_span(
    telemetry: Telemetry, consume: Consume
) -> None:
    done = await consume(record(b"{not json", headers=[("traceparent", TRACEPARENT)]), outputs=1)
    producer = done.producer

    process = telemetry.one("process orders.cancelled")
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "invalid_event"
    assert process.attributes["cancel.outcome"] == "dead_lettered"
    assert "order.id" not in process.attributes  # the record names no order
    send = telemetry.one("send orders.cancelled.dlq")
    assert parent_of(send) == process.context.span_id
    [headers] = producer.headers_of("orders.cancelled.dlq")
    assert traceparent_ids(headers) == (UPSTREAM_TRACE, f"{send.context.span_id:016x}")
    assert telemetry.total("cancel_processor.dlq.records", category="invalid_event") == 1


async def test_an_invalid_record_naming_an_order_is_findable_by_it(
    telemetry: Telemetry, consume: Consume
) -> None:
    invalid = orjson.dumps({"event_type": "order.cancelled", "order_id": "SO-77"})
    done = await consume(record(invalid, headers=[]), outputs=2)

    span = telemetry.one("process orders.cancelled")
    assert span.attributes is not None
    assert span.attributes["order.id"] == "SO-77"
    assert span.attributes["cancel.outcome"] == "dead_lettered"
    [failed] = [orjson.loads(v or b"") for t, _, v, _ in done.producer.sent if t != DLQ]
    assert failed["order_id"] == "SO-77"
    assert failed["trace_id"] == f"{span.context.trace_id:032x}"


async def test_a_tombstone_is_marked_on_the_consumer_and_dlq_spans(
    telemetry: Telemetry, consume: Consume
) -> None:
    done = await consume(record(None, headers=[]), outputs=1)

    span = telemetry.one("process orders.cancelled")
    assert span.attributes is not None
    assert span.attributes["messaging.kafka.message.tombstone"] is True
    send = telemetry.one("send orders.cancelled.dlq")
    assert send.attributes is not None
    assert send.attributes["messaging.kafka.message.tombstone"] is True
    [(topic, key, value, _)] = done.producer.sent
    assert (topic, key, value) == (DLQ, b"SO-1", None)
    assert telemetry.total("cancel_processor.dlq.records", category="invalid_event") == 1


async def test_a_dlq_copy_stripped_for_size_is_still_counted(
    telemetry: Telemetry, consume: Consume
) -> None:
    async def broker_limit(topic: str, value: bytes | None) -> None:
        if topic == DLQ and value is not None:
            raise MessageSizeTooLargeError()

    done = await consume(record(b"{not json", headers=[]), outputs=1, before_send=broker_limit)

    [(topic, _, value, headers)] = done.producer.sent
    assert (topic, value) == (DLQ, None)
    assert headers["dlq-value-dropped"] == b"too-large"
    assert telemetry.total("cancel_processor.dlq.records", category="invalid_event") == 1
    assert telemetry.total("messaging.client.sent.messages") == 1


async def test_unknown_provider_names_do_not_become_metric_labels(
    telemetry: Telemetry, consume: Consume
) -> None:
    await consume(record(order("x-1", provider="free text from the ERP"), headers=[]), outputs=1)
    [(attributes, count)] = telemetry.points("cancel_processor.results")
    assert attributes == {
        "provider": "unknown",
        "outcome": "failed",
        "category": "unknown_provider",
    }
    assert count == 1


async def test_event_metrics_time_the_handling_and_the_whole_trip(
    telemetry: Telemetry, api: FakeApi, consume: Consume
) -> None:
    api.on("PUT", "/v2/shipments/se-1/cancel", reply(204))
    await consume(record(order("se-1"), headers=[]), outputs=1)

    [(attributes, count)] = telemetry.points("messaging.process.duration")
    assert attributes == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.destination.name": TOPIC,
    }
    assert count == 1
    assert telemetry.points("messaging.client.consumed.messages") == [
        (
            {
                "messaging.system": "kafka",
                "messaging.operation.name": "poll",
                "messaging.destination.name": TOPIC,
                "messaging.destination.partition.id": "2",
                "messaging.consumer.group.name": "cancel-group",
            },
            1,
        )
    ]
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    sums: dict[str, Any] = {
        m.name: m.data.data_points[0].sum  # type: ignore[union-attr]
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name in ("cancel_processor.event.duration", "messaging.process.duration")
    }
    # The record was written 1.5 s before it was handled.
    assert sums["cancel_processor.event.duration"] >= 1.5
    assert sums["messaging.process.duration"] < sums["cancel_processor.event.duration"]
    assert telemetry.points("messaging.client.sent.messages") == [
        (
            {
                "messaging.system": "kafka",
                "messaging.operation.name": "send",
                "messaging.destination.name": "shipments.cancelled",
            },
            1,
        )
    ]
