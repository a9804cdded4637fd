"""Handling one record: the scope of its CONSUMER span, around deciding what to produce
(results, parks, or a DLQ copy) and publishing it.

Input records and retry records (a parked shipment's next attempt) go the same way; once a
park is acknowledged it is known to ``ParkedShipments``, and once a parked shipment has its
result it is not.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry import trace

from consumer.core.canceller import Canceller, Settled
from consumer.core.events import OrderCancelled, ResultEvent, ShipmentCancelled, utc_now
from consumer.core.parking import InvalidParked, Origin, ParkedShipment, park_of
from consumer.core.pipeline import (
    InvalidRecord,
    TraceRef,
    invalid_record_result,
    shipment_result_id,
)
from consumer.core.records import (
    Outgoing,
    OutputTopics,
    SourceRecord,
    dead_letter_record,
    result_record,
    retry_record,
)
from consumer.kafka.publisher import Publisher
from consumer.kafka.seams import Clock
from consumer.observability.messaging import MessagingSpans, annotate_event, mark_dead_lettered
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import ORDER_ID, trace_ids

log = logging.getLogger(__name__)

# What a fetched record was read as: an input event, a retry record, or neither.
Parsed = OrderCancelled | InvalidRecord | ParkedShipment | InvalidParked


class RecordHandler:
    def __init__(
        self,
        canceller: Canceller,
        publisher: Publisher,
        *,
        topics: OutputTopics,
        spans: MessagingSpans,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._canceller = canceller
        self._publisher = publisher
        self._topics = topics
        self._spans = spans
        self._metrics = metrics
        self._clock = clock

    async def handle(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: Parsed,
    ) -> None:
        """Returns once what the record produced is acknowledged by the broker."""
        started = time.perf_counter()
        order_id = parsed.order_id if isinstance(parsed, OrderCancelled | InvalidRecord) else None
        if isinstance(parsed, ParkedShipment):
            order_id = parsed.event.order_id
        with self._spans.processing(tp, record, order_id) as span:
            ref = TraceRef(*trace_ids(span))
            try:
                outgoing = await self._outgoing_for(tp, record, parsed, span, ref)
            except Exception as exc:  # a bug must not stall the partition: DLQ the record
                log.exception("processing failed unexpectedly", extra=_coordinates(tp, record))
                mark_dead_lettered(span, type(exc).__name__)
                source = _source(tp, record)
                outgoing = [
                    dead_letter_record(source, self._topics, "internal", type(exc).__name__)
                ]
            await self._publisher.publish(outgoing, span)
        self._track_parks(tp, parsed, outgoing)
        metrics = self._metrics
        metrics.process_duration.record(
            time.perf_counter() - started, metrics.process_attributes(tp.topic)
        )
        if record.timestamp >= 0:
            metrics.event_duration.record(max(0.0, self._clock() - record.timestamp / 1000))

    async def _outgoing_for(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: Parsed,
        span: trace.Span,
        ref: TraceRef,
    ) -> list[Outgoing]:
        if isinstance(parsed, InvalidRecord):
            return self._invalid(tp, record, parsed, span, ref)
        if isinstance(parsed, InvalidParked):
            log.error(
                "unreadable retry record sent to the DLQ",
                extra={**_coordinates(tp, record), "error": parsed.message},
            )
            mark_dead_lettered(span, "invalid_event")
            source = _source(tp, record)
            return [dead_letter_record(source, self._topics, "invalid_event", parsed.message)]
        if isinstance(parsed, ParkedShipment):
            settled = [await self._canceller.retry_parked(parsed, ref, tp.partition)]
        else:
            origin = Origin(tp.partition, record.offset)
            settled = await self._canceller.cancel_order(parsed, ref, origin)
        results = [s for s in settled if not isinstance(s, ParkedShipment)]
        for result in results:
            _log_result(result)
        if len(settled) > 1:
            # With one shipment this span is also the shipment's: the canceller annotated it.
            annotate_event(span, settled)
        return [self._record_of(s, tp.partition) for s in settled]

    def _record_of(self, settled: Settled, partition: int) -> Outgoing:
        if isinstance(settled, ParkedShipment):
            return retry_record(settled, self._topics, partition)
        return result_record(settled, self._topics)

    def _track_parks(
        self,
        tp: TopicPartition,
        parsed: Parsed,
        outgoing: list[Outgoing],
    ) -> None:
        """Parks now acknowledged are known; the shipment this retry record parked, once
        it has its result, is not."""
        parked = self._canceller.parked
        for o in outgoing:
            if o.parked is not None:
                park_of(parked, o.parked, tp.partition)
        if isinstance(parsed, ParkedShipment) and not any(o.parked for o in outgoing):
            parked.settled(parsed.shipment, shipment_result_id(parsed.event, parsed.shipment))

    def _invalid(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        parsed: InvalidRecord,
        span: trace.Span,
        ref: TraceRef,
    ) -> list[Outgoing]:
        log.warning(
            "invalid input record sent to the DLQ",
            extra={**_coordinates(tp, record), "error": parsed.message},
        )
        mark_dead_lettered(span, "invalid_event")
        source = _source(tp, record)
        outgoing = [dead_letter_record(source, self._topics, "invalid_event", parsed.message)]
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
            outgoing.append(result_record(failed, self._topics))
        return outgoing


def _source(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> SourceRecord:
    return SourceRecord(tp.topic, tp.partition, record.offset, record.key, record.value)


def _coordinates(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    return {"topic": tp.topic, "partition": tp.partition, "offset": record.offset}


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
