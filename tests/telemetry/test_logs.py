"""JSON log lines name the span they were written in."""

from __future__ import annotations

import logging

import orjson

from consumer.observability.logs import JsonFormatter
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
