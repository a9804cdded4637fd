"""The processor's own CPU per event, without the broker, the simulator or the network.

    python -m bench.inprocess [--events 20000] [--runs 3] [--no-tracing]

The real runner, canceller and provider adapters (through the account's rate limiter and
concurrency cap, tracing into a ``BatchSpanProcessor`` that drops the spans, the metrics
SDK, garbage collection on the clock of ``run``) handle the bench's events in this process.
Kafka is the in-memory clients of ``consumer.kafka.memory`` and each provider answers
at once through ``httpx.MockTransport``. Prints the CPU per event of each run and the best.

On a shared machine ``make bench`` moved by a third between runs and this by about 15 %:
compare the best of several runs. It is what the per-event costs in docs/performance.md
were measured with. It leaves out the socket work (HTTP, Kafka) and the broker's and
simulator's share of the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import orjson
from aiokafka import TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from bench import load
from bench.processor import DropSpans
from bench.run import write_config
from consumer import app
from consumer.config import load_settings
from consumer.kafka.memory import (
    MemoryConsumer,
    MemoryProducer,
    consumer_record,
    memory_clients,
    run_until,
)
from consumer.observability.metrics import Metrics
from consumer.observability.telemetry import build_meter_provider, build_tracer_provider
from consumer.runtime.gc_schedule import clocked_collections

_JSON = {"content-type": "application/json"}
_SHIPMENT = orjson.dumps({"id": "SHP-1", "status": "CANCELED"})
_TOKEN = orjson.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 3600})


def answer(request: httpx.Request) -> httpx.Response:
    """What the simulator answers a plain cancel (or token request), at once."""
    path = request.url.path
    if path.endswith("/oauth2/token"):
        return httpx.Response(200, content=_TOKEN, headers=_JSON)
    if "/shipstation/" in path:
        return httpx.Response(204, headers={"x-request-id": "req-1"})
    return httpx.Response(200, content=_SHIPMENT, headers={**_JSON, "x-request-id": "req-2"})


def instant_transport(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(answer)


async def one_run(events: int, tracing: bool, workdir: Path) -> float:
    """CPU seconds per event for handling ``events`` events, start-up left out."""
    kafka = load.Topics("inprocess").kafka("127.0.0.1:9")
    settings = load_settings(write_config(workdir / "run.toml", kafka, "http://sim.test", 0), {})
    partition = TopicPartition(kafka.input_topic, 0)
    records = [
        consumer_record(
            partition, offset, value, key=key, headers=[("traceparent", load.traceparent())]
        )
        for offset, (key, value, _) in enumerate(load.events(events, events // 4, "in"))
    ]
    if tracing:
        tracer_provider = build_tracer_provider(settings.telemetry)
        tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    else:
        tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    meter_provider = build_meter_provider(settings.telemetry)
    metrics = Metrics(meter_provider)
    tracer = tracer_provider.get_tracer("consumer")
    # The accounts are built as ``run`` builds them, over a transport that answers at once.
    original_transport = app.provider_transport  # type: ignore[attr-defined]
    app.provider_transport = instant_transport  # type: ignore[attr-defined]
    try:
        async with AsyncExitStack() as stack, clocked_collections():
            producer = MemoryProducer()
            runner = await app.build_runner(
                settings,
                stack,
                tracer,
                metrics,
                clients=memory_clients(MemoryConsumer(partition, records), producer),
            )
            started = time.process_time()
            await run_until(runner.run, lambda: len(producer.sent) >= events, timeout=600)
            return (time.process_time() - started) / events
    finally:
        app.provider_transport = original_transport  # type: ignore[attr-defined]
        meter_provider.shutdown()
        tracer_provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-tracing", action="store_true", help="the sampler off: no spans")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="cancel-inprocess-") as workdir:
        for run in range(1, args.runs + 1):
            per_event = asyncio.run(one_run(args.events, not args.no_tracing, Path(workdir)))
            results.append(per_event)
            print(f"run {run}: {per_event * 1e6:.0f} µs of CPU per event", flush=True)
    print(f"best of {args.runs}: {min(results) * 1e6:.0f} µs of CPU per event")


if __name__ == "__main__":
    main()
