"""``run``'s log lines: buffered, but warnings at once and the rest within a flush period."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from consumer.observability.logs import BufferedStreamHandler, TextFormatter, flushing_logs

log = logging.getLogger("consumer.test_log_buffering")


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Path]:
    """A file behind a buffered handler on the root logger; read it to see what reached it."""
    path = tmp_path / "stderr"
    stream: TextIO = path.open("w", buffering=64 * 1024, encoding="utf-8")
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        stream.close()


def test_info_lines_wait_in_the_buffer_until_a_flush(written: Path) -> None:
    log.info("shipment cancelled")
    assert written.read_text() == ""

    logging.getLogger().handlers[0].flush()

    assert "shipment cancelled" in written.read_text()


def test_a_warning_is_written_at_once_with_every_line_before_it(written: Path) -> None:
    log.info("first")
    log.warning("shipment cancel failed")

    # Each line after its timestamp.
    assert [line.split(" ", 1)[1] for line in written.read_text().splitlines()] == [
        "info    consumer.test_log_buffering: first",
        "warning consumer.test_log_buffering: shipment cancel failed",
    ]


async def test_flushing_logs_writes_held_lines_every_period_and_at_the_end(
    written: Path,
) -> None:
    async with flushing_logs(period=0.05):
        log.info("early")
        await asyncio.sleep(0.2)
        assert "early" in contents(written)
        log.info("late")
    assert "late" in contents(written)


def contents(path: Path) -> str:
    return path.read_text(encoding="utf-8")
