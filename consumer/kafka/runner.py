"""The only aiokafka user: fetch, key-ordered dispatch, produce results, commit.

At-least-once: an input offset is committed only after every record it produced (results,
DLQ copy) is acknowledged with ``acks=all``, and only once every earlier offset of its
partition is finished too. A crash repeats work past the last commit; it never skips any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
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
from aiokafka.structs import OffsetAndMetadata, RecordMetadata
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_MESSAGE_TOMBSTONE,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from consumer.config import KafkaSettings, ProcessingSettings
from consumer.core.canceller import Canceller
from consumer.core.errors import ErrorCategory
from consumer.core.events import (
    CancelFailed,
    OrderCancelled,
    ResultEvent,
    ShipmentCancelled,
    dump_event,
    utc_now,
)
from consumer.core.pipeline import (
    InvalidRecord,
    TraceRef,
    invalid_record_result,
    parse_order_cancelled,
)
from consumer.kafka import headers as h
from consumer.kafka.clients import KafkaSecurityError, check_security, client_options
from consumer.kafka.offsets import PartitionProgress
from consumer.kafka.ordering import KeyOrderedScheduler
from consumer.observability.metrics import NONE, Metrics
from consumer.observability.tracing import (
    CANCEL_OUTCOME,
    CANCELLED,
    FAILED,
    ORDER_ID,
    ActiveSpan,
    annotate_failure,
    extract_context,
    inject_headers,
    trace_ids,
)

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
_JSON = b"application/json"
# Produce failures are retried until the broker acknowledges: a result is never dropped.
_PRODUCE_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
_BROKER_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
# On shutdown, after the grace period: how long the final commit, leaving the group and
# flushing the producer may wait, together, for a broker that does not answer.
_CLOSE_SECONDS = 2.0
# Readiness: the broker counts as reachable while it answered within this window. Fetches,
# commits and acks are the evidence; with none of them (idle, or no partitions) a metadata
# request is made once the last evidence is this old.
_BROKER_SILENCE_SECONDS = 30.0
_BROKER_PROBE_AFTER_SECONDS = 10.0
_KAFKA = "kafka"
_PROCESS = "process"
_SEND = "send"
DEAD_LETTERED = "dead_lettered"
_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    # What it counts as once acknowledged: a result event, or a DLQ copy of this category.
    result: ResultEvent | None = None
    dlq_category: str | None = None

    def with_headers_first(self, headers: Headers) -> Outgoing:
        # Built directly: dataclasses.replace costs several times more, once per record.
        return Outgoing(
            self.topic,
            self.key,
            self.value,
            [*headers, *self.headers],
            self.result,
            self.dlq_category,
        )


# Makes the Kafka consumer and producer (again after a failed start); the runner subscribes
# the consumer itself.
KafkaClients = Callable[[], tuple[AIOKafkaConsumer, AIOKafkaProducer]]


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
    ) -> None:
        """``clients``: how to make the Kafka clients (default: aiokafka's, from ``kafka``)."""
        self._kafka = kafka
        self._make_clients = clients or self._kafka_clients
        self._processing = processing
        self._canceller = canceller
        self._tracer = tracer
        self._metrics = metrics or Metrics()
        # Read by the metric gauges and /readyz, possibly from another thread: plain values
        # only, replaced (never mutated) by the event loop.
        self._events_in_flight = 0
        self._joined = False
        self._stopping = False
        self._broker_seen_at = 0.0
        self._lag: dict[tuple[str, int], int] = {}
        self._was_ready = False
        self._probe: asyncio.Task[None] | None = None
        self._consumer_span_attributes: dict[TopicPartition, dict[str, Any]] = {}
        self._metrics.observe(self)
        self._scheduler = KeyOrderedScheduler()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._slot_freed = asyncio.Event()
        self._paused = False
        # Whether the consume loop waits in ``getmany``, and whether stop cancelled that wait.
        self._polling = False
        self._poll_interrupted = False
        # Partitions being drained on revocation: no new work is started for them.
        self._draining: set[TopicPartition] = set()
        # The commit in flight (never cancelled: see _commit).
        self._committing: asyncio.Task[None] | None = None
        self._commit_started = 0.0
        self._trouble = _Trouble(kafka.bootstrap_servers)
        self._consumer, self._producer = self._new_clients()

    def _new_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        consumer, producer = self._make_clients()
        consumer.subscribe([self._kafka.input_topic], listener=_DrainOnRevoke(self))
        return consumer, producer

    def _kafka_clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
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
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            fetch_max_bytes=kafka.fetch_max_bytes,
            request_timeout_ms=kafka.request_timeout_ms,
            **client_options(kafka),
        )
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=5,
            # aiokafka's 16 KiB default fills in a few ms at thousands of results per
            # second, and a full batch makes every send wait for it to drain.
            max_batch_size=256 * 1024,
            max_request_size=kafka.max_request_bytes,
            request_timeout_ms=kafka.request_timeout_ms,
            **client_options(kafka),
        )
        return consumer, producer

    @property
    def events_in_flight(self) -> int:
        """Events dispatched and not finished; a plain counter, safe to read from a metrics
        thread."""
        return self._events_in_flight

    def lag(self) -> Mapping[tuple[str, int], int]:
        return self._lag

    def readiness(self) -> tuple[bool, str]:
        """Ready = joined the group (an assignment arrived, even an empty one) and the
        broker answered recently."""
        if self._stopping:
            return False, "shutting down"
        if not self._joined:
            return False, "not joined to the consumer group yet"
        silent = time.time() - self._broker_seen_at
        if silent > _BROKER_SILENCE_SECONDS:
            return False, f"no answer from the Kafka broker for {silent:.0f}s"
        return True, "ready"

    def _broker_answered(self) -> None:
        self._broker_seen_at = time.time()

    def joined(self) -> None:
        """The group gave us an assignment (possibly empty): we are a member."""
        self._joined = True
        self._broker_answered()
        self._log_readiness()

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
            self._stopping = True
            await self._shutdown()

    async def _start(self, stop: asyncio.Event) -> bool:
        """Connect, waiting out an unreachable broker until stopped."""
        attempt = 0
        while not stop.is_set():
            try:
                # A refused login or certificate ends the run with one line (ConfigError).
                await check_security(self._kafka)
                await self._producer.start()
                await self._consumer.start()
                self._broker_answered()
                return True
            except KafkaSecurityError:
                await self._producer.stop()
                await self._consumer.stop()
                raise
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
        consuming = asyncio.current_task()
        assert consuming is not None
        interrupter = asyncio.create_task(self._interrupt_poll(stop, consuming))
        try:
            while not stop.is_set():
                free = self._processing.max_in_flight - self._events_in_flight
                self._pause_when_full(free)
                if free <= 0:
                    self._slot_freed.clear()
                    await _wait_any(stop, self._slot_freed, timeout=0.5)
                # Polling goes on while paused, so the group does not think we are stuck.
                batches = await self._poll(
                    stop, timeout_ms=200 if free > 0 else 0, max_records=free
                )
                for tp, records in batches.items():
                    for record in records:
                        self._dispatch(tp, record)
                if time.monotonic() >= next_commit:
                    await self._commit(self._progress.keys())
                    await self._observe_broker()
                    next_commit = time.monotonic() + commit_every
        finally:
            interrupter.cancel()

    async def _interrupt_poll(self, stop: asyncio.Event, consuming: asyncio.Task[None]) -> None:
        """Cancel the consume loop's ``getmany`` once ``stop`` is set: aiokafka waits
        without limit for a rebalance to settle, and a stop request must not wait with it.
        Anywhere else the loop sees ``stop`` within one poll timeout by itself."""
        await stop.wait()
        if self._polling:
            self._poll_interrupted = True
            consuming.cancel()

    async def _observe_broker(self) -> None:
        """Lag per assigned partition and broker liveness, for the gauges and /readyz."""
        lag: dict[tuple[str, int], int] = {}
        polled_ms = 0
        for tp in self._consumer.assignment():
            polled_ms = max(polled_ms, self._consumer.last_poll_timestamp(tp) or 0)
            # Known only once a fetch answered for the partition; so is a valid position.
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                async with asyncio.timeout(0.1):
                    position = await self._consumer.position(tp)
            except (TimeoutError, IllegalStateError):
                continue
            lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        self._lag = lag
        self._broker_seen_at = max(self._broker_seen_at, polled_ms / 1000)
        silent = time.time() - self._broker_seen_at
        if silent > _BROKER_PROBE_AFTER_SECONDS and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_broker())
        self._log_readiness()

    async def _probe_broker(self) -> None:
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                await self._consumer.topics()
            self._broker_answered()

    def _log_readiness(self) -> None:
        ready, reason = self.readiness()
        if ready != self._was_ready:
            self._was_ready = ready
            if ready:
                log.info("ready")
            else:
                log.warning("not ready", extra={"reason": reason})

    async def _poll(
        self, stop: asyncio.Event, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if stop.is_set():
            return {}  # set while the loop waited for a free slot: the watcher has gone by
        try:
            return await self._getmany(timeout_ms, max(1, max_records))
        except KafkaError as exc:
            # Coordinator and fetch errors surface here; the consumer recovers by itself.
            log.warning(
                "kafka poll failed, retrying", extra={"error": f"{type(exc).__name__}: {exc}"}
            )
            await _wait(stop, 1.0)
            return {}

    async def _getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """``getmany``, awaited in the consume loop itself: racing it in a task of its own
        against ``stop`` cost two tasks and a wait per poll, 7 % of the processor's CPU at
        1,000 events/s (README "Performance"). ``_interrupt_poll`` cancels it on stop."""
        self._polling = True
        try:
            batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except asyncio.CancelledError:
            consuming = asyncio.current_task()
            if self._poll_interrupted and consuming is not None and consuming.uncancel() == 0:
                self._poll_interrupted = False
                # Stopping. Records this poll may have fetched are not dispatched, so never
                # committed: the partition's next reader gets them.
                return {}
            raise  # the service itself is being cancelled
        finally:
            self._polling = False
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
        if tp in self._draining:
            # Being handed over: work started now would escape the drain. Whoever owns the
            # partition next (maybe us again) reads it from the committed offset.
            return
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
        self._metrics.consumed.add(
            1, self._metrics.consumed_attributes(tp.topic, tp.partition, self._kafka.group_id)
        )
        task = self._scheduler.submit(key, lambda: self._handle(tp, record, parsed))
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        self._events_in_flight += 1
        task.add_done_callback(lambda done: self._finished(tp, progress, record.offset, done))

    def _finished(
        self,
        tp: TopicPartition,
        progress: PartitionProgress,
        offset: int,
        task: asyncio.Task[None],
    ) -> None:
        self._tasks.get(tp, set()).discard(task)
        self._events_in_flight -= 1
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
        # Only the tracker that started the offset may finish it: after a rewind or a new
        # assignment the same offset number is a different, maybe unfinished, record.
        if self._progress.get(tp) is progress:
            progress.finish(offset)

    async def _handle(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: OrderCancelled | InvalidRecord,
    ) -> None:
        """One CONSUMER span per record: the ERP's trace continues through it (parent and
        link), a malformed or missing ``traceparent`` starts a new trace."""
        started = time.perf_counter()
        base = self._consumer_span_attributes.get(tp)
        if base is None:
            base = self._consumer_span_attributes[tp] = {
                MESSAGING_SYSTEM: _KAFKA,
                MESSAGING_OPERATION_TYPE: _PROCESS,
                MESSAGING_OPERATION_NAME: _PROCESS,
                MESSAGING_DESTINATION_NAME: tp.topic,
                MESSAGING_DESTINATION_PARTITION_ID: str(tp.partition),
                MESSAGING_CONSUMER_GROUP_NAME: self._kafka.group_id,
            }
        attributes = {**base, MESSAGING_KAFKA_OFFSET: record.offset}
        if record.key is not None:
            attributes[MESSAGING_KAFKA_MESSAGE_KEY] = record.key.decode("utf-8", "replace")
        if record.value is None:
            attributes[MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
        if isinstance(parsed, OrderCancelled):
            attributes[ORDER_ID] = parsed.order_id
        parent = extract_context(record.headers)
        upstream = trace.get_current_span(parent).get_span_context()
        consumer_span = self._tracer.start_span(
            f"process {tp.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=(Link(upstream),) if upstream.is_valid else (),
        )
        with ActiveSpan(consumer_span) as span:
            ref = TraceRef(*trace_ids(span))
            try:
                outgoing = await self._outgoing_for(tp, record, parsed, span, ref)
            except Exception as exc:  # a bug must not stall the partition: park the record
                log.exception("processing failed unexpectedly", extra=_coordinates(tp, record))
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attributes({ERROR_TYPE: type(exc).__name__, CANCEL_OUTCOME: DEAD_LETTERED})
                outgoing = [self._dead_letter(tp, record, "internal", type(exc).__name__)]
            await self._publish(outgoing, span)
        metrics = self._metrics
        metrics.process_duration.record(
            time.perf_counter() - started, metrics.process_attributes(tp.topic)
        )
        if record.timestamp >= 0:
            metrics.event_duration.record(max(0.0, time.time() - record.timestamp / 1000))

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
            span.set_attributes({ERROR_TYPE: "invalid_event", CANCEL_OUTCOME: DEAD_LETTERED})
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
                # It names an order, which gets a cancel-failed: findable by order.id too.
                span.set_attribute(ORDER_ID, failed.order_id)
                outgoing.append(self._result_record(failed, span))
            return outgoing

        results = await self._canceller.cancel_order(parsed, ref)
        for result in results:
            _log_result(result)
        if len(results) > 1:
            # With one shipment this span is also the shipment's: the canceller annotated it.
            _annotate_event(span, results)
        return [self._result_record(result, span) for result in results]

    def _result_record(self, result: ResultEvent, span: trace.Span) -> Outgoing:
        topic = (
            self._kafka.cancelled_topic
            if isinstance(result, ShipmentCancelled)
            else self._kafka.failed_topic
        )
        # traceparent is added by _publish: it names the record's own PRODUCER span.
        headers = [
            (h.CONTENT_TYPE, _JSON),
            (h.EVENT_TYPE, result.event_type.encode()),
        ]
        if result.source_event_id is not None:
            headers.append((h.SOURCE_EVENT_ID, str(result.source_event_id).encode()))
        return Outgoing(topic, result.order_id.encode(), dump_event(result), headers, result)

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
                self._kafka.dlq_topic,
                None,
                b"",
                [*headers, (h.DLQ_VALUE_DROPPED, b"null")],
                dlq_category=category,
            )
        return Outgoing(
            self._kafka.dlq_topic, record.key, record.value, headers, dlq_category=category
        )

    async def _publish(self, outgoing: list[Outgoing], span: trace.Span) -> None:
        """One PRODUCER span per record, its context in the record's ``traceparent``."""
        sends = [self._producer_span(o) for o in outgoing]
        outgoing = [
            o.with_headers_first(inject_headers(send))
            for o, send in zip(outgoing, sends, strict=True)
        ]
        try:
            acked = await self._send_all(outgoing, span, sends)
        except BaseException as exc:  # cancelled by a drain that ran out of time
            cancelled = isinstance(exc, asyncio.CancelledError)
            error_type = CANCELLED if cancelled else type(exc).__name__
            for send in sends:
                send.set_status(Status(StatusCode.ERROR, error_type))
                send.set_attribute(ERROR_TYPE, error_type)
                send.end()
            raise
        metrics = self._metrics
        for o, send, meta in zip(outgoing, sends, acked, strict=True):
            send.set_attributes(
                {
                    MESSAGING_DESTINATION_PARTITION_ID: str(meta.partition),
                    MESSAGING_KAFKA_OFFSET: meta.offset,
                }
            )
            send.end()
            metrics.sent.add(1, metrics.sent_attributes(o.topic))
            if o.result is not None:
                metrics.results.add(1, metrics.result_attributes(*_result_labels(o.result)))
            elif o.dlq_category is not None:
                metrics.dlq_records.add(1, metrics.category_attributes(o.dlq_category))

    def _producer_span(self, outgoing: Outgoing) -> trace.Span:
        attributes: dict[str, str | bool] = {
            MESSAGING_SYSTEM: _KAFKA,
            MESSAGING_OPERATION_TYPE: _SEND,
            MESSAGING_OPERATION_NAME: _SEND,
            MESSAGING_DESTINATION_NAME: outgoing.topic,
        }
        if outgoing.key is not None:
            attributes[MESSAGING_KAFKA_MESSAGE_KEY] = outgoing.key.decode("utf-8", "replace")
        if outgoing.value is None:  # the DLQ copy of a tombstone
            attributes[MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
        return self._tracer.start_span(
            f"send {outgoing.topic}", kind=SpanKind.PRODUCER, attributes=attributes
        )

    async def _send_all(
        self, outgoing: list[Outgoing], span: trace.Span, sends: list[trace.Span]
    ) -> list[RecordMetadata]:
        """Send and wait for every acknowledgement; retry until the broker has them all."""
        attempt = 0
        while True:
            try:
                futures = [
                    await self._producer.send(o.topic, o.value, key=o.key, headers=o.headers)
                    for o in outgoing
                ]
                # One result is the usual case: a gather of one costs a task and a future.
                acked: list[RecordMetadata] = (
                    [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
                )
                self._broker_answered()
                self._trouble.recovered()
                return acked
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
            self._trouble.failed(
                "producing results failed, retrying",
                error=f"{type(error).__name__}: {error}",
                retry_in_seconds=wait,
            )
            for traced in (span, *sends):
                traced.add_event("produce retry", {ERROR_TYPE: type(error).__name__})
            await asyncio.sleep(wait)

    async def _commit(self, partitions: Iterable[TopicPartition], wait: float = 0.0) -> None:
        """Commit the finished offsets of these partitions; wait up to ``wait`` seconds for
        the broker's answer (the periodic commit does not wait at all).

        A commit is never cancelled: aiokafka retries it until the coordinator answers, in
        a task of its own that would fail unobserved if we abandoned it. A commit without an
        answer goes on in the background and no other starts until it has one, so a broker
        outage neither blocks the consume loop nor piles up commits.
        """
        deadline = time.monotonic() + wait
        pending = self._committing
        if pending is not None and not await _done_within(pending, deadline):
            self._report_silence()
            return
        offsets = {}
        assigned = self._consumer.assignment()
        for tp in [tp for tp in partitions if tp in assigned]:
            progress = self._progress.get(tp)
            position = progress.pending_commit() if progress else None
            if position is not None:
                offsets[tp] = OffsetAndMetadata(position, "")
        if not offsets:
            return
        self._committing = asyncio.ensure_future(self._commit_offsets(offsets))
        self._commit_started = time.monotonic()
        if wait > 0 and not await _done_within(self._committing, deadline):
            self._report_silence()

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
        self._broker_answered()
        for tp, meta in offsets.items():
            progress = self._progress.get(tp)
            if progress is not None:
                progress.committed(meta.offset)

    def _report_silence(self) -> None:
        """The broker has not answered a commit for a request timeout."""
        waited = time.monotonic() - self._commit_started
        if waited >= self._kafka.request_timeout_ms / 1000:
            self._trouble.failed(
                "kafka broker not answering, waiting; offsets stay uncommitted until it does",
                waited_seconds=round(waited, 1),
            )

    async def drain(self, partitions: Iterable[TopicPartition]) -> None:
        """Let in-flight work of these partitions finish within the grace period, commit
        (waiting up to a request timeout for the broker: the group waits for us)."""
        partitions = list(partitions)
        self._draining.update(partitions)
        try:
            await self._finish_in_flight(partitions)
            await self._commit(partitions, wait=self._kafka.request_timeout_ms / 1000)
        finally:
            self._forget(partitions)
            self._draining.difference_update(partitions)

    async def _finish_in_flight(self, partitions: list[TopicPartition]) -> None:
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

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._progress.pop(tp, None)
            self._tasks.pop(tp, None)

    async def _shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        partitions = list(self._progress)
        await self._finish_in_flight(partitions)
        # After the grace period, one short budget for the final commit and the goodbyes:
        # a broker that does not answer must not hold the exit.
        closing = time.monotonic() + _CLOSE_SECONDS
        await self._commit(partitions, wait=_CLOSE_SECONDS)
        self._forget(partitions)
        if self._committing is not None and not self._committing.done():
            log.warning(
                "final offset commit not acknowledged; work after the last commit will be"
                " redelivered",
                extra={"bootstrap_servers": self._kafka.bootstrap_servers},
            )
        log.info("partitions released", extra={"partitions": _names(self._consumer.assignment())})
        await _bounded(self._consumer.stop(), closing, "leaving the consumer group")
        await _bounded(self._producer.stop(), closing, "flushing the producer")
        if self._committing is not None:
            self._committing.cancel()
        log.info("stopped")


class _Trouble:
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


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})
            await self._runner.drain(revoked)
            # Drained and committed: from here on another member may own them.
            log.info("partitions released", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": _names(assigned)})
        self._runner.joined()


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


def _coordinates(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {"topic": tp.topic, "partition": tp.partition, "offset": record.offset}


def _without_value(outgoing: Outgoing) -> Outgoing:
    """The DLQ copy without its value; still counted as what it is once acknowledged."""
    return dataclasses.replace(
        outgoing, value=None, headers=[*outgoing.headers, (h.DLQ_VALUE_DROPPED, b"too-large")]
    )


def _result_labels(result: ResultEvent) -> tuple[str, str, str]:
    """(provider, outcome, category) of the results counter, with bounded values."""
    if isinstance(result, ShipmentCancelled):
        return result.provider, result.outcome, NONE
    category = str(result.error.category)
    if category == ErrorCategory.UNKNOWN_PROVIDER:
        return _UNKNOWN, FAILED, category  # the event's own text: unbounded
    return result.provider or NONE, FAILED, category


def _annotate_event(span: trace.Span, results: list[ResultEvent]) -> None:
    """``cancel.outcome`` of the event: ``failed`` when any shipment failed (the span then
    has status ERROR with the first failure's category), else the shipments' outcome."""
    failed = next((r for r in results if isinstance(r, CancelFailed)), None)
    if failed is not None:
        span.set_attribute(CANCEL_OUTCOME, FAILED)
        annotate_failure(span, failed.error)
        return
    outcomes = {r.outcome for r in results if isinstance(r, ShipmentCancelled)}
    span.set_attribute(CANCEL_OUTCOME, outcomes.pop() if len(outcomes) == 1 else "cancelled")


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
        # A shipment that stays uncancelled needs someone's attention.
        log.warning(
            "shipment cancel failed",
            extra={**fields, "category": str(result.error.category), "error": result.error.message},
        )


async def _done_within(task: asyncio.Task[None], deadline: float) -> bool:
    """Whether ``task`` finished by ``deadline`` (a ``time.monotonic()``); never cancels it."""
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    return bool(done)


async def _bounded(closing: Awaitable[None], deadline: float, what: str) -> None:
    """Await ``closing`` until ``deadline`` (a ``time.monotonic()``), then give up on it."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await closing
    except TimeoutError:
        log.warning(f"{what} timed out; the kafka broker is not answering")


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
