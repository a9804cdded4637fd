"""The DESIGN.md input example, shared by the tests that need a valid order-cancelled event."""

from __future__ import annotations

import copy
from typing import Any

from consumer.ingress.openapi import EXAMPLE_EVENT


def order_cancelled_example(**overrides: Any) -> dict[str, Any]:
    """A fresh copy (tests may mutate it), with fields replaced as a test needs."""
    return {**copy.deepcopy(EXAMPLE_EVENT), **overrides}
