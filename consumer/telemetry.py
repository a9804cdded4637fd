"""OpenTelemetry set-up and W3C trace-context propagation through Kafka headers."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from consumer import headers as h
from consumer.config import TelemetrySettings

# Only these inbound headers are read for trace context; everything else is ignored.
_TRACE_HEADERS = (h.TRACEPARENT, h.TRACESTATE)
# A tracestate longer than the W3C limit (512 chars) is dropped, never parsed.
_MAX_TRACE_HEADER_BYTES = 512


def build_tracer_provider(settings: TelemetrySettings) -> TracerProvider:
    """A real SDK provider even with no exporter: result events need real trace ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.traces_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


class _HeaderGetter(Getter[dict[str, str]]):
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


class _HeaderSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


def extract_context(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    """The producer's trace context, or an empty one when absent or malformed."""
    carrier: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        if name in _TRACE_HEADERS and value and len(value) <= _MAX_TRACE_HEADER_BYTES:
            try:
                carrier[name] = value.decode("ascii")
            except UnicodeDecodeError:
                continue
    return propagate.extract(carrier, getter=_HeaderGetter())


def inject_headers(span: trace.Span) -> list[tuple[str, bytes]]:
    """``traceparent`` (+ ``tracestate``) for a record produced under the given span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span), setter=_HeaderSetter())
    return [(key, value.encode("ascii")) for key, value in carrier.items()]


def trace_ids(span: trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
