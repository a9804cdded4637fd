"""In-memory OpenTelemetry for tests: every finished span and every metric point, readable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer

from consumer.observability.metrics import Metrics


@dataclass
class Telemetry:
    tracer: Tracer
    metrics: Metrics
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind == kind]

    def one(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [s.name for s in self.spans()]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of every point of ``metric``; value = sum, count or gauge."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name != metric:
                        continue
                    for point in m.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            found.append((dict(point.attributes or {}), point.count))
                        elif isinstance(point, NumberDataPoint):
                            found.append((dict(point.attributes or {}), point.value))
        return found

    def total(self, metric: str, **attributes: Any) -> Any:
        return sum(
            value
            for attrs, value in self.points(metric)
            if all(attrs.get(k) == v for k, v in attributes.items())
        )


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(tracer_provider.get_tracer("test"), Metrics(meter_provider), exporter, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


def attribute_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exports as text: names, attributes, events, links, status."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v!s}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v!s}" for k, v in (event.attributes or {}).items())
        for link in span.links:
            parts.extend(f"{k}={v!s}" for k, v in (link.attributes or {}).items())
        parts.append(span.status.description or "")
    return "\n".join(parts)
