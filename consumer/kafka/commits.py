"""Offset commits: never cancelled, never piled up, and never past unfinished work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.structs import OffsetAndMetadata

from consumer.kafka.health import BrokerTrouble, ConsumerHealth
from consumer.kafka.inflight import InFlight
from consumer.kafka.seams import KafkaConsumer

log = logging.getLogger(__name__)


class Committer:
    """A commit is never cancelled: aiokafka retries it until the coordinator answers, in
    a task of its own that would fail unobserved if we abandoned it. A commit without an
    answer goes on in the background and no other starts until it has one, so a broker
    outage neither blocks the consume loop nor piles up commits."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        inflight: InFlight,
        health: ConsumerHealth,
        trouble: BrokerTrouble,
        request_timeout_seconds: float,
    ) -> None:
        self._consumer = consumer
        self._inflight = inflight
        self._health = health
        self._trouble = trouble
        self._request_timeout = request_timeout_seconds
        self._committing: asyncio.Task[None] | None = None
        self._started = 0.0

    @property
    def unanswered(self) -> bool:
        """Whether the last commit is still waiting for the broker."""
        return self._committing is not None and not self._committing.done()

    async def commit(self, partitions: Iterable[TopicPartition], wait: float = 0.0) -> None:
        """Commit the finished offsets of these partitions; wait up to ``wait`` seconds for
        the broker's answer (the periodic commit does not wait at all)."""
        deadline = time.monotonic() + wait
        pending = self._committing
        if pending is not None and not await done_within(pending, deadline):
            self._report_silence()
            return
        assigned = self._consumer.assignment()
        positions = self._inflight.commit_positions(tp for tp in partitions if tp in assigned)
        if not positions:
            return
        offsets = {tp: OffsetAndMetadata(position, "") for tp, position in positions.items()}
        self._committing = asyncio.ensure_future(self._commit_offsets(offsets))
        self._started = time.monotonic()
        if wait > 0 and not await done_within(self._committing, deadline):
            self._report_silence()

    def abandon(self) -> None:
        """At exit, after the last wait: the broker is not answering and we are leaving."""
        if self._committing is not None:
            self._committing.cancel()

    async def _commit_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The group moved on; the new owner resumes from the last good commit.
            log.warning("offset commit skipped during a rebalance", extra={"error": str(exc)})
            return
        except KafkaError as exc:
            log.warning("offset commit failed, will retry", extra={"error": str(exc)})
            return
        self._trouble.recovered()
        self._health.broker_answered()
        for tp, meta in offsets.items():
            self._inflight.committed(tp, meta.offset)

    def _report_silence(self) -> None:
        """The broker has not answered a commit for a request timeout."""
        waited = time.monotonic() - self._started
        if waited >= self._request_timeout:
            self._trouble.failed(
                "kafka broker not answering, waiting; offsets stay uncommitted until it does",
                waited_seconds=round(waited, 1),
            )


async def done_within(task: asyncio.Task[None], deadline: float) -> bool:
    """Whether ``task`` finished by ``deadline`` (a ``time.monotonic()``); never cancels it."""
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    return bool(done)
