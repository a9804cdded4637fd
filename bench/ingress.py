"""Benchmark of the webhook ingress: one ``cancel-processor ingress`` process, signed requests.

    python -m bench.ingress [--seconds 10] [--concurrency 64] [--out bench-results.json]

Starts an Apache Kafka node and one ingress process (the real command, default settings but
loopback), then fires signed
``POST /v1/order-cancelled`` requests, each a new event, from ``--concurrency`` aiohttp
clients for ``--seconds`` (after a warm-up that is not counted). Reports accepted webhooks per
second and the latency percentiles of the accepted ones, checks that every accepted event is
on the topic, and merges the figures under ``"ingress"`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import broker
from bench.procs import cpu_seconds, machine, peak_rss_mb, py_spy
from consumer.config import KafkaSettings
from consumer.core.examples import order_cancelled_example
from consumer.ingress.server import ROUTE
from consumer.ingress.signature import SIGNATURE_HEADER, SOURCE_HEADER, sign
from consumer.tools.embedded_broker import free_port
from consumer.tools.topics import ensure_topics

TARGET_PER_S: Final = 2000
SECRET: Final = "bench-webhook-secret-0123456789"
SOURCE: Final = "bench"
PARTITIONS: Final = 6
RESULTS_FILE: Final = "bench-results.json"

CONFIG: Final = """
[kafka]
bootstrap_servers = "{bootstrap}"
input_topic = "{topic}"

[telemetry]
log_format = "json"

[ingress]
host = "127.0.0.1"
port = {port}
# Nothing routes here to be drained away: leave as soon as the run is over.
shutdown_delay_seconds = 0

[ingress.sources.{source}]
secret = "${{BENCH_INGRESS_SECRET}}"
"""


@dataclass
class Tally:
    counting: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    accepted_ids: list[str] = field(default_factory=list)


def body_for(n: int, prefix: str) -> tuple[str, bytes]:
    event_id = str(uuid.uuid4())
    body = orjson.dumps(
        order_cancelled_example(
            event_id=event_id,
            order_id=f"SO-{prefix}-{n % 5000}",
            shipments=[{"provider": "shipstation", "shipment_id": f"se-{prefix}-{n}"}],
        )
    )
    return event_id, body


async def client_loop(
    http: aiohttp.ClientSession, url: str, worker: int, stop_at: float, tally: Tally
) -> None:
    secret = SECRET.encode()
    n = worker
    while time.monotonic() < stop_at:
        event_id, body = body_for(n, f"w{worker}")
        n += 1_000
        headers = {
            "Content-Type": "application/json",
            SOURCE_HEADER: SOURCE,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        }
        started = time.perf_counter()
        try:
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        elapsed = time.perf_counter() - started
        if tally.counting:
            tally.statuses[status] += 1
            if status == 202:
                tally.latencies.append(elapsed)
                tally.accepted_ids.append(event_id)


async def fire(url: str, concurrency: int, warmup: float, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        stop_at = time.monotonic() + warmup + seconds
        workers = [
            asyncio.create_task(client_loop(http, url + ROUTE, w, stop_at, tally))
            for w in range(concurrency)
        ]
        await asyncio.sleep(warmup)
        tally.counting = True
        started = time.monotonic()
        await asyncio.gather(*workers)
        # The last requests started before stop_at; count until they all finished.
        measured = time.monotonic() - started
    return tally, measured


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


async def records_on_topic(kafka: KafkaSettings, wanted: set[str], timeout: float) -> int:
    """How many of ``wanted`` event ids are on the topic (read from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    found: set[str] = set()
    try:
        partitions = [TopicPartition(kafka.input_topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while wanted - found and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        found.add(orjson.loads(record.value)["event_id"])
    finally:
        await consumer.stop()
    return len(wanted & found)


@contextlib.contextmanager
def ingress_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "BENCH_INGRESS_SECRET": SECRET}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer", "ingress", "--config", str(config)],
            stdout=sink,
            stderr=sink,
            env=env,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the ingress exited with code {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the ingress did not become ready")


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with broker.kafka() as bootstrap:
        tag = uuid.uuid4().hex[:8]
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            input_topic=f"orders.cancelled.ingress-bench.{tag}",
            cancelled_topic=f"shipments.cancelled.ingress-bench.{tag}",
            failed_topic=f"shipments.cancel-failed.ingress-bench.{tag}",
            dlq_topic=f"orders.cancelled.dlq.ingress-bench.{tag}",
            retry_topic=f"orders.cancelled.retry.ingress-bench.{tag}",
        )
        await ensure_topics(kafka, partitions=PARTITIONS)
        port = free_port()
        config = workdir / "ingress.toml"
        config.write_text(
            CONFIG.format(bootstrap=bootstrap, topic=kafka.input_topic, port=port, source=SOURCE),
            encoding="utf-8",
        )
        url = f"http://127.0.0.1:{port}"
        with ingress_process(config, workdir / "ingress.log") as process:
            await wait_ready(url, process)
            profiler = start_profiler(process.pid, workdir) if args.profile else None
            cpu_before = cpu_seconds(process.pid)
            tally, measured = await fire(url, args.concurrency, args.warmup, args.seconds)
            cpu_used = cpu_seconds(process.pid) - cpu_before
            rss = peak_rss_mb(process.pid)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
        accepted = len(tally.accepted_ids)
        on_topic = await records_on_topic(kafka, set(tally.accepted_ids), timeout=60)

    latencies = sorted(tally.latencies)
    per_s = accepted / measured if measured else 0.0
    return {
        "accepted_per_s": round(per_s, 1),
        "target_per_s": TARGET_PER_S,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p90": round(percentile(latencies, 0.90) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(latencies[-1] * 1000, 2) if latencies else None,
        },
        "accepted": accepted,
        "accepted_and_on_topic": on_topic,
        "statuses": {str(status): count for status, count in sorted(tally.statuses.items())},
        "seconds": round(measured, 2),
        "concurrency": args.concurrency,
        "ingress_cpu_seconds_per_1000": round(cpu_used / accepted * 1000, 3) if accepted else None,
        "ingress_peak_rss_mb": round(rss, 1) if rss is not None else None,
        "machine": machine(),
    }


def start_profiler(pid: int, workdir: Path) -> subprocess.Popen[bytes]:
    """py-spy on the ingress process while the load runs (``--profile``)."""
    out = workdir / "ingress.speedscope.json"
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--format", "speedscope", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def merge_results(path: Path, figures: dict[str, Any]) -> None:
    results: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(orjson.JSONDecodeError):
            loaded = orjson.loads(path.read_bytes())
            if isinstance(loaded, dict):
                results = loaded
    results["ingress"] = figures
    path.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load time")
    parser.add_argument("--warmup", type=float, default=2.0, help="load not counted, first")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--out", default=RESULTS_FILE, help="JSON file to merge into")
    parser.add_argument("--profile", action="store_true", help="py-spy the ingress (kept)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ingress-bench-"))
    figures = asyncio.run(run(args, workdir))
    merge_results(Path(args.out), figures)
    if not args.profile:
        shutil.rmtree(workdir, ignore_errors=True)
    latency = figures["latency_ms"]
    print(
        f"ingress: {figures['accepted_per_s']:.0f} accepted webhooks/s "
        f"(target {TARGET_PER_S}), p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"{figures['accepted_and_on_topic']}/{figures['accepted']} on the topic, "
        f"statuses {figures['statuses']}; figures merged into {args.out}"
        + (f"; profile and log in {workdir}" if args.profile else "")
    )
    misses = []
    if figures["accepted_per_s"] < TARGET_PER_S:
        misses.append(f"ingress below {TARGET_PER_S} webhooks/s")
    if figures["accepted_and_on_topic"] != figures["accepted"]:
        misses.append("an accepted webhook is missing from the topic")
    for miss in misses:
        print(f"target missed: {miss}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
