"""The consume loop: fetch, key-ordered dispatch, periodic commits, and the drain.

At-least-once: an input offset is committed only after every record it produced (results,
parks, DLQ copy) is acknowledged with ``acks=all``, and only once every earlier offset of
its partition is finished too. A crash repeats work past the last commit; it never skips
any.

The group's subscription is the input topic and the retry topic. A retry record read before
it is due is held (``consumer.kafka.holding``) and dispatched once due, like an input
record, in the order of its order id's other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError
from opentelemetry.trace import Tracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.backoff import Backoff
from consumer.core.canceller import Canceller
from consumer.core.errors import ConfigError
from consumer.core.events import OrderCancelled
from consumer.core.parking import ParkedShipment, park_of, parse_parked
from consumer.core.pipeline import parse_order_cancelled
from consumer.core.records import OutputTopics
from consumer.kafka.catchup import CatchUp
from consumer.kafka.clients import (
    aiokafka_clients,
    check_security,
    consumer_refusal,
    producer_refusal,
)
from consumer.kafka.commits import Committer
from consumer.kafka.connect import connect
from consumer.kafka.handler import Parsed, RecordHandler
from consumer.kafka.health import BrokerTrouble, ConsumerHealth
from consumer.kafka.holding import HeldRecords
from consumer.kafka.inflight import InFlight
from consumer.kafka.polling import Poller
from consumer.kafka.publisher import Publisher
from consumer.kafka.seams import Clock, KafkaClients, KafkaConsumer, KafkaProducer
from consumer.observability.messaging import MessagingSpans
from consumer.observability.metrics import AccountPressure, Metrics

log = logging.getLogger(__name__)

BROKER_BACKOFF = Backoff((1.0, 2.0, 5.0, 10.0))
# On shutdown, after the grace period: how long the final commit, leaving the group and
# flushing the producer may wait, together, for a broker that does not answer.
_CLOSE_SECONDS = 2.0
# Closing sockets without a goodbye takes no broker: a short floor once the budget is spent.
_MIN_CLOSE_SECONDS = 0.2
_POLL_MS = 200
_SLOT_WAIT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class _Connection:
    """The parts that work through one pair of started clients."""

    consumer: KafkaConsumer
    producer: KafkaProducer
    poller: Poller
    committer: Committer
    publisher: Publisher
    handler: RecordHandler


class Runner:
    def __init__(
        self,
        kafka: KafkaSettings,
        processing: ProcessingSettings,
        canceller: Canceller,
        tracer: Tracer,
        *,
        metrics: Metrics | None = None,
        clients: KafkaClients | None = None,
        clock: Clock = time.time,
    ) -> None:
        """``clients``: how to make the Kafka clients (default: aiokafka's, from ``kafka``);
        ``clock``: the wall clock, for broker silence and event age."""
        self._kafka = kafka
        self._processing = processing
        self._make_clients = clients or (lambda: aiokafka_clients(kafka, processing))
        self._canceller = canceller
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._health = ConsumerHealth(clock, kafka.request_timeout_ms / 1000)
        self._trouble = BrokerTrouble(kafka.bootstrap_servers)
        self._inflight = InFlight(processing.max_in_flight)
        self._held = HeldRecords(processing.retry.max_held)
        self._catch_up = CatchUp(kafka.input_topic, kafka.retry_topic)
        self._retry_partitions_match = False
        self._spans = MessagingSpans(tracer, kafka.group_id)
        self._topics = OutputTopics(
            kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic, kafka.retry_topic
        )
        self._metrics.observe(self)

    @property
    def events_in_flight(self) -> int:
        """Events dispatched and not finished; safe to read from a metrics thread."""
        return self._inflight.count

    def lag(self) -> Mapping[tuple[str, int], int]:
        return self._health.lag()

    def readiness(self) -> tuple[bool, str]:
        return self._health.readiness()

    def back_pressure(self) -> Mapping[str, AccountPressure]:
        parked = self._canceller.parked.per_account(self._clock())
        return {
            name: AccountPressure(
                *parked.get(name, (0, 0.0)),
                circuit_state=int(account.breaker.state),
                pace_per_minute=account.pace.per_minute if account.pace else None,
            )
            for name, account in self._canceller.accounts.items()
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, commit and leave the group."""
        connection = await connect(
            self._connect,
            bootstrap_servers=self._kafka.bootstrap_servers,
            stop=stop,
            unreachable=(KafkaConnectionError,),
            backoff=BROKER_BACKOFF,
            release=_release,
        )
        if connection is None:
            return
        log.info(
            "consuming",
            extra={"topic": self._kafka.input_topic, "group_id": self._kafka.group_id},
        )
        try:
            await self._consume(connection, stop)
        finally:
            self._health.stopping()
            await self._shutdown(connection)

    async def _connect(self) -> _Connection:
        consumer, producer = self._make_clients()
        publisher = Publisher(
            producer,
            self._kafka.dlq_topic,
            spans=self._spans,
            metrics=self._metrics,
            health=self._health,
            trouble=self._trouble,
            request_timeout_seconds=self._kafka.request_timeout_ms / 1000,
        )
        connection = _Connection(
            consumer,
            producer,
            Poller(consumer, refusal=lambda exc: consumer_refusal(exc, self._kafka)),
            Committer(
                consumer,
                self._inflight,
                self._health,
                self._trouble,
                self._kafka.request_timeout_ms / 1000,
            ),
            publisher,
            RecordHandler(
                self._canceller,
                publisher,
                topics=self._topics,
                spans=self._spans,
                metrics=self._metrics,
                clock=self._clock,
            ),
        )
        listener = _DrainOnRevoke(
            lambda revoked: self._drain(connection, revoked),
            lambda assigned: self._catch_up.assigned(consumer, assigned),
            self._health,
        )
        try:
            consumer.subscribe(
                [self._kafka.input_topic, self._kafka.retry_topic], listener=listener
            )
            # A refused login, certificate or idempotent producer ends the run with one
            # line (ConfigError).
            await check_security(self._kafka)
            await _start(producer, producer_refusal, self._kafka)
            await _start(consumer, consumer_refusal, self._kafka)
        except BaseException:
            await _release(connection)
            raise
        self._health.broker_answered()
        return connection

    async def _consume(self, connection: _Connection, stop: asyncio.Event) -> None:
        poller, inflight = connection.poller, self._inflight
        commit_every = self._kafka.commit_interval_seconds
        next_commit = time.monotonic() + commit_every
        async with poller.stoppable(stop):
            while not stop.is_set():
                self._dispatch_due(connection)
                free = inflight.free_slots
                poller.pause_when_full(free, self._paused_besides)
                if free <= 0:
                    await _first_of(stop.wait(), inflight.slot_freed(), _SLOT_WAIT_SECONDS)
                batches = await poller.poll(
                    stop, timeout_ms=self._poll_ms() if free > 0 else 0, max_records=free
                )
                for tp, records in batches.items():
                    for record in records:
                        self._dispatch(connection, tp, record)
                if time.monotonic() >= next_commit:
                    await connection.committer.commit(inflight.partitions)
                    connection.publisher.report_stall()
                    await self._health.observe(connection.consumer)
                    self._check_retry_partitions(connection.consumer)
                    next_commit = time.monotonic() + commit_every

    def _check_retry_partitions(self, consumer: KafkaConsumer) -> None:
        """Parks go to the retry partition of their input partition's number: the retry
        topic must exist and have as many partitions (ConfigError, one line, if not)."""
        kafka = self._kafka
        if self._retry_partitions_match:
            return  # checked once: a metadata gap during broker trouble must not stop us
        inputs = consumer.partitions_for_topic(kafka.input_topic)
        if not inputs:
            return  # not known yet
        retries = consumer.partitions_for_topic(kafka.retry_topic)
        if not retries:
            raise ConfigError(
                f"kafka.retry_topic: topic {kafka.retry_topic} does not exist; create it "
                "with `cancel-processor topics`"
            )
        if len(retries) != len(inputs):
            raise ConfigError(
                f"kafka.retry_topic: {kafka.retry_topic} has {len(retries)} partitions and "
                f"{kafka.input_topic} has {len(inputs)}; they must have as many (alter both "
                "together)"
            )
        self._retry_partitions_match = True

    def _paused_besides(self, assignment: set[TopicPartition]) -> set[TopicPartition]:
        """Besides a full window: the retry partitions while the held records are at their
        cap, else the input partitions whose retry partition is still being read back."""
        if self._held.full:
            return {tp for tp in assignment if tp.topic == self._kafka.retry_topic}
        return self._catch_up.gated(assignment)

    def _poll_ms(self) -> int:
        """No longer than until the earliest held record is due."""
        due = self._held.next_due()
        if due is None:
            return _POLL_MS
        return max(0, min(_POLL_MS, int((due - self._clock()) * 1000) + 1))

    def _dispatch(
        self, connection: _Connection, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        if tp.topic == self._kafka.retry_topic:
            self._dispatch_parked(connection, tp, record)
            return
        parsed = parse_order_cancelled(record.value, self._processing.max_event_bytes)
        if isinstance(parsed, OrderCancelled):
            key = parsed.order_id
        else:
            key = parsed.order_id or f"\x00invalid:{tp.partition}:{record.offset}"
        self._start(connection, tp, record, key, parsed)

    def _dispatch_parked(
        self, connection: _Connection, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        """A retry record: held until due (and while its partition is read back), or
        started now."""
        parsed = parse_parked(record.value)
        parked = parsed if isinstance(parsed, ParkedShipment) else None
        reading = self._catch_up.reading(tp)
        latest = self._catch_up.read(tp, record.offset, parked.result_id if parked else None)
        if parked is not None:
            due = parked.due_at.timestamp()
            if due > self._clock() or reading:
                hold = self._inflight.hold(tp, record.offset, connection.consumer.assignment)
                if hold is not None:
                    self._held.hold(due, tp, record, parked, hold)
                    park_of(self._canceller.parked, parked, tp.partition)
                    self._count_consumed(tp)
            else:
                self._start(connection, tp, record, parked.event.order_id, parked)
        else:
            self._start(
                connection, tp, record, f"\x00invalid-retry:{tp.partition}:{record.offset}", parsed
            )
        if latest is not None:
            self._drop_superseded(tp, latest)

    def _drop_superseded(self, tp: TopicPartition, latest: Mapping[uuid.UUID, int]) -> None:
        """Read back to its end: parks with a later one of the same shipment and event
        were retried already; they are done, unrun."""
        dropped = self._held.superseded(tp, latest)
        for held in dropped:
            self._inflight.skip(tp, held.record.offset, held.hold)
        if dropped:
            log.info(
                "parks retried already, dropped",
                extra={"topic": tp.topic, "partition": tp.partition, "parks": len(dropped)},
            )

    def _start(
        self,
        connection: _Connection,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        key: str,
        parsed: Parsed,
    ) -> None:
        handle = connection.handler.handle
        if self._inflight.start(
            tp,
            record.offset,
            key,
            lambda: handle(tp, record, parsed),
            connection.consumer.assignment,
        ):
            self._count_consumed(tp)

    def _dispatch_due(self, connection: _Connection) -> None:
        """Start the held records now due, as many as the window has room for."""
        free = self._inflight.free_slots
        if free <= 0 or not len(self._held):
            return
        handle = connection.handler.handle
        for held in self._held.pop_due(self._clock(), free):
            tp, record, parsed = held.tp, held.record, held.parked
            self._inflight.start(
                tp,
                record.offset,
                parsed.event.order_id,
                lambda tp=tp, record=record, parsed=parsed: handle(tp, record, parsed),  # type: ignore[misc]
                connection.consumer.assignment,
                held=held.hold,
            )

    def _count_consumed(self, tp: TopicPartition) -> None:
        metrics = self._metrics
        metrics.consumed.add(
            1, metrics.consumed_attributes(tp.topic, tp.partition, self._kafka.group_id)
        )

    async def _drain(self, connection: _Connection, partitions: Iterable[TopicPartition]) -> None:
        """Let in-flight work of these partitions finish within the grace period, commit
        (waiting up to a request timeout for the broker: the group waits for us)."""
        partitions = list(partitions)
        self._inflight.draining(partitions)
        self._held.release(partitions)
        self._catch_up.revoked(partitions)
        try:
            await self._inflight.finish(partitions, self._processing.drain_grace_seconds)
            await connection.committer.commit(
                partitions, wait=self._kafka.request_timeout_ms / 1000
            )
        finally:
            # After the drain: work finishing in it still registers its parks.
            self._canceller.parked.forget_partitions({tp.partition for tp in partitions})
            self._inflight.release(partitions)

    async def _shutdown(self, connection: _Connection) -> None:
        partitions = self._inflight.partitions
        await self._inflight.finish(partitions, self._processing.drain_grace_seconds)
        # After the grace period, one short budget for the final commit and the goodbyes:
        # a broker that does not answer must not hold the exit.
        closing = time.monotonic() + _CLOSE_SECONDS
        committer = connection.committer
        await committer.commit(partitions, wait=_CLOSE_SECONDS)
        self._inflight.release(partitions)
        if committer.unanswered:
            log.warning(
                "final offset commit not acknowledged; work after the last commit will be"
                " redelivered",
                extra={"bootstrap_servers": self._kafka.bootstrap_servers},
            )
        consumer = connection.consumer
        log.info("partitions released", extra={"partitions": _names(consumer.assignment())})
        try:
            await _close(consumer, closing, "leaving the consumer group")
        finally:
            await _close(connection.producer, closing, "flushing the producer")
        committer.abandon()
        log.info("stopped")


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        drain: Callable[[set[TopicPartition]], Awaitable[None]],
        catch_up: Callable[[set[TopicPartition]], Awaitable[None]],
        health: ConsumerHealth,
    ) -> None:
        self._drain = drain
        self._catch_up = catch_up
        self._health = health

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})
            await self._drain(revoked)
            # Drained and committed: from here on another member may own them.
            log.info("partitions released", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": _names(assigned)})
        try:
            await self._catch_up(assigned)
        except KafkaError as exc:
            # Not worth failing the join for: the parks are read back all the same, a later
            # event may just overtake one of them meanwhile.
            log.warning(
                "cannot tell how far to read parked shipments back",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
        self._health.joined()


async def _start(
    client: KafkaConsumer | KafkaProducer,
    refusal: Callable[[Exception, KafkaSettings], Exception | None],
    kafka: KafkaSettings,
) -> None:
    try:
        await client.start()
    except KafkaError as exc:
        refused = refusal(exc, kafka)
        if refused is not None:
            raise refused from None
        raise


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


async def _release(connection: _Connection) -> None:
    """Close the clients of a start that failed or was abandoned, within the close budget."""
    closing = time.monotonic() + _CLOSE_SECONDS
    try:
        await _close(connection.producer, closing, "closing the producer")
    finally:
        await _close(connection.consumer, closing, "closing the consumer")


async def _close(client: KafkaConsumer | KafkaProducer, deadline: float, what: str) -> None:
    """Stop ``client`` until ``deadline`` (a ``time.monotonic()``); past it, drop its
    connections without the goodbye (leaving the group, flushing) the broker does not
    answer."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await client.stop()
        return
    except TimeoutError:
        log.warning(f"{what} timed out; the kafka broker is not answering")
    # aiokafka offers no public way to close without that goodbye; its network client's
    # close() shuts the sockets at once (``_client`` of a consumer, ``client`` of a
    # producer). Left open, each would warn "Unclosed" at exit.
    network = getattr(client, "_client", None) or getattr(client, "client", None)
    if network is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(_MIN_CLOSE_SECONDS, deadline - time.monotonic())):
                await network.close()


async def _first_of(a: Awaitable[object], b: Awaitable[object], timeout: float) -> None:
    """Until either finishes, or ``timeout`` seconds."""
    tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
