"""Readiness, lag and broker liveness of a running consumer, and the logging of a run of
broker failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import IllegalStateError, KafkaError

from consumer.kafka.seams import Clock, KafkaConsumer

log = logging.getLogger(__name__)

# The broker counts as reachable while it answered within this window. Fetches, commits and
# acks are the evidence; with none of them (idle, or no partitions) a metadata request is
# made once the last evidence is this old.
_BROKER_SILENCE_SECONDS = 30.0
_BROKER_PROBE_AFTER_SECONDS = 10.0


class ConsumerHealth:
    """Read by the metric gauges and /readyz, possibly from another thread: plain values
    only, replaced (never mutated) by the event loop."""

    def __init__(self, clock: Clock, request_timeout_seconds: float) -> None:
        self._clock = clock
        self._request_timeout = request_timeout_seconds
        self._joined = False
        self._stopping = False
        self._broker_seen_at = 0.0
        self._lag: dict[tuple[str, int], int] = {}
        self._was_ready = False
        self._probe: asyncio.Task[None] | None = None

    def lag(self) -> Mapping[tuple[str, int], int]:
        return self._lag

    def readiness(self) -> tuple[bool, str]:
        """Ready = joined the group (an assignment arrived, even an empty one) and the
        broker answered recently."""
        if self._stopping:
            return False, "shutting down"
        if not self._joined:
            return False, "not joined to the consumer group yet"
        silent = self._clock() - self._broker_seen_at
        if silent > _BROKER_SILENCE_SECONDS:
            return False, f"no answer from the Kafka broker for {silent:.0f}s"
        return True, "ready"

    def broker_answered(self) -> None:
        self._broker_seen_at = self._clock()

    def joined(self) -> None:
        """The group gave us an assignment (possibly empty): we are a member."""
        self._joined = True
        self.broker_answered()
        self._log_readiness()

    def stopping(self) -> None:
        self._stopping = True
        if self._probe is not None:
            self._probe.cancel()

    async def observe(self, consumer: KafkaConsumer) -> None:
        """Lag per assigned partition and broker liveness, for the gauges and /readyz."""
        lag: dict[tuple[str, int], int] = {}
        polled_ms = 0
        for tp in consumer.assignment():
            polled_ms = max(polled_ms, consumer.last_poll_timestamp(tp) or 0)
            # Known only once a fetch answered for the partition; so is a valid position.
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                async with asyncio.timeout(0.1):
                    position = await consumer.position(tp)
            except (TimeoutError, IllegalStateError):
                continue
            lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        self._lag = lag
        self._broker_seen_at = max(self._broker_seen_at, polled_ms / 1000)
        silent = self._clock() - self._broker_seen_at
        if silent > _BROKER_PROBE_AFTER_SECONDS and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_broker(consumer))
        self._log_readiness()

    async def _probe_broker(self, consumer: KafkaConsumer) -> None:
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._request_timeout):
                await consumer.topics()
            self.broker_answered()

    def _log_readiness(self) -> None:
        ready, reason = self.readiness()
        if ready != self._was_ready:
            self._was_ready = ready
            if ready:
                log.info("ready")
            else:
                log.warning("not ready", extra={"reason": reason})


class BrokerTrouble:
    """The first of a run of broker failures is a warning, the rest debug lines, the
    recovery one info line: a long outage with many events in flight stays readable."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._where = bootstrap_servers
        self._active = False

    def failed(self, message: str, **fields: Any) -> None:
        level = logging.DEBUG if self._active else logging.WARNING
        self._active = True
        log.log(level, message, extra={"bootstrap_servers": self._where, **fields})

    def recovered(self) -> None:
        if self._active:
            self._active = False
            log.info("kafka broker answering again", extra={"bootstrap_servers": self._where})
