"""``cancel-processor demo``: the whole product on one machine, results printed as they arrive.

Starts the embedded broker (or uses ``KAFKA_BOOTSTRAP_SERVERS``), the provider simulator and
the processor in this process, publishes sample events covering every kind of outcome and
prints one table row per result. Exits 0 when every expected result arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from consumer.app import run_service
from consumer.config import BOOTSTRAP_ENV, Settings, settings_from_mapping
from consumer.core import headers as h
from consumer.core.examples import order_cancelled_example
from consumer.kafka.clients import client_options, started, topic_partitions
from consumer.observability.logs import configure_logging
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import EmbeddedBroker
from consumer.tools.topics import ensure_topics


@dataclass(frozen=True, slots=True)
class Sample:
    """One input record and the results it must produce."""

    title: str
    value: bytes
    key: str
    # Result records it must produce (result events plus DLQ copies).
    results: int = 1


def _event(order_id: str, *shipments: dict[str, str], **extra: Any) -> bytes:
    return orjson.dumps(
        order_cancelled_example(
            event_id=str(uuid.uuid4()), order_id=order_id, shipments=list(shipments), **extra
        )
    )


def _ss(shipment_id: str) -> dict[str, str]:
    return {"provider": "shipstation", "shipment_id": shipment_id}


def _mv(shipment_id: str) -> dict[str, str]:
    return {"provider": "mvmnt", "shipment_id": shipment_id, "lookup": "key"}


def samples() -> list[Sample]:
    def one(title: str, order: str, shipment: dict[str, str]) -> Sample:
        return Sample(title, _event(order, shipment), order)

    invalid = orjson.dumps({"event_type": "order.cancelled", "order_id": "SO-1012"})
    return [
        one("cancelled", "SO-1001", _ss("se-1001")),
        one("cancelled", "SO-1002", _mv("SHP-1002")),
        one("already cancelled", "SO-1003", _ss("se-cancelled-1003")),
        one("already cancelled", "SO-1004", _mv("SHP-cancelled-1004")),
        one("not found", "SO-1005", _ss("se-notfound-1005")),
        one("delivered", "SO-1006", _mv("SHP-delivered-1006")),
        one("label not voided", "SO-1007", _ss("se-labeled-1007")),
        one("rate limited, then cancelled", "SO-1008", _ss("se-ratelimit2-1008")),
        one("503, then cancelled", "SO-1009", _mv("SHP-flaky1-1009")),
        Sample("two providers", _event("SO-1010", _ss("se-1010"), _mv("SHP-1010")), "SO-1010", 2),
        one("unknown provider", "SO-1011", {"provider": "fedex", "shipment_id": "FX-1011"}),
        # Dead-lettered, and its order still gets a cancel-failed.
        Sample("invalid event", invalid, "SO-1012", 2),
        Sample("not JSON", b"{not json", "SO-1013"),
    ]


def demo_settings(bootstrap: str, simulator: Simulator, suffix: str) -> Settings:
    return settings_from_mapping(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"demo-processor{suffix}",
                "input_topic": f"orders.cancelled{suffix}",
                "cancelled_topic": f"shipments.cancelled{suffix}",
                "failed_topic": f"shipments.cancel-failed{suffix}",
                "dlq_topic": f"orders.cancelled.dlq{suffix}",
                "retry_topic": f"orders.cancelled.retry{suffix}",
                # The private embedded broker (no suffix) has no idempotent producer; an
                # external cluster (KAFKA_BOOTSTRAP_SERVERS) is Kafka.
                "enable_idempotence": bool(suffix),
                "commit_interval_seconds": 0.5,
                # Tansu holds a group's first join for half the session timeout.
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "processing": {"retry": {"backoff_initial_seconds": 0.1}},
            "telemetry": {"log_level": "ERROR", "log_format": "text"},
            "providers": simulator.provider_accounts(),
        },
        {},
        source="demo",
    )


@contextlib.asynccontextmanager
async def _bootstrap() -> AsyncIterator[tuple[str, str]]:
    """The broker to use and a topic suffix (empty on the private embedded broker)."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external, f".demo-{uuid.uuid4().hex[:8]}"
        return
    async with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers, ""


async def run_demo(timeout: float = 60.0) -> int:
    """0 when every expected result arrived, 1 when not, 130 on Ctrl-C."""
    configure_logging("ERROR", "text")
    interrupted = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        # A flag besides the cancellation: a library call that swallows the cancellation
        # must not let the demo carry on and exit 0.
        interrupted.set()
        main.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        code = await _run_demo(timeout, interrupted)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
        return 130
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return 130 if interrupted.is_set() else code


async def _run_demo(timeout: float, interrupted: asyncio.Event) -> int:
    out = sys.stdout
    async with _bootstrap() as (bootstrap, suffix), Simulator() as simulator:
        settings = demo_settings(bootstrap, simulator, suffix)
        kafka = settings.kafka
        print(f"broker {bootstrap} · simulator on port {simulator.port}", file=out)
        await ensure_topics(kafka, partitions=3)
        stop = asyncio.Event()
        processor = asyncio.create_task(run_service(settings, stop))
        try:
            return await _publish_and_watch(settings, samples(), timeout, out, interrupted)
        finally:
            stop.set()
            await processor


async def _publish_and_watch(
    settings: Settings, batch: list[Sample], timeout: float, out: Any, interrupted: asyncio.Event
) -> int:
    kafka = settings.kafka
    watcher = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    async with started(watcher):
        partitions = await topic_partitions(
            kafka, (kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic)
        )
        watcher.assign(partitions)
        await watcher.seek_to_beginning(*partitions)
        await _publish(settings, batch)
        expected = sum(s.results for s in batch)
        cases = {s.key: s.title for s in batch}
        print(f"published {len(batch)} events, expecting {expected} results\n", file=out)
        print(
            _row("order", "case", "provider", "shipment", "result", "tries", "trace id", "detail"),
            file=out,
        )
        print(_row(*("-" * width for width in _WIDTHS)), file=out)
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < expected and time.monotonic() < deadline and not interrupted.is_set():
            batches = await watcher.getmany(timeout_ms=250)
            for records in batches.values():
                for record in records:
                    row = _describe(record, kafka.dlq_topic, cases)
                    print(row, file=out, flush=True)
                    seen += 1
        if interrupted.is_set():
            return 130
        if seen < expected:
            print(
                f"\nerror: only {seen} of {expected} results arrived within {timeout:g}s; "
                "is the processor running? (see the log lines above)",
                file=sys.stderr,
            )
            return 1
        print(f"\nall {expected} results arrived", file=out)
        return 0


async def _publish(settings: Settings, batch: list[Sample]) -> None:
    producer = AIOKafkaProducer(
        **client_options(settings.kafka),
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
    )
    async with started(producer):
        for sample in batch:
            await producer.send_and_wait(
                settings.kafka.input_topic, sample.value, key=sample.key.encode()
            )


_WIDTHS = (7, 28, 11, 18, 24, 5, 32, 44)


def _row(*cells: str) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, _WIDTHS, strict=True))


def _describe(record: ConsumerRecord[bytes, bytes], dlq_topic: str, cases: dict[str, str]) -> str:
    order = (record.key or b"").decode(errors="replace")
    case = cases.get(order, "")
    if record.topic == dlq_topic:
        headers = dict(record.headers)
        reason = headers.get(h.DLQ_ERROR_MESSAGE, b"").decode(errors="replace")
        # traceparent = version-traceid-spanid-flags
        traceparent = headers.get(h.TRACEPARENT, b"").decode(errors="replace").split("-")
        trace_id = traceparent[1] if len(traceparent) == 4 else "-"
        return _row(order, case, "-", "-", "dead-lettered", "-", trace_id, reason[:44])
    result = orjson.loads(record.value or b"{}")
    shipment = result.get("shipment_id") or "-"
    provider = result.get("provider") or "-"
    if "error" in result:
        error = result["error"]
        retry = " (retryable)" if error.get("retryable") else ""
        return _row(
            order,
            case,
            provider,
            shipment,
            f"failed: {error['category']}",
            str(result["attempts"]),
            result["trace_id"],
            f"{error['message'][: 44 - len(retry)]}{retry}",
        )
    return _row(
        order,
        case,
        provider,
        shipment,
        result["outcome"],
        str(result["attempts"]),
        result["trace_id"],
        "-",
    )
