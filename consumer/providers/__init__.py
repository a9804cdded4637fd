"""Provider adapters and their registry: adding a provider is one module and one line here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from consumer.providers.mvmnt import MvmntSettings
from consumer.providers.shipstation import ShipStationSettings

ProviderSettings = Annotated[ShipStationSettings | MvmntSettings, Field(discriminator="kind")]

PROVIDER_KINDS = ("shipstation", "mvmnt")
