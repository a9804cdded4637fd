"""``cancel-processor demo`` prints every sample's result and exits 0."""

from __future__ import annotations

import io
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
