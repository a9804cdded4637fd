"""The sequential baseline: the loop most teams write first, on the same libraries.

    python -m bench.baseline --config CONFIG [--seconds 10] [--max-events 5000]

Consume one record, cancel its shipments through the same provider adapters over httpx
(default transport), produce each result and wait for the ack, commit, repeat. Prints one
JSON line: events handled and events per second from the first to the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.config import load_settings
from consumer.core import headers as h
from consumer.core.errors import CancelError
from consumer.core.events import (
    OrderCancelled,
    ResultEvent,
    ShipmentCancelled,
    dump_event,
    utc_now,
)
from consumer.core.pipeline import (
    TraceRef,
    cancel_request,
    cancelled_result,
    failed_result,
    parse_order_cancelled,
    shipment_result_id,
)
from consumer.providers import build_provider


async def run(config: str, seconds: float, max_events: int) -> dict[str, float]:
    settings = load_settings(config, os.environ)
    kafka = settings.kafka
    consumer = AIOKafkaConsumer(
        kafka.input_topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=False
    )
    await consumer.start()
    await producer.start()
    handled = 0
    first = last = 0.0
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            providers = {
                name: build_provider(name, account, http)
                for name, account in settings.providers.items()
            }
            while handled < max_events and (not handled or last - first < seconds):
                record = await consumer.getone()
                event = parse_order_cancelled(record.value, settings.processing.max_event_bytes)
                if not isinstance(event, OrderCancelled):
                    raise RuntimeError(f"unexpected invalid input: {event.message}")
                trace = TraceRef(uuid.uuid4().hex, uuid.uuid4().hex[:16])
                for shipment in event.shipments:
                    provider = providers[shipment.provider]
                    result_id = shipment_result_id(event, shipment)
                    try:
                        outcome = await provider.cancel(cancel_request(event, shipment, result_id))
                    except CancelError as exc:
                        result: ResultEvent = failed_result(
                            event,
                            shipment,
                            result_id=result_id,
                            provider_kind=provider.kind,
                            error=exc,
                            attempts=1,
                            trace=trace,
                            now=utc_now(),
                        )
                    else:
                        result = cancelled_result(
                            event,
                            shipment,
                            result_id=result_id,
                            provider_kind=provider.kind,
                            outcome=outcome,
                            attempts=1,
                            trace=trace,
                            now=utc_now(),
                        )
                    topic = (
                        kafka.cancelled_topic
                        if isinstance(result, ShipmentCancelled)
                        else kafka.failed_topic
                    )
                    await producer.send_and_wait(
                        topic,
                        dump_event(result),
                        key=event.order_id.encode(),
                        headers=[(h.SOURCE_EVENT_ID, str(event.event_id).encode())],
                    )
                await consumer.commit()
                last = time.monotonic()
                if not handled:
                    first = last
                handled += 1
    finally:
        await producer.stop()
        await consumer.stop()
    elapsed = last - first
    # The first event's own time is not inside [first, last]: count the ones after it.
    rate = (handled - 1) / elapsed if elapsed > 0 else 0.0
    return {"events": handled, "seconds": round(elapsed, 3), "events_per_s": round(rate, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-events", type=int, default=5000)
    args = parser.parse_args()
    figures = asyncio.run(run(args.config, args.seconds, args.max_events))
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")


if __name__ == "__main__":
    main()
