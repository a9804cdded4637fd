"""``cancel-processor`` for the benchmark: spans go through a real ``BatchSpanProcessor`` into
an exporter that drops them.

    python -m bench.processor run --config CONFIG

Identical to ``cancel-processor`` otherwise. With ``traces_exporter = "none"`` the SDK still
makes every span (ids, attributes, timing) but hands it to no processor; this adds the
batching a deployment has, minus the wire. ``python -m bench --traces otlp`` measures the
wire too (OTLP/HTTP to a sink in the bench).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from consumer import app, cli
from consumer.config import TelemetrySettings


class DropSpans(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def main(argv: Sequence[str] | None = None) -> int:
    build = app.build_tracer_provider  # type: ignore[attr-defined]

    def with_batching(settings: TelemetrySettings, **kwargs: Any) -> TracerProvider:
        provider = build(settings, **kwargs)
        provider.add_span_processor(BatchSpanProcessor(DropSpans()))
        return provider

    app.build_tracer_provider = with_batching  # type: ignore[attr-defined]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
