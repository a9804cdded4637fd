"""OpenTelemetry set-up: the tracer and meter providers and their exporters, from the
``[telemetry]`` settings and the standard ``OTEL_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_OFF

from consumer.config import TelemetrySettings
from consumer.core.errors import ConfigError

# OTLP transport names of the OTel spec; http/protobuf is the spec's default.
_GRPC = "grpc"
_HTTP = "http/protobuf"


def build_tracer_provider(
    settings: TelemetrySettings, *, env: Mapping[str, str] | None = None
) -> TracerProvider:
    """A real SDK provider even with no exporter: result events need real trace ids.

    With no exporter, spans are recorded only when the inbound ``traceparent`` asks for it
    (so the sampled flag we pass downstream is the ERP's); otherwise they are id-only and
    cost next to nothing. With an exporter, the SDK's sampler applies (``OTEL_TRACES_SAMPLER``,
    default: record everything, following the parent's decision).
    """
    if settings.traces_exporter == "none":
        return TracerProvider(resource=_resource(settings), sampler=DEFAULT_OFF)
    provider = TracerProvider(resource=_resource(settings))
    if settings.traces_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif settings.traces_exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(otlp_span_exporter(env)))
    return provider


def build_meter_provider(
    settings: TelemetrySettings,
    *,
    env: Mapping[str, str] | None = None,
    extra_readers: Iterable[MetricReader] = (),
) -> MeterProvider:
    """Prometheus reader (prometheus_client's default registry) plus OTLP when configured.

    Call ``shutdown()`` on the result: it unregisters the Prometheus collector, so a second
    provider in the same process does not serve stale series.
    """
    readers: list[MetricReader] = [PrometheusMetricReader(scope_info_enabled=False)]
    if settings.metrics_exporter == "otlp":
        readers.append(PeriodicExportingMetricReader(otlp_metric_exporter(env)))
    readers.extend(extra_readers)
    # No exemplars: the Prometheus text format drops them, and offering one to the
    # reservoir on every measurement inside a span is a third of a measurement's cost.
    return MeterProvider(
        metric_readers=readers,
        resource=_resource(settings),
        exemplar_filter=AlwaysOffExemplarFilter(),
    )


def otlp_protocol(signal: str, env: Mapping[str, str] | None = None) -> str:
    """The OTLP transport for ``signal`` ("traces"/"metrics") from the standard variables."""
    env = os.environ if env is None else env
    raw = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or _HTTP
    ).strip()
    if raw not in (_GRPC, _HTTP):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {raw!r} is not supported (use grpc or http/protobuf)"
        )
    return raw


def otlp_span_exporter(env: Mapping[str, str] | None = None) -> SpanExporter:
    """Endpoint, headers, TLS and timeout come from ``OTEL_EXPORTER_OTLP_*``, read by the
    exporter itself. No connection is made until the first export."""
    if otlp_protocol("traces", env) == _GRPC:
        return GrpcSpanExporter()
    return HttpSpanExporter()


def otlp_metric_exporter(env: Mapping[str, str] | None = None) -> MetricExporter:
    if otlp_protocol("metrics", env) == _GRPC:
        return GrpcMetricExporter()
    return HttpMetricExporter()


def _resource(settings: TelemetrySettings) -> Resource:
    return Resource.create({"service.name": settings.service_name})
