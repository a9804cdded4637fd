"""The rate-limited burst's figures, targets and table (the scenario runs in ``bench.run``).

A burst of events for one paced account (ShipStation at 600 calls a minute) must clear at
that pace, every shipment cancelled, while another account's events (MVMNT, unlimited) on
the same partitions keep their latency. The pace is checked where the provider sees it:
the simulator's log of the calls it received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from bench import load

NAME = "rate-limited-burst"
PACED = "shipstation"
OTHER = "mvmnt"
RATE_LIMIT_PER_MINUTE = 600
# The other account's events per second, before the burst and all through its drain.
OTHER_RATE = 20.0
DRAIN_TIMEOUT_SECONDS = 600.0

TARGET_CLEAR_VS_IDEAL = 1.05
TARGET_OTHER_P99_INCREASE_MS = 1000.0


def ideal_seconds(events: int, per_minute: int = RATE_LIMIT_PER_MINUTE) -> float:
    """How long ``events`` calls take at exactly ``per_minute``."""
    return events / per_minute * 60


def busiest_minute(times: Sequence[float], window: float = 60.0) -> tuple[int, float]:
    """The most calls in any half-open ``window`` seconds (the simulator's sliding window),
    and when that window opens, in seconds after the first call."""
    ordered = sorted(times)
    busiest, opens = 0, 0.0
    first = 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - window:
            first += 1
        if last - first + 1 > busiest:
            busiest, opens = last - first + 1, ordered[first] - ordered[0]
    return busiest, opens


async def call_times(simulator: str, provider: str) -> list[float]:
    """When the simulator received each call to ``provider`` (unix seconds)."""
    url = f"{simulator}/_admin/calls"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params={"provider": provider}) as response,
    ):
        response.raise_for_status()
        body = await response.json()
    return [float(call["at"]) for call in body["calls"]]


def figures(
    burst: Mapping[str, float],
    unloaded: Mapping[str, float],
    during: Mapping[str, float],
    results: load.Results,
    *,
    parks: Mapping[str, int],
    calls: Sequence[float],
) -> dict[str, Any]:
    """The scenario's row: ``burst`` the paced account's events, ``unloaded`` and ``during``
    the other account's before and during the drain (event_id -> input time, ms)."""
    events = len(burst)
    firsts = [min(results.at[e]) for e in burst if e in results.at]
    missing = events - len(firsts)
    clear = (max(firsts) - min(burst.values())) / 1000 if firsts and not missing else None
    ideal = ideal_seconds(events)
    failed = sum(1 for e in burst if e in results.failed_events)
    cancelled = sum(1 for e in burst if e in results.at and e not in results.failed_events)
    quiet = load.measure(dict(unloaded), results)
    busy = load.measure(dict(during), results)
    duplicates = sum(len(results.at[e]) - 1 for e in burst if e in results.at)
    other_failed = sum(1 for e in (*unloaded, *during) if e in results.failed_events)
    busiest, opens = busiest_minute(calls)
    return {
        "name": NAME,
        "account": PACED,
        "rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
        "events": events,
        "missing": missing,
        # From the burst's first input to its last event's result; None when some never came.
        "clear_seconds": round(clear, 1) if clear is not None else None,
        "ideal_seconds": round(ideal, 1),
        "clear_vs_ideal": round(clear / ideal, 3) if clear is not None else None,
        "cancelled": cancelled,
        "cancel_failed": failed,
        "cancelled_share": round(cancelled / events, 4) if events else 0.0,
        "duplicates": duplicates + quiet.duplicates + busy.duplicates,
        "parks": sum(parks.values()),
        "parks_by_reason": dict(parks),
        "calls": len(calls),
        "busiest_minute_calls": busiest,
        "busiest_minute_opens_s": round(opens, 3),
        "other_account": OTHER,
        "other_offered_events_per_s": OTHER_RATE,
        "mvmnt_unloaded_events": quiet.events,
        "mvmnt_unloaded_p50_ms": round(quiet.p50_ms, 1),
        "mvmnt_unloaded_p99_ms": round(quiet.p99_ms, 1),
        "mvmnt_burst_events": busy.events,
        "mvmnt_burst_p50_ms": round(busy.p50_ms, 1),
        "mvmnt_burst_p99_ms": round(busy.p99_ms, 1),
        "mvmnt_p99_increase_ms": round(busy.p99_ms - quiet.p99_ms, 1),
        "mvmnt_missing": quiet.missing + busy.missing,
        "mvmnt_cancel_failed": other_failed,
    }


def misses(row: Mapping[str, Any]) -> list[str]:
    """Every target the row misses, one line each."""
    found = []
    where = "rate-limited burst"
    if row["missing"]:
        found.append(
            f"{where}: {row['missing']} of {row['events']} {PACED} events without a result "
            f"after {DRAIN_TIMEOUT_SECONDS:.0f} s"
        )
    elif row["clear_vs_ideal"] > TARGET_CLEAR_VS_IDEAL:
        found.append(
            f"{where}: cleared in {row['clear_seconds']} s, {row['clear_vs_ideal']}x the ideal "
            f"{row['ideal_seconds']} s > {TARGET_CLEAR_VS_IDEAL}x"
        )
    if row["cancelled_share"] < 1.0:
        found.append(
            f"{where}: {row['cancelled']} of {row['events']} {PACED} shipments cancelled "
            f"({row['cancel_failed']} cancel-failed)"
        )
    if row["mvmnt_missing"]:
        found.append(f"{where}: {row['mvmnt_missing']} {OTHER} events without a result")
    if row["mvmnt_p99_increase_ms"] > TARGET_OTHER_P99_INCREASE_MS:
        found.append(
            f"{where}: {OTHER} p99 {row['mvmnt_burst_p99_ms']} ms during the burst, "
            f"{row['mvmnt_unloaded_p99_ms']} ms unloaded: more than "
            f"{TARGET_OTHER_P99_INCREASE_MS:.0f} ms slower"
        )
    if row["busiest_minute_calls"] > row["rate_limit_per_minute"]:
        found.append(
            f"{where}: {row['busiest_minute_calls']} {PACED} calls in one minute > "
            f"{row['rate_limit_per_minute']}"
        )
    return found


def table(row: Mapping[str, Any]) -> str:
    def figure(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return "\n".join(
        [
            "| rate-limited burst | events | clear s | ideal s | clear/ideal | cancelled "
            "| parks | busiest minute | mvmnt p99 ms unloaded | mvmnt p99 ms in burst |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {PACED} at {row['rate_limit_per_minute']}/min, {OTHER} at "
            f"{row['other_offered_events_per_s']:.0f}/s | {row['events']} "
            f"| {figure(row['clear_seconds'], '.1f')} | {row['ideal_seconds']:.1f} "
            f"| {figure(row['clear_vs_ideal'], '.3f')} | {row['cancelled_share']:.1%} "
            f"| {row['parks']} | {row['busiest_minute_calls']} "
            f"| {row['mvmnt_unloaded_p99_ms']:.1f} | {row['mvmnt_burst_p99_ms']:.1f} |",
        ]
    )
