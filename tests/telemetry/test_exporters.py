"""Exporter choice from config and the standard OTEL_* variables; no network involved."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest
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
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest

from consumer.app import run_service
from consumer.config import TelemetrySettings, settings_from_mapping
from consumer.core.errors import ConfigError
from consumer.observability import telemetry
from consumer.observability.metrics import Metrics


@pytest.mark.parametrize(
    ("env", "span_class", "metric_class"),
    [
        ({}, HttpSpanExporter, HttpMetricExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcSpanExporter, GrpcMetricExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, HttpSpanExporter, HttpMetricExporter),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            },
            GrpcSpanExporter,
            GrpcMetricExporter,
        ),
    ],
    ids=["default http", "grpc", "http", "per-signal override"],
)
def test_otlp_transport_comes_from_the_standard_variables(
    env: dict[str, str], span_class: type[SpanExporter], metric_class: type[MetricExporter]
) -> None:
    spans = telemetry.otlp_span_exporter(env)
    metrics = telemetry.otlp_metric_exporter(env)
    try:
        assert type(spans) is span_class
        assert type(metrics) is metric_class
    finally:
        spans.shutdown()
        metrics.shutdown()


def test_an_unsupported_protocol_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"):
        telemetry.otlp_span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_traces_exporter_otlp_sends_spans_to_the_otlp_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = InMemorySpanExporter()
    monkeypatch.setattr(telemetry, "otlp_span_exporter", lambda env=None: exported)
    provider = telemetry.build_tracer_provider(TelemetrySettings(traces_exporter="otlp"))
    provider.get_tracer("t").start_span("work").end()
    provider.force_flush()
    assert [s.name for s in exported.get_finished_spans()] == ["work"]
    provider.shutdown()


def test_no_exporter_still_gives_real_trace_ids() -> None:
    provider = telemetry.build_tracer_provider(TelemetrySettings())
    span = provider.get_tracer("t").start_span("work")
    assert span.get_span_context().is_valid
    span.end()
    provider.shutdown()


def test_metrics_exporter_otlp_pushes_and_prometheus_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(
        telemetry, "otlp_metric_exporter", lambda env=None: ConsoleMetricExporter(out=out)
    )
    provider = telemetry.build_meter_provider(TelemetrySettings(metrics_exporter="otlp"))
    Metrics(provider).dlq_records.add(1, {"category": "invalid_event"})
    provider.force_flush()
    assert "cancel_processor.dlq.records" in out.getvalue()
    assert b"cancel_processor_dlq_records_total" in generate_latest(REGISTRY)
    provider.shutdown()
    # Shut down, its series leave the registry: a later provider starts clean.
    assert b"cancel_processor_dlq_records_total" not in generate_latest(REGISTRY)


async def test_a_taken_ops_port_stops_the_service_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_from_mapping(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:9"},
                "telemetry": {"http_host": "127.0.0.1", "http_port": port},
                "providers": {
                    "ss": {"kind": "shipstation", "base_url": "https://ss.test", "api_key": "k"}
                },
            },
            {},
        )
        with pytest.raises(
            ConfigError, match=f"telemetry.http_port: cannot listen on 127.0.0.1:{port}"
        ):
            await run_service(settings, asyncio.Event(), ops_http=True)


# --- the standard OTEL_* variables in the settings ----------------------------------------

BASE = {"kafka": {"bootstrap_servers": "127.0.0.1:9"}}


def with_telemetry(**telemetry: str) -> dict[str, object]:
    return {**BASE, "telemetry": telemetry} if telemetry else dict(BASE)


def test_otel_service_name_wins_over_the_file_and_names_the_resource() -> None:
    env = {"OTEL_SERVICE_NAME": "cancel-processor-eu"}
    settings = settings_from_mapping(with_telemetry(service_name="from-file"), env)
    assert settings.telemetry.service_name == "cancel-processor-eu"
    provider = telemetry.build_tracer_provider(settings.telemetry)
    assert provider.resource.attributes["service.name"] == "cancel-processor-eu"
    provider.shutdown()
    assert settings_from_mapping(
        with_telemetry(service_name="from-file"), {}
    ).telemetry.service_name == ("from-file")


@pytest.mark.parametrize(
    ("file", "env", "traces", "metrics"),
    [
        ({}, {}, "none", "none"),
        ({}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp"}, "otlp", "otlp"),
        # "none" in the file is the default: the variable still chooses.
        (
            {"traces_exporter": "none", "metrics_exporter": "none"},
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "otlp"},
            "console",
            "otlp",
        ),
        # An exporter the file names wins.
        ({"traces_exporter": "otlp"}, {"OTEL_TRACES_EXPORTER": "console"}, "otlp", "none"),
        ({"metrics_exporter": "otlp"}, {"OTEL_METRICS_EXPORTER": "none"}, "none", "otlp"),
        # Prometheus is always served: asking for it pushes nothing more.
        ({}, {"OTEL_METRICS_EXPORTER": "prometheus"}, "none", "none"),
        ({}, {"OTEL_METRICS_EXPORTER": "otlp, prometheus"}, "none", "otlp"),
        ({}, {"OTEL_TRACES_EXPORTER": " OTLP "}, "otlp", "none"),
    ],
    ids=[
        "defaults",
        "env chooses",
        "file none",
        "file traces wins",
        "file metrics wins",
        "prometheus",
        "otlp and prometheus",
        "case and spaces",
    ],
)
def test_standard_exporter_variables_choose_what_the_file_leaves_at_none(
    file: dict[str, str], env: dict[str, str], traces: str, metrics: str
) -> None:
    chosen = settings_from_mapping(with_telemetry(**file), env).telemetry
    assert (chosen.traces_exporter, chosen.metrics_exporter) == (traces, metrics)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not supported"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER: 'otlp,console'"),
        ({"OTEL_METRICS_EXPORTER": "console"}, "OTEL_METRICS_EXPORTER: 'console' is not"),
    ],
)
def test_an_unsupported_exporter_variable_is_one_clear_line(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        settings_from_mapping(with_telemetry(), env)
    assert "\n" not in str(info.value)
