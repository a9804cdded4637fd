"""The broker every scenario runs on: a fresh Apache Kafka node (``kafka_local``), or the
cluster ``KAFKA_BOOTSTRAP_SERVERS`` names."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from consumer.config import BOOTSTRAP_ENV
from kafka_local.broker import KafkaNode

# The test nodes' flags minus the start-up ones that cost peak speed (C1 only), plus a heap
# that holds a million-event backlog without collecting all the time.
BENCH_JVM_OPTIONS = (
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseParallelGC",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


@contextlib.asynccontextmanager
async def kafka() -> AsyncIterator[str]:
    """Bootstrap servers of a broker for one stage."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    async with KafkaNode(jvm_options=BENCH_JVM_OPTIONS) as node:
        yield node.bootstrap_servers


def is_broker(command: list[bytes]) -> bool:
    """Whether a process's command line is the broker's."""
    return b"kafka.Kafka" in command


def is_watchdog(command: list[bytes]) -> bool:
    """Whether it is the ``sh`` that kills the broker should the bench die."""
    return command[:1] == [b"sh"] and any(b"kill -9" in part for part in command)
