"""``cancel-processor demo``: a row per sample result within 100 columns, progress while it
starts, exit 0 only on the expected results, its topics gone from an external cluster, and
one line for an unreachable broker."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from consumer.config import BOOTSTRAP_ENV
from consumer.tools.demo import run_demo, samples
from consumer.tools.demo_table import WIDTH
from tests.processes import alive, children


async def demo(timeout: float) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = await run_demo(timeout=timeout)
    return code, out.getvalue(), err.getvalue()


async def test_the_demo_prints_every_expected_result_within_100_columns_and_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    code, text, err = await demo(timeout=60)

    assert code == 0, text + err
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, text
    table = next(i for i, line in enumerate(lines) if line.startswith("order "))
    assert lines[0] == "starting the embedded broker…"
    assert any("waiting for the processor to join its group" in line for line in lines[:table])
    assert f"all {len(samples())} samples gave the expected results" in text
    for needle in (
        "already_cancelled",
        "failed: not_found",
        "failed: conflict",
        "failed: unknown_provider",
        "failed: invalid_event",
        "dead-lettered",
    ):
        assert needle in text
    rate_limited = next(line for line in lines if "se-ratelimit2-1008" in line)
    assert rate_limited.split()[-2:] == ["cancelled", "3"], "two 429s, then a third call"


async def test_on_a_kafka_cluster_the_demo_names_it_and_deletes_its_topics(
    monkeypatch: pytest.MonkeyPatch, bootstrap_servers: str
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, bootstrap_servers)
    code, text, err = await demo(timeout=60)

    assert code == 0, text + err
    assert text.startswith(f"using the Kafka cluster at {bootstrap_servers} ({BOOTSTRAP_ENV})")
    found = re.search(r"topics \*(\.demo-[0-9a-f]{8})", text)
    assert found, text
    assert "warning" not in err
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        left = [t for t in await admin.list_topics() if t.endswith(found.group(1))]
    finally:
        await admin.close()
    assert left == []


async def test_results_not_arriving_in_time_name_every_sample_and_hint_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    # The embedded broker holds the processor's first join for 3 s: nothing can arrive.
    code, _, err = await demo(timeout=1)

    assert code == 1
    assert "see the log lines above" not in err
    assert "error: 13 of 13 samples did not give the expected results within 1s:" in err
    for sample in samples():
        assert f"  {sample.key} {sample.title}: nothing arrived (expected " in err
    assert "rerun with a longer --timeout" in err


async def demo_process(*, bootstrap: str) -> asyncio.subprocess.Process:
    """``cancel-processor demo`` as a subprocess, with ``KAFKA_BOOTSTRAP_SERVERS`` set so."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, BOOTSTRAP_ENV: bootstrap},
    )


async def test_an_unreachable_broker_is_one_line_and_exit_1_within_seconds() -> None:
    started = time.monotonic()
    process = await demo_process(bootstrap="127.0.0.1:1")
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1
    assert time.monotonic() - started < 10
    assert err.decode().splitlines() == [
        "error: no Kafka broker answers at 127.0.0.1:1; start one there, or unset "
        f"{BOOTSTRAP_ENV} to use the embedded broker"
    ]


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
async def test_a_signal_early_in_the_demo_ends_it_promptly_and_leaves_no_broker(
    sig: signal.Signals, code: int
) -> None:
    process = await demo_process(bootstrap="")
    try:
        await asyncio.sleep(2.5)  # the broker starting, the processor joining
        broker = children(process.pid)
        process.send_signal(sig)
        started = time.monotonic()
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == code, err.decode()
    assert took < 12, f"the stop took {took:.1f}s"
    assert "Traceback" not in err.decode()
    assert "Unclosed" not in err.decode()
    assert broker, "the embedded broker had not started"
    assert not [pid for pid in broker if alive(pid)], "the embedded broker was left running"
