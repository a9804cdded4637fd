"""Scenarios 6-7: a provider that rate-limits and fails in bursts, and one that hangs: both
end in results without a manual step (parked and retried; a hang fails only past the
horizon)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import pairwise
from typing import Any

import orjson
import pytest

from consumer.core.pacing import Pace
from tests.faults.conftest import FaultEnv
from tests.faults.harness import Input, OutputReader, cluster_for, produce, result_ids
from tests.faults.streams import expected_ids, single

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

# Scaled down from ShipStation's 200/min so that saturating it takes seconds, not minutes.
RATE_PER_MINUTE = 120
# Arrival times are taken at the simulator; network scheduling may bunch requests this much.
JITTER_SECONDS = 0.25


def window_excess(times: list[float], rate_per_minute: float) -> list[str]:
    """Every sliding window [t_i, t_j] of requests against the pace's bound: at most its
    burst plus one slot per interval over the window (so never more than the rate in any
    60 s). Returns the windows that exceed it."""
    pace = Pace(rate_per_minute)
    burst, refill_per_second = pace.burst, 1 / pace.interval
    excess = []
    times = sorted(times)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - start
            allowed = burst + refill_per_second * (span + JITTER_SECONDS)
            if j - i + 1 > allowed:
                excess.append(f"{j - i + 1} requests in {span:.2f}s (allowed {allowed:.1f})")
            if span > 60 and j - i + 1 > rate_per_minute:
                excess.append(f"{j - i + 1} requests in one minute")
    return excess


def requests_by_shipment(
    requests: list[dict[str, Any]], prefix: str
) -> dict[str, list[dict[str, Any]]]:
    cancels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in requests:
        path = request["path"]
        if path.startswith(prefix) and path.endswith("/cancel"):
            cancels[path.removeprefix(prefix).split("/")[0]].append(request)
    for calls in cancels.values():
        calls.sort(key=lambda r: r["at"])
    return cancels


async def test_6_rate_limits_retry_after_and_503_bursts(faults: FaultEnv) -> None:
    sim = faults.simulator()
    async with sim:
        config = faults.config(
            sim,
            {
                "processing": {
                    "retry": {
                        "max_attempts": 4,
                        "budget_seconds": 15,
                        "backoff_initial_seconds": 0.2,
                        # Short steps: the shipments failing 9 times get there in seconds.
                        "schedule_seconds": [1, 2, 4],
                    },
                    # Per-shipment 503s are not an outage of the account (scenario 15 has
                    # the circuit breaker).
                    "breaker": {"failure_threshold": 1000},
                }
            },
            shipstation_rate_per_minute=RATE_PER_MINUTE,
        )
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        kinds = {
            # Each attempt is two requests: the refused cancel and the confirming read.
            "cancelled": 6,
            "ratelimit2": 3,
            "flaky2": 3,
            "flaky9": 2,
            "ratelimit9": 2,
        }
        throttled: list[Input] = [
            single(f"SO-ss-{word}-{i}", "shipstation", f"se-{word}-{i}")
            for word, count in kinds.items()
            for i in range(count)
        ]
        flowing = [single(f"SO-mv-{i}", "mvmnt", f"SHP-flow-{i}") for i in range(60)]
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            started_ms = time.time() * 1000
            sent = await produce(cluster, throttled + flowing)
            wanted = expected_ids(sent)
            # Every 429 holds the whole account for its Retry-After and the first halves its
            # pace; the shipments answered 429 nine times in a row take three rounds.
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=240)
            await processor.stop()
            requests = await sim.requests()
            report = await faults.finish(
                "6 429/Retry-After, 503s, 120/min", sent, reader, cluster, sim
            )

    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0
    ss_times = [r["at"] for r in requests if r["path"].startswith("/shipstation/")]
    assert window_excess(ss_times, RATE_PER_MINUTE) == []
    # The check has teeth: the traffic really pressed against the limit.
    assert window_excess(ss_times, RATE_PER_MINUTE * 0.75) != []
    # Retry-After: 1 was honoured after every 429.
    for shipment, calls in requests_by_shipment(requests, "/shipstation/v2/shipments/").items():
        for refused, after in pairwise(calls):
            if refused["status"] == 429:
                assert after["at"] - refused["at"] >= 0.99, (shipment, refused, after)
    results = {v["shipment_id"]: v for v in reader.result_values()}
    # Failing longer than a round of attempts is a delay, not a failure: parked, retried.
    assert [r for r in results.values() if "error" in r] == []
    for word in ("flaky9", "ratelimit9"):
        for i in range(kinds[word]):
            # Ten calls; attempts also count the ones the account's own pace held back
            # (a Retry-After it honours, raised as rate_limited before any call).
            assert results[f"se-{word}-{i}"]["attempts"] >= 10, results[f"se-{word}-{i}"]
    # Other orders kept flowing: MVMNT was done long before the throttled account.
    by_provider: dict[str, list[int]] = defaultdict(list)
    for record in reader.results:
        value = record.value or b""
        by_provider["mvmnt" if b'"provider":"mvmnt"' in value else "shipstation"].append(
            record.timestamp
        )
    mvmnt_done = max(by_provider["mvmnt"]) - started_ms
    shipstation_done = max(by_provider["shipstation"]) - started_ms
    assert mvmnt_done < shipstation_done / 2, (mvmnt_done, shipstation_done)
    report.notes.update(
        shipstation_requests=len(ss_times),
        shipstation_seconds=round((max(ss_times) - min(ss_times)), 1),
        mvmnt_done_seconds=round(mvmnt_done / 1000, 1),
        shipstation_done_seconds=round(shipstation_done / 1000, 1),
        parks=len(reader.parks),
    )


async def test_7_a_hanging_provider_is_time_boxed(faults: FaultEnv) -> None:
    sim = faults.simulator(latency_ms=10)
    budget = 6.0
    horizon_hours = 0.003
    async with sim:
        config = faults.config(
            sim,
            {
                # A consume loop stuck behind the hanging calls would be thrown out quickly.
                "kafka": {"max_poll_interval_ms": 3000},
                "processing": {
                    "retry": {
                        "max_attempts": 3,
                        "budget_seconds": budget,
                        "backoff_initial_seconds": 0.2,
                        "backoff_max_seconds": 0.5,
                        # A hang is retried in rounds until the horizon, then it fails.
                        "schedule_seconds": [1],
                        "horizon_hours": horizon_hours,
                    },
                    # Three hanging shipments are not an outage of the account: keep the
                    # circuit out of this scenario (scenario 15 has the outage).
                    "breaker": {"failure_threshold": 1000},
                },
            },
        )
        config["providers"]["mvmnt"]["timeout_seconds"] = 1.0
        env = sim.secrets_env()
        settings = await faults.provision(config, env)
        hanging = [single(f"SO-hang-{i}", "mvmnt", f"SHP-hang-{i}") for i in range(3)]
        others = [single(f"SO-ss-{i}", "shipstation", f"se-ok-{i}") for i in range(60)] + [
            single(f"SO-mv-{i}", "mvmnt", f"SHP-ok-{i}") for i in range(60)
        ]
        async with cluster_for(settings) as cluster, OutputReader(settings) as reader:
            processor = faults.processor(config, env)
            await processor.wait_for_log("partitions assigned", timeout=60)
            started_ms = time.time() * 1000
            sent = await produce(cluster, hanging + others)
            wanted = expected_ids(sent)
            await reader.wait_for(lambda r: wanted <= result_ids(r), timeout=60)
            # The hanging calls outlive max_poll_interval_ms: still no rebalance.
            await asyncio.sleep(2)
            await processor.stop()
            requests = await sim.requests()
            report = await faults.finish("7 provider hangs", sent, reader, cluster, sim)

    assert report.lost == 0, report.lost_ids
    assert report.duplicates == 0
    assert report.committed_equals_end
    messages = processor.messages()
    assert messages.count("partitions assigned") == 1
    assert "partitions revoked" not in messages
    first_call = {
        shipment: calls[0]["at"]
        for shipment, calls in requests_by_shipment(requests, "/mvmnt/v1/shipments/").items()
    }
    slowest_other = 0.0
    for record in reader.results:
        value = orjson.loads(record.value or b"{}")
        if value["shipment_id"].startswith("SHP-hang"):
            assert value["error"]["category"] == "timeout", value
            assert value["error"]["retryable"] is True
            took = record.timestamp / 1000 - first_call[value["shipment_id"]]
            # Rounds until the horizon (counted from the first park), then one more.
            limit = horizon_hours * 3600 + 2 * budget + 1.5
            assert took <= limit, f"{value['shipment_id']} took {took:.1f}s"
        else:
            assert value["outcome"] == "cancelled", value
            slowest_other = max(slowest_other, record.timestamp - started_ms)
    # Each hanging call was cut off by the 1 s HTTP timeout, not left to the budget.
    for shipment, calls in requests_by_shipment(requests, "/mvmnt/v1/shipments/").items():
        if shipment.startswith("SHP-hang"):
            assert all(call["status"] is None for call in calls)
            gaps = [b["at"] - a["at"] for a, b in pairwise(calls)]
            assert len(calls) >= 2
            # Within a round a backoff; between rounds the 1 s park (±10 %) and its hold.
            assert all(0.99 <= gap <= 3.0 for gap in gaps), gaps
    assert slowest_other < 5000, f"other orders waited {slowest_other:.0f} ms"
    report.notes["slowest_other_ms"] = round(slowest_other)
