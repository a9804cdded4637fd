"""Reading the files under ops/ (and the Dockerfile) for the ops checks."""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE = OPS / "compose.yaml"
PROCESSOR_TOML = OPS / "config" / "processor.toml"
ALERTS = OPS / "prometheus" / "alerts.yml"
PROMETHEUS = OPS / "prometheus" / "prometheus.yml"
COLLECTOR = OPS / "otel-collector.yaml"
JAEGER = OPS / "jaeger.yaml"
DASHBOARDS = OPS / "grafana" / "dashboards"
GRAFANA_PROVISIONING = OPS / "grafana" / "provisioning"
K8S = OPS / "k8s"
# The kustomize component both kustomizations use: the config and the image.
K8S_CONFIG = K8S / "config"
K8S_TOPICS = K8S / "topics"
# The documentation pages the ops checks read (the MkDocs site under docs/).
DOCS = ROOT / "docs"
RUNBOOK = DOCS / "runbook.md"
DEPLOY_DOC = DOCS / "deploy.md"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The metric names of the shared contract (Prometheus names as scraped from /metrics).
HISTOGRAMS = {
    "messaging_process_duration_seconds",
    "cancel_processor_event_duration_seconds",
    "http_client_request_duration_seconds",
    "cancel_processor_rate_limiter_wait_duration_seconds",
    "http_server_request_duration_seconds",
}
COUNTERS = {
    "messaging_client_consumed_messages_total",
    "messaging_client_sent_messages_total",
    "cancel_processor_results_total",
    "cancel_processor_dlq_records_total",
    "cancel_processor_provider_retries_total",
    "cancel_ingress_requests_total",
    "cancel_processor_parks_total",
}
GAUGES = {
    "cancel_processor_events_in_flight",
    "cancel_processor_consumer_lag",
    "cancel_processor_ready",
    "cancel_processor_parked_shipments",
    "cancel_processor_parked_oldest_age_seconds",
    "cancel_processor_circuit_state",
    "cancel_processor_provider_pace_per_minute",
}
CONTRACT_METRICS = HISTOGRAMS | COUNTERS | GAUGES
# Exported by `ingress`, not by `run`.
INGRESS_METRICS = {"cancel_ingress_requests_total", "http_server_request_duration_seconds"}
# Exported from the first park on (a counter is born at its first increment): the end-to-end
# run of the compose setup (test_ops_config_runs.py) parks nothing, so it does not look for
# them on `run`'s /metrics.
ONLY_ONCE_PARKED = {"cancel_processor_parks_total"}
# What a query may select: histograms are queried through their series.
SELECTABLE = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
)


def contract_name(series: str) -> str:
    """The contract metric a selected series belongs to."""
    for suffix in ("_bucket", "_count", "_sum"):
        base = series.removesuffix(suffix)
        if base != series and base in HISTOGRAMS:
            return base
    return series


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


@cache
def k8s_documents() -> list[dict[str, Any]]:
    """Every manifest under ops/k8s (kustomization files aside), with its path."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append({**doc, "_file": str(path.relative_to(K8S))})
    return docs


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (directory / "kustomization.yaml").read_text(encoding="utf-8")
    )
    return loaded


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind]
    if name is not None:
        found = [d for d in found if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in ops/k8s, found {len(found)}"
    return found[0]


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"] if "alert" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, nested rows included."""
    found = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((panel["title"], target["expr"]))
    return found


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))
    return flat


# Grafana's variables, replaced by something PromQL accepts.
_GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def grafana_to_promql(expr: str) -> str:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "x", expr)


def toml_vars(text: str) -> set[str]:
    """Every ${VAR} named in the non-comment lines of a TOML document."""
    names = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        names.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", line))
    return names


def configmap_toml() -> str:
    """The config the ConfigMap is generated from (ops/k8s/config)."""
    (generator,) = kustomization(K8S_CONFIG)["configMapGenerator"]
    (name,) = generator["files"]
    text = (K8S_CONFIG / str(name)).read_text(encoding="utf-8")
    tomllib.loads(text)
    return text


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def container_env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's env as the process sees it; a secret reference gets a stand-in."""
    env = {}
    for entry in container(workload).get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            env[entry["name"]] = f"from-{entry['name'].lower()}"
    return env


def secret_refs(workload: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """env var -> (secret name, key) for every secretKeyRef of the container."""
    refs = {}
    for entry in container(workload).get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    return version


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions
