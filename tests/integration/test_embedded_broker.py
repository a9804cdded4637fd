"""The embedded broker never outlives whoever started it, even when stopped mid-start."""

from __future__ import annotations

import asyncio

import pytest

from consumer.tools import embedded_broker
from consumer.tools.embedded_broker import EmbeddedBroker, EmbeddedBrokerError
from tests.processes import alive

pytestmark = pytest.mark.integration


async def test_a_start_cancelled_before_the_broker_listens_stops_its_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never_listening(host: str, port: int) -> bool:
        return False

    monkeypatch.setattr(embedded_broker, "accepts_connections", never_listening)
    broker = EmbeddedBroker()
    spawned: list[int] = []
    launched = asyncio.Event()
    real_exec = asyncio.create_subprocess_exec

    async def recording_exec(*args: object, **kwargs: object) -> asyncio.subprocess.Process:
        process = await real_exec(*args, **kwargs)  # type: ignore[arg-type]
        spawned.append(process.pid)
        launched.set()
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording_exec)
    starting = asyncio.create_task(broker.start())
    await launched.wait()

    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    assert not alive(spawned[0])


async def test_a_broker_binary_that_cannot_be_found_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")

    with pytest.raises(EmbeddedBrokerError, match="cannot be"):
        await EmbeddedBroker().start()
