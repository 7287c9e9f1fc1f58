"""The helm CLI for the chart tests, built from the release pinned in tests/helm/go.mod,
and the Prometheus Operator CRDs (tests/monitoring/crds) for the chart's ServiceMonitor."""

from __future__ import annotations

from pathlib import Path

import pytest
from monitoring.promlib import MONITORING_CRDS

from fixtures.gotools import GoTool

HELM = GoTool("helm", Path(__file__).resolve().parent / "build.sh", fixture="helm_bin")


def pytest_collection_finish(session: pytest.Session) -> None:
    HELM.prebuild(session)
    MONITORING_CRDS.prebuild(session)


@pytest.fixture(scope="session")
def helm_bin(request: pytest.FixtureRequest) -> Path:
    return HELM.path(request.config)


@pytest.fixture(scope="session")
def monitoring_crds(request: pytest.FixtureRequest) -> Path:
    return MONITORING_CRDS.path(request.config).parent
