"""Scenarios 14-18: provider back-pressure. A bulk cancellation, a provider outage and a
provider stricter than its configuration are delays, never failures; parked shipments
survive kill -9 and rebalances."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    Input,
    OutputReader,
    ProcessorProcess,
    SimulatorProcess,
    cluster_for,
    produce,
    produce_steadily,
    result_ids,
)
from tests.faults.streams import expected_ids, single
from tests.integration.kafka_helpers import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

# Calls measured at the simulator may bunch this much from network scheduling.
JITTER_SECONDS = 0.25
# No limit worth the name: the scenarios about outages are not about pacing (None would
# mean ShipStation's default of 200/min).
UNLIMITED = 60_000


def busiest_minute(times: list[float]) -> int:
    """The most calls in any sliding minute (less the jitter allowance)."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 60 - JITTER_SECONDS:
            start += 1
        most = max(most, end - start + 1)
    return most


def shipstation_burst(count: int, tag: str) -> list[Input]:
    return [single(f"SO-{tag}-{i}", "shipstation", f"se-{tag}-{i}") for i in range(count)]


def mvmnt_stream(count: int, tag: str) -> list[Input]:
    return [single(f"SO-{tag}-{i}", "mvmnt", f"SHP-{tag}-{i}") for i in range(count)]


def latencies_ms(reader: OutputReader, sent: list[Input], provider: str) -> list[float]:
    """Input record timestamp to its result's, for the results of ``provider``."""
    produced = {str(r.event["event_id"]): r.timestamp_ms for r in sent if r.event is not None}
    latencies = []
    for record in reader.results:
        value = orjson.loads(record.value or b"{}")
        if value.get("provider") == provider:
            latencies.append(record.timestamp - produced[value["source_event_id"]])
    return latencies


def outcomes(reader: OutputReader) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in reader.result_values():
        counts[value.get("outcome") or f"failed:{value['error']['category']}"] += 1
    return dict(counts)


def config_for(
    faults: FaultEnv, sim: SimulatorProcess, rate: float, **processing: Any
) -> dict[str, Any]:
    retry = {"budget_seconds": 5, "backoff_initial_seconds": 0.2, **processing.pop("retry", {})}
    return faults.config(
        sim,
        {"processing": {"retry": retry, **processing}},
        shipstation_rate_per_minute=rate,
    )


async def test_14_bulk_burst_at_the_rate_limit_every_shipment_cancelled(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator()
    limit = 300
    async with sim:
        config = config_for(faults, sim, limit)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            # An ERP bulk cancellation, and behind it on the same partitions another
            # account's ordinary traffic.
            sent = await produce(cluster, shipstation_burst(600, "bulk"))
            sent += await produce(cluster, mvmnt_stream(100, "other"))
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=240, what="burst")
            await processor.stop()
            calls = await sim.calls("shipstation")
            name = "14 bulk burst, 600 at 300/min"
            report = await faults.finish(name, sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0, report.duplicate_ids
    assert report.order_violations == 0
    assert outcomes(reader) == {"cancelled": 700}
    times = [c["at"] for c in calls]
    assert busiest_minute(times) <= limit
    assert [c for c in calls if c["status"] == 429] == []
    other = latencies_ms(reader, sent, "mvmnt")
    assert max(other) < 5000, sorted(other)[-5:]
    report.notes.update(
        clear_seconds=round(max(times) - min(times), 1),
        ideal_seconds=round(600 / limit * 60, 1),
        busiest_minute=busiest_minute(times),
        other_account_max_latency_ms=max(other),
    )


async def test_15_provider_outage_of_three_minutes_then_every_shipment_cancelled(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator()
    outage = 180.0
    async with sim:
        config = config_for(
            faults,
            sim,
            UNLIMITED,
            retry={"schedule_seconds": [5, 10, 20, 30]},
            breaker={"failure_threshold": 5, "cooldown_seconds": 10},
        )
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            stream = [
                record
                for pair in zip(
                    shipstation_burst(250, "down"), mvmnt_stream(250, "up"), strict=True
                )
                for record in pair
            ]
            producing = asyncio.create_task(produce_steadily(cluster, stream, per_second=2))
            await asyncio.sleep(20)
            down_from = time.time()
            await sim.set_account_mode(
                "shipstation", down_seconds=outage / 2, down_mode="unavailable"
            )
            await asyncio.sleep(outage / 2)
            await sim.set_account_mode("shipstation", down_seconds=outage / 2, down_mode="refuse")
            await asyncio.sleep(outage / 2)
            down_until = time.time()
            sent = await producing
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180, what="outage")
            await processor.stop()
            calls = await sim.calls("shipstation")
            report = await faults.finish("15 provider down 3 min", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert outcomes(reader) == {"cancelled": 500}
    during = [c for c in calls if down_from <= c["at"] < down_until]
    messages = processor.messages()
    assert "circuit opened: provider calls stop, new shipments are parked" in messages
    assert "circuit closed: provider answers again" in messages
    other = latencies_ms(reader, sent, "mvmnt")
    assert max(other) < 5000, sorted(other)[-5:]
    report.notes.update(
        calls_while_down=len(during),
        shipments_arriving_while_down=sum(
            1 for r in sent if r.event and down_from * 1000 <= r.timestamp_ms < down_until * 1000
        )
        // 2,
        circuit_opened=messages.count(
            "circuit opened: provider calls stop, new shipments are parked"
        ),
        other_account_max_latency_ms=max(other),
    )


async def test_16_provider_limit_below_ours_adapts_and_every_shipment_cancelled(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator()
    async with sim:
        await sim.set_account_mode("shipstation", rate_limit_per_minute=60)
        config = config_for(faults, sim, 300, retry={"schedule_seconds": [10, 20]})
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            sent = await produce(cluster, shipstation_burst(200, "strict"))
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=420, what="strict")
            await processor.stop()
            calls = await sim.calls("shipstation")
            (faults.workdir / "shipstation-calls.json").write_bytes(orjson.dumps(calls))
            name = "16 provider limit 60 < ours 300"
            report = await faults.finish(name, sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert outcomes(reader) == {"cancelled": 200}
    refused = [c["at"] for c in calls if c["status"] == 429]
    assert refused, "the provider's limit was never reached: the scenario has no teeth"
    last_call = max(c["at"] for c in calls)
    # Adapted: the last minute and more of the run drew no 429.
    assert last_call - max(refused) > 60, (last_call - max(refused), len(refused))
    report.notes.update(
        refused=len(refused),
        seconds_to_adapt=round(max(refused) - min(c["at"] for c in calls), 1),
        clear_seconds=round(last_call - min(c["at"] for c in calls), 1),
    )


def waits_of(faults: FaultEnv, sim: SimulatorProcess, seconds: float) -> dict[str, Any]:
    """A config whose parks wait about ``seconds``, for a transient failure or an open
    circuit alike."""
    return config_for(
        faults,
        sim,
        UNLIMITED,
        retry={"schedule_seconds": [seconds]},
        breaker={"failure_threshold": 5, "cooldown_seconds": seconds},
    )


async def park_during_outage(
    sim: SimulatorProcess, reader: OutputReader, parks: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while len({_parked_id(r.value) for r in reader.parks}) < parks:
        assert time.monotonic() < deadline, f"only {len(reader.parks)} parks"
        await reader.poll()


def _parked_id(value: bytes | None) -> tuple[str, str]:
    parked = orjson.loads(value or b"{}")
    return parked["event"]["event_id"], parked["event"]["shipments"][0]["shipment_id"]


def idempotency_keys(requests: list[dict[str, Any]]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = defaultdict(set)
    for request in requests:
        path = request["path"]
        if path.startswith("/shipstation/v2/shipments/") and path.endswith("/cancel"):
            keys[path.split("/")[4]].add(request["idempotency_key"])
    return keys


@dataclass
class Outage:
    """A scenario whose ShipStation shipments were all parked during an outage."""

    sim: SimulatorProcess
    config: dict[str, Any]
    env: dict[str, str]
    cluster: Cluster
    reader: OutputReader
    first: ProcessorProcess
    sent: list[Input]


@contextlib.asynccontextmanager
async def parked_in_an_outage(
    faults: FaultEnv, count: int, tag: str, seconds: float
) -> AsyncIterator[Outage]:
    """ShipStation down, a first processor, ``count`` shipments produced and every one of
    them parked (parks due after about ``seconds``); the provider stays down."""
    sim = faults.simulator()
    async with sim:
        config = waits_of(faults, sim, seconds)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            await sim.set_account_mode("shipstation", down_seconds=600)
            first = faults.processor(config, env, name="first")
            await first.wait_for_log("partitions assigned", timeout=60)
            sent = await produce(cluster, shipstation_burst(count, tag))
            await park_during_outage(sim, reader, count, timeout=60)
            yield Outage(sim, config, env, cluster, reader, first, sent)


async def test_17_kill_9_with_300_shipments_parked_loses_none(faults: FaultEnv) -> None:
    async with parked_in_an_outage(faults, 300, "crash", seconds=15) as outage:
        outage.first.kill9()
        await outage.sim.set_account_mode("shipstation", down_seconds=0)
        second = faults.processor(outage.config, outage.env, name="second")
        wanted = expected_ids(outage.sent)
        reader = outage.reader
        await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=120, what="crash")
        await second.stop()
        requests = await outage.sim.requests()
        report = await faults.finish(
            "17 kill -9, 300 parked", outage.sent, reader, outage.cluster, outage.sim
        )

    assert report.lost == 0, report.lost_ids
    assert report.id_mismatches == 0
    # A repeat past the last commit finds the shipment cancelled already: same id.
    assert outcomes(reader).keys() <= {"cancelled", "already_cancelled"}
    # A repeat is the same call: one Idempotency-Key per shipment, whoever made it.
    keys = idempotency_keys(requests)
    assert len(keys) == 300
    assert all(len(k) == 1 for k in keys.values()), [s for s, k in keys.items() if len(k) > 1]


async def test_18_rebalance_while_parked_each_retried_by_its_new_owner(faults: FaultEnv) -> None:
    async with parked_in_an_outage(faults, 150, "moved", seconds=20) as outage:
        # A second member joins while every shipment waits in the retry topic.
        first = outage.first
        second = faults.processor(outage.config, outage.env, name="second")
        await second.wait_for_log("partitions assigned", timeout=60)
        await outage.sim.set_account_mode("shipstation", down_seconds=0)
        wanted = expected_ids(outage.sent)
        reader = outage.reader
        await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=150, what="moved")
        await asyncio.gather(first.stop(), second.stop())
        report = await faults.finish(
            "18 rebalance while parked", outage.sent, reader, outage.cluster, outage.sim
        )

    assert report.lost == 0, report.lost_ids
    assert outcomes(reader).keys() <= {"cancelled", "already_cancelled"}
    cancelled_by = {
        process.name: sum(1 for m in process.messages() if m == "shipment cancelled")
        for process in (first, second)
    }
    # The new member took over retry partitions and retried what it found there.
    assert cancelled_by["second"] > 0, cancelled_by
    report.notes.update(cancelled_by=cancelled_by)
