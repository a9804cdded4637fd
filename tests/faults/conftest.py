"""Fixtures of the fault suite (``make faults``) and the results table it prints at the end.

Every scenario runs the real CLI in subprocesses (processor, simulator) against the Apache
Kafka node started for the session (or brokers of its own: a node or a 3-node cluster it may
kill, pause or stop), and ends with the one invariant checker (``tests/faults/checker.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from consumer.config import Settings
from kafka_local.broker import KafkaCluster, KafkaNode
from tests.faults.checker import Report, check
from tests.faults.harness import (
    Input,
    OutputReader,
    Process,
    ProcessorProcess,
    SimulatorProcess,
    Topology,
    child_env,
    write_config,
)
from tests.integration.conftest import bootstrap_servers
from tests.integration.kafka_helpers import Cluster

__all__ = ["bootstrap_servers"]

REPORTS: list[Report] = []
B = TypeVar("B", KafkaNode, KafkaCluster)
RESULTS_FILE = "fault-results.json"


class FaultEnv:
    """One scenario: its topics and group, its processes (all killed at the end)."""

    def __init__(self, workdir: Path, bootstrap: str) -> None:
        self.workdir = workdir
        self.topology = Topology(bootstrap)
        self.started = time.monotonic()
        self.processes: list[Process] = []
        self.brokers: list[KafkaNode | KafkaCluster] = []
        self._configs = 0

    def own_broker(self, broker: B) -> B:
        """A broker (node or cluster) of this scenario's own, closed at its end; the
        scenario's topics and group move to it."""
        self.brokers.append(broker)
        self.topology = Topology(broker.bootstrap_servers)
        return broker

    def simulator(self, **options: Any) -> SimulatorProcess:
        sim = SimulatorProcess(self.workdir, **options)
        self.processes.append(sim)
        return sim

    def config(
        self, sim: SimulatorProcess, overrides: Mapping[str, Any] | None = None, **accounts: Any
    ) -> dict[str, Any]:
        return self.topology.config(sim.accounts(**accounts), overrides)

    def settings(self, config: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
        return self.topology.settings(config, env)

    async def provision(self, config: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
        """Create the scenario's topics; its settings, as the processor will load them."""
        await self.topology.create_topics(config, env)
        return self.settings(config, env)

    def processor(
        self, config: Mapping[str, Any], env: Mapping[str, str], name: str | None = None
    ) -> ProcessorProcess:
        """Write the config and start ``cancel-processor run`` with it."""
        self._configs += 1
        name = name or f"processor-{self._configs}"
        path = write_config(self.workdir / f"{name}.toml", config)
        process = ProcessorProcess(name, path, self.workdir, child_env(**env))
        self.processes.append(process)
        process.start()
        return process

    async def finish(
        self,
        scenario: str,
        sent: list[Input],
        reader: OutputReader,
        cluster: Cluster,
        sim: SimulatorProcess,
    ) -> Report:
        """Everything stopped: read the rest, run the checker, record the table row."""
        await reader.settle()
        report = check(scenario, sent, reader, await cluster.committed(), await sim.cancel_calls())
        report.wall_seconds = round(time.monotonic() - self.started, 1)
        REPORTS.append(report)
        # Every scenario: a repeated result must be recognisable as the same result.
        assert report.id_mismatches == 0, "results with non-deterministic event_ids"
        return report

    def cleanup(self) -> None:
        for process in self.processes:
            process.ensure_dead()
        for broker in self.brokers:
            broker.close()


@pytest.fixture
async def faults(tmp_path: Path, bootstrap_servers: str) -> AsyncIterator[FaultEnv]:
    env = FaultEnv(tmp_path, bootstrap_servers)
    try:
        yield env
    finally:
        env.cleanup()


_COLUMNS = (
    ("scenario", "scenario", 34),
    ("events", "events", 7),
    ("lost", "lost", 5),
    ("duplicates", "dupl.", 6),
    ("order_violations", "order viol.", 11),
    ("provider_calls", "provider calls", 14),
    ("max_calls_per_shipment", "max/shipment", 12),
    ("parks", "parks", 6),
    ("wall_seconds", "wall s", 7),
)


def format_table(reports: list[Report]) -> list[str]:
    header = " | ".join(title.ljust(width) for _, title, width in _COLUMNS)
    lines = [header, "-+-".join("-" * width for _, _, width in _COLUMNS)]
    for report in sorted(reports, key=lambda r: _scenario_number(r.scenario)):
        row = report.row()
        lines.append(" | ".join(str(row[key]).ljust(width) for key, _, width in _COLUMNS))
    return lines


def _scenario_number(name: str) -> tuple[int, str]:
    head = name.split(" ", 1)[0]
    return (int(head), name) if head.isdigit() else (99, name)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if not REPORTS:
        return
    terminalreporter.section("fault scenarios")
    for line in format_table(REPORTS):
        terminalreporter.write_line(line)
    path = config.rootpath / RESULTS_FILE
    rows = [r.row() for r in sorted(REPORTS, key=lambda r: _scenario_number(r.scenario))]
    path.write_bytes(
        orjson.dumps({"scenarios": rows}, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        + b"\n"
    )
    terminalreporter.write_line(f"written to {path}")
