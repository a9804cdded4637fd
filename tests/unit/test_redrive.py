"""Redrive planning without a broker: which records go back, which are skipped and why."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from consumer.core import headers as h
from consumer.core.events import OrderCancelled, result_event_id
from consumer.core.examples import order_cancelled_example
from consumer.tools.redrive import (
    REDRIVEN_FROM,
    Plan,
    RedriveFilter,
    TopicReadIncomplete,
    already_redriven,
    latest_failures,
    parse_age,
    parse_time,
    plan_dead_letters,
    plan_failures,
    read_to_end,
)

EVENT_ID = uuid.UUID("0f8c3c2e-6a1b-4a7e-9d0f-2d1b6f5a9e11")
NOW_MS = 1_795_000_000_000


def record(
    topic: str,
    offset: int,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    *,
    timestamp: int = NOW_MS,
    key: bytes | None = b"SO-1",
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic, 0, offset, timestamp, 0, key, value, None, 0, 0, tuple(headers or [])
    )


def failure(shipment: str, category: str, retryable: bool, offset: int, at: int = NOW_MS) -> Any:
    value = {
        "event_id": str(result_event_id(EVENT_ID, "mvmnt", shipment)),
        "event_type": "shipment.cancel_failed",
        "schema_version": 1,
        "occurred_at": "2026-11-21T10:00:00Z",
        "source_event_id": str(EVENT_ID),
        "order_id": "SO-1",
        "provider": "mvmnt",
        "provider_kind": "mvmnt",
        "shipment_id": shipment,
        "attempts": 4,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "error": {"category": category, "retryable": retryable, "message": "x"},
    }
    return record("failed", offset, orjson.dumps(value), timestamp=at)


ORIGINAL = OrderCancelled.model_validate(
    order_cancelled_example(
        event_id=str(EVENT_ID),
        order_id="SO-1",
        reason="moved",
        shipments=[
            {"provider": "mvmnt", "shipment_id": "A", "lookup": "key"},
            {"provider": "mvmnt", "shipment_id": "B"},
            {"provider": "mvmnt", "shipment_id": "C"},
        ],
    )
)


def test_ages_and_times() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_time("2h", now) == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert parse_time("2026-11-21T08:00:00") == datetime(2026, 11, 21, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an ISO 8601 time nor an age"):
        parse_time("yesterday")


def test_dead_letters_keep_their_bytes_unless_the_value_was_not_kept() -> None:
    plan = Plan()
    category = [(h.DLQ_ERROR_CATEGORY, b"invalid_event")]
    records = [
        record("dlq", 0, b"{bad", category),
        record("dlq", 1, b"", [*category, (h.DLQ_VALUE_DROPPED, b"too-large")]),
        record("dlq", 2, b"{also bad", category),
    ]
    plan_dead_letters(records, RedriveFilter(), {"dlq/0/2"}, plan)
    assert [(r.value, r.origins) for r in plan.redrives] == [(b"{bad", ("dlq/0/0",))]
    assert plan.redrives[0].headers() == [(REDRIVEN_FROM, b"dlq/0/0")]
    assert plan.skipped == {
        "original value not kept (null or too large)": 1,
        "already redriven": 1,
    }


def test_only_the_latest_retryable_failure_without_a_later_success_comes_back() -> None:
    failures = latest_failures(
        [
            failure("A", "timeout", True, 0),
            failure("B", "unavailable", True, 1, at=NOW_MS),
            # B was redriven and is now refused for good: not again.
            failure("B", "not_found", False, 5, at=NOW_MS + 1000),
            failure("C", "rate_limited", True, 2),
        ]
    )
    plan = Plan()
    done_c = result_event_id(EVENT_ID, "mvmnt", "C")
    plan_failures(
        failures,
        cancelled_ids={done_c},
        originals={EVENT_ID: ORIGINAL},
        chosen=RedriveFilter(),
        done=set(),
        plan=plan,
    )
    [redrive] = plan.redrives
    event = orjson.loads(redrive.value)
    assert event["event_id"] == str(EVENT_ID)
    assert event["shipments"] == [{"provider": "mvmnt", "shipment_id": "A", "lookup": "key"}]
    assert event["reason"] == "moved"
    assert redrive.key == b"SO-1"
    assert redrive.traceparent == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert plan.skipped == {"cancelled since": 1}


def test_failures_without_their_original_input_are_reported_not_guessed() -> None:
    plan = Plan()
    plan_failures(
        latest_failures([failure("A", "timeout", True, 0)]),
        cancelled_ids=set(),
        originals={},
        chosen=RedriveFilter(),
        done=set(),
        plan=plan,
    )
    assert plan.redrives == []
    assert list(plan.skipped) == ["original input event not found (widen --input-lookback)"]


def test_filters_by_category_and_time() -> None:
    failures = latest_failures([failure("A", "timeout", True, 0)])
    for chosen in (
        RedriveFilter(categories=frozenset({"unavailable"})),
        RedriveFilter(since=datetime.fromtimestamp(NOW_MS / 1000 + 1, UTC)),
        RedriveFilter(until=datetime.fromtimestamp(NOW_MS / 1000, UTC)),
    ):
        plan = Plan()
        plan_failures(
            failures,
            cancelled_ids=set(),
            originals={EVENT_ID: ORIGINAL},
            chosen=chosen,
            done=set(),
            plan=plan,
        )
        assert plan.redrives == [], chosen


def test_earlier_runs_are_found_by_their_header() -> None:
    inputs = [
        record("in", 0, b"{}", [(REDRIVEN_FROM, b"dlq/0/3"), (REDRIVEN_FROM, b"failed/1/9")]),
        record("in", 1, b"{}"),
    ]
    assert already_redriven(inputs) == {"dlq/0/3", "failed/1/9"}


class StalledConsumer:
    """A partition whose fetches bring nothing while its position is short of the end."""

    def __init__(self, position: int, highwater: int | None) -> None:
        self._position = position
        self._highwater = highwater

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater

    async def position(self, tp: TopicPartition) -> int:
        return self._position


async def test_a_topic_that_cannot_be_read_to_its_end_stops_the_redrive() -> None:
    tp = TopicPartition("orders.cancelled", 2)
    with pytest.raises(TopicReadIncomplete, match=r"partition 2 at offset 5 of 9"):
        await read_to_end(StalledConsumer(5, highwater=9), {tp: 9}, idle_seconds=0)


async def test_the_fetched_high_watermark_wins_over_an_inexact_listed_end() -> None:
    tp = TopicPartition("orders.cancelled", 0)
    assert await read_to_end(StalledConsumer(5, highwater=5), {tp: 7}, idle_seconds=0) == []
