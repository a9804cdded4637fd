"""``cancel-processor demo`` prints every sample's result and exits 0."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import time
from contextlib import redirect_stdout

from consumer.tools.demo import run_demo, samples


async def test_the_demo_prints_a_row_for_every_expected_result_and_succeeds() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = await run_demo(timeout=60)

    text = out.getvalue()
    expected = sum(sample.results for sample in samples())
    assert code == 0, text
    assert f"all {expected} results arrived" in text
    for needle in (
        "already_cancelled",
        "failed: not_found",
        "failed: conflict",
        "failed: unknown_provider",
        "failed: invalid_event",
        "dead-lettered",
    ):
        assert needle in text
    rate_limited = next(line for line in text.splitlines() if "se-ratelimit2-1008" in line)
    assert " cancelled " in rate_limited
    assert " 3 " in rate_limited, "two 429s, then success on the third attempt"


async def test_ctrl_c_early_in_the_demo_ends_it_promptly_and_cleanly() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": ""},
    )
    try:
        await asyncio.sleep(2.5)  # the broker starting, the processor joining
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err.decode()
    assert took < 12, f"Ctrl-C took {took:.1f}s"
    assert "Traceback" not in err.decode()
    assert "Unclosed" not in err.decode()
