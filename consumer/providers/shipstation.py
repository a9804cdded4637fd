"""ShipStation API v2: ``PUT /v2/shipments/{shipment_id}/cancel`` with the ``API-Key`` header."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from consumer.providers.base import ProviderSettingsBase


class ShipStationSettings(ProviderSettingsBase):
    kind: Literal["shipstation"]
    api_key: SecretStr
    # Voiding a label costs money: only when an operator opts in per account.
    void_labels: bool = False
    # ShipStation's documented default limit.
    rate_limit_per_minute: float | None = 200.0
