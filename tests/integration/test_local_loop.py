"""docs/getting-started.md as a newcomer follows it: the broker, the simulator, ``topics``,
``run`` and ``demo-traffic`` as real processes, configured by ``examples/local.toml``.

The commands run here are the page's own (only the ports differ, so the test can run next
to anything), and a test checks that the page still shows them: the page and this test
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from consumer.cli import build_parser
from consumer.config import load_settings
from consumer.tools.embedded_broker import accepts_connections, free_port
from consumer.tools.local_broker import DEFAULT_ADDRESS, banner
from tests.integration.kafka_helpers import Cluster
from tests.polling import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
EXAMPLE = ROOT / "examples" / "local.toml"

# The page's commands, as typed from the repository's root.
PROGRAM = ".venv/bin/cancel-processor"
BROKER = f"{PROGRAM} broker"
SIMULATE = f"{PROGRAM} simulate"
TOPICS = f"{PROGRAM} topics --config examples/local.toml"
RUN = f"{PROGRAM} run --config examples/local.toml"
TRAFFIC = f"{PROGRAM} demo-traffic --config examples/local.toml --count 20"
SIMULATOR_CALLS = "curl -s http://127.0.0.1:8900/_admin/calls"
METRICS = "curl -s http://127.0.0.1:9464/metrics | grep cancel_processor_results_total"

# The addresses examples/local.toml names: the defaults of `broker`, `simulate` and `run`.
BROKER_ADDRESS = "127.0.0.1:9092"
SIMULATOR_URL = "http://127.0.0.1:8900"
OPS_PORT_LINE = "http_port = 9464"

_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error) ")


@dataclass(frozen=True, slots=True)
class Ports:
    broker: int
    simulator: int
    ops: int


def program() -> list[str]:
    """This virtualenv's ``cancel-processor`` (``python -m consumer`` when not installed)."""
    script = Path(sys.executable).with_name("cancel-processor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumer"]


def argv(documented: str, config: Path, *extra: str) -> list[str]:
    """The documented command line with this test's program and config, plus ``extra``."""
    words = shlex.split(documented)
    assert words[0] == PROGRAM
    replaced = [str(config) if word == "examples/local.toml" else word for word in words[1:]]
    return [*program(), *replaced, *extra]


def local_config(tmp_path: Path, ports: Ports) -> Path:
    """``examples/local.toml`` with only its three addresses moved to this test's ports."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in (
        (BROKER_ADDRESS, f"127.0.0.1:{ports.broker}"),
        (SIMULATOR_URL, f"http://127.0.0.1:{ports.simulator}"),
        (OPS_PORT_LINE, f"http_port = {ports.ops}"),
    ):
        assert old in text, f"examples/local.toml no longer names {old}"
        text = text.replace(old, new)
    path = tmp_path / "local.toml"
    path.write_text(text, encoding="utf-8")
    return path


def child_env() -> Mapping[str, str]:
    # The page assumes a clean shell: nothing overriding the file's broker or naming a config.
    hidden = {"KAFKA_BOOTSTRAP_SERVERS", "CANCEL_PROCESSOR_CONFIG"}
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, "PYTHONWARNINGS": "default"}


async def spawn(command: list[str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def started(command: list[str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running command of the page; stopped with SIGTERM if the test leaves it up.

    SIGTERM first even then: ``broker`` stops its own broker process on the way out, which a
    SIGKILL would leave behind.
    """
    process = await spawn(command, cwd)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.communicate(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def finished(command: list[str], cwd: Path) -> tuple[int, str, str]:
    """A one-shot command of the page: its exit code, stdout and stderr."""
    process = await spawn(command, cwd)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def line_containing(stream: asyncio.StreamReader | None, text: str) -> str:
    """Read ``stream`` until a line containing ``text``; fails if it ends first or in 30 s."""
    assert stream is not None
    async with asyncio.timeout(30):
        while line := (await stream.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the process ended before writing {text!r}")


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """SIGTERM, then the exit code and what it wrote that was not read yet."""
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_getting_started_loop_cancels_the_sample_events(tmp_path: Path) -> None:
    ports = Ports(broker=free_port(), simulator=free_port(), ops=free_port())
    config = local_config(tmp_path, ports)

    # Terminals 1 and 2: the broker and the simulator, each on this test's port.
    async with (
        started(argv(BROKER, config, "--port", str(ports.broker)), tmp_path) as broker,
        started(argv(SIMULATE, config, "--port", str(ports.simulator)), tmp_path) as simulator,
    ):
        banner = await line_containing(broker.stdout, "listening on")
        assert f"127.0.0.1:{ports.broker}" in banner
        assert "in memory" in banner
        assert "cancel-processor topics --config examples/local.toml" in banner
        await line_containing(simulator.stderr, "provider simulator listening")

        # Terminal 3: the topics, then the processor.
        code, out, err = await finished(argv(TOPICS, config), tmp_path)
        assert code == 0, err
        assert len(re.findall(r": created: 3 partitions, replication factor 1", out)) == 5, out

        async with started(argv(RUN, config), tmp_path) as run:
            # Terminal 4: the sample events.
            code, _, err = await finished(argv(TRAFFIC, config), tmp_path)
            assert code == 0, err

            settings = load_settings(config, {})
            kafka = settings.kafka
            async with Cluster(settings) as cluster:
                inputs = await cluster.collect([kafka.input_topic], count=20)
                expected = expected_results(record.value for record in inputs)
                results = await cluster.collect(
                    [kafka.cancelled_topic, kafka.failed_topic], expected.results, timeout=90
                )
                dead_letters = await cluster.collect([kafka.dlq_topic], expected.dead_letters)

            events = [orjson.loads(r.value) for r in results if r.value is not None]
            assert sorted(e["order_id"] for e in events) == sorted(expected.orders)
            assert len(dead_letters) == expected.dead_letters
            outcomes = {e.get("outcome", "failed") for e in events}
            assert {"cancelled", "already_cancelled", "failed"} <= outcomes

            # What "See the results" tells the reader to look at.
            async with httpx.AsyncClient() as http:
                answer = await http.get(f"http://127.0.0.1:{ports.simulator}/_admin/calls")
            calls = answer.json()
            called = " ".join(call["path"] for call in calls["calls"])
            for event in events:
                if event["provider"] in ("shipstation", "mvmnt"):
                    assert f"/{event['shipment_id']}/cancel" in called
            await eventually(lambda: results_counted(ports.ops), timeout=10)

            code, _, log = await stop(run)

        assert code == 0, log
        lines = log.splitlines()
        assert lines[-1].endswith("consumer.kafka.runner: stopped"), lines[-1]
        assert all(_TEXT_LINE.match(line) for line in lines), "text lines start with the time"
        assert sum("shipment cancelled" in line for line in lines) == sum(
            e.get("outcome") in ("cancelled", "already_cancelled") for e in events
        )
        assert "Traceback" not in log

        code, _, err = await stop(simulator)
        assert code == 0, err
        code, _, err = await stop(broker)
        assert (code, err) == (0, "")
    assert not await accepts_connections("127.0.0.1", ports.broker), "its broker stopped too"


@dataclass(frozen=True, slots=True)
class Expected:
    # The order id of every result event (one per shipment) and how many DLQ copies.
    orders: list[str]
    dead_letters: int

    @property
    def results(self) -> int:
        return len(self.orders)


def expected_results(values: Iterable[bytes]) -> Expected:
    """What the processor must publish for these input values: a result per shipment of each
    readable event, a DLQ copy of each value that is not JSON (the sample mix has no other
    invalid input)."""
    orders: list[str] = []
    dead_letters = 0
    for value in values:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            dead_letters += 1
            continue
        orders.extend(event["order_id"] for _ in event["shipments"])
    return Expected(orders, dead_letters)


def results_counted(ops_port: int) -> bool:
    # Blocking, but a local endpoint answering in a millisecond: fine for ``eventually``.
    metrics = httpx.get(f"http://127.0.0.1:{ops_port}/metrics").text
    return "cancel_processor_results_total{" in metrics


async def test_ctrl_c_at_the_terminal_stops_the_broker_cleanly() -> None:
    port = free_port()
    # Its own process group, as a shell gives a foreground job: Ctrl-C signals the whole
    # group, the broker's own broker process included.
    process = await asyncio.create_subprocess_exec(
        *program(),
        "broker",
        "--port",
        str(port),
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await line_containing(process.stdout, "listening on")
        os.killpg(process.pid, signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            await process.wait()
    assert process.returncode == 130
    assert err == b""
    assert not await accepts_connections("127.0.0.1", port)


def page_commands() -> list[str]:
    """Every command line in the page's ``sh`` blocks (continuation lines joined)."""
    blocks = re.findall(r"```sh\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_the_page_shows_the_commands_this_test_runs() -> None:
    shown = page_commands()
    for command in (BROKER, SIMULATE, TOPICS, RUN, TRAFFIC, SIMULATOR_CALLS, METRICS):
        assert command in shown, f"docs/getting-started.md no longer shows {command!r}"
    # And the broker's first words as they are today.
    assert banner(DEFAULT_ADDRESS) in PAGE.read_text(encoding="utf-8")


def test_every_command_line_on_the_page_is_valid() -> None:
    parser = build_parser()
    for command in page_commands():
        words = shlex.split(command)
        if words[0] != PROGRAM:
            continue
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"not a valid command line: {command}")
