"""``make bench``: the processor against Apache Kafka and the provider simulator.

Every scenario gets a fresh broker and simulator, each in its own process. The processor
runs as ``cancel-processor run`` in its own process (through ``bench.processor``, which
adds a ``BatchSpanProcessor`` whose exporter drops the spans; ``--traces otlp`` exports
them over OTLP/HTTP to a sink here instead), logging at INFO as in production. Figures come
from the result topics: record timestamps are the producers' clocks, on this one machine.

- ``latency-Nms``: N ms of provider latency. Throughput: the input topic is preloaded, then
  the processor drains it (result events per second, first to last result). Latency: then
  events are offered at a steady 1,000/s and timed from input to result produce time; the
  overhead is that minus N. Peak RSS covers both phases. Then the baseline
  (``bench.baseline``: consume one, call, produce, commit) runs on the same simulator.
- ``two-processes``: two processors in one group drain a preloaded topic; every event must
  get exactly one result.
- ``rate-limited-burst``: one processor, ShipStation paced at 600 calls a minute, MVMNT
  unlimited. MVMNT events are offered at 20/s, alone and then all through the drain of a
  burst of 2,000 ShipStation events: the burst must clear at the pace (within 5 % of
  N / 600 minutes, every shipment cancelled, no minute at the simulator over 600 calls)
  and MVMNT's p99 must stay within a second of its unloaded p99 (``bench.burst``).
- ``backlog``: a million events waiting; the processor's RSS over a bounded run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench import broker, burst, load, procs
from consumer.config import KafkaSettings
from consumer.tools.embedded_broker import free_port

MAX_CONCURRENCY = 256
OFFERED_RATE = 1000.0
# The processor's default: Kafka answers a fetch as soon as records arrive, so this only
# bounds an idle fetch. The broker-alone reader fetches with it too.
FETCH_MAX_WAIT_MS = 500
RESULTS_FILE = "bench-results.json"

# The performance targets on a 2-core machine.
TARGET_EVENTS_PER_S = {"latency-0ms": 2000.0, "latency-50ms": 1500.0}
TARGET_SPEEDUP = {"latency-50ms": 50.0}
TARGET_P99_OVERHEAD_MS = 25.0
TARGET_PEAK_RSS_MB = 250.0

LATENCIES = {"latency-0ms": 0, "latency-50ms": 50}
SCENARIOS = (*LATENCIES, "broker-alone", "two-processes", burst.NAME, "backlog")


@dataclass(frozen=True, slots=True)
class Plan:
    events: int
    orders: int
    paced_seconds: float
    baseline_seconds: float
    baseline_events: int
    backlog_events: int
    backlog_seconds: float
    burst_events: int
    burst_unloaded_seconds: float
    scenarios: tuple[str, ...] = SCENARIOS
    offered_rate: float = OFFERED_RATE

    @property
    def latencies(self) -> list[int]:
        return [LATENCIES[name] for name in self.scenarios if name in LATENCIES]

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        plan = dataclasses.replace(cls._sized(args), offered_rate=args.rate)
        if args.only:
            plan = dataclasses.replace(plan, scenarios=tuple(args.only))
        elif args.quick:
            plan = dataclasses.replace(
                plan, scenarios=tuple(name for name in SCENARIOS if name != "backlog")
            )
        return plan

    @classmethod
    def _sized(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            return cls(
                events=5000,
                orders=1250,
                paced_seconds=5,
                baseline_seconds=5,
                baseline_events=2000,
                backlog_events=200_000,
                backlog_seconds=15,
                burst_events=600,
                burst_unloaded_seconds=10,
            )
        return cls(
            events=20_000,
            orders=5000,
            paced_seconds=10,
            baseline_seconds=10,
            baseline_events=5000,
            backlog_events=args.backlog_events,
            backlog_seconds=args.backlog_seconds,
            burst_events=2000,
            burst_unloaded_seconds=20,
        )


class TraceSink:
    """An OTLP/HTTP endpoint that accepts span batches and drops them."""

    def __init__(self) -> None:
        self.batches = 0
        self.bytes = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _accept(self, request: web.Request) -> web.Response:
        self.bytes += len(await request.read())
        self.batches += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def __aenter__(self) -> TraceSink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._accept)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def env(self, otlp: bool) -> dict[str, str]:
        """The processor's environment: none of the caller's OTEL_* settings, ours for OTLP."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if otlp:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{self.port}"
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(str(value)).decode()


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def write_config(
    path: Path,
    kafka: KafkaSettings,
    simulator: str,
    ops_port: int,
    traces_exporter: str = "none",
    *,
    rate_limits: Mapping[str, int] | None = None,
) -> Path:
    """A ``run`` config for the bench: high provider limits, short group timings.

    ``rate_limits``: calls per minute for the named accounts, in place of the bench's.
    """
    tables: dict[str, dict[str, Any]] = {
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "group_id": kafka.group_id,
            "input_topic": kafka.input_topic,
            "cancelled_topic": kafka.cancelled_topic,
            "failed_topic": kafka.failed_topic,
            "dlq_topic": kafka.dlq_topic,
            "retry_topic": kafka.retry_topic,
            "session_timeout_ms": kafka.session_timeout_ms,
            "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        },
        "telemetry": {
            "traces_exporter": traces_exporter,
            "log_level": "INFO",
            "log_format": "json",
            "http_host": "127.0.0.1",
            "http_port": ops_port,
        },
        "providers.shipstation": {
            "kind": "shipstation",
            "base_url": f"{simulator}/shipstation",
            "api_key": "sim-shipstation-key",
            # The simulator has no limit; ShipStation's 200/min would be the bottleneck.
            "rate_limit_per_minute": 6_000_000,
            "max_concurrency": MAX_CONCURRENCY,
        },
        "providers.mvmnt": {
            "kind": "mvmnt",
            "base_url": f"{simulator}/mvmnt/v1",
            "token_url": f"{simulator}/mvmnt/oauth2/token",
            "client_id": "sim-mvmnt-client",
            "client_secret": "sim-mvmnt-secret",
            "max_concurrency": MAX_CONCURRENCY,
        },
    }
    for account, limit in (rate_limits or {}).items():
        tables[f"providers.{account}"]["rate_limit_per_minute"] = limit
    path.write_text(to_toml(tables), encoding="utf-8")
    return path


@dataclass
class Processor:
    process: subprocess.Popen[bytes]
    ops_port: int
    log: Path
    # Under py-spy the Popen is the profiler; the processor is its child.
    profiled: bool = False

    @property
    def pid(self) -> int:
        if self.profiled:
            children = procs.children(self.process.pid)
            if children:
                return children[0]
        return self.process.pid

    @property
    def peak_rss_mb(self) -> float:
        return procs.peak_rss_mb(self.pid) or 0.0

    async def ready(self, timeout: float = 60.0) -> None:
        """Joined the group: ``/readyz`` answers 200 (or the log says partitions came)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ops_port}/readyz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"processor exited early, see {self.log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                if b"partitions assigned" in self.log.read_bytes():
                    return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"processor not ready after {timeout}s, see {self.log}")

    async def stop(self) -> None:
        if self.profiled:
            # py-spy writes its profile once the processor has exited.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, 60)
        await asyncio.to_thread(procs.stop, self.process)


class CpuMeter:
    """CPU time each process of the bench uses from now on: where the cores go."""

    def __init__(self, processor: int) -> None:
        self._pids = {"processor": processor}
        for child in procs.children(os.getpid()):
            name = _process_name(child)
            if child != processor and name is not None:
                self._pids[name] = child
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        times = {name: procs.cpu_seconds(pid) for name, pid in self._pids.items()}
        own = os.times()
        times["bench driver"] = own.user + own.system
        return times

    def ms_per_event(self, events: int) -> dict[str, float]:
        end = self._now()
        return {name: round((end[name] - self._start[name]) * 1000 / events, 3) for name in end}


def _process_name(pid: int) -> str | None:
    """What a child of the bench is (``None``: a helper that uses no CPU worth naming)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    if broker.is_broker(command):
        return "broker"
    if broker.is_watchdog(command):
        return None
    if b"simulate" in command:
        return "simulator"
    return str(pid)


class Bench:
    def __init__(self, plan: Plan, workdir: Path, traces: str, profile: bool = False) -> None:
        self.plan = plan
        self.workdir = workdir
        self.traces = traces
        self.profile = profile

    @contextlib.asynccontextmanager
    async def stage(self, latency_ms: float) -> AsyncIterator[tuple[str, str, TraceSink]]:
        """A fresh broker, simulator and trace sink: (bootstrap servers, simulator URL, sink)."""
        async with broker.kafka() as bootstrap, TraceSink() as sink:
            with procs.simulator(latency_ms) as simulator:
                yield bootstrap, simulator, sink

    def start_processor(
        self,
        kafka: KafkaSettings,
        simulator: str,
        sink: TraceSink,
        rate_limits: Mapping[str, int] | None = None,
    ) -> Processor:
        name = f"{kafka.group_id}-{uuid.uuid4().hex[:6]}"
        ops_port = free_port()
        otlp = self.traces == "otlp"
        config = write_config(
            self.workdir / f"{name}.toml",
            kafka,
            simulator,
            ops_port,
            traces_exporter="otlp" if otlp else "none",
            rate_limits=rate_limits,
        )
        log = self.workdir / f"{name}.log"
        command = procs.cli("run", "--config", str(config))
        if not otlp:
            command = [procs.PYTHON, "-m", "bench.processor", *command[3:]]
        if self.profile:
            profile = self.workdir / f"{name}.speedscope.json"
            command = [
                procs.py_spy(),
                "record",
                "-f",
                "speedscope",
                "-o",
                str(profile),
                "--",
                *command,
            ]
        with log.open("wb") as sink_file:
            process = subprocess.Popen(
                command, stdout=sink_file, stderr=sink_file, env=sink.env(otlp)
            )
        return Processor(process, ops_port, log, profiled=self.profile)

    async def latency_scenario(self, latency_ms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        plan = self.plan
        name = f"latency-{latency_ms}ms"
        print(f"== {name}", flush=True)
        async with self.stage(latency_ms) as (bootstrap, simulator, sink):
            topics = load.Topics(f"{name}-{uuid.uuid4().hex[:6]}")
            kafka = topics.kafka(bootstrap)
            await load.create_topics(kafka)
            started = time.monotonic()
            sent = await load.preload(kafka, plan.events, plan.orders, f"{name}-a")
            print(f"   preloaded {plan.events} events in {time.monotonic() - started:.1f}s")
            async with load.Collector(kafka) as collector:
                processor = self.start_processor(kafka, simulator, sink)
                try:
                    if not await collector.first_result(timeout=60):
                        raise RuntimeError(f"{name}: no result, see {processor.log}")
                    cpu = CpuMeter(processor.pid)
                    if not await collector.wait_for(sent, timeout=300):
                        raise RuntimeError(f"{name}: results missing, see {processor.log}")
                    cpu_ms = cpu.ms_per_event(len(sent))
                    drained = load.measure(sent, collector.results)
                    print(
                        f"   drained: {drained.events_per_s:.0f} events/s; CPU ms/event: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in cpu_ms.items()),
                        flush=True,
                    )
                    paced_cpu = CpuMeter(processor.pid)
                    async with collector.paused():
                        offered = await load.paced(
                            kafka, plan.offered_rate, plan.paced_seconds, plan.orders, f"{name}-b"
                        )
                    if not await collector.wait_for(offered, timeout=120):
                        raise RuntimeError(f"{name}: paced results missing, see {processor.log}")
                    # Like the drain's: taken once every result is in.
                    paced_cpu_ms = paced_cpu.ms_per_event(len(offered))
                    steady = load.measure(offered, collector.results)
                    peak = processor.peak_rss_mb
                finally:
                    await processor.stop()
            baseline = await self.baseline(name, bootstrap, simulator)
        row = {
            "name": name,
            "events_per_s": round(drained.events_per_s, 1),
            "p50_ms": round(steady.p50_ms, 1),
            "p99_ms": round(steady.p99_ms, 1),
            "p99_overhead_ms": round(steady.p99_ms - latency_ms, 1),
            "peak_rss_mb": round(peak, 1),
            "provider_latency_ms": latency_ms,
            "events": drained.events,
            "cpu_ms_per_event": cpu_ms,
            "paced_cpu_ms_per_event": paced_cpu_ms,
            "offered_events_per_s": plan.offered_rate,
            "offered_events": steady.events,
            "backlog_p50_ms": round(drained.p50_ms, 1),
            "backlog_p99_ms": round(drained.p99_ms, 1),
            "failed_results": drained.failed + steady.failed,
            "duplicates": drained.duplicates + steady.duplicates,
            **({"otlp_bytes_exported": sink.bytes} if self.traces == "otlp" else {}),
        }
        print(
            f"   steady {plan.offered_rate:.0f}/s: p50 {steady.p50_ms:.1f} ms, "
            f"p99 {steady.p99_ms:.1f} ms; processor CPU "
            f"{paced_cpu_ms['processor']:.3f} ms/event; peak RSS {peak:.0f} MB; "
            f"baseline {baseline['events_per_s']} events/s",
            flush=True,
        )
        return row, {"name": name, **baseline}

    async def baseline(self, name: str, bootstrap: str, simulator: str) -> dict[str, Any]:
        plan = self.plan
        topics = load.Topics(f"{name}-baseline-{uuid.uuid4().hex[:6]}")
        kafka = topics.kafka(bootstrap, group="baseline")
        await load.create_topics(kafka)
        await load.preload(kafka, plan.baseline_events, plan.baseline_events, f"{name}-base")
        config = write_config(self.workdir / f"{kafka.group_id}.toml", kafka, simulator, 0)
        child = await asyncio.create_subprocess_exec(
            procs.PYTHON,
            "-m",
            "bench.baseline",
            "--config",
            str(config),
            "--seconds",
            str(plan.baseline_seconds),
            "--max-events",
            str(plan.baseline_events),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"baseline failed with code {child.returncode}")
        figures: dict[str, Any] = orjson.loads(out.splitlines()[-1])
        return figures

    async def broker_alone(self) -> dict[str, Any]:
        """The paced load of the latency runs, after the same preload, read by a bare
        consumer: how much of their latency the broker makes by itself."""
        plan = self.plan
        print("== broker alone (a bare consumer, no processor)", flush=True)
        async with broker.kafka() as bootstrap:
            kafka = load.Topics(f"broker-alone-{uuid.uuid4().hex[:6]}").kafka(bootstrap)
            await load.create_topics(kafka)
            await load.preload(kafka, plan.events, plan.orders, "alone-a", keep=False)
            measured = await load.broker_alone(
                kafka,
                plan.offered_rate,
                plan.paced_seconds,
                plan.orders,
                "alone-b",
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
        print(
            f"   {plan.offered_rate:.0f}/s offered: p50 {measured.p50_ms:.1f} ms, "
            f"p99 {measured.p99_ms:.1f} ms from input produce to a fetched record; "
            f"{measured.missing} missing",
            flush=True,
        )
        return {
            "offered_events_per_s": plan.offered_rate,
            "events": measured.events,
            "missing": measured.missing,
            "p50_ms": round(measured.p50_ms, 1),
            "p99_ms": round(measured.p99_ms, 1),
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        }

    async def two_processes(self, latency_ms: int = 0) -> dict[str, Any]:
        plan = self.plan
        name = "two-processes"
        print(f"== {name} (provider latency {latency_ms} ms)", flush=True)
        async with self.stage(latency_ms) as (bootstrap, simulator, sink):
            kafka = load.Topics(f"{name}-{uuid.uuid4().hex[:6]}").kafka(bootstrap)
            await load.create_topics(kafka)
            async with load.Collector(kafka) as collector:
                processors = [self.start_processor(kafka, simulator, sink) for _ in range(2)]
                try:
                    await asyncio.gather(*(p.ready() for p in processors))
                    sent = await load.preload(kafka, plan.events, plan.orders, name)
                    if not await collector.wait_for(sent, timeout=300):
                        raise RuntimeError(f"{name}: results missing")
                    await asyncio.sleep(2)  # late duplicates would show up here
                    measured = load.measure(sent, collector.results)
                    peaks = [p.peak_rss_mb for p in processors]
                finally:
                    await asyncio.gather(*(p.stop() for p in processors))
        print(
            f"   combined {measured.events_per_s:.0f} events/s, "
            f"duplicates {measured.duplicates}, missing {measured.missing}",
            flush=True,
        )
        return {
            "name": name,
            "processes": 2,
            "provider_latency_ms": latency_ms,
            "events": measured.events,
            "events_per_s": round(measured.events_per_s, 1),
            "results": measured.results,
            "duplicates": measured.duplicates,
            "missing": measured.missing,
            "processed_once": measured.duplicates == 0 and measured.missing == 0,
            "peak_rss_mb": [round(p, 1) for p in peaks],
        }

    async def rate_limited_burst(self) -> dict[str, Any]:
        plan = self.plan
        other = (burst.OTHER,)
        events = plan.burst_events
        print(
            f"== {burst.NAME}: {events} {burst.PACED} events at "
            f"{burst.RATE_LIMIT_PER_MINUTE}/min, {burst.OTHER} at {burst.OTHER_RATE:.0f}/s",
            flush=True,
        )
        async with self.stage(0) as (bootstrap, simulator, sink):
            kafka = load.Topics(f"{burst.NAME}-{uuid.uuid4().hex[:6]}").kafka(bootstrap)
            await load.create_topics(kafka)
            async with load.Collector(kafka) as collector:
                processor = self.start_processor(
                    kafka, simulator, sink, rate_limits={burst.PACED: burst.RATE_LIMIT_PER_MINUTE}
                )
                try:
                    await processor.ready()
                    # The other account's token and connections, before anything is timed.
                    warm = await load.preload(kafka, 20, 20, "burst-warm", providers=other)
                    if not await collector.wait_for(warm, timeout=60):
                        raise RuntimeError(f"{burst.NAME}: no warm-up result, see {processor.log}")
                    quiet = plan.burst_unloaded_seconds
                    unloaded = await load.paced(
                        kafka,
                        burst.OTHER_RATE,
                        quiet,
                        int(burst.OTHER_RATE * quiet),
                        "burst-quiet",
                        providers=other,
                    )
                    await collector.wait_for(unloaded, timeout=60)
                    during, sent = await self._burst_drain(kafka, collector, events)
                    await collector.wait_for(during, timeout=60)
                    await asyncio.sleep(2)  # late duplicates would show up here
                    peak = processor.peak_rss_mb
                finally:
                    await processor.stop()
            calls = await burst.call_times(simulator, burst.PACED)
            calls_file = self.workdir / f"{kafka.group_id}-{burst.PACED}-calls.json"
            calls_file.write_bytes(orjson.dumps(calls))
            parks = await load.parks(kafka)
        row = burst.figures(sent, unloaded, during, collector.results, parks=parks, calls=calls)
        row["peak_rss_mb"] = round(peak, 1)
        print(
            f"   cleared in {row['clear_seconds']} s (ideal {row['ideal_seconds']} s), "
            f"{row['cancelled']} cancelled, {row['cancel_failed']} cancel-failed, "
            f"{row['parks']} parks, busiest minute {row['busiest_minute_calls']} calls; "
            f"{burst.OTHER} p99 {row['mvmnt_unloaded_p99_ms']} ms unloaded, "
            f"{row['mvmnt_burst_p99_ms']} ms in the burst",
            flush=True,
        )
        return row

    async def _burst_drain(
        self, kafka: KafkaSettings, collector: load.Collector, events: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The burst, and the other account's paced events until every burst event has a
        result (or the timeout passes): (the other account's events, the burst's)."""
        drained = asyncio.Event()
        offering = asyncio.create_task(
            load.paced(
                kafka,
                burst.OTHER_RATE,
                burst.DRAIN_TIMEOUT_SECONDS,
                int(burst.OTHER_RATE * burst.DRAIN_TIMEOUT_SECONDS),
                "burst-other",
                providers=(burst.OTHER,),
                until=drained,
            )
        )
        try:
            sent = await load.preload(kafka, events, events, "burst", providers=(burst.PACED,))
            print(f"   burst of {events} produced", flush=True)
            deadline = time.monotonic() + burst.DRAIN_TIMEOUT_SECONDS
            while not await collector.wait_for(
                sent, timeout=min(30.0, deadline - time.monotonic())
            ):
                if time.monotonic() >= deadline:
                    break
                done = collector.results.count_of(sent)
                print(f"   {done} of {events} {burst.PACED} results", flush=True)
        finally:
            drained.set()
            during = await offering
        return during, sent

    async def backlog(self, latency_ms: int = 0) -> dict[str, Any]:
        plan = self.plan
        print(f"== backlog of {plan.backlog_events} events", flush=True)
        async with self.stage(latency_ms) as (bootstrap, simulator, sink):
            kafka = load.Topics(f"backlog-{uuid.uuid4().hex[:6]}").kafka(bootstrap)
            await load.create_topics(kafka)
            started = time.monotonic()
            await load.preload(
                kafka, plan.backlog_events, plan.backlog_events // 4, "backlog", keep=False
            )
            produce_s = time.monotonic() - started
            print(f"   produced in {produce_s:.1f}s", flush=True)
            async with load.Collector(kafka) as collector:
                processor = self.start_processor(kafka, simulator, sink)
                samples: list[float] = []
                try:
                    await processor.ready()
                    until = time.monotonic() + plan.backlog_seconds
                    while time.monotonic() < until:
                        await asyncio.sleep(1)
                        samples.append(procs.rss_mb(processor.process.pid) or 0.0)
                    processed = len(collector.results.at)
                    peak = processor.peak_rss_mb
                finally:
                    await processor.stop()
        tail = samples[len(samples) // 2 :]
        print(
            f"   {processed} processed in {plan.backlog_seconds:.0f}s; RSS peak {peak:.0f} MB, "
            f"second half {min(tail):.0f}-{max(tail):.0f} MB",
            flush=True,
        )
        return {
            "events": plan.backlog_events,
            "produce_seconds": round(produce_s, 1),
            "produce_events_per_s": round(plan.backlog_events / produce_s),
            "run_seconds": plan.backlog_seconds,
            "processed": processed,
            "peak_rss_mb": round(peak, 1),
            "rss_mb_first_half_max": round(max(samples[: len(samples) // 2] or [0.0]), 1),
            "rss_mb_second_half_max": round(max(tail), 1),
            # Every 5 s: flat once the window is full means bounded.
            "rss_mb_every_5s": [round(sample) for sample in samples[4::5]],
        }


def verdicts(results: Mapping[str, Any]) -> list[str]:
    """Every target the figures miss, one line each."""
    misses = []
    for row in results["scenarios"]:
        target = TARGET_EVENTS_PER_S.get(row["name"])
        if target and row["events_per_s"] < target:
            misses.append(f"{row['name']}: {row['events_per_s']} events/s < {target}")
        if row["p99_overhead_ms"] > TARGET_P99_OVERHEAD_MS:
            misses.append(
                f"{row['name']}: p99 overhead {row['p99_overhead_ms']} ms > "
                f"{TARGET_P99_OVERHEAD_MS} at {OFFERED_RATE:.0f} events/s"
            )
        if row["peak_rss_mb"] > TARGET_PEAK_RSS_MB:
            misses.append(f"{row['name']}: peak RSS {row['peak_rss_mb']} MB")
        if row["failed_results"]:
            misses.append(f"{row['name']}: {row['failed_results']} cancel-failed results")
    for name, target in TARGET_SPEEDUP.items():
        speedup = results["speedup_vs_baseline"].get(name)
        if speedup is not None and speedup < target:
            misses.append(f"{name}: {speedup}x the baseline < {target}x")
    alone = results.get("broker_alone")
    if alone and alone["missing"]:
        misses.append(f"broker alone: {alone['missing']} events never read back")
    scale = results.get("scale_out")
    if scale and not scale["processed_once"]:
        misses.append(
            f"two processes: {scale['duplicates']} duplicates, {scale['missing']} missing"
        )
    backlog = results.get("backlog")
    if backlog and backlog["peak_rss_mb"] > TARGET_PEAK_RSS_MB:
        misses.append(f"backlog: peak RSS {backlog['peak_rss_mb']} MB")
    rate_limited = results.get("rate_limited_burst")
    if rate_limited:
        misses += burst.misses(rate_limited)
    return misses


def table(results: Mapping[str, Any]) -> str:
    header = (
        "| scenario | events/s | p50 ms | p99 ms | p99 overhead ms | peak RSS MB "
        "| baseline events/s | speedup |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    baselines = {b["name"]: b["events_per_s"] for b in results["baseline"]}
    for row in results["scenarios"]:
        name = row["name"]
        lines.append(
            f"| {name} | {row['events_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['p99_overhead_ms']:.1f} | {row['peak_rss_mb']:.0f} "
            f"| {baselines.get(name, 0):.1f} | {results['speedup_vs_baseline'].get(name, 0)}x |"
        )
    alone = results.get("broker_alone")
    if alone:
        lines.append(
            f"| broker alone, no processor ({alone['offered_events_per_s']:.0f}/s offered) "
            f"| | {alone['p50_ms']:.1f} | {alone['p99_ms']:.1f} | | | | |"
        )
    scale = results.get("scale_out")
    if scale:
        rss = "+".join(f"{r:.0f}" for r in scale["peak_rss_mb"])
        lines.append(
            f"| two processes, one group ({scale['provider_latency_ms']} ms) "
            f"| {scale['events_per_s']:.0f} | | | | {rss} | | |"
        )
    backlog = results.get("backlog")
    if backlog:
        lines.append(
            f"| backlog of {backlog['events']:,} events ({backlog['run_seconds']:.0f} s run) "
            f"| | | | | {backlog['peak_rss_mb']:.0f} | | |"
        )
    rate_limited = results.get("rate_limited_burst")
    if rate_limited:
        lines += ["", burst.table(rate_limited)]
    return "\n".join(lines)


async def run(plan: Plan, workdir: Path, traces: str, profile: bool = False) -> dict[str, Any]:
    bench = Bench(plan, workdir, traces, profile)
    scenarios, baselines = [], []
    for latency in plan.latencies:
        row, baseline = await bench.latency_scenario(latency)
        scenarios.append(row)
        baselines.append(baseline)
    results: dict[str, Any] = {
        "scenarios": scenarios,
        "baseline": baselines,
        "speedup_vs_baseline": {
            row["name"]: round(row["events_per_s"] / base["events_per_s"], 1)
            for row, base in zip(scenarios, baselines, strict=True)
            if base["events_per_s"]
        },
    }
    if "broker-alone" in plan.scenarios:
        results["broker_alone"] = await bench.broker_alone()
    if "two-processes" in plan.scenarios:
        results["scale_out"] = await bench.two_processes()
    if burst.NAME in plan.scenarios:
        results["rate_limited_burst"] = await bench.rate_limited_burst()
    if "backlog" in plan.scenarios:
        results["backlog"] = await bench.backlog()
    results["machine"] = procs.machine()
    results["plan"] = {
        "events": plan.events,
        "orders": plan.orders,
        "partitions": load.PARTITIONS,
        "offered_events_per_s": plan.offered_rate,
        "paced_seconds": plan.paced_seconds,
        "max_concurrency_per_account": MAX_CONCURRENCY,
        "traces": traces,
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="processor benchmark")
    parser.add_argument(
        "--quick", action="store_true", help="fewer events; no backlog run unless --only"
    )
    parser.add_argument("--backlog-events", type=int, default=1_000_000)
    parser.add_argument("--backlog-seconds", type=float, default=45.0)
    parser.add_argument(
        "--rate", type=float, default=OFFERED_RATE, help="events/s offered in the latency run"
    )
    parser.add_argument("--out", default=RESULTS_FILE, help="where the JSON figures go")
    parser.add_argument("--keep", action="store_true", help="keep configs and processor logs")
    parser.add_argument(
        "--traces",
        choices=["batch-drop", "otlp"],
        default="batch-drop",
        help="spans to a BatchSpanProcessor that drops them (default) or OTLP/HTTP to a sink",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run processors under py-spy (kept with the logs)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run just this scenario (repeatable)",
    )
    args = parser.parse_args()
    plan = Plan.of(args)
    workdir = Path(tempfile.mkdtemp(prefix="cancel-bench-"))
    results = asyncio.run(run(plan, workdir, args.traces, args.profile))
    Path(args.out).write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    print()
    print(table(results))
    misses = verdicts(results)
    if args.keep or args.profile or misses:
        print(f"\nfigures written to {args.out}; configs and processor logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\nfigures written to {args.out}")
    for miss in misses:
        print(f"target missed: {miss}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
