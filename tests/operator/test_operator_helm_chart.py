"""The operator as the Helm chart installs it: `helm install` of charts/tokensync
(namespaced mode, admission policy on) on the real control plane, then `tokensync run`
as the chart's ServiceAccount, with exactly the chart's RBAC and under its
ValidatingAdmissionPolicy, issues a token, renames its Secret (create, then delete of the
old one) and refuses nothing it needs. `helm uninstall` afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helm.chartlib import CHART, helm
from operator_helpers import wait_for

from fixtures.controlplane import KubectlError
from fixtures.gotools import GoTool

pytestmark = pytest.mark.envtest

RELEASE = "chartop"
HELM = GoTool("helm", CHART.parents[1] / "tests" / "helm" / "build.sh", fixture="helm_bin")


@pytest.fixture(scope="module")
def helm_bin(request: pytest.FixtureRequest) -> Path:
    return HELM.path(request.config)


@pytest.fixture
def chart_release(installed, cluster, helm_bin: Path) -> Iterator[str]:
    """The chart installed in its own namespace, watching the test's namespace only;
    yields the operator's user name."""
    release_ns = installed.create_namespace("chart-release")
    kube = [f"--kubeconfig={installed.kubeconfig}", f"--namespace={release_ns}"]
    helm(
        helm_bin,
        "install",
        RELEASE,
        str(CHART),
        *kube,
        "--set=scope=namespaced",
        f"--set=namespaces={{{cluster.ns}}}",
        # The CRD is deploy/'s here (the session's `installed`), not this release's.
        "--set=crds.enabled=false",
    )
    try:
        yield release_ns
    finally:
        helm(helm_bin, "uninstall", RELEASE, "--wait", *kube)
        installed.delete_namespace(release_ns)


def test_operator_runs_with_the_chart_s_rbac_and_admission_policy(
    installed, cluster, chart_release: str, own_operator, token_endpoint
) -> None:
    service_account = f"{RELEASE}-tokensync"
    user = f"system:serviceaccount:{chart_release}:{service_account}"

    def policy_denies_unlabelled() -> bool:
        body = '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe"}}'
        try:
            installed.kubectl(
                "create",
                "-n",
                cluster.ns,
                f"--as={user}",
                "--dry-run=server",
                "-f",
                "-",
                input=body,
            )
        except KubectlError as e:
            return "ServiceAccount may only" in e.stderr
        return False

    # The policy is in force before the operator makes its first write.
    assert wait_for(policy_denies_unlabelled, 20, "the chart's admission policy")
    kubeconfig = installed.service_account_kubeconfig(chart_release, service_account)
    operator = own_operator(
        "--no-deny-private-networks", f"--namespace={cluster.ns}", kubeconfig=kubeconfig
    )

    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("charted", client)
    cluster.wait_ready("charted", reason="TokenIssued")
    assert cluster.secret("charted")["type"] == "Opaque"

    # A rename: the new Secret is created and the old one deleted, both allowed.
    cluster.patch_credential("charted", {"spec": {"secret": {"name": "charted-renamed"}}})
    wait_for(lambda: cluster.secret("charted-renamed"), what="the renamed Secret")
    wait_for(lambda: cluster.secret("charted") is None, what="the old Secret deleted")
    cluster.wait_ready("charted", reason="TokenIssued")
    assert "Forbidden" not in operator.log()
    assert "ServiceAccount may only" not in operator.log()
