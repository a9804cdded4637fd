"""The pipeline's last step: a result event, or an input record for the DLQ, as the Kafka
record to produce (pure: topic, key, value and headers; no Kafka client)."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.core import headers as h
from consumer.core.events import ResultEvent, ShipmentCancelled, dump_event, utc_now
from consumer.core.parking import ParkedShipment

Headers = list[tuple[str, bytes]]
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class OutputTopics:
    cancelled: str
    failed: str
    dlq: str
    retry: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    # What it counts as once acknowledged: a result event, or a DLQ copy of this category.
    result: ResultEvent | None = None
    dlq_category: str | None = None
    # A parked shipment goes to the retry partition of its input partition's number.
    partition: int | None = None
    parked: ParkedShipment | None = None

    def with_headers_first(self, headers: Headers) -> Outgoing:
        # Built directly: dataclasses.replace costs several times more, once per record.
        return Outgoing(
            self.topic,
            self.key,
            self.value,
            [*headers, *self.headers],
            self.result,
            self.dlq_category,
            self.partition,
            self.parked,
        )

    def without_value(self) -> Outgoing:
        """A DLQ copy too large for the broker: headers only, still counted as what it is."""
        return Outgoing(
            self.topic,
            self.key,
            None,
            [*self.headers, (h.DLQ_VALUE_DROPPED, b"too-large")],
            self.result,
            self.dlq_category,
            self.partition,
            self.parked,
        )


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where an input record came from, and what it carried."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def result_record(result: ResultEvent, topics: OutputTopics) -> Outgoing:
    """Keyed by order id; ``traceparent`` is added when it is sent (it names the record's
    own PRODUCER span)."""
    topic = topics.cancelled if isinstance(result, ShipmentCancelled) else topics.failed
    headers = [
        (h.CONTENT_TYPE, _JSON),
        (h.EVENT_TYPE, result.event_type.encode()),
    ]
    if result.source_event_id is not None:
        headers.append((h.SOURCE_EVENT_ID, str(result.source_event_id).encode()))
    return Outgoing(topic, result.order_id.encode(), dump_event(result), headers, result)


def dead_letter_record(
    source: SourceRecord, topics: OutputTopics, category: str, message: str
) -> Outgoing:
    """The input record as it came, its origin and the reason in ``dlq-*`` headers."""
    headers = [
        (h.DLQ_SOURCE_TOPIC, source.topic.encode()),
        (h.DLQ_SOURCE_PARTITION, str(source.partition).encode()),
        (h.DLQ_SOURCE_OFFSET, str(source.offset).encode()),
        (h.DLQ_ERROR_CATEGORY, category.encode()),
        (h.DLQ_ERROR_MESSAGE, message.encode()),
        (h.DLQ_FAILED_AT, utc_now().isoformat().encode()),
    ]
    if source.key is None and source.value is None:
        # Kafka cannot carry a record with neither key nor value: say so in a header.
        return Outgoing(
            topics.dlq,
            None,
            b"",
            [*headers, (h.DLQ_VALUE_DROPPED, b"null")],
            dlq_category=category,
        )
    return Outgoing(topics.dlq, source.key, source.value, headers, dlq_category=category)


def retry_record(parked: ParkedShipment, topics: OutputTopics, partition: int) -> Outgoing:
    """Keyed by order id, into retry partition ``partition``: the one of the same number as
    the input partition, owned by the same member (``traceparent`` added when sent keeps the
    shipment's later attempts in the event's trace)."""
    headers = [
        (h.CONTENT_TYPE, _JSON),
        (h.EVENT_TYPE, parked.event_type.encode()),
        (h.SOURCE_EVENT_ID, str(parked.event.event_id).encode()),
        (h.RETRY_DUE_AT, parked.due_at.isoformat().encode()),
    ]
    return Outgoing(
        topics.retry,
        parked.event.order_id.encode(),
        dump_event(parked),
        headers,
        partition=partition,
        parked=parked,
    )
