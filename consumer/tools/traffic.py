"""``cancel-processor demo-traffic``: a steady stream of sample events for dashboards.

Publishes order-cancelled events to the input topic at a fixed rate, naming the provider
accounts ``shipstation`` and ``mvmnt`` with shipment ids that steer the provider simulator
(docs/simulator.md): mostly plain cancels, plus rate limits, 5xx bursts, refusals, an
unknown provider and now and then a record that is not JSON, so every panel and alert has
data.
Never point it at a production topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count, cycle

import orjson
from aiokafka import AIOKafkaProducer

from consumer.config import KafkaSettings
from consumer.core.examples import order_cancelled_example
from consumer.kafka.clients import check_security, client_options

log = logging.getLogger(__name__)

# One round of the mix: (provider account, shipment id prefix). None: a record that is not
# JSON (dead-lettered).
_MIX: tuple[tuple[str, str] | None, ...] = (
    *(("shipstation", "se") for _ in range(6)),
    *(("mvmnt", "SHP") for _ in range(5)),
    ("shipstation", "se-ratelimit1"),
    ("mvmnt", "SHP-flaky1"),
    ("shipstation", "se-slow300"),
    ("shipstation", "se-notfound"),
    ("mvmnt", "SHP-delivered"),
    ("shipstation", "se-labeled"),
    ("mvmnt", "SHP-cancelled"),
    ("fedex", "FX"),
    None,
)


def sample_records(run: str | None = None) -> Iterator[tuple[str, bytes]]:
    """Endless (key, value) pairs following the mix; ids are unique per run."""
    run = run or uuid.uuid4().hex[:6]
    for n, shipment in zip(count(1), cycle(_MIX), strict=False):
        order_id = f"SO-{run}-{n}"
        if shipment is None:
            yield order_id, b"{not json"
            continue
        provider, prefix = shipment
        event = order_cancelled_example(
            event_id=str(uuid.uuid4()),
            occurred_at=datetime.now(UTC).isoformat(timespec="seconds"),
            order_id=order_id,
            reason="demo traffic",
            shipments=[{"provider": provider, "shipment_id": f"{prefix}-{run}-{n}"}],
        )
        yield order_id, orjson.dumps(event)


async def publish_traffic(
    kafka: KafkaSettings, *, rate: float, limit: int | None, stop: asyncio.Event
) -> int:
    """Publish ``rate`` events per second until ``stop`` is set or ``limit`` were sent."""
    # A refused login or certificate: KafkaSecurityError (a ConfigError), not "unreachable".
    await check_security(kafka)
    producer = AIOKafkaProducer(
        **client_options(kafka), acks="all", enable_idempotence=kafka.enable_idempotence
    )
    sent = 0
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    try:
        await producer.start()
        for key, value in sample_records():
            if stop.is_set() or (limit is not None and sent >= limit):
                break
            await producer.send_and_wait(kafka.input_topic, value, key=key.encode())
            sent += 1
            if sent % 100 == 0:
                log.info("published", extra={"events": sent, "topic": kafka.input_topic})
            next_at += 1 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
    finally:
        await producer.stop()
    return sent


async def run_traffic_until_signalled(
    kafka: KafkaSettings, *, rate: float, limit: int | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sent = await publish_traffic(kafka, rate=rate, limit=limit, stop=stop)
    log.info("stopped", extra={"events": sent})
    return sent
