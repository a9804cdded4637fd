"""The one complete order.cancelled v1 event (docs/events.md,
``schemas/order.cancelled.v1.json``): the webhook's request body example, and what the
tests, the benchmark and the sample traffic build their events from, overriding what they
need (a fresh ``event_id``, their ``order_id``, ``shipments``) and keeping the rest."""

from __future__ import annotations

import copy
from typing import Any, Final

ORDER_CANCELLED_EXAMPLE: Final[dict[str, Any]] = {
    "event_id": "0f8c3c2e-6a1b-4a7e-9d0f-2d1b6f5a9e11",
    "event_type": "order.cancelled",
    "schema_version": 1,
    "occurred_at": "2026-11-21T10:00:00Z",
    "order_id": "SO-1001",
    "reason": "Customer changed their mind",
    "shipments": [
        {"provider": "shipstation", "shipment_id": "se-28529731"},
        {"provider": "mvmnt", "shipment_id": "SHP-12345", "lookup": "key"},
    ],
}


def order_cancelled_example(**overrides: Any) -> dict[str, Any]:
    """A fresh copy (callers may mutate it), with fields replaced as a caller needs."""
    return {**copy.deepcopy(ORDER_CANCELLED_EXAMPLE), **overrides}
