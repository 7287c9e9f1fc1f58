"""promtool and promql-names for the monitoring tests, built from the Prometheus release
pinned in tests/monitoring/go.mod."""

from __future__ import annotations

from pathlib import Path

import pytest
from promlib import PROMTOOL


def pytest_collection_finish(session: pytest.Session) -> None:
    PROMTOOL.prebuild(session)


@pytest.fixture(scope="session")
def promtool_bin(request: pytest.FixtureRequest) -> Path:
    return PROMTOOL.path(request.config)


@pytest.fixture(scope="session")
def promql_names(promtool_bin: Path) -> Path:
    return promtool_bin.parent / "promql-names"
