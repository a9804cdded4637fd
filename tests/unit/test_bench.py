"""The benchmark's arithmetic and reporting (``bench/``): what it claims must be what it
measured."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson

from bench import inprocess, load, run
from consumer.config import settings_from_mapping


def test_throughput_runs_from_the_first_to_the_last_result() -> None:
    sent = {"a": 1000.0, "b": 1000.0, "c": 1000.0}
    results = load.Results(at={"a": [2000.0], "b": [2500.0], "c": [3000.0]})

    measured = load.measure(sent, results)

    # Two results after the first, in one second.
    assert measured.events_per_s == 2.0
    assert (measured.p50_ms, measured.p99_ms) == (1500.0, 2000.0)
    assert (measured.missing, measured.duplicates) == (0, 0)


def test_a_repeated_result_counts_once_for_latency_and_as_a_duplicate() -> None:
    sent = {"a": 0.0, "b": 0.0}
    results = load.Results(at={"a": [10.0, 900.0]})

    measured = load.measure(sent, results)

    assert measured.duplicates == 1
    assert measured.missing == 1
    assert measured.p99_ms == 10.0


def test_percentiles_pick_the_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 101)]

    assert load.percentile(ordered, 50) == 50.0
    assert load.percentile(ordered, 99) == 99.0
    assert load.percentile([], 99) == 0.0


def test_generated_events_are_valid_interleave_orders_and_never_repeat_a_shipment() -> None:
    events = list(load.events(8, 4, "t"))

    keys = [key for key, _, _ in events]
    shipments = [orjson.loads(value)["shipments"][0]["shipment_id"] for _, value, _ in events]
    assert keys[:4] == [b"SO-t-0", b"SO-t-1", b"SO-t-2", b"SO-t-3"]
    assert keys[4] == b"SO-t-0"
    assert len(set(shipments)) == 8
    assert len({event_id for _, _, event_id in events}) == 8


def test_the_generated_processor_config_is_valid(tmp_path: Path) -> None:
    kafka = load.Topics("t").kafka("127.0.0.1:9092")

    path = run.write_config(tmp_path / "c.toml", kafka, "http://127.0.0.1:1", 0)
    settings = settings_from_mapping(tomllib.loads(path.read_text()), {})

    assert settings.kafka.fetch_max_wait_ms == run.FETCH_MAX_WAIT_MS
    assert settings.kafka.enable_idempotence is True
    assert settings.providers["shipstation"].max_concurrency == run.MAX_CONCURRENCY


def results_with(events_per_s: float, p99_overhead_ms: float) -> dict[str, object]:
    row = {
        "name": "latency-50ms",
        "events_per_s": events_per_s,
        "p50_ms": 60.0,
        "p99_ms": 50 + p99_overhead_ms,
        "p99_overhead_ms": p99_overhead_ms,
        "peak_rss_mb": 120.0,
        "failed_results": 0,
    }
    return {
        "scenarios": [row],
        "baseline": [{"name": "latency-50ms", "events_per_s": 18.0}],
        "speedup_vs_baseline": {"latency-50ms": round(events_per_s / 18.0, 1)},
    }


def test_every_missed_target_is_reported() -> None:
    assert run.verdicts(results_with(1600.0, 20.0)) == []

    misses = run.verdicts(results_with(800.0, 30.0))

    assert len(misses) == 3
    assert any("800.0 events/s < 1500.0" in miss for miss in misses)
    assert any("p99 overhead 30.0 ms" in miss for miss in misses)
    assert any("44.4x the baseline < 50.0x" in miss for miss in misses)


def test_the_table_has_a_row_per_scenario() -> None:
    table = run.table(results_with(1600.0, 20.0))

    assert table.splitlines()[2] == (
        "| latency-50ms | 1600 | 60.0 | 70.0 | 20.0 | 120 | 18.0 | 88.9x |"
    )


def test_the_broker_alone_row_shows_its_latency_and_events_it_lost_are_a_miss() -> None:
    alone = {"offered_events_per_s": 1000.0, "events": 10_000, "p50_ms": 6.1, "p99_ms": 12.6}
    results = {**results_with(1600.0, 20.0), "broker_alone": {**alone, "missing": 0}}

    assert run.table(results).splitlines()[3] == (
        "| broker alone, no processor (1000/s offered) | | 6.1 | 12.6 | | | | |"
    )
    assert run.verdicts(results) == []
    lost = {**results, "broker_alone": {**alone, "missing": 3}}
    assert run.verdicts(lost) == ["broker alone: 3 events never read back"]


async def test_the_in_process_run_handles_every_event_and_reports_cpu_per_event(
    tmp_path: Path,
) -> None:
    per_event = await inprocess.one_run(200, tracing=True, workdir=tmp_path)

    # run_until returned only once every event had its result; the figure is per event.
    assert 0 < per_event < 0.1
