"""The compose setup without Docker: `topics`, `run` and `demo-traffic` as processes, with
ops/config/processor.toml and the compose environment, against the session's broker and the
provider simulator. Only what must differ here is changed: the broker (by
KAFKA_BOOTSTRAP_SERVERS), the provider URLs (by their ${VAR}s), the OTLP endpoint, and the
topic names, group, ops port and idempotence (by rewriting those lines of a copy)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from consumer.config import BOOTSTRAP_ENV, load_kafka_settings
from consumer.simulator import Simulator
from consumer.tools.embedded_broker import free_port
from consumer.tools.topics import topic_names
from tests.integration.kafka_helpers import Cluster
from tests.ops.files import (
    INGRESS_METRICS,
    ONLY_ONCE_PARKED,
    PROCESSOR_TOML,
    alert_rules,
    contract_name,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
    service,
)
from tests.ops.test_monitoring import label_uses, selected_metrics

pytestmark = pytest.mark.integration

ON_EMBEDDED_BROKER = not os.environ.get(BOOTSTRAP_ENV)
EVENTS = 20  # the first twenty records of consumer/tools/traffic.py's mix


def ops_config_copy(tmp_path: Path, run: str, http_port: int) -> Path:
    text = PROCESSOR_TOML.read_text(encoding="utf-8")
    rewrites = {
        r'^(group_id|input_topic|cancelled_topic|failed_topic|dlq_topic|retry_topic) = "(.+)"$': (
            rf'\1 = "\2.{run}"',
            6,
        ),
        r"^http_port = \d+$": (f"http_port = {http_port}", 1),
    }
    if ON_EMBEDDED_BROKER:
        rewrites[r"^enable_idempotence = true$"] = ("enable_idempotence = false", 1)
    for pattern, (replacement, expected) in rewrites.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == expected, f"ops/config/processor.toml no longer has {pattern}"
    path = tmp_path / "processor.toml"
    path.write_text(text, encoding="utf-8")
    return path


def compose_env(simulator: Simulator, bootstrap: str, otlp_port: int) -> dict[str, str]:
    env = {k: str(v) for k, v in service("processor")["environment"].items()}
    env.update(
        SHIPSTATION_BASE_URL=simulator.shipstation_base_url,
        MVMNT_BASE_URL=simulator.mvmnt_base_url,
        MVMNT_TOKEN_URL=simulator.mvmnt_token_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="500",
    )
    return {**os.environ, **env, BOOTSTRAP_ENV: bootstrap}


class OtlpReceiver:
    """Accepts OTLP/HTTP trace exports and keeps the spans' attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, object]] = []
        self.service_names: set[str] = set()

    async def traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.service_names.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {a.key: a.value.string_value for a in span.attributes} | {"name": span.name}
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver, port
    finally:
        await runner.cleanup()


async def cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = await client.get("/readyz")
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = repr(exc)
        await asyncio.sleep(0.5)
    pytest.fail(f"/readyz never answered 200: {last}")


def monitored_series() -> set[str]:
    """Series the alerts and dashboards select that `run` exports."""
    exprs = [rule["expr"] for rule in alert_rules()] + [
        grafana_to_promql(expr) for d in dashboards().values() for _, expr in dashboard_queries(d)
    ]
    series = {name for expr in exprs for name in selected_metrics(expr)}
    return {s for s in series if contract_name(s) not in INGRESS_METRICS | ONLY_ONCE_PARKED}


def exported_series(text: str) -> set[str]:
    return {
        match[1]
        for match in re.finditer(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text)
        if not match[0].startswith("#")
    }


def exported_labels(text: str) -> dict[str, set[str]]:
    """Label names per series name (histograms: per _bucket/_count/_sum) in a scrape."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


# Added by Prometheus from the scrape target, never in /metrics itself.
TARGET_LABELS = {"job", "instance"}


def unknown_labels(labels: dict[str, set[str]]) -> list[str]:
    """Label matchers and groupings of the alerts and dashboards that no series of the
    metrics they apply to carries (an ingress-only expression is not checked here)."""
    exprs = [rule["expr"] for rule in alert_rules()] + [
        grafana_to_promql(expr) for d in dashboards().values() for _, expr in dashboard_queries(d)
    ]
    problems = []
    for expr in exprs:
        for label, metrics in label_uses(expr):
            ours = {
                m for m in metrics if contract_name(m) not in INGRESS_METRICS | ONLY_ONCE_PARKED
            }
            if not ours or label in TARGET_LABELS:
                continue
            if not any(label in labels.get(m, set()) for m in ours):
                problems.append(f"{label} on {sorted(ours)}: {' '.join(expr.split())[:120]}")
    return problems


async def test_processor_runs_the_compose_setup_end_to_end(
    tmp_path: Path,
    bootstrap_servers: str,
    simulator: Simulator,
    otlp_receiver: tuple[OtlpReceiver, int],
) -> None:
    receiver, otlp_port = otlp_receiver
    run = uuid.uuid4().hex[:10]
    http_port = free_port()
    config = ops_config_copy(tmp_path, run, http_port)
    env = compose_env(simulator, bootstrap_servers, otlp_port)
    settings = load_kafka_settings(config, env)

    # topic-init
    topics = await cli(env, "topics", "--config", str(config))
    out, err = await asyncio.wait_for(topics.communicate(), timeout=60)
    assert topics.returncode == 0, err.decode()
    created = [line.split(": ")[1] for line in out.decode().splitlines()]
    assert created == ["created"] * len(topic_names(settings.kafka))

    # processor
    processor = await cli(env, "run", "--config", str(config))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as ops:
            await wait_ready(ops)
            assert (await ops.get("/healthz")).status_code == 200

            # demo-traffic
            traffic = await cli(
                env, "demo-traffic", "--config", str(config), "--count", str(EVENTS), "--rate", "50"
            )
            _, traffic_err = await asyncio.wait_for(traffic.communicate(), timeout=60)
            assert traffic.returncode == 0, traffic_err.decode()

            async with Cluster(settings) as cluster:
                kafka = settings.kafka
                records = await cluster.collect(
                    [kafka.cancelled_topic, kafka.failed_topic, kafka.dlq_topic],
                    count=EVENTS,
                    timeout=90,
                )
            metrics = (await ops.get("/metrics")).text
    finally:
        processor.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(processor.communicate(), timeout=40)

    assert processor.returncode == 0, stderr.decode()[-2000:]
    by_topic = Counter(r.topic for r in records)
    assert by_topic == {kafka.cancelled_topic: 15, kafka.failed_topic: 4, kafka.dlq_topic: 1}
    results = [orjson.loads(r.value) for r in records if r.topic != kafka.dlq_topic and r.value]
    outcomes = Counter(r.get("outcome") or r["error"]["category"] for r in results)
    assert outcomes == {
        "cancelled": 14,
        "already_cancelled": 1,
        "not_found": 1,
        "conflict": 2,
        "unknown_provider": 1,
    }

    missing = monitored_series() - exported_series(metrics)
    assert not missing, f"alerts/dashboard select series that `run` does not export: {missing}"
    unknown = unknown_labels(exported_labels(metrics))
    assert not unknown, f"alerts/dashboard use labels the live /metrics lacks: {unknown}"

    assert receiver.service_names == {"shipment-cancel-processor"}
    traced_orders = {str(span.get("order.id")) for span in receiver.spans}
    assert {r["order_id"] for r in results} <= traced_orders, "every order reached the collector"

    log = stderr.decode()
    for secret in ("sim-shipstation-key", "sim-mvmnt-secret"):
        assert secret not in log
