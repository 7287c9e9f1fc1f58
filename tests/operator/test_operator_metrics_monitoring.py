"""deploy/monitoring/ against the real operator's /metrics: every metric the alert rules
and the Grafana dashboard read, and every series the promtool unit tests feed the rules
(name and label names), is one the operator exports, as scraped here from `tokensync run`
serving one credential that works and one whose token endpoint fails.

Names another branch is adding (monitoring.promlib.PENDING_METRICS) are accepted while
the operator does not export them yet; once it does, they are checked like the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monitoring.promlib import (
    PENDING_METRICS,
    PROMETHEUS_METRICS,
    PROMTOOL,
    TARGET_LABELS,
    all_exprs,
    parse,
    referenced_metrics,
    unit_test_series,
)
from operator_helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.envtest


@pytest.fixture(scope="module")
def promtool_bin(request: pytest.FixtureRequest) -> Path:
    return PROMTOOL.path(request.config)


def exported(text: str) -> dict[str, set[frozenset[str]]]:
    """Sample name -> the label-name sets it is exported with."""
    found: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return found


def test_monitoring_reads_only_metrics_the_operator_exports(
    cluster, operator, token_endpoint, promtool_bin: Path
) -> None:
    promql_names = promtool_bin.parent / "promql-names"
    working = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("scraped", working)
    cluster.wait_ready("scraped", reason="TokenIssued")
    failing = token_endpoint.add_client(lifetime=3600)
    token_endpoint.fail(failing, 503)
    cluster.create_credential("failing", failing)

    def scrape_with_failure() -> str | None:
        text = operator.metrics()
        failure = [
            line
            for line in text.splitlines()
            if line.startswith("tokensync_refresh_failures_total{")
            and f'namespace="{cluster.ns}"' in line
            and 'name="failing"' in line
        ]
        return text if failure else None

    metrics = exported(wait_for(scrape_with_failure, what="a refresh failure in /metrics"))
    assert "tokensync_token_requests_total" in metrics  # the scrape was parsed

    # 1. Every metric the rules and the dashboard read.
    used = referenced_metrics(promql_names)
    assert {"tokensync_leader", "tokensync_refresh_failures_total"} <= set(used)
    unknown = {
        name: sorted(where)
        for name, where in used.items()
        if name not in metrics and name not in PENDING_METRICS and name not in PROMETHEUS_METRICS
    }
    assert not unknown, f"read but not exported by the operator: {unknown}"

    # 2. Every label they match on or group by is one the metric has (or the scrape adds).
    def labels_of(name: str) -> set[str]:
        shapes = metrics.get(name) or {PENDING_METRICS.get(name, frozenset())}
        return set().union(*shapes) | TARGET_LABELS

    exprs = all_exprs()
    parsed = parse(promql_names, [e for _, e in exprs])
    for (where, expr), matchers, grouping in zip(
        exprs, parsed.matchers, parsed.grouping, strict=True
    ):
        for name, matched in matchers.items():
            if name in PROMETHEUS_METRICS:
                continue
            assert matched <= labels_of(name), (where, expr, name, matched - labels_of(name))
        available = set().union(*(labels_of(n) for n in matchers)) if matchers else set()
        assert grouping <= available, (where, expr, grouping - available)

    # 3. A pending metric, once exported, has the labels the rules were written for.
    for name, labels in PENDING_METRICS.items():
        if name in metrics:
            assert metrics[name] == {labels}, (name, metrics[name])

    # 4. The unit tests' input series: exported names, with exactly the operator's labels
    #    plus the target labels the scrape adds.
    for series in parse(promql_names, [], unit_test_series()).series:
        name = series.pop("__name__")
        if name in PROMETHEUS_METRICS:
            continue
        own = frozenset(series)
        shapes = metrics.get(name) or (
            {PENDING_METRICS[name]} if name in PENDING_METRICS else set()
        )
        assert shapes, f"unit test series {name} is not a metric the operator exports"
        assert any(shape <= own and own - shape <= TARGET_LABELS for shape in shapes), (
            f"unit test series {name}{sorted(own)} has not the labels the operator exports "
            f"{[sorted(s) for s in shapes]} (plus target labels {sorted(TARGET_LABELS)})"
        )
