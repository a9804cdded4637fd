"""The ingress's only aiokafka user: one producer, ``acks=all``.

``send`` queues a record and returns a future that settles with the broker's verdict; the
caller decides how long to wait for it (a late acknowledgement still settles it). The
producer connects in the background and keeps trying while the broker is unreachable;
meanwhile the HTTP side answers 503 (and ``/readyz`` says why) instead of refusing to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Final, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata

from consumer.config import KafkaSettings
from consumer.core.backoff import Backoff
from consumer.kafka.clients import client_options
from consumer.kafka.connect import connect

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

_CONNECT_BACKOFF: Final = Backoff((0.5, 1.0, 2.0, 5.0))
# How often an idle producer checks that the broker still answers (for /readyz).
_PROBE_INTERVAL_SECONDS: Final = 5.0
# aiokafka sends one produce request per broker at a time and batches whatever queued
# meanwhile, so under load batches form without lingering; idle requests are not delayed.
_LINGER_MS: Final = 0


class PublishError(Exception):
    """The broker did not acknowledge the record; the webhook caller may retry (503)."""


class RecordRejected(Exception):
    """The broker refused this record for good; retrying the same request will not help.

    ``too_large``: over the broker's (or the producer's) record size limit.
    """

    def __init__(self, message: str, *, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored an acknowledged record."""

    partition: int
    offset: int


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Deliver what is queued, then disconnect."""
        ...

    async def send(self, record: Record) -> asyncio.Future[Delivery]:
        """Queue the record. The future settles once the broker answered: a ``Delivery``,
        or ``PublishError`` (retry later) or ``RecordRejected`` (do not). Raises either when
        the record cannot even be queued."""
        ...

    def readiness(self) -> tuple[bool, str]: ...


class KafkaPublisher:
    def __init__(self, kafka: KafkaSettings, topic: str, timeout_seconds: float) -> None:
        self._kafka = kafka
        self._topic = topic
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._reachable = False
        self._reason = "connecting to the broker"
        self._task: asyncio.Task[None] | None = None
        # Records queued and not yet answered, with when they were sent (oldest first):
        # /readyz reports an acknowledgement overdue while the broker keeps quiet.
        self._unanswered: dict[asyncio.Future[Delivery], float] = {}

    async def start(self) -> None:
        """Connect in the background; returns at once."""
        self._task = asyncio.create_task(self._connect_and_watch(), name="ingress-producer")

    async def stop(self) -> None:
        """Deliver what is queued, then disconnect; bounded by the publish timeout.

        Called after the HTTP requests finished, so anything still queued belongs to a
        request already answered 503: worth delivering, not worth hanging on.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        producer, self._producer = self._producer, None
        self._reachable, self._reason = False, "stopped"
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await producer.stop()
        except TimeoutError:
            # An idempotent producer retries forever while the broker is away.
            log.warning("kafka producer did not close in time; leaving without it")

    def readiness(self) -> tuple[bool, str]:
        if self._producer is None or not self._reachable:
            return False, self._reason
        oldest = next(iter(self._unanswered.values()), None)
        if oldest is not None and time.monotonic() - oldest > self._timeout:
            return False, f"publishing failed: no acknowledgement within {self._timeout:g} s"
        return True, "ok"

    async def send(self, record: Record) -> asyncio.Future[Delivery]:
        producer = self._producer
        if producer is None:
            raise PublishError(self._reason)
        try:
            # Bounded: queueing waits while the partition's batch is full or unknown.
            async with asyncio.timeout(self._timeout):
                ack = await producer.send(
                    self._topic, record.value, key=record.key, headers=record.headers
                )
        except TimeoutError:
            self._mark_unreachable(f"could not queue a record within {self._timeout:g} s")
            raise PublishError(
                f"the broker did not acknowledge within {self._timeout:g} s"
            ) from None
        except KafkaError as exc:
            raise self._failure(exc) from exc
        verdict: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._unanswered[verdict] = time.monotonic()
        ack.add_done_callback(lambda settled: self._settle(settled, verdict))
        return verdict

    def _settle(
        self, ack: asyncio.Future[RecordMetadata], verdict: asyncio.Future[Delivery]
    ) -> None:
        """The broker's answer (possibly long after the caller stopped waiting)."""
        self._unanswered.pop(verdict, None)
        if ack.cancelled():
            verdict.set_exception(PublishError("the producer stopped before the broker answered"))
        elif (exc := ack.exception()) is not None:
            failure = self._failure(exc) if isinstance(exc, KafkaError) else exc
            verdict.set_exception(failure)
        else:
            self._reachable = True
            metadata = ack.result()
            verdict.set_result(Delivery(metadata.partition, metadata.offset))

    def _failure(self, exc: KafkaError) -> PublishError | RecordRejected:
        failure = classify(exc)
        if isinstance(failure, PublishError):
            # Broker trouble flips /readyz; a refused record says nothing about the next one.
            self._mark_unreachable(f"{type(exc).__name__}: {exc}")
        return failure

    def _mark_unreachable(self, reason: str) -> None:
        # The probe (or the next acknowledged record) flips it back.
        self._reachable, self._reason = False, f"publishing failed: {reason}"

    def _new_producer(self) -> AIOKafkaProducer:
        kafka = self._kafka
        return AIOKafkaProducer(
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=_LINGER_MS,
            max_request_size=kafka.max_request_bytes,
            # A batch nobody waits for any more (answered 503) expires instead of arriving late.
            request_timeout_ms=min(kafka.request_timeout_ms, int(self._timeout * 1000)),
            **client_options(kafka),
        )

    async def _connect_and_watch(self) -> None:
        # Cancelled by ``stop``: nothing else ends the connecting.
        producer = await connect(
            self._start_producer,
            bootstrap_servers=self._kafka.bootstrap_servers,
            stop=asyncio.Event(),
            unreachable=(KafkaError, OSError),  # OSError: DNS, TLS
            backoff=_CONNECT_BACKOFF,
            release=AIOKafkaProducer.stop,
            on_unreachable=self._unreachable,
        )
        assert producer is not None
        self._producer = producer
        self._reachable, self._reason = True, "ok"
        log.info("connected to kafka", extra={"topic": self._topic})
        await self._probe_forever(producer)

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def _unreachable(self, exc: Exception) -> None:
        self._reason = f"kafka broker unreachable: {type(exc).__name__}"

    async def _probe_forever(self, producer: AIOKafkaProducer) -> None:
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
            try:
                async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                    await producer.client.fetch_all_metadata()
            except (KafkaError, OSError) as exc:  # TimeoutError is an OSError
                if self._reachable:
                    log.warning("kafka broker unreachable", extra={"error": str(exc)})
                self._reachable = False
                self._reason = f"kafka broker unreachable: {type(exc).__name__}"
            else:
                if not self._reachable:
                    log.info("kafka broker reachable again")
                self._reachable, self._reason = True, "ok"


def classify(exc: KafkaError) -> PublishError | RecordRejected:
    """An aiokafka error as the webhook caller should see it."""
    name = type(exc).__name__
    if isinstance(exc, MessageSizeTooLargeError):
        return RecordRejected(
            f"the record is over the broker's size limit ({name})", too_large=True
        )
    # The broker answered and refused this record for good (not authorised, invalid,
    # corrupt). Timeouts, lost connections and a closed producer are not answers, whatever
    # their ``retriable`` says (aiokafka's KafkaTimeoutError says False): broker trouble.
    if isinstance(exc, BrokerResponseError) and not exc.retriable:
        return RecordRejected(f"the broker refused the record: {name}", too_large=False)
    return PublishError(f"the broker did not take the record: {name}")
