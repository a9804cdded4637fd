"""Log lines: JSON ones name the span they were written in, text ones start with their time;
the level may be given in any case."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from consumer.observability.logs import JsonFormatter, TextFormatter, configure_logging
from tests.telemetry.conftest import Telemetry


def line(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord(
        "consumer.kafka.runner", logging.INFO, __file__, 1, message, (), None
    )
    record.__dict__.update(extra)
    decoded: dict[str, object] = orjson.loads(JsonFormatter().format(record))
    return decoded


def test_a_line_logged_in_a_span_carries_its_ids(telemetry: Telemetry) -> None:
    with telemetry.tracer.start_as_current_span("process orders.cancelled") as span:
        entry = line("shipment cancel failed", order_id="SO-1")
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    assert entry["order_id"] == "SO-1"


def test_a_line_outside_any_span_has_no_trace_fields() -> None:
    entry = line("consuming")
    assert "trace_id" not in entry
    assert "span_id" not in entry


def test_an_explicit_trace_id_wins(telemetry: Telemetry) -> None:
    with telemetry.tracer.start_as_current_span("x"):
        entry = line("result", trace_id="0af7651916cd43dd8448eb211c80319c")
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_a_text_line_starts_with_its_utc_time_to_the_millisecond() -> None:
    created = datetime(2026, 12, 6, 5, 40, 1, tzinfo=UTC).timestamp()
    record = logging.makeLogRecord(
        {
            "name": "consumer.kafka.runner",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "consuming",
            "created": created,
            "msecs": 123.0,
            "topic": "orders.cancelled",
        }
    )

    assert TextFormatter().format(record) == (
        "2026-12-06T05:40:01.123Z info    consumer.kafka.runner: consuming topic=orders.cancelled"
    )


def test_a_text_line_carries_the_time_it_was_logged() -> None:
    record = logging.LogRecord("consumer.app", logging.WARNING, __file__, 1, "x", (), None)

    line = TextFormatter().format(record)

    stamp, rest = line.split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    logged = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(logged.timestamp() - record.created) < 0.001
    assert rest == "warning consumer.app: x"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put back what ``configure_logging`` changes on the root and the libraries' loggers."""
    root = logging.getLogger()
    names = ("aiokafka", "httpx", "httpcore", "aiohttp.access")
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("given", ["debug", "Debug", "DEBUG"])
def test_the_level_may_be_given_in_any_case(given: str) -> None:
    configure_logging(given, "text")

    assert logging.getLogger().level == logging.DEBUG
    # aiokafka's own lines are shown at DEBUG only: the same level, whatever its case.
    assert logging.getLogger("aiokafka").level == logging.DEBUG


@pytest.mark.usefixtures("restored_logging")
def test_a_lower_case_level_filters_as_its_upper_case_name() -> None:
    configure_logging("warning", "json")

    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("httpx").level == logging.WARNING
