"""Producing what a record's handling decided: result events and DLQ copies, each with its
PRODUCER span, retried until the broker acknowledges them all (``acks=all``): a result is
never dropped."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from opentelemetry import trace

from consumer.core.backoff import Backoff
from consumer.core.errors import ErrorCategory
from consumer.core.events import ResultEvent, ShipmentCancelled
from consumer.core.records import Outgoing
from consumer.kafka.health import BrokerTrouble, ConsumerHealth
from consumer.kafka.seams import KafkaProducer
from consumer.observability.messaging import MessagingSpans, Sending
from consumer.observability.metrics import NONE, Metrics
from consumer.observability.tracing import FAILED, inject_headers

log = logging.getLogger(__name__)

PRODUCE_BACKOFF = Backoff((0.2, 0.5, 1.0, 2.0, 5.0))
_UNKNOWN = "unknown"


class Publisher:
    def __init__(
        self,
        producer: KafkaProducer,
        dlq_topic: str,
        *,
        spans: MessagingSpans,
        metrics: Metrics,
        health: ConsumerHealth,
        trouble: BrokerTrouble,
        request_timeout_seconds: float,
    ) -> None:
        self._producer = producer
        self._request_timeout = request_timeout_seconds
        # When each publish under way started (oldest first): the idempotent producer
        # retries a silent broker by itself, so a stalled publish raises nothing.
        self._publishing: dict[object, float] = {}
        self._stalled = False
        self._dlq_topic = dlq_topic
        self._spans = spans
        self._metrics = metrics
        self._health = health
        self._trouble = trouble

    async def publish(self, outgoing: list[Outgoing], span: trace.Span) -> None:
        """Send and wait for every acknowledgement; each record's ``traceparent`` names its
        own PRODUCER span."""
        token = object()
        self._publishing[token] = time.monotonic()
        try:
            with self._spans.sending(outgoing) as sending:
                outgoing = [
                    o.with_headers_first(inject_headers(send))
                    for o, send in zip(outgoing, sending.spans, strict=True)
                ]
                sending.acked(await self._send_all(outgoing, span, sending))
        finally:
            del self._publishing[token]
        metrics = self._metrics
        for o in outgoing:
            metrics.sent.add(1, metrics.sent_attributes(o.topic))
            if o.result is not None:
                metrics.results.add(1, metrics.result_attributes(*result_labels(o.result)))
            elif o.dlq_category is not None:
                metrics.dlq_records.add(1, metrics.category_attributes(o.dlq_category))

    def report_stall(self) -> None:
        """One warning when the oldest publish under way has waited a request timeout for
        the broker's acknowledgement, one info line once none has (other partitions'
        acknowledgements say nothing of a stalled one's)."""
        oldest = next(iter(self._publishing.values()), None)
        waited = 0.0 if oldest is None else time.monotonic() - oldest
        if waited >= self._request_timeout and not self._stalled:
            self._stalled = True
            log.warning(
                "kafka broker not acknowledging results, waiting; their offsets stay"
                " uncommitted until it does",
                extra={"waited_seconds": round(waited, 1)},
            )
        elif waited < self._request_timeout and self._stalled:
            self._stalled = False
            log.info("kafka broker acknowledging results again")

    async def _send_all(
        self, outgoing: list[Outgoing], span: trace.Span, sending: Sending
    ) -> list[RecordMetadata]:
        attempt = 0
        while True:
            try:
                futures = [
                    await self._producer.send(
                        o.topic, o.value, key=o.key, partition=o.partition, headers=o.headers
                    )
                    for o in outgoing
                ]
                # One result is the usual case: a gather of one costs a task and a future.
                acked: list[RecordMetadata] = (
                    [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
                )
                self._health.broker_answered()
                self._trouble.recovered()
                return acked
            except MessageSizeTooLargeError as exc:
                if any(o.topic == self._dlq_topic and o.value for o in outgoing):
                    outgoing = [
                        o.without_value() if o.topic == self._dlq_topic else o for o in outgoing
                    ]
                    log.warning("record too large for the broker; DLQ copy keeps headers only")
                    continue
                error: Exception = exc
            except KafkaError as exc:
                error = exc
            wait = PRODUCE_BACKOFF.delay(attempt)
            attempt += 1
            self._trouble.failed(
                "producing results failed, retrying",
                error=f"{type(error).__name__}: {error}",
                retry_in_seconds=wait,
            )
            sending.retrying(error, span)
            await asyncio.sleep(wait)


def result_labels(result: ResultEvent) -> tuple[str, str, str]:
    """(provider, outcome, category) of the results counter, with bounded values."""
    if isinstance(result, ShipmentCancelled):
        return result.provider, result.outcome, NONE
    category = str(result.error.category)
    if category == ErrorCategory.UNKNOWN_PROVIDER:
        return _UNKNOWN, FAILED, category  # the event's own text: unbounded
    return result.provider or NONE, FAILED, category
