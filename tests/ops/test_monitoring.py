"""Alert rules, the Grafana dashboard and the runbook: valid PromQL, contract metric names only,
a runbook section per alert."""

from __future__ import annotations

import re
import shlex
from typing import Any

import promql_parser
import pytest
import yaml

from consumer.cli import build_parser
from tests.ops.files import (
    ALERTS,
    CONTRACT_METRICS,
    COUNTERS,
    DEPLOY_DOC,
    GRAFANA_PROVISIONING,
    PROMETHEUS,
    ROOT,
    RUNBOOK,
    SELECTABLE,
    alert_rules,
    compose,
    contract_name,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
)


def selected_metrics(expr: str) -> set[str]:
    """Metric names of every selector in a PromQL expression (parse errors propagate)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {node}"
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)

    promql_parser.walk(promql_parser.parse(expr), visit, None)
    return names


def test_selected_metrics_sees_through_functions_and_subqueries() -> None:
    expr = "deriv(sum(max by (a) (x_total))[15m:1m]) > 0 and on () rate(y_count[5m]) > 1"
    assert selected_metrics(expr) == {"x_total", "y_count"}
    with pytest.raises(ValueError, match="parenthesis"):
        selected_metrics("sum(rate(x_total[5m])")


def label_uses(expr: str) -> list[tuple[str, frozenset[str]]]:
    """(label, metrics it must be found on) for every label matcher of a selector and every
    label of a ``by (...)``, ``on (...)`` or ``group_left/right (...)`` clause, which takes the
    metrics selected beneath it."""
    uses: list[tuple[str, frozenset[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__":
                    uses.append((matcher.name, frozenset({str(node.name)})))
        elif isinstance(node, promql_parser.AggregateExpr):
            modifier = node.modifier
            if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
                metrics = frozenset(selected_metrics(node.expr.prettify()))
                uses.extend((label, metrics) for label in modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            metrics = frozenset(
                selected_metrics(node.lhs.prettify()) | selected_metrics(node.rhs.prettify())
            )
            matching = node.modifier.matching
            labels = list(matching.labels) if matching is not None else []
            grouped = list(node.modifier.group_labels or [])
            uses.extend((label, metrics) for label in [*labels, *grouped])

    promql_parser.walk(promql_parser.parse(expr), visit, None)
    return uses


def test_label_uses_names_matchers_and_groupings_with_their_metrics() -> None:
    expr = (
        'sum by (p) (rate(a_count{s=~"5..|", e!=""}[5m])) / on (p) group_left (q) '
        "max by (p, q) (b_total)"
    )
    assert sorted(label_uses(expr)) == sorted(
        [
            ("s", frozenset({"a_count"})),
            ("e", frozenset({"a_count"})),
            ("p", frozenset({"a_count"})),
            ("p", frozenset({"b_total"})),
            ("q", frozenset({"b_total"})),
            ("p", frozenset({"a_count", "b_total"})),
            ("q", frozenset({"a_count", "b_total"})),
        ]
    )


# --- alerts -----------------------------------------------------------------------------------


ALERT_NAMES = [rule["alert"] for rule in alert_rules()]


def test_alert_file_is_a_prometheus_rule_file() -> None:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(loaded) == {"groups"}
    for group in loaded["groups"]:
        assert group["name"]
        assert group["rules"]
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)), "alert names must be unique"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    wanted = {
        "CancelProcessorLagGrowing",
        "CancelProcessorNoProgress",
        "CancelProcessorDeadLetters",
        "CancelProcessorCancelFailedRate",
        "CancelProcessorProviderThrottled",
        "CancelProcessorProviderErrors",
        "CancelProcessorNotReady",
    }
    assert wanted <= set(ALERT_NAMES)


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_NAMES)
def test_alert_is_valid_promql_on_contract_metrics(rule: dict[str, Any]) -> None:
    metrics = selected_metrics(rule["expr"])
    assert metrics, "an alert that selects no metric cannot fire on the service"
    unknown = metrics - SELECTABLE
    assert not unknown, f"not a metric of the contract: {sorted(unknown)}"
    if "for" in rule:
        promql_parser.parse_duration(rule["for"])


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_NAMES)
def test_alert_has_severity_summary_and_its_runbook_section(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"]
    assert annotations["description"]
    anchor = rule["alert"].lower()
    # Absolute (Alertmanager and Grafana link it as is), on one base docs/deploy.md explains.
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}/{RUNBOOK_PATH}#{anchor}"
    assert anchor in runbook_sections(), f"{RUNBOOK_PATH} has no section ## {rule['alert']}"


# The placeholder base of every runbook_url; docs/deploy.md ("Runbook links") says how to
# replace it.
RUNBOOK_BASE = "https://git.example.com/shipment-cancel-processor/blob/main"
RUNBOOK_PATH = RUNBOOK.relative_to(ROOT).as_posix()


def test_deploy_doc_explains_the_runbook_url_placeholder() -> None:
    deploy = DEPLOY_DOC.read_text(encoding="utf-8")
    assert f"sed -i 's|{RUNBOOK_BASE}|" in deploy
    assert RUNBOOK_BASE in ALERTS.read_text(encoding="utf-8").split("groups:")[0]


def first_increments(expr: str) -> set[str]:
    """Counters taken by increase() without also counting a series born in the window."""
    counters: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name == "increase":
            counters.update(selected_metrics(node.args[0].prettify()) & COUNTERS)

    promql_parser.walk(promql_parser.parse(expr), visit, None)
    flat = " ".join(expr.split())
    return {c for c in counters if not re.search(rf"\bunless {c}\b[^)]* offset ", flat)}


def test_counts_include_the_first_increment_of_a_new_series() -> None:
    # A counter is exported from its first increment, born at 1: increase() alone never
    # sees a lone dead letter or auth failure.
    assert first_increments("sum(increase(cancel_processor_dlq_records_total[10m])) > 0") == {
        "cancel_processor_dlq_records_total"
    }
    exprs = [rule["expr"] for rule in alert_rules()] + [
        grafana_to_promql(expr) for d in dashboards().values() for _, expr in dashboard_queries(d)
    ]
    for expr in exprs:
        assert not first_increments(expr), f"increase() misses new series: {expr}"


def test_provider_errors_count_calls_without_an_answer() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "CancelProcessorProviderErrors"]
    # A 5xx answer, or none at all (no status code; error_type names the transport error).
    assert 'http_response_status_code=~"5..|", error_type!=""' in rule["expr"]
    (panel,) = [
        expr
        for d in dashboards().values()
        for title, expr in dashboard_queries(d)
        if title == "Errors without a response"
    ]
    assert 'http_response_status_code="", error_type!=""' in panel


def heading_anchor(title: str) -> str:
    """The anchor of a heading, as GitHub and MkDocs (toc) make it: lower case, punctuation
    dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 -]", "", title.strip().lower()).replace(" ", "-")


def test_heading_anchor_is_the_toc_slug() -> None:
    assert heading_anchor("CancelProcessorLagGrowing") == "cancelprocessorlaggrowing"
    assert heading_anchor("Reading topics (kafka-tools)") == "reading-topics-kafka-tools"
    assert heading_anchor("Which orders failed, and why") == "which-orders-failed-and-why"


def runbook_sections() -> dict[str, str]:
    """Anchor -> body of every level-2 section (its level-3 subsections included)."""
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"(?m)^## (.+)$", text)
    return {
        heading_anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def runbook_anchors() -> set[str]:
    """Anchors of every heading of the runbook, outside code blocks."""
    text = re.sub(r"(?ms)^```.*?^```", "", RUNBOOK.read_text(encoding="utf-8"))
    return {heading_anchor(title) for title in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def test_runbook_sections_say_what_it_means_how_to_find_and_what_to_do() -> None:
    sections = runbook_sections()
    alert_sections = {a for a in sections if a.startswith("cancelprocessor")}
    assert alert_sections == {name.lower() for name in ALERT_NAMES}, "one section per alert"
    for anchor in alert_sections:
        body = sections[anchor]
        for part in ("**Means.**", "**Find.**", "**Do.**"):
            assert part in body, f"{anchor}: missing {part}"


def test_runbook_explains_traces_and_redrive() -> None:
    tools = runbook_sections()["tools"]
    assert "trace_id" in tools
    assert "Jaeger" in tools
    for flag in ("redrive", "--dry-run", "--category", "--since"):
        assert flag in tools
    # kafka-tools: the broker image of compose.yaml, with a client config for SASL_SSL.
    (kafka_image,) = {s["image"] for name, s in compose()["services"].items() if name == "kafka"}
    assert f"kubectl run kafka-tools --image={kafka_image} " in tools
    for line in ("security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", "sasl.jaas.config="):
        assert line in tools
    # With a selector kubectl logs prints 10 lines per pod unless told otherwise.
    for command in re.findall(r"(?m)^kubectl logs .*$", RUNBOOK.read_text(encoding="utf-8")):
        assert "--tail=-1" in command
        assert "-c processor" in command
    assert "app.kubernetes.io/component=processor" in tools
    # The image's entrypoint already is cancel-processor: `kubectl run ... -- cancel-processor`
    # would run `cancel-processor cancel-processor`.
    assert not re.search(r"kubectl run [^\n]*-- cancel-processor", RUNBOOK.read_text("utf-8"))
    anchors = set(re.findall(r"\]\(#([a-z0-9-]+)\)", RUNBOOK.read_text(encoding="utf-8")))
    assert anchors <= runbook_anchors(), "a link to a missing runbook section"


def test_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    assert [f"/etc/prometheus/{ALERTS.name}"] == config["rule_files"]


# --- dashboard ------------------------------------------------------------------------------


def test_there_is_a_dashboard_and_every_panel_has_a_unique_id_and_position() -> None:
    found = dashboards()
    assert found, "no dashboard in ops/grafana/dashboards"
    for name, dashboard in found.items():
        assert dashboard["uid"], name
        assert dashboard["title"], name
        panels = dashboard["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        assert all({"h", "w", "x", "y"} <= set(p["gridPos"]) for p in panels)


def test_dashboard_queries_are_valid_promql_on_contract_metrics() -> None:
    for name, dashboard in dashboards().items():
        queries = dashboard_queries(dashboard)
        assert queries, f"{name} has no queries"
        for title, expr in queries:
            try:
                metrics = selected_metrics(grafana_to_promql(expr))
            except ValueError as exc:
                pytest.fail(f"{name} / {title}: {exc}: {expr}")
            unknown = metrics - SELECTABLE
            assert not unknown, f"{name} / {title}: not contract metrics {sorted(unknown)}"


def test_dashboard_shows_every_contract_metric() -> None:
    shown = {
        contract_name(metric)
        for dashboard in dashboards().values()
        for _, expr in dashboard_queries(dashboard)
        for metric in selected_metrics(grafana_to_promql(expr))
    }
    assert shown == CONTRACT_METRICS, f"not on a panel: {sorted(CONTRACT_METRICS - shown)}"


def test_dashboard_queries_its_datasource_variable() -> None:
    for name, dashboard in dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dashboard["panels"]:
            if panel.get("targets"):
                assert panel["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"


def test_grafana_provisioning_loads_the_dashboards_and_prometheus() -> None:
    (datasources_file,) = (GRAFANA_PROVISIONING / "datasources").glob("*.yaml")
    datasources = yaml.safe_load(datasources_file.read_text(encoding="utf-8"))["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["prometheus"]["isDefault"] is True
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    (providers_file,) = (GRAFANA_PROVISIONING / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(providers_file.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- commands in the docs ------------------------------------------------------------------

_PLACEHOLDERS = {
    '"$CONFIG"': "config.toml",
    "<category>": "invalid_event",
    "<t>": "2h",
    "<start>": "2h",
    "<start of the incident>": "2h",
}


def documented_commands(text: str) -> list[str]:
    """Every `cancel-processor ...` command written in a code span or block."""
    spans = re.findall(r"`([^`\n]*cancel-processor [^`\n]*)`", text)
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    lines = spans + [line for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        # Not the tail of a name such as deploy/shipment-cancel-processor.
        found = re.search(r"(?<![\w./-])cancel-processor ", line)
        if found:
            command = line[found.start() :].split("#")[0].strip()
            for placeholder, value in _PLACEHOLDERS.items():
                command = command.replace(placeholder, value)
            commands.append(command)
    return commands


def test_commands_in_the_runbook_and_deploy_docs_are_real() -> None:
    commands = documented_commands(RUNBOOK.read_text(encoding="utf-8")) + documented_commands(
        DEPLOY_DOC.read_text(encoding="utf-8")
    )
    assert any(c.startswith("cancel-processor redrive") for c in commands)
    parser = build_parser()
    for command in commands:
        args = shlex.split(command)[1:]
        if "..." in args:
            continue  # a sketch, not a command line
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"not a valid command line: {command}")
