"""Scenario 4: members join and leave the group repeatedly while the provider is slow."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from tests.faults.conftest import FaultEnv
from tests.faults.harness import (
    PARTITIONS,
    OutputReader,
    ProcessorProcess,
    cluster_for,
    produce_steadily,
    result_ids,
    wait_committed,
)
from tests.faults.streams import expected_ids, order_stream

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

Interval = tuple[datetime, datetime, str]


def ownership(
    processes: list[ProcessorProcess], frozen: dict[str, datetime]
) -> dict[str, list[Interval]]:
    """Per partition, when each member owned it: from "assigned" to "released", or to the
    moment it was frozen (SIGSTOP): the group cannot hear a frozen member let go."""
    owned: dict[str, list[Interval]] = defaultdict(list)
    for process in processes:
        held: dict[str, datetime] = {}
        for entry in process.logs():
            at = datetime.fromisoformat(entry["ts"])
            if entry["msg"] == "partitions assigned":
                for partition in entry["partitions"]:
                    held[partition] = at
            elif entry["msg"] == "partitions released":
                stopped = frozen.get(process.name)
                for partition in entry["partitions"]:
                    if partition in held:
                        since = held.pop(partition)
                        if stopped is not None and since < stopped < at:
                            at = stopped
                        owned[partition].append((since, at, process.name))
        for partition, since in held.items():
            owned[partition].append(
                (since, datetime.max.replace(tzinfo=since.tzinfo), process.name)
            )
    return owned


def overlaps(owned: dict[str, list[Interval]]) -> list[str]:
    found = []
    for partition, intervals in owned.items():
        intervals.sort()
        for (_, end, who), (start, _, other) in pairwise(intervals):
            if start < end:
                found.append(f"{partition}: {other} got it at {start} before {who} let go {end}")
    return found


async def wait_for_full_assignment(process: ProcessorProcess, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assignments = [e for e in process.logs() if e["msg"] == "partitions assigned"]
        # All of the input topic's partitions and the retry topic's.
        if assignments and len(assignments[-1]["partitions"]) == 2 * PARTITIONS:
            return
        assert asyncio.get_running_loop().time() < deadline, "partitions never came back"
        await asyncio.sleep(0.2)


@dataclass
class Frozen:
    process: ProcessorProcess
    at: datetime


async def _freeze_a_member_past_its_session(
    faults: FaultEnv, config: dict[str, Any], env: dict[str, str], steady: ProcessorProcess
) -> Frozen:
    """A member stopped (SIGSTOP: a stuck VM, a long GC pause) for longer than its session:
    the group moves on without it; when it wakes, its commits are refused and it rejoins,
    without crashing. Then it leaves."""
    member = faults.processor(config, env, name="frozen")
    await member.wait_for_log("partitions assigned", timeout=60)
    await asyncio.sleep(1.0)
    at = datetime.now(UTC)
    member.signal(signal.SIGSTOP)
    await asyncio.sleep(9)  # over the 6 s session timeout
    await wait_for_full_assignment(steady, timeout=60)
    member.signal(signal.SIGCONT)
    await member.wait_for_log("partitions assigned", timeout=60, count=2)
    await asyncio.sleep(1.0)
    assert await member.stop() < 15
    await wait_for_full_assignment(steady, timeout=60)
    return Frozen(member, at)


async def test_4_members_join_and_leave_five_times_under_a_slow_provider(
    faults: FaultEnv,
) -> None:
    sim = faults.simulator(latency_ms=150)
    async with sim:
        config = faults.config(sim)
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        records = order_stream(events=1500, orders=150)
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            steady = faults.processor(config, env, name="steady")
            await steady.wait_for_log("partitions assigned", timeout=60)
            producing = asyncio.ensure_future(produce_steadily(cluster, records, per_second=25))
            guests: list[ProcessorProcess] = []
            frozen = await _freeze_a_member_past_its_session(faults, config, env, steady)
            guests.append(frozen.process)
            for cycle in range(5):
                joining = [
                    faults.processor(config, env, name=f"guest-{cycle}-{i}") for i in range(2)
                ]
                guests += joining
                for guest in joining:
                    await guest.wait_for_log("partitions assigned", timeout=60)
                await asyncio.sleep(1.0)
                exits = await asyncio.gather(*(guest.stop() for guest in joining))
                assert max(exits) < 15, exits
                # The guests are gone: the steady member takes every partition back.
                await wait_for_full_assignment(steady, timeout=60)
            sent = await producing
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=180)
            await wait_committed(cluster, sent, timeout=60)
            await steady.stop()
            report = await faults.finish(
                "4 join/leave x5 + frozen member", sent, reader, cluster, sim
            )

    members = [steady, *guests]
    assert report.lost == 0, report.lost_ids
    assert report.order_violations == 0
    assert report.committed_equals_end, (report.committed, report.ends)
    assert overlaps(ownership(members, {frozen.process.name: frozen.at})) == []
    for member in members:
        assert member.returncode == 0, member.stderr()
        assert "Traceback" not in member.stderr(), member.stderr()
    assert all("partitions assigned" in guest.messages() for guest in guests)
    rebalances = sum(m.messages().count("partitions revoked") for m in members)
    commit_skips = sum(
        m.messages().count("offset commit skipped during a rebalance") for m in members
    )
    assert frozen.process.messages().count("partitions assigned") >= 2, "it rejoined"
    report.notes.update(rebalances=rebalances, commit_skips=commit_skips)
