"""Fixtures: simulators started on free loopback ports, and an httpx client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from consumer.simulator import Simulator, SimulatorOptions

from .helpers import SHIPSTATION_AUTH, StartSimulator, mvmnt_token


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start simulators with custom options (and clock); all are stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(clock: Callable[[], float] = time.time, **options: Any) -> Simulator:
            simulator = Simulator(SimulatorOptions(**options), clock=clock)
            return await stack.enter_async_context(simulator)

        yield start


@pytest.fixture
async def simulator(start_simulator: StartSimulator) -> Simulator:
    return await start_simulator()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
async def shipstation_api(simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client bound to the ShipStation base URL, sending the right API-Key."""
    async with httpx.AsyncClient(
        base_url=simulator.shipstation_base_url, headers=SHIPSTATION_AUTH, timeout=5.0
    ) as client:
        yield client


@pytest.fixture
async def mvmnt_api(
    simulator: Simulator, http: httpx.AsyncClient
) -> AsyncIterator[httpx.AsyncClient]:
    """A client bound to the MVMNT base URL, holding a fresh Bearer token."""
    headers = {"Authorization": f"Bearer {await mvmnt_token(http, simulator)}"}
    async with httpx.AsyncClient(
        base_url=simulator.mvmnt_base_url, headers=headers, timeout=5.0
    ) as client:
        yield client
