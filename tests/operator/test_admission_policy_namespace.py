"""Issue 18, item 4: deploy/ installed with `kubectl apply -k` of an overlay that sets
`namespace:` keeps its admission policy in force. Before, the policy named the operator
by a literal username that kustomize does not rewrite: it never matched the relocated
operator, which could then create a service-account-token Secret for any ServiceAccount.

The overlay is applied server-side to the real control plane (moving the cluster-wide
bindings to the new namespace); deploy/ is applied again afterwards."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from operator_helpers import wait_for

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
POLICY = "tokensync-operator-secrets"


@pytest.fixture
def relocated(installed: Any) -> Iterator[str]:
    """deploy/ in namespace tokensync-<random>, through a kustomize overlay (it must live
    under the repository: kustomize refuses absolute resource paths)."""
    namespace = f"tokensync-{uuid.uuid4().hex[:6]}"
    overlay = REPO / ".pytest-overlays" / namespace
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {namespace}\n"
        "resources:\n  - ../../deploy\n"
    )
    try:
        installed.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(overlay))
        yield namespace
    finally:
        shutil.rmtree(overlay.parent, ignore_errors=True)
        installed.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "deploy"))
        installed.delete_namespace(namespace)


def test_policy_follows_the_namespace(cluster, installed, relocated):
    kubeconfig = installed.service_account_kubeconfig(relocated, "tokensync")
    as_operator = kubernetes.client.CoreV1Api(installed.api_client(kubeconfig))
    installed.kubectl("create", "serviceaccount", "powerful", "-n", cluster.ns)
    attack = {
        "metadata": {
            "name": "stolen",
            "annotations": {"kubernetes.io/service-account.name": "powerful"},
        },
        "type": "kubernetes.io/service-account-token",
    }

    def denied_by_policy() -> bool:
        try:
            as_operator.create_namespaced_secret(cluster.ns, attack, dry_run="All")
        except ApiException as error:
            return error.status == 403 and POLICY in (error.body or "")
        return False

    # RBAC moved with the overlay (the relocated operator may write Secrets); the policy
    # must have moved too.
    wait_for(denied_by_policy, timeout=20, what="the policy to deny the relocated operator")
    with pytest.raises(ApiException) as caught:
        as_operator.create_namespaced_secret(cluster.ns, attack)
    assert caught.value.status == 403 and POLICY in (caught.value.body or "")
    # A managed Secret is still fine.
    managed = {"metadata": {"name": "ok", "labels": {"tokensync.dev/credential": "x"}}}
    as_operator.create_namespaced_secret(cluster.ns, managed, dry_run="All")
