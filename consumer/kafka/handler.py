"""Handling one input record: the scope of its CONSUMER span, around deciding what to
produce (results, or a DLQ copy) and publishing it."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry import trace

from consumer.core.canceller import Canceller
from consumer.core.events import OrderCancelled, ResultEvent, ShipmentCancelled, utc_now
from consumer.core.pipeline import InvalidRecord, TraceRef, invalid_record_result
from consumer.core.records import (
    Outgoing,
    OutputTopics,
    SourceRecord,
    dead_letter_record,
    result_record,
)
from consumer.kafka.publisher import Publisher
from consumer.kafka.seams import Clock
from consumer.observability.messaging import MessagingSpans, annotate_event, mark_dead_lettered
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import ORDER_ID, trace_ids

log = logging.getLogger(__name__)


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
        parsed: OrderCancelled | InvalidRecord,
    ) -> None:
        """Returns once what the record produced is acknowledged by the broker."""
        started = time.perf_counter()
        order_id = parsed.order_id if isinstance(parsed, OrderCancelled) else None
        with self._spans.processing(tp, record, order_id) as span:
            ref = TraceRef(*trace_ids(span))
            try:
                outgoing = await self._outgoing_for(tp, record, parsed, span, ref)
            except Exception as exc:  # a bug must not stall the partition: park the record
                log.exception("processing failed unexpectedly", extra=_coordinates(tp, record))
                mark_dead_lettered(span, type(exc).__name__)
                source = _source(tp, record)
                outgoing = [
                    dead_letter_record(source, self._topics, "internal", type(exc).__name__)
                ]
            await self._publisher.publish(outgoing, span)
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
        parsed: OrderCancelled | InvalidRecord,
        span: trace.Span,
        ref: TraceRef,
    ) -> list[Outgoing]:
        if isinstance(parsed, InvalidRecord):
            return self._invalid(tp, record, parsed, span, ref)
        results = await self._canceller.cancel_order(parsed, ref)
        for result in results:
            _log_result(result)
        if len(results) > 1:
            # With one shipment this span is also the shipment's: the canceller annotated it.
            annotate_event(span, results)
        return [result_record(result, self._topics) for result in results]

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
