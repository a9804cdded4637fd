"""Kafka record header names, shared by the runner and the AsyncAPI document.

Header values are UTF-8 strings. Kafka header names are case-sensitive, so these are the
exact spellings on the wire.
"""

from __future__ import annotations

from typing import Final

# W3C trace context: on input (from the ERP, when it traces) and on every result.
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

# On every result event.
CONTENT_TYPE: Final = "content-type"
EVENT_TYPE: Final = "event-type"
SOURCE_EVENT_ID: Final = "source-event-id"

# On every retry record: when the parked shipment is due (ISO 8601), for people and tools.
RETRY_DUE_AT: Final = "retry-due-at"

# On input records published by the webhook ingress: the sender's X-Cancel-Source name.
INGRESS_SOURCE: Final = "ingress-source"

# On every dead letter: where the record came from and why it could not be read.
DLQ_SOURCE_TOPIC: Final = "dlq-source-topic"
DLQ_SOURCE_PARTITION: Final = "dlq-source-partition"
DLQ_SOURCE_OFFSET: Final = "dlq-source-offset"
DLQ_ERROR_CATEGORY: Final = "dlq-error-category"
DLQ_ERROR_MESSAGE: Final = "dlq-error-message"
DLQ_FAILED_AT: Final = "dlq-failed-at"
# Added to a DLQ copy whose value was too large for the broker to take back.
DLQ_VALUE_DROPPED: Final = "dlq-value-dropped"
