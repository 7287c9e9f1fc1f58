"""deploy/monitoring/ on the real API server, with the Prometheus Operator's ServiceMonitor
and PrometheusRule CRDs generated from its Go API types (tests/monitoring/crds): every
object is accepted by a server-side dry run, so field names and types are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from promlib import MONITORING, install_monitoring_crds

from fixtures.controlplane import ControlPlane

pytestmark = pytest.mark.envtest


def test_deploy_monitoring_is_accepted(control_plane: ControlPlane, monitoring_crds: Path) -> None:
    install_monitoring_crds(control_plane, monitoring_crds)
    if control_plane.kubectl("get", "namespace", "tokensync-system", check=False).returncode:
        control_plane.kubectl("create", "namespace", "tokensync-system")
    result = control_plane.kubectl("apply", "--dry-run=server", "-k", str(MONITORING))
    assert sorted(result.stdout.splitlines()) == [
        "prometheusrule.monitoring.coreos.com/tokensync created (server dry run)",
        "servicemonitor.monitoring.coreos.com/tokensync created (server dry run)",
    ]


def test_the_crds_reject_what_they_should(
    control_plane: ControlPlane, monitoring_crds: Path, tmp_path: Path
) -> None:
    """The generated schema is the real one: a misspelt endpoint field is refused."""
    install_monitoring_crds(control_plane, monitoring_crds)
    text = (MONITORING / "servicemonitor.yaml").read_text()
    broken = tmp_path / "servicemonitor.yaml"
    broken.write_text(text.replace("honorLabels: true", "honourLabels: true"))
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", str(broken), check=False
    )
    assert result.returncode != 0
    assert "honourLabels" in result.stderr
