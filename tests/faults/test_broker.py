"""Scenario 5: the broker is unreachable at start, then paused (SIGSTOP) mid-stream, then
down while the processor is asked to stop. A dedicated broker, so pausing it hurts no one."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from consumer.tools.embedded_broker import free_port
from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    BrokerProcess,
    OutputReader,
    Process,
    ProcessorProcess,
    Topology,
    cluster_for,
    produce_steadily,
    result_ids,
    wait_committed,
)
from tests.faults.streams import expected_ids, order_stream

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

GRACE = 5
# The processor's waiting loops may wake a few times a second, never spin.
MAX_IDLE_CPU = 0.15


async def cpu_share(process: Process, seconds: float) -> float:
    """The share of one core ``process`` used over the next ``seconds``."""
    before, started = process.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (process.cpu_seconds() - before) / (time.monotonic() - started)


async def _waits_for_the_broker(
    faults: FaultEnv,
    processor: ProcessorProcess,
    broker: BrokerProcess,
    config: dict[str, Any],
    env: dict[str, str],
) -> float:
    """No broker yet: one clear line, a quiet wait, and it connects by itself once the
    broker is there. The CPU share it used while waiting."""
    waiting = await processor.wait_for_log("kafka broker unreachable, retrying", timeout=30)
    assert waiting["level"] == "warning"
    assert waiting["bootstrap_servers"] == broker.bootstrap_servers
    idle_cpu = await cpu_share(processor, 5)
    assert idle_cpu < MAX_IDLE_CPU, f"{idle_cpu:.0%} of a core while the broker is away"
    await broker.__aenter__()
    await faults.topology.create_topics(config, env)
    await processor.wait_for_log("consuming", timeout=60)
    await processor.wait_for_log("partitions assigned", timeout=60)
    return idle_cpu


async def _stop_while_down(
    processor: ProcessorProcess, broker: BrokerProcess, reader: OutputReader
) -> float:
    """Pause the broker with work in flight, SIGTERM: the seconds the exit took."""
    seen = len(result_ids(reader))
    await reader.wait_for(lambda r: len(result_ids(r)) >= seen + 20, timeout=60)
    broker.signal(signal.SIGSTOP)
    await asyncio.sleep(1)
    exit_seconds = await processor.stop(timeout=60)
    broker.signal(signal.SIGCONT)
    return exit_seconds


async def test_5_broker_unreachable_at_start_then_paused_mid_stream(
    faults: FaultEnv,
) -> None:
    broker = BrokerProcess(faults.workdir, port=free_port())
    faults.processes.append(broker)
    faults.topology = Topology(broker.bootstrap_servers)
    sim = faults.simulator(latency_ms=20)
    async with sim:
        config = faults.config(
            sim,
            {
                "kafka": {"request_timeout_ms": 5000},
                "processing": {"drain_grace_seconds": GRACE},
            },
        )
        env = sim.secrets_env()
        settings = faults.settings(config, env)
        processor = faults.processor(config, env)

        idle_cpu = await _waits_for_the_broker(faults, processor, broker, config, env)

        records = order_stream(events=600, orders=60)
        more = order_stream(events=300, orders=30)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            producing = asyncio.ensure_future(produce_steadily(cluster, records, per_second=40))
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.3 * len(records), 120)

            # 3. The broker freezes for 20 s mid-stream (no connection error, just silence).
            before_pause = len(processor.logs())
            broker.signal(signal.SIGSTOP)
            paused_cpu = await cpu_share(processor, 20)
            broker.signal(signal.SIGCONT)
            during_pause = processor.logs()[before_pause:]
            sent = await producing
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            after_pause = processor.logs()[before_pause:]

            # 4. Down again with work in flight, and asked to stop: it leaves within the
            # grace period; what it could not commit, the next run redoes.
            producing = asyncio.ensure_future(produce_steadily(cluster, more, per_second=40))
            exit_seconds = await _stop_while_down(processor, broker, reader)
            sent += await producing
            wanted = expected_ids(sent)
            successor = faults.processor(config, env)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            await successor.stop()
            report = await faults.finish(
                "5 broker down, then paused 20s", sent, reader, cluster, sim
            )

    warnings = [e for e in during_pause if e["level"] in ("warning", "error")]
    assert warnings, "the pause went unreported"
    assert len(warnings) <= 3, "reported in a line or two, not once per event and retry"
    assert paused_cpu < MAX_IDLE_CPU, f"{paused_cpu:.0%} of a core while the broker was paused"
    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert processor.returncode == 0, processor.stderr()
    assert "Traceback" not in processor.stderr()
    assert "kafka broker answering again" in [e["msg"] for e in after_pause]
    assert exit_seconds < GRACE + 3, f"stop took {exit_seconds:.1f}s with the broker down"
    report.notes.update(
        idle_cpu=round(idle_cpu, 3),
        paused_cpu=round(paused_cpu, 3),
        stop_seconds_broker_down=round(exit_seconds, 2),
        pause_log=sorted({e["msg"] for e in warnings}),
    )
