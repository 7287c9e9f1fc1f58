"""The monitoring files (deploy/monitoring/) as the tests read them: alert rules, the
Grafana dashboard's queries, the promtool unit tests' input series; and PromQL parsed by
Prometheus's own parser (promql-names, built with promtool by tests/monitoring/build.sh).
Used by the tests here and by tests/operator/test_operator_metrics_monitoring.py, which
compares the names with a scrape of the real operator.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fixtures.gotools import GoTool

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MONITORING = REPO / "deploy" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
UNIT_TESTS = sorted(HERE.glob("*.test.yaml"))

PROMTOOL = GoTool("promtool", HERE / "build.sh", fixture="promtool_bin")
# The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, generated from its Go
# API types, to dry-run deploy/monitoring/ and the chart's ServiceMonitor for real.
MONITORING_CRDS = GoTool(
    "monitoring.coreos.com_servicemonitors.yaml",
    HERE / "crds" / "build.sh",
    fixture="monitoring_crds",
)

# Metrics that another branch is adding to the operator (issue 13, item 2), with their
# labels. Until the operator exports them, the scrape test accepts them from this list;
# once it does, they are checked against the scrape like every other name. Empty this
# list when they are merged.
PENDING_METRICS: dict[str, frozenset[str]] = {}

# Series that Prometheus makes itself, not the operator.
PROMETHEUS_METRICS = frozenset({"up"})

# Labels the scrape adds (Prometheus Operator's ServiceMonitor relabelling). `namespace`
# is the target's only on series without a namespace of their own (honorLabels).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}
)

# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": "ns",
    "${namespace}": "ns",
    "$job": "job",
    "${job}": "job",
}


def install_monitoring_crds(cp: Any, crds: Path) -> None:
    """Install the generated ServiceMonitor and PrometheusRule CRDs on a control plane
    (tests.fixtures.controlplane.ControlPlane); idempotent."""
    for plural in ("servicemonitors", "prometheusrules"):
        cp.kubectl(
            "apply", "--server-side", "-f", str(crds / f"monitoring.coreos.com_{plural}.yaml")
        )
        cp.wait_established(f"{plural}.monitoring.coreos.com")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_groups() -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule: a Prometheus rule file's `groups`."""
    return load_yaml(PROMETHEUS_RULE)["spec"]["groups"]


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def write_rule_file(directory: Path) -> Path:
    """The rules as a plain Prometheus rule file (what the Prometheus Operator generates
    from the PrometheusRule), for promtool."""
    path = directory / "tokensync.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def grafana_to_promql(text: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(variable, value)
    return text


def dashboard_exprs() -> list[str]:
    """The PromQL of every panel target and of the query variables
    (label_values(<selector>, <label>) contributes its selector)."""
    board = dashboard()
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", []) if t.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        exprs.append(match.group(1) if match else query)
    return [grafana_to_promql(e) for e in exprs]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in rule_groups() for r in g["rules"]]


def unit_test_series() -> list[str]:
    """Every input series of the promtool unit tests, as `<series> <values>`."""
    return [
        f"{s['series']} {s['values']}"
        for path in UNIT_TESTS
        for test in load_yaml(path)["tests"]
        for s in test.get("input_series", [])
    ]


@dataclass
class Parsed:
    names: list[set[str]]  # per expression: the metric names it selects
    matchers: list[dict[str, set[str]]]  # per expression: metric -> labels matched on
    grouping: list[set[str]]  # per expression: by/without/on/ignoring/group_* labels
    series: list[dict[str, str]]  # per series descriptor: its labels, __name__ included


def parse(promql_names: Path, exprs: list[str], series: list[str] = ()) -> Parsed:
    """Parse with Prometheus's parser; any expression or series it rejects fails."""
    request = json.dumps({"exprs": list(exprs), "series": list(series)})
    result = subprocess.run(
        [str(promql_names)], input=request, capture_output=True, text=True, check=True, timeout=60
    )
    answer = json.loads(result.stdout)
    entries = [*answer["exprs"], *answer["series"]]
    errors = [
        f"{text!r}: {entry['error']}"
        for text, entry in zip([*exprs, *series], entries, strict=True)
        if entry.get("error")
    ]
    assert not errors, "Prometheus's parser rejects:\n" + "\n".join(errors)
    return Parsed(
        names=[set(e["names"]) for e in answer["exprs"]],
        matchers=[{k: set(v) for k, v in e["matchers"].items()} for e in answer["exprs"]],
        grouping=[set(e["grouping"]) for e in answer["exprs"]],
        series=[s["labels"] for s in answer["series"]],
    )


def all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and dashboard query."""
    return [("rules", e) for e in rule_exprs()] + [("dashboard", e) for e in dashboard_exprs()]


def referenced_metrics(promql_names: Path) -> dict[str, set[str]]:
    """Metric name -> where it is used ('rules', 'dashboard')."""
    used: dict[str, set[str]] = {}
    exprs = all_exprs()
    for (where, _), names in zip(
        exprs, parse(promql_names, [e for _, e in exprs]).names, strict=True
    ):
        for name in names:
            used.setdefault(name, set()).add(where)
    return used
