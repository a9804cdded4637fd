"""``cancel-processor redrive`` against a real broker and the real processor."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from consumer.core.events import result_event_id
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import free_port
from consumer.tools.redrive import REDRIVEN_FROM, Options, RedriveFilter, parse_time, run_redrive
from tests.integration.kafka_helpers import Cluster, order_event, running_processor


async def redrive(cluster: Cluster, **options: Any) -> tuple[list[str], int]:
    """Run it; the printed lines and how many records it published."""
    lines: list[str] = []
    chosen = options.pop("chosen", RedriveFilter())
    plan = await run_redrive(
        cluster.kafka, Options(chosen=chosen, idle_seconds=1.0, **options), lines.append
    )
    published = 0 if options.get("dry_run") else len(plan.redrives)
    return lines, published


async def redrive_command(
    config: Path, *args: str
) -> tuple[asyncio.subprocess.Process, bytes, bytes]:
    """``cancel-processor redrive --config CONFIG ARGS`` run to its end: the process, its
    stdout and its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "redrive",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process, out, err


async def inputs(cluster: Cluster, count: int) -> list[Any]:
    return await cluster.collect([cluster.kafka.input_topic], count)


async def test_dead_letters_go_back_byte_for_byte_once(
    cluster: Cluster, simulator: Simulator
) -> None:
    bad_json = b'{"order_id": "SO-1", broken'
    await cluster.send(bad_json, key="SO-1")
    await cluster.send(order_event("SO-2", ("shipstation", "se-2")))
    async with running_processor(cluster.settings):
        await cluster.collect([cluster.kafka.dlq_topic], 1)

    lines, published = await redrive(cluster, dry_run=True)
    assert published == 0
    assert lines[0].startswith(f"would redrive dlq {cluster.kafka.dlq_topic}/")
    assert lines[-1] == "1 would redrive"
    assert len(await inputs(cluster, 2)) == 2, "a dry run publishes nothing"

    lines, published = await redrive(cluster)
    assert published == 1
    records = await inputs(cluster, 3)
    [again] = [r for r in records if dict(r.headers).get(REDRIVEN_FROM)]
    assert again.value == bad_json
    assert again.key == b"SO-1"
    assert dict(again.headers)[REDRIVEN_FROM].startswith(cluster.kafka.dlq_topic.encode())

    lines, published = await redrive(cluster)
    assert published == 0, "safe to run twice: the first run's copy is found"
    assert lines == ["0 redriven; skipped: 1 already redriven"]
    _, published = await redrive(cluster, chosen=RedriveFilter(again=True))
    assert published == 1


async def test_retryable_failures_come_back_with_their_ids_after_a_fix(
    cluster: Cluster, simulator: Simulator
) -> None:
    event = order_event(
        "SO-7",
        ("shipstation", "se-7-ok"),
        ("mvmnt", "SHP-7-flaky9"),
        ("shipstation", "se-7-notfound"),
    )
    event["shipments"][1]["lookup"] = "key"
    event["reason"] = "Customer moved"
    await cluster.send(event)
    # A retry horizon of two seconds: the flaky shipment is parked and retried until then,
    # and only then fails (retryable), as it would after a day-long outage.
    retry = cluster.settings.processing.retry.model_copy(
        update={"max_attempts": 1, "schedule_seconds": (0.3,), "horizon_hours": 2 / 3600}
    )
    # Five 503s in a row would open the circuit; its cool-down is not what this is about.
    breaker = cluster.settings.processing.breaker.model_copy(update={"failure_threshold": 1000})
    processing = cluster.settings.processing.model_copy(update={"retry": retry, "breaker": breaker})
    async with running_processor(cluster.settings.model_copy(update={"processing": processing})):
        first = await cluster.results(count=3)
    failed = {r["shipment_id"]: r for r in first if "error" in r}
    assert failed["SHP-7-flaky9"]["error"]["retryable"] is True
    assert failed["se-7-notfound"]["error"]["retryable"] is False

    # Filters: a category that did not fail, a window that holds nothing.
    only_timeouts = RedriveFilter(sources=frozenset({"failed"}), categories=frozenset({"timeout"}))
    assert (await redrive(cluster, chosen=only_timeouts))[1] == 0
    future = RedriveFilter(since=parse_time("2999-01-01T00:00:00"))
    assert (await redrive(cluster, chosen=future))[1] == 0

    # The provider is fixed; redrive brings back just the retryable shipment.
    async with httpx.AsyncClient() as admin:
        fix = {"provider": "mvmnt", "shipment_id": "SHP-7-flaky9", "fault": ""}
        (await admin.post(f"{simulator.admin_url}/faults", json=fix)).raise_for_status()
    lines, published = await redrive(cluster)
    assert published == 1
    assert "category=unavailable" in lines[0]
    [redriven] = [r for r in await inputs(cluster, 2) if dict(r.headers).get(REDRIVEN_FROM)]
    body = orjson.loads(redriven.value)
    assert body["event_id"] == event["event_id"], "the original event id, so the same result ids"
    assert body["shipments"] == [
        {"provider": "mvmnt", "shipment_id": "SHP-7-flaky9", "lookup": "key"}
    ]
    assert body["reason"] == "Customer moved"
    assert body["order_id"] == "SO-7"
    trace_id = failed["SHP-7-flaky9"]["trace_id"]
    assert dict(redriven.headers)["traceparent"].startswith(f"00-{trace_id}-".encode())

    async with running_processor(cluster.settings):
        results = await cluster.results(count=4)
    [cancelled] = [r for r in results if r["shipment_id"] == "SHP-7-flaky9" and "outcome" in r]
    expected = result_event_id(uuid.UUID(event["event_id"]), "mvmnt", "SHP-7-flaky9")
    assert cancelled["event_id"] == str(expected) == failed["SHP-7-flaky9"]["event_id"]
    assert simulator.calls("shipstation", "se-7-ok") == 1, "what succeeded is not redone"
    assert simulator.calls("shipstation", "se-7-notfound") == 1, "permanent failures stay"

    lines, published = await redrive(cluster)
    assert published == 0
    assert lines == ["0 redriven; skipped: 1 cancelled since"]


async def test_the_command_line_plans_a_dry_run(cluster: Cluster, tmp_path: Path) -> None:
    kafka = cluster.kafka
    config = tmp_path / "config.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka.bootstrap_servers}"\n'
        f'input_topic = "{kafka.input_topic}"\ncancelled_topic = "{kafka.cancelled_topic}"\n'
        f'failed_topic = "{kafka.failed_topic}"\ndlq_topic = "{kafka.dlq_topic}"\n'
        f'retry_topic = "{kafka.retry_topic}"\n'
        f"enable_idempotence = {str(kafka.enable_idempotence).lower()}\n"
    )
    process, out, err = await redrive_command(
        config, "--dry-run", "--since", "1h", "--category", "timeout"
    )
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["0 would redrive"]


async def test_an_unreachable_broker_is_one_line_and_no_client_is_left_open(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[kafka]\nbootstrap_servers = "127.0.0.1:{free_port()}"\n')
    process, _, err = await redrive_command(config, "--dry-run")
    lines = err.decode().strip().splitlines()
    assert process.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: kafka broker at 127.0.0.1:")
