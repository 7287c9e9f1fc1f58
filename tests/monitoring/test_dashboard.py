"""deploy/monitoring/grafana-dashboard.json: valid, every query parsed by Prometheus's own
parser, and every metric it reads one that docs/reference/metrics.md documents (or one
listed as being added on another branch). That these are the names the running operator exports is
checked against a real scrape by tests/operator/test_operator_metrics_monitoring.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from promlib import (
    PENDING_METRICS,
    REPO,
    dashboard,
    dashboard_exprs,
    panels,
    parse,
)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> set[str]:
    """The sample names docs/reference/metrics.md promises (histograms: their series)."""
    table = (REPO / "docs" / "reference" / "metrics.md").read_text()
    names: set[str] = set()
    for name, kind in re.findall(r"^\| `(tokensync_\w+)` \| (\w+) \|", table, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def test_dashboard_shows_the_issue_s_panels() -> None:
    board = dashboard()
    assert board["uid"] == "tokensync"
    titles = {p["title"] for p in panels(board)}
    assert {"Tokens by time to expiry", "Renewals", "Refresh failures"} <= titles
    assert {"Token request latency", "Token requests by result"} <= titles
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_parses_and_reads_only_exported_metrics(promql_names: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used = set().union(*parse(promql_names, exprs).names)
    known = documented_metrics() | set(PENDING_METRICS)
    assert used - known == set(), f"the dashboard reads metrics nobody exports: {used - known}"
    # The documented table is read correctly (this test would pass on an empty one).
    assert "tokensync_token_request_duration_seconds_bucket" in documented_metrics()
    assert "tokensync_token_request_duration_seconds_bucket" in used


def test_panels_do_not_overlap() -> None:
    """Grafana lays panels out by gridPos (24 columns): no two may share a cell."""
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]
