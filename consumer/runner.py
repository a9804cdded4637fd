"""The only aiokafka user: fetch, key-ordered dispatch, produce results, commit.

At-least-once: an input offset is committed only after every record it produced (results,
DLQ copy) is acknowledged with ``acks=all``, and only once every earlier offset of its
partition is finished too. A crash repeats work past the last commit; it never skips any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
)
from aiokafka.structs import OffsetAndMetadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from consumer import headers as h
from consumer.canceller import Canceller
from consumer.config import KafkaSettings, ProcessingSettings
from consumer.events import (
    CancelFailed,
    OrderCancelled,
    ResultEvent,
    ShipmentCancelled,
    dump_event,
    utc_now,
)
from consumer.kafka_client import client_options
from consumer.offsets import PartitionProgress
from consumer.ordering import KeyOrderedScheduler
from consumer.pipeline import InvalidRecord, TraceRef, invalid_record_result, parse_order_cancelled
from consumer.telemetry import extract_context, inject_headers, trace_ids

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
_JSON = b"application/json"
# Produce failures are retried until the broker acknowledges: a result is never dropped.
_PRODUCE_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
_BROKER_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


class Runner:
    def __init__(
        self,
        kafka: KafkaSettings,
        processing: ProcessingSettings,
        canceller: Canceller,
        tracer: Tracer,
    ) -> None:
        self._kafka = kafka
        self._processing = processing
        self._canceller = canceller
        self._tracer = tracer
        self._scheduler = KeyOrderedScheduler()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._slot_freed = asyncio.Event()
        self._paused = False
        self._consumer, self._producer = self._new_clients()

    def _new_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        kafka = self._kafka
        consumer = AIOKafkaConsumer(
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            # The group waits this long for us to rejoin: long enough for a full drain.
            rebalance_timeout_ms=max(
                kafka.session_timeout_ms,
                int(self._processing.drain_grace_seconds * 1000) + kafka.request_timeout_ms,
            ),
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            request_timeout_ms=kafka.request_timeout_ms,
            **client_options(kafka),
        )
        consumer.subscribe([kafka.input_topic], listener=_DrainOnRevoke(self))
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=5,
            max_request_size=kafka.max_request_bytes,
            request_timeout_ms=kafka.request_timeout_ms,
            **client_options(kafka),
        )
        return consumer, producer

    @property
    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._tasks.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, commit and leave the group."""
        if not await self._start(stop):
            return
        log.info(
            "consuming",
            extra={"topic": self._kafka.input_topic, "group_id": self._kafka.group_id},
        )
        try:
            await self._consume(stop)
        finally:
            await self._shutdown()

    async def _start(self, stop: asyncio.Event) -> bool:
        """Connect, waiting out an unreachable broker until stopped."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._producer.start()
                await self._consumer.start()
                return True
            except KafkaConnectionError as exc:
                wait = _BROKER_RETRY_SECONDS[min(attempt, len(_BROKER_RETRY_SECONDS) - 1)]
                attempt += 1
                log.warning(
                    "kafka broker unreachable, retrying",
                    extra={
                        "bootstrap_servers": self._kafka.bootstrap_servers,
                        "error": str(exc),
                        "retry_in_seconds": wait,
                    },
                )
                await self._producer.stop()
                await self._consumer.stop()
                self._consumer, self._producer = self._new_clients()
                await _wait(stop, wait)
        await self._producer.stop()
        await self._consumer.stop()
        return False

    async def _consume(self, stop: asyncio.Event) -> None:
        commit_every = self._kafka.commit_interval_seconds
        next_commit = time.monotonic() + commit_every
        while not stop.is_set():
            free = self._processing.max_in_flight - self.in_flight
            self._pause_when_full(free)
            if free <= 0:
                self._slot_freed.clear()
                await _wait_any(stop, self._slot_freed, timeout=0.5)
            # Polling goes on while paused, so the group does not think we are stuck.
            batches = await self._poll(stop, timeout_ms=200 if free > 0 else 0, max_records=free)
            for tp, records in batches.items():
                for record in records:
                    self._dispatch(tp, record)
            if time.monotonic() >= next_commit:
                await self._commit(self._progress.keys())
                next_commit = time.monotonic() + commit_every

    async def _poll(
        self, stop: asyncio.Event, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """``getmany``, abandoned when ``stop`` is set: aiokafka waits without limit for a
        rebalance to settle, and a stop request must not wait with it."""
        fetch = asyncio.ensure_future(
            self._consumer.getmany(timeout_ms=timeout_ms, max_records=max(1, max_records))
        )
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()
                # It may still complete instead: its records must then be dispatched.
                await asyncio.wait({fetch})
        finally:
            stopping.cancel()
            fetch.cancel()
        if fetch.cancelled():
            return {}
        try:
            batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = fetch.result()
        except KafkaError as exc:
            # Coordinator and fetch errors surface here; the consumer recovers by itself.
            log.warning(
                "kafka poll failed, retrying", extra={"error": f"{type(exc).__name__}: {exc}"}
            )
            await _wait(stop, 1.0)
            return {}
        return batches

    def _pause_when_full(self, free: int) -> None:
        if free <= 0:
            # Re-applied every time: a new assignment arrives unpaused.
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
        elif self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        progress = self._progress.get(tp)
        if progress is None:
            if tp not in self._consumer.assignment():
                return  # revoked meanwhile: the new owner reads it from the committed offset
            progress = self._progress[tp] = PartitionProgress()
        try:
            progress.start(record.offset)
        except ValueError:
            # The position went backwards (an offset reset after log truncation): track
            # the partition afresh; work already in flight for it finishes harmlessly.
            log.warning("partition position moved backwards", extra=_coordinates(tp, record))
            progress = self._progress[tp] = PartitionProgress()
            progress.start(record.offset)
        parsed = parse_order_cancelled(record.value, self._processing.max_event_bytes)
        if isinstance(parsed, OrderCancelled):
            key = parsed.order_id
        else:
            key = parsed.order_id or f"\x00invalid:{tp.partition}:{record.offset}"
        task = self._scheduler.submit(key, lambda: self._handle(tp, record, parsed))
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        task.add_done_callback(lambda done: self._finished(tp, record.offset, done))

    def _finished(self, tp: TopicPartition, offset: int, task: asyncio.Task[None]) -> None:
        self._tasks.get(tp, set()).discard(task)
        self._slot_freed.set()
        if task.cancelled():
            return  # interrupted by revocation or shutdown: not done, so not committable
        if task.exception() is not None:
            # Never commit past a record whose outcome did not reach the broker.
            log.error(
                "record handling failed; its partition will not commit past it",
                exc_info=task.exception(),
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
            )
            return
        progress = self._progress.get(tp)
        if progress is not None:
            progress.finish(offset)

    async def _handle(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: OrderCancelled | InvalidRecord,
    ) -> None:
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": tp.topic,
            "messaging.destination.partition.id": str(tp.partition),
            "messaging.consumer.group.name": self._kafka.group_id,
            "messaging.kafka.offset": record.offset,
        }
        with self._tracer.start_as_current_span(
            f"process {tp.topic}",
            context=extract_context(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            ref = TraceRef(*trace_ids(span))
            try:
                outgoing = await self._outgoing_for(tp, record, parsed, span, ref)
            except Exception as exc:  # a bug must not stall the partition: park the record
                log.exception("processing failed unexpectedly", extra=_coordinates(tp, record))
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                outgoing = [self._dead_letter(tp, record, "internal", type(exc).__name__)]
            await self._publish(outgoing, span)

    async def _outgoing_for(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: OrderCancelled | InvalidRecord,
        span: trace.Span,
        ref: TraceRef,
    ) -> list[Outgoing]:
        if isinstance(parsed, InvalidRecord):
            log.warning(
                "invalid input record sent to the DLQ",
                extra={**_coordinates(tp, record), "error": parsed.message},
            )
            span.set_status(Status(StatusCode.ERROR, "invalid_event"))
            outgoing = [self._dead_letter(tp, record, "invalid_event", parsed.message)]
            failed = invalid_record_result(
                parsed,
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
                trace=ref,
                now=utc_now(),
            )
            if failed is not None:
                outgoing.append(self._result_record(failed, span))
            return outgoing

        span.set_attribute("order.id", parsed.order_id)
        results = await self._canceller.cancel_order(parsed, ref)
        for result in results:
            _log_result(result)
        if any(isinstance(r, CancelFailed) for r in results):
            span.set_status(Status(StatusCode.ERROR, "cancel_failed"))
        return [self._result_record(result, span) for result in results]

    def _result_record(self, result: ResultEvent, span: trace.Span) -> Outgoing:
        topic = (
            self._kafka.cancelled_topic
            if isinstance(result, ShipmentCancelled)
            else self._kafka.failed_topic
        )
        headers = [
            *inject_headers(span),
            (h.CONTENT_TYPE, _JSON),
            (h.EVENT_TYPE, result.event_type.encode()),
        ]
        if result.source_event_id is not None:
            headers.append((h.SOURCE_EVENT_ID, str(result.source_event_id).encode()))
        return Outgoing(topic, result.order_id.encode(), dump_event(result), headers)

    def _dead_letter(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        category: str,
        message: str,
    ) -> Outgoing:
        headers = [
            (h.DLQ_SOURCE_TOPIC, tp.topic.encode()),
            (h.DLQ_SOURCE_PARTITION, str(tp.partition).encode()),
            (h.DLQ_SOURCE_OFFSET, str(record.offset).encode()),
            (h.DLQ_ERROR_CATEGORY, category.encode()),
            (h.DLQ_ERROR_MESSAGE, message.encode()),
            (h.DLQ_FAILED_AT, utc_now().isoformat().encode()),
        ]
        if record.key is None and record.value is None:
            # Kafka cannot carry a record with neither key nor value: say so in a header.
            return Outgoing(
                self._kafka.dlq_topic, None, b"", [*headers, (h.DLQ_VALUE_DROPPED, b"null")]
            )
        return Outgoing(self._kafka.dlq_topic, record.key, record.value, headers)

    async def _publish(self, outgoing: list[Outgoing], span: trace.Span) -> None:
        """Send and wait for every acknowledgement; retry until the broker has them all."""
        attempt = 0
        while True:
            try:
                futures = [
                    await self._producer.send(o.topic, o.value, key=o.key, headers=o.headers)
                    for o in outgoing
                ]
                await asyncio.gather(*futures)
                return
            except MessageSizeTooLargeError as exc:
                if any(o.topic == self._kafka.dlq_topic and o.value for o in outgoing):
                    outgoing = [
                        _without_value(o) if o.topic == self._kafka.dlq_topic else o
                        for o in outgoing
                    ]
                    log.warning("record too large for the broker; DLQ copy keeps headers only")
                    continue
                error: Exception = exc
            except KafkaError as exc:
                error = exc
            wait = _PRODUCE_RETRY_SECONDS[min(attempt, len(_PRODUCE_RETRY_SECONDS) - 1)]
            attempt += 1
            log.warning(
                "producing results failed, retrying",
                extra={"error": f"{type(error).__name__}: {error}", "retry_in_seconds": wait},
            )
            span.add_event("produce retry", {"error.type": type(error).__name__})
            await asyncio.sleep(wait)

    async def _commit(self, partitions: Iterable[TopicPartition]) -> None:
        offsets = {}
        assigned = self._consumer.assignment()
        for tp in [tp for tp in partitions if tp in assigned]:
            progress = self._progress.get(tp)
            position = progress.pending_commit() if progress else None
            if position is not None:
                offsets[tp] = OffsetAndMetadata(position, "")
        if not offsets:
            return
        try:
            # aiokafka retries a commit until the coordinator answers; bound it so a broker
            # outage cannot hold a shutdown or a rebalance. Uncommitted work is redone.
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                await self._consumer.commit(offsets)
        except TimeoutError:
            log.warning("offset commit timed out; the work will be redelivered")
            return
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The group moved on; the new owner resumes from the last good commit.
            log.warning("offset commit skipped during a rebalance", extra={"error": str(exc)})
            return
        except KafkaError as exc:
            log.warning("offset commit failed, will retry", extra={"error": str(exc)})
            return
        for tp, meta in offsets.items():
            progress = self._progress.get(tp)
            if progress is not None:
                progress.committed(meta.offset)

    async def drain(self, partitions: Iterable[TopicPartition]) -> None:
        """Let in-flight work of these partitions finish within the grace period, commit."""
        partitions = list(partitions)
        tasks = {task for tp in partitions for task in self._tasks.get(tp, set())}
        if tasks:
            log.info("draining in-flight events", extra={"events": len(tasks)})
            _, pending = await asyncio.wait(tasks, timeout=self._processing.drain_grace_seconds)
            if pending:
                log.warning(
                    "grace period over; unfinished events will be redelivered",
                    extra={"events": len(pending)},
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        await self._commit(partitions)
        for tp in partitions:
            self._progress.pop(tp, None)
            self._tasks.pop(tp, None)

    async def _shutdown(self) -> None:
        await self.drain(list(self._progress))
        await self._consumer.stop()
        await self._producer.stop()
        log.info("stopped")


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})
            await self._runner.drain(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": _names(assigned)})


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def _coordinates(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {"topic": tp.topic, "partition": tp.partition, "offset": record.offset}


def _without_value(outgoing: Outgoing) -> Outgoing:
    return Outgoing(
        outgoing.topic, outgoing.key, None, [*outgoing.headers, (h.DLQ_VALUE_DROPPED, b"too-large")]
    )


def _log_result(result: ResultEvent) -> None:
    fields: dict[str, Any] = {
        "order_id": result.order_id,
        "provider": result.provider,
        "shipment_id": result.shipment_id,
        "attempts": result.attempts,
        "trace_id": result.trace_id,
    }
    if isinstance(result, ShipmentCancelled):
        log.info("shipment cancelled", extra={**fields, "outcome": result.outcome})
    else:
        log.info(
            "shipment cancel failed",
            extra={**fields, "category": str(result.error.category), "error": result.error.message},
        )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(stop: asyncio.Event, other: asyncio.Event, timeout: float) -> None:
    waiters: list[Awaitable[Any]] = [stop.wait(), other.wait()]
    tasks = [asyncio.ensure_future(w) for w in waiters]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
