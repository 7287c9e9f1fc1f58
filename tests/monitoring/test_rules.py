"""deploy/monitoring/: the alert rules pass Prometheus's own checks (`promtool check rules`
with every lint) and unit tests (`promtool test rules` on tokensync.test.yaml here), each
alert has a summary, a description and a runbook that exists in the docs
(docs/operations/runbooks.md), and the
ServiceMonitor scrapes the metrics Service of deploy/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from promlib import (
    HERE,
    MONITORING,
    REPO,
    UNIT_TESTS,
    alerts,
    load_yaml,
    parse,
    rule_exprs,
    write_rule_file,
)

RUNBOOKS = "https://github.com/tokensync/tokensync/blob/main/docs/operations/runbooks.md#"
# The issue's four alerts, the leader-election one, and the operator falling behind.
ALERTS = {
    "TokensyncCredentialNotReady",
    "TokensyncTokenExpiringSoon",
    "TokensyncRenewalFailing",
    "TokensyncOperatorAbsent",
    "TokensyncNoLeader",
    "TokensyncOperatorSaturated",
}


def promtool(promtool_bin: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool_bin), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_promtool_check_rules(promtool_bin: Path, tmp_path: Path) -> None:
    rules = write_rule_file(tmp_path)
    result = promtool(
        promtool_bin, "check", "rules", "--lint=all", "--lint-fatal", rules.name, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests(promtool_bin: Path, tmp_path: Path) -> None:
    write_rule_file(tmp_path)
    for path in UNIT_TESTS:
        shutil.copy(path, tmp_path / path.name)
    names = [p.name for p in UNIT_TESTS]
    assert names == ["tokensync.test.yaml"]
    result = promtool(promtool_bin, "test", "rules", *names, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_unit_tests_fire_and_spare_every_alert() -> None:
    """Each alert has a case where it fires and one where it must not."""
    fired: set[str] = set()
    spared: set[str] = set()
    for path in UNIT_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else spared).add(case["alertname"])
    assert fired == ALERTS
    assert spared == ALERTS


def test_a_broken_rule_fails_the_unit_tests(promtool_bin: Path, tmp_path: Path) -> None:
    """The unit tests can fail: with the not-Ready alert's `for` at 20 minutes, they do."""
    write_rule_file(tmp_path)
    rules = tmp_path / "tokensync.rules.yaml"
    text = rules.read_text()
    assert "for: 10m" in text
    rules.write_text(text.replace("for: 10m", "for: 20m"))
    shutil.copy(HERE / "tokensync.test.yaml", tmp_path)
    result = promtool(promtool_bin, "test", "rules", "tokensync.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "TokensyncCredentialNotReady" in result.stdout + result.stderr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_summary_description_and_runbook(alert: str) -> None:
    rule: dict[str, Any] = {r["alert"]: r for r in alerts()}[alert]
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOKS + alert.lower()
    page = (REPO / "docs" / "operations" / "runbooks.md").read_text()
    headings = [line.lstrip("#").strip() for line in page.splitlines() if line.startswith("## ")]
    assert alert.lower() in [github_anchor(h) for h in headings], headings


def test_every_alert_of_the_issue_is_there() -> None:
    assert {r["alert"] for r in alerts()} == ALERTS


def test_rules_select_the_metrics_service_job(promql_names: Path) -> None:
    """Prometheus Operator names the job after the Service: the rules must use its name."""
    service = load_yaml(REPO / "deploy" / "base" / "service.yaml")
    jobs = {m for e in rule_exprs() for m in re.findall(r'job="([^"]+)"', e)}
    assert jobs == {service["metadata"]["name"]}
    parse(promql_names, rule_exprs())  # and Prometheus's parser accepts every one


def test_service_monitor_scrapes_the_metrics_service() -> None:
    service = load_yaml(REPO / "deploy" / "base" / "service.yaml")
    monitor = load_yaml(MONITORING / "servicemonitor.yaml")
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    # The credential's namespace label must survive the scrape (see the comment there).
    assert endpoint["honorLabels"] is True
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(MONITORING / "kustomization.yaml")
    manifests = sorted(p.name for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
