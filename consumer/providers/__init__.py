"""Provider adapters and their registry: adding a provider is one module and one line here
(plus its settings class in ``ProviderSettings``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final

from pydantic import Field

from consumer.providers.base import Provider
from consumer.providers.client import HttpClient
from consumer.providers.mvmnt import MvmntProvider, MvmntSettings
from consumer.providers.shipstation import ShipStationProvider, ShipStationSettings

ProviderSettings = Annotated[ShipStationSettings | MvmntSettings, Field(discriminator="kind")]

# A factory takes (account name, that kind's settings, the shared HTTP client).
ProviderFactory = Callable[[str, Any, HttpClient], Provider]

_FACTORIES: Final[Mapping[str, ProviderFactory]] = {
    "shipstation": ShipStationProvider,
    "mvmnt": MvmntProvider,
}

PROVIDER_KINDS: Final = tuple(_FACTORIES)


def build_provider(name: str, settings: ProviderSettings, client: HttpClient) -> Provider:
    """The adapter of one configured provider account."""
    return _FACTORIES[settings.kind](name, settings, client)
