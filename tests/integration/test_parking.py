"""Parking end to end: a shipment failing transiently goes to the retry topic, comes back
when due and ends cancelled; a later event of its order naming it waits behind it, while
the order's other shipments go ahead."""

from __future__ import annotations

import orjson
import pytest

from consumer.config import Settings
from consumer.core import headers as h
from consumer.core.parking import ParkedShipment, ParkReason
from consumer.simulator import Simulator
from tests.integration.kafka_helpers import Cluster, order_event, running_processor


@pytest.fixture
def parking(settings: Settings) -> Settings:
    """One attempt per round and a 1 s schedule: parks come back quickly."""
    retry = settings.processing.retry.model_copy(
        update={"max_attempts": 1, "schedule_seconds": (1.0,)}
    )
    processing = settings.processing.model_copy(update={"retry": retry})
    return settings.model_copy(update={"processing": processing})


async def test_a_transient_failure_is_parked_then_cancelled_with_the_same_result_id(
    cluster: Cluster, simulator: Simulator, parking: Settings
) -> None:
    event = order_event("SO-P1", ("shipstation", "se-flaky2-p1"))
    await cluster.send(
        event, headers=[(h.TRACEPARENT, b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    )

    async with running_processor(parking):
        [result] = await cluster.results(count=1, timeout=30)
        parks = await cluster.collect([parking.kafka.retry_topic], count=2)

    assert result["outcome"] == "cancelled"
    assert result["attempts"] == 3
    assert result["trace_id"] == "1" * 32, "the parked shipment stays in the event's trace"
    first, second = (ParkedShipment.model_validate(orjson.loads(r.value)) for r in parks)
    assert [first.rounds, second.rounds] == [1, 2]
    assert first.reason is second.reason is ParkReason.TRANSIENT_FAILURE
    assert first.first_parked_at == second.first_parked_at
    assert first.last_error is not None
    assert first.last_error.http_status == 503
    for record in parks:
        assert record.key == b"SO-P1"
        assert dict(record.headers)[h.EVENT_TYPE] == b"shipment.cancel_retry"
    # Every attempt was the same call: one Idempotency-Key.
    keys = {
        r["idempotency_key"]
        for r in simulator.recent_requests()
        if r["path"] == "/shipstation/v2/shipments/se-flaky2-p1/cancel"
    }
    assert keys == {result["event_id"]}


async def test_a_later_event_naming_a_parked_shipment_waits_behind_it(
    cluster: Cluster, simulator: Simulator, parking: Settings
) -> None:
    earlier = order_event("SO-P2", ("shipstation", "se-flaky3-p2"))
    later = order_event("SO-P2", ("shipstation", "se-flaky3-p2"), ("mvmnt", "SHP-p2"))
    await cluster.send(earlier)
    await cluster.send(later)

    async with running_processor(parking):
        results = await cluster.collect([parking.kafka.cancelled_topic], count=3, timeout=40)

    order = [
        (orjson.loads(r.value)["source_event_id"], orjson.loads(r.value)["shipment_id"])
        for r in results
    ]
    # The other shipment of the later event did not wait; the parked one's results keep
    # the order of their events.
    assert order == [
        (later["event_id"], "SHP-p2"),
        (earlier["event_id"], "se-flaky3-p2"),
        (later["event_id"], "se-flaky3-p2"),
    ]


async def test_after_a_restart_a_later_event_still_waits_behind_the_park(
    cluster: Cluster, simulator: Simulator, parking: Settings
) -> None:
    """The new run reads the retry partition back before it takes new input from the input
    partition of the same number."""
    retry = parking.processing.retry.model_copy(update={"schedule_seconds": (3.0,)})
    settings = parking.model_copy(
        update={"processing": parking.processing.model_copy(update={"retry": retry})}
    )
    earlier = order_event("SO-P3", ("shipstation", "se-flaky2-p3"))
    later = order_event("SO-P3", ("shipstation", "se-flaky2-p3"), ("mvmnt", "SHP-p3"))
    await cluster.send(earlier)
    async with running_processor(settings):
        await cluster.collect([settings.kafka.retry_topic], count=1)
    await cluster.send(later)

    async with running_processor(settings):
        results = await cluster.collect([settings.kafka.cancelled_topic], count=3, timeout=40)

    values = [orjson.loads(r.value) for r in results]
    assert [(v["source_event_id"], v["shipment_id"]) for v in values] == [
        (later["event_id"], "SHP-p3"),
        (earlier["event_id"], "se-flaky2-p3"),
        (later["event_id"], "se-flaky2-p3"),
    ]
