"""The DESIGN.md input example, shared by the tests that need a valid order-cancelled event."""

from __future__ import annotations

import copy
from typing import Any

_ORDER_CANCELLED: dict[str, Any] = {
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
    """A fresh copy (tests may mutate it), with fields replaced as a test needs."""
    return {**copy.deepcopy(_ORDER_CANCELLED), **overrides}
