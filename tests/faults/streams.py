"""Input streams of the fault scenarios: many orders, several events each, interleaved."""

from __future__ import annotations

import uuid
from typing import Any

from tests.faults.checker import expected_results
from tests.faults.harness import Input, event_record
from tests.integration.kafka_helpers import order_event


def order_stream(events: int, orders: int, *, tag: str | None = None) -> list[Input]:
    """``events`` events spread round-robin over ``orders`` orders.

    Orders alternate between the two providers; every fifth event names a shipment at the
    other provider too, so some events have two results. Shipment ids are unique and carry
    no fault word.
    """
    tag = tag or uuid.uuid4().hex[:6]
    records = []
    for index in range(events):
        order = index % orders
        main, other = ("shipstation", "mvmnt") if order % 2 == 0 else ("mvmnt", "shipstation")
        shipments = [(main, _shipment_id(main, tag, order, index))]
        if index % 5 == 4:
            shipments.append((other, _shipment_id(other, tag, order, index)))
        records.append(event_record(order_event(f"SO-{tag}-{order}", *shipments)))
    return records


def _shipment_id(provider: str, tag: str, order: int, index: int) -> str:
    prefix = "se" if provider == "shipstation" else "SHP"
    return f"{prefix}-{tag}-{order}-{index}"


def single(order_id: str, provider: str, shipment_id: str, **extra: Any) -> Input:
    return event_record(order_event(order_id, (provider, shipment_id), **extra))


def expected_ids(sent: list[Input]) -> set[str]:
    """The result event_ids the valid events among ``sent`` must produce."""
    return {rid for r in sent if r.event is not None for rid, _, _ in expected_results(r)}
