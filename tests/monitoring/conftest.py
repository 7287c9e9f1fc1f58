"""promtool and promql-names for the monitoring tests, built from the Prometheus release
pinned in tests/monitoring/go.mod, and the Prometheus Operator CRDs (tests/monitoring/crds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promlib import MONITORING_CRDS, PROMTOOL


def pytest_collection_finish(session: pytest.Session) -> None:
    PROMTOOL.prebuild(session)
    MONITORING_CRDS.prebuild(session)


@pytest.fixture(scope="session")
def promtool_bin(request: pytest.FixtureRequest) -> Path:
    return PROMTOOL.path(request.config)


@pytest.fixture(scope="session")
def promql_names(promtool_bin: Path) -> Path:
    return promtool_bin.parent / "promql-names"


@pytest.fixture(scope="session")
def monitoring_crds(request: pytest.FixtureRequest) -> Path:
    """The directory holding the generated ServiceMonitor and PrometheusRule CRDs."""
    return MONITORING_CRDS.path(request.config).parent
