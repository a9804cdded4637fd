"""Scenarios 1-3: the happy path, crashes (kill -9) and a graceful stop, with real processes."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import orjson
import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    OutputReader,
    cluster_for,
    produce,
    produce_steadily,
    result_ids,
)
from tests.faults.streams import expected_ids, order_stream

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]


def has_results(count: float, reader: OutputReader) -> bool:
    return len(result_ids(reader)) >= count


async def test_1_happy_path(faults: FaultEnv) -> None:
    sim = faults.simulator()
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = order_stream(events=2000, orders=200)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            sent = await produce(cluster, records)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=240)
            assert await processor.stop() < 15
            assert processor.returncode == 0, processor.stderr()
            report = await faults.finish("1 happy path", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0, report.duplicate_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert report.max_calls_per_shipment == 1
    assert report.provider_calls == len(wanted)
    assert {v["outcome"] for v in reader.result_values()} == {"cancelled"}


async def test_2_kill_9_three_times_mid_stream(faults: FaultEnv) -> None:
    sim = faults.simulator(latency_ms=20)
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = order_stream(events=1200, orders=120)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            producing = asyncio.ensure_future(produce_steadily(cluster, records, per_second=60))
            kills: list[dict[str, Any]] = []
            for fraction in (0.15, 0.4, 0.65):
                await reader.wait_for(partial(has_results, fraction * len(records)), 120)
                processor.kill9()
                # Nothing commits after a SIGKILL: this is the position a restart resumes at.
                kills.append({"at_ms": time.time() * 1000, "committed": await cluster.committed()})
                processor = faults.processor(config, env)
            sent = await producing
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await processor.stop()
            report = await faults.finish("2 kill -9 x3 mid-stream", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    # A duplicate is work redone past the last commit before a kill, nothing else.
    source = {
        rid: record for record in sent if record.event is not None for rid in expected_ids([record])
    }
    first_ms: dict[str, int] = {}
    for record in reader.results:
        rid = orjson.loads(record.value)["event_id"]
        first_ms.setdefault(rid, record.timestamp)
    for rid in report.duplicate_ids:
        origin = source[rid]
        assert any(
            first_ms[rid] <= kill["at_ms"]
            and (kill["committed"].get(origin.partition) or 0) <= origin.offset
            for kill in kills
        ), f"{rid} was repeated although its input was committed before every crash"
    report.notes["crashes"] = len(kills)


async def test_3_sigterm_mid_stream_drains_and_resumes_without_duplicates(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator(latency_ms=30)
    grace = 5
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = order_stream(events=600, orders=60)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            first = faults.processor(config, env)
            producing = asyncio.ensure_future(produce_steadily(cluster, records, per_second=60))
            await reader.wait_for(lambda r: len(result_ids(r)) >= 0.4 * len(records), timeout=120)
            exit_seconds = await first.stop()
            second = faults.processor(config, env)
            sent = await producing
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await second.stop()
            report = await faults.finish("3 SIGTERM mid-stream", sent, reader, cluster, sim)

    assert first.returncode == 0
    assert second.returncode == 0
    assert exit_seconds < grace + 3, f"took {exit_seconds:.1f}s to stop"
    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0, report.duplicate_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert report.max_calls_per_shipment == 1
    for process in (first, second):
        assert "unclosed" not in process.stderr().lower(), process.stderr()
        assert process.messages()[-1] == "stopped"
    report.notes["exit_seconds"] = round(exit_seconds, 2)
