"""The messaging spans of the consume path, as scopes: one CONSUMER span around handling a
record, one PRODUCER span per record sent (semantic conventions for Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata
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

from consumer.core.events import CancelFailed, ResultEvent, ShipmentCancelled
from consumer.core.parking import ParkedShipment
from consumer.core.records import Outgoing
from consumer.observability.metrics import KAFKA, PROCESS, SEND
from consumer.observability.tracing import (
    CANCEL_OUTCOME,
    CANCELLED,
    FAILED,
    ORDER_ID,
    PARKED,
    ActiveSpan,
    annotate_failure,
    extract_context,
)

DEAD_LETTERED = "dead_lettered"


class MessagingSpans:
    def __init__(self, tracer: Tracer, group_id: str) -> None:
        self._tracer = tracer
        self._group_id = group_id
        self._partition_attributes: dict[TopicPartition, dict[str, Any]] = {}

    def processing(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], order_id: str | None
    ) -> ActiveSpan:
        """The CONSUMER span of one record, current inside the scope: the ERP's trace
        continues through it (parent and link); a malformed or missing ``traceparent``
        starts a new trace."""
        base = self._partition_attributes.get(tp)
        if base is None:
            base = self._partition_attributes[tp] = {
                MESSAGING_SYSTEM: KAFKA,
                MESSAGING_OPERATION_TYPE: PROCESS,
                MESSAGING_OPERATION_NAME: PROCESS,
                MESSAGING_DESTINATION_NAME: tp.topic,
                MESSAGING_DESTINATION_PARTITION_ID: str(tp.partition),
                MESSAGING_CONSUMER_GROUP_NAME: self._group_id,
            }
        attributes = {**base, MESSAGING_KAFKA_OFFSET: record.offset}
        if record.key is not None:
            attributes[MESSAGING_KAFKA_MESSAGE_KEY] = record.key.decode("utf-8", "replace")
        if record.value is None:
            attributes[MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
        if order_id is not None:
            attributes[ORDER_ID] = order_id
        parent = extract_context(record.headers)
        upstream = trace.get_current_span(parent).get_span_context()
        return ActiveSpan(
            self._tracer.start_span(
                f"process {tp.topic}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=(Link(upstream),) if upstream.is_valid else (),
            )
        )

    def sending(self, outgoing: Sequence[Outgoing]) -> Sending:
        """One PRODUCER span per record, for the scope of sending them."""
        return Sending([self._producer_span(o) for o in outgoing])

    def _producer_span(self, outgoing: Outgoing) -> trace.Span:
        attributes: dict[str, str | bool] = {
            MESSAGING_SYSTEM: KAFKA,
            MESSAGING_OPERATION_TYPE: SEND,
            MESSAGING_OPERATION_NAME: SEND,
            MESSAGING_DESTINATION_NAME: outgoing.topic,
        }
        if outgoing.key is not None:
            attributes[MESSAGING_KAFKA_MESSAGE_KEY] = outgoing.key.decode("utf-8", "replace")
        if outgoing.value is None:  # the DLQ copy of a tombstone
            attributes[MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
        return self._tracer.start_span(
            f"send {outgoing.topic}", kind=SpanKind.PRODUCER, attributes=attributes
        )


class Sending:
    """PRODUCER spans that end with the acknowledgements' partition and offset, or with an
    error when the scope is left by an exception (cancelled by a drain out of time)."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[trace.Span]) -> None:
        self.spans = spans

    def __enter__(self) -> Sending:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        error_type = CANCELLED if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
        for span in self.spans:
            span.set_status(Status(StatusCode.ERROR, error_type))
            span.set_attribute(ERROR_TYPE, error_type)
            span.end()

    def retrying(self, error: Exception, parent: trace.Span) -> None:
        """An event on the PRODUCER spans and on ``parent``, the span of the handling."""
        for span in (parent, *self.spans):
            span.add_event("produce retry", {ERROR_TYPE: type(error).__name__})

    def acked(self, acks: Sequence[RecordMetadata]) -> None:
        for span, meta in zip(self.spans, acks, strict=True):
            span.set_attributes(
                {
                    MESSAGING_DESTINATION_PARTITION_ID: str(meta.partition),
                    MESSAGING_KAFKA_OFFSET: meta.offset,
                }
            )
            span.end()


def mark_dead_lettered(span: trace.Span, error_type: str) -> None:
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attributes({ERROR_TYPE: error_type, CANCEL_OUTCOME: DEAD_LETTERED})


def annotate_event(span: trace.Span, results: Sequence[ResultEvent | ParkedShipment]) -> None:
    """``cancel.outcome`` of the event: ``failed`` when any shipment failed (the span then
    has status ERROR with the first failure's category), ``parked`` when any waits for a
    later attempt, else the shipments' outcome."""
    failed = next((r for r in results if isinstance(r, CancelFailed)), None)
    if failed is not None:
        span.set_attribute(CANCEL_OUTCOME, FAILED)
        annotate_failure(span, failed.error)
        return
    if any(isinstance(r, ParkedShipment) for r in results):
        span.set_attribute(CANCEL_OUTCOME, PARKED)
        return
    outcomes = {r.outcome for r in results if isinstance(r, ShipmentCancelled)}
    span.set_attribute(CANCEL_OUTCOME, outcomes.pop() if len(outcomes) == 1 else "cancelled")
