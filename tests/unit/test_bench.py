"""The benchmark's arithmetic and reporting (``bench/``): what it claims must be what it
measured."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson

from bench import burst, inprocess, load, run
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


def test_a_rate_limit_override_changes_only_the_named_account(tmp_path: Path) -> None:
    kafka = load.Topics("t").kafka("127.0.0.1:9092")
    plain = run.write_config(tmp_path / "plain.toml", kafka, "http://127.0.0.1:1", 0)
    paced = run.write_config(
        tmp_path / "paced.toml", kafka, "http://127.0.0.1:1", 0, rate_limits={"shipstation": 600}
    )

    before = tomllib.loads(plain.read_text())
    after = tomllib.loads(paced.read_text())
    settings = settings_from_mapping(after, {})

    assert settings.providers["shipstation"].rate_limit_per_minute == 600
    assert settings.kafka.retry_topic == kafka.retry_topic
    assert after["providers"]["mvmnt"] == before["providers"]["mvmnt"]
    assert {**after["providers"]["shipstation"], "rate_limit_per_minute": 6_000_000} == before[
        "providers"
    ]["shipstation"]


def test_the_busiest_minute_is_a_half_open_sliding_window() -> None:
    # 0 and 60 are a minute apart: never in one window. 30..89 hold 4.
    assert burst.busiest_minute([100.0, 130.0, 159.9, 160.0, 189.0]) == (4, 30.0)
    assert burst.busiest_minute([0.0, 60.0, 120.0]) == (1, 0.0)
    assert burst.busiest_minute([]) == (0, 0.0)


def burst_row(**changes: object) -> dict[str, object]:
    # 4 ShipStation events at t=0, the last result 0.4 s later; 1 cancel-failed.
    sent = {f"s{n}": 0.0 for n in range(4)}
    quiet = {"q0": 0.0, "q1": 0.0}
    during = {"d0": 100.0}
    results = load.Results(
        at={
            "s0": [100.0],
            "s1": [200.0, 250.0],
            "s2": [300.0],
            "s3": [400.0],
            "q0": [10.0],
            "q1": [20.0],
            "d0": [1200.0],
        },
        failed_events={"s3"},
    )

    row = burst.figures(
        sent, quiet, during, results, parks={"account_busy": 3}, calls=[0.0, 0.1, 0.2]
    )
    return {**row, **changes}


def test_the_burst_figures_come_from_input_and_result_times() -> None:
    row = burst_row()

    assert row["clear_seconds"] == 0.4
    assert row["ideal_seconds"] == 0.4  # 4 calls at 600 a minute
    assert row["clear_vs_ideal"] == 1.0
    assert (row["cancelled"], row["cancel_failed"], row["cancelled_share"]) == (3, 1, 0.75)
    assert row["duplicates"] == 1
    assert (row["parks"], row["busiest_minute_calls"]) == (3, 3)
    assert (row["mvmnt_unloaded_p99_ms"], row["mvmnt_burst_p99_ms"]) == (20.0, 1100.0)
    assert row["mvmnt_p99_increase_ms"] == 1080.0


def test_every_missed_burst_target_is_reported_and_in_the_table() -> None:
    met = burst_row(cancelled=4, cancel_failed=0, cancelled_share=1.0, mvmnt_p99_increase_ms=5.0)
    results = {**results_with(1600.0, 20.0), "rate_limited_burst": met}

    assert run.verdicts(results) == []
    assert run.table(results).splitlines()[-1] == (
        "| shipstation at 600/min, mvmnt at 20/s | 4 | 0.4 | 0.4 | 1.000 | 100.0% | 3 | 3 "
        "| 20.0 | 1100.0 |"
    )

    missed = burst_row(clear_vs_ideal=1.2, busiest_minute_calls=601)
    misses = run.verdicts({**results_with(1600.0, 20.0), "rate_limited_burst": missed})

    assert len(misses) == 4
    assert any("1.2x the ideal" in miss for miss in misses)
    assert any("3 of 4 shipstation shipments cancelled (1 cancel-failed)" in m for m in misses)
    assert any("more than 1000 ms slower" in miss for miss in misses)
    assert any("601 shipstation calls in one minute" in miss for miss in misses)


def test_a_burst_with_events_never_answered_has_no_clear_time_and_is_a_miss() -> None:
    sent = {"s0": 0.0, "s1": 0.0}
    results = load.Results(at={"s0": [100.0]})

    row = burst.figures(sent, {}, {}, results, parks={}, calls=[])

    assert (row["missing"], row["clear_seconds"], row["clear_vs_ideal"]) == (1, None, None)
    assert "1 of 2 shipstation events without a result" in burst.misses(row)[0]
    assert "| - | 0.2 | - |" in burst.table(row)
