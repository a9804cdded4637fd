"""The registry builds the adapter of each configured kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import get_args

import httpx
import pytest
from pydantic import TypeAdapter

from consumer.providers import PROVIDER_KINDS, ProviderSettings, build_provider
from consumer.providers.mvmnt import MvmntProvider
from consumer.providers.shipstation import ShipStationProvider


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def settings(raw: dict[str, object]) -> ProviderSettings:
    return TypeAdapter(ProviderSettings).validate_python(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"kind": "shipstation", "base_url": "https://ss.test", "api_key": "k"},
            ShipStationProvider,
        ),
        (
            {"kind": "mvmnt", "base_url": "https://mv.test/v1", "access_token": "t"},
            MvmntProvider,
        ),
        (
            {
                "kind": "mvmnt",
                "base_url": "https://mv.test/v1",
                "token_url": "https://mv.test/oauth2/token",
                "client_id": "id",
                "client_secret": "secret",
            },
            MvmntProvider,
        ),
    ],
)
def test_build_provider_picks_the_adapter_of_the_kind(
    client: httpx.AsyncClient, raw: dict[str, object], expected: type[object]
) -> None:
    provider = build_provider("account", settings(raw), client)

    assert isinstance(provider, expected)
    assert provider.kind == raw["kind"]


def test_every_settings_kind_has_an_adapter_and_nothing_more() -> None:
    union = get_args(get_args(ProviderSettings)[0])
    settings_kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in union}

    assert settings_kinds == set(PROVIDER_KINDS)
