"""``ActiveSpan``: the runner's stand-in for ``start_as_current_span``."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from consumer.observability.tracing import ActiveSpan
from tests.telemetry.conftest import Telemetry


def test_the_span_is_current_inside_the_block_and_ended_after(telemetry: Telemetry) -> None:
    span = telemetry.tracer.start_span("work")

    with ActiveSpan(span) as active:
        assert active is span
        assert trace.get_current_span() is span

    assert trace.get_current_span() is not span
    ended = telemetry.one("work")
    assert ended.end_time is not None
    assert ended.status.status_code == StatusCode.UNSET
    assert not ended.events


def test_an_exception_leaving_the_block_is_recorded_as_an_error(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="bad"), ActiveSpan(telemetry.tracer.start_span("work")):
        raise ValueError("bad")

    ended = telemetry.one("work")
    assert ended.status.status_code == StatusCode.ERROR
    assert ended.status.description == "ValueError: bad"
    assert [event.name for event in ended.events] == ["exception"]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_cancellation_ends_the_span_without_calling_it_an_error(telemetry: Telemetry) -> None:
    with pytest.raises(asyncio.CancelledError), ActiveSpan(telemetry.tracer.start_span("work")):
        raise asyncio.CancelledError

    ended = telemetry.one("work")
    assert ended.end_time is not None
    assert ended.status.status_code == StatusCode.UNSET
    assert not ended.events
