"""A stop (SIGTERM or SIGINT) ends ``cancel-processor run`` within ``drain_grace_seconds``
+ 2 s at any moment of its start: no broker yet, a broker that does not answer the first
connection, a broker that goes silent during the group join. Exit 0, no traceback, no
"Unclosed" client."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from consumer.config import Settings
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import free_port
from consumer.tools.topics import ensure_topics
from kafka_local.broker import KafkaNode
from tests.integration.test_run_command import started_run, write_config

pytestmark = pytest.mark.skipif(
    os.environ.get("KAFKA_BOOTSTRAP_SERVERS") is not None, reason="needs brokers of its own"
)

GRACE = 5  # drain_grace_seconds in write_config's file
STOP_WITHIN = GRACE + 2


@pytest.fixture
async def own_broker() -> AsyncIterator[KafkaNode]:
    async with KafkaNode() as node:
        yield node


async def wait_for_line(process: asyncio.subprocess.Process, message: str) -> dict[str, object]:
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            assert line, f"the process ended before logging {message!r}"
            entry: dict[str, object] = orjson.loads(line)
            if entry["msg"] == message:
                return entry


async def stopped(process: asyncio.subprocess.Process, sig: signal.Signals) -> tuple[float, str]:
    """Send ``sig``; the seconds until the process exited, and what it wrote after."""
    started = time.monotonic()
    process.send_signal(sig)
    _, rest = await asyncio.wait_for(process.communicate(), timeout=60)
    return time.monotonic() - started, rest.decode()


def assert_clean_exit(process: asyncio.subprocess.Process, took: float, rest: str) -> None:
    assert process.returncode == 0, rest
    assert took < STOP_WITHIN, f"the stop took {took:.1f}s"
    assert "Traceback" not in rest
    assert "Unclosed" not in rest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_while_no_broker_answers_at_all(
    tmp_path: Path, settings: Settings, simulator: Simulator, sig: signal.Signals
) -> None:
    config = write_config(tmp_path, settings, simulator, f"127.0.0.1:{free_port()}")
    async with started_run(config, TEST_SHIPSTATION_KEY="k") as process:
        await wait_for_line(process, "kafka broker unreachable, retrying")
        took, rest = await stopped(process, sig)
    assert_clean_exit(process, took, rest)


async def test_stop_while_the_first_connection_gets_no_answer(
    tmp_path: Path, settings: Settings, simulator: Simulator, own_broker: KafkaNode
) -> None:
    own_broker.pause()  # accepts the connection, answers nothing
    config = write_config(tmp_path, settings, simulator, own_broker.bootstrap_servers)
    async with started_run(config, TEST_SHIPSTATION_KEY="k") as process:
        await wait_for_line(process, "ops http server listening")
        await asyncio.sleep(2)  # inside the first connection attempt
        took, rest = await stopped(process, signal.SIGINT)
    assert_clean_exit(process, took, rest)


async def test_stop_while_the_broker_goes_silent_during_the_group_join(
    tmp_path: Path, settings: Settings, simulator: Simulator, own_broker: KafkaNode
) -> None:
    own = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": own_broker.bootstrap_servers}
            )
        }
    )
    await ensure_topics(own.kafka, partitions=3)
    config = write_config(tmp_path, own, simulator, own_broker.bootstrap_servers)
    async with started_run(config, TEST_SHIPSTATION_KEY="k") as process:
        await wait_for_line(process, "consuming")
        own_broker.pause()  # the join (coordinator lookup, JoinGroup) gets no answer
        await asyncio.sleep(1)
        took, rest = await stopped(process, signal.SIGTERM)
    assert_clean_exit(process, took, rest)
