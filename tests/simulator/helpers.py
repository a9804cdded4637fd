"""Shared by the simulator tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from consumer.simulator import Simulator, SimulatorOptions

SHIPSTATION_AUTH = {"API-Key": SimulatorOptions().shipstation_api_key}

StartSimulator = Callable[..., Awaitable[Simulator]]


async def mvmnt_token(http: httpx.AsyncClient, simulator: Simulator) -> str:
    options = simulator.options
    response = await http.post(
        simulator.mvmnt_token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": options.mvmnt_client_id,
            "client_secret": options.mvmnt_client_secret,
        },
    )
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


class FakeClock:
    """Unix time that moves only when a test moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
