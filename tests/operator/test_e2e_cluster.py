"""Create, refresh and delete against a real cluster of your own (kind, k3d).

    TOKENSYNC_E2E_KUBECONFIG=~/.kube/config pytest -m cluster

The CRD is applied with kubectl (from PATH); the operator runs locally with that
kubeconfig, serving only a fresh namespace it creates, against a token endpoint on this
machine's loopback. Skipped when TOKENSYNC_E2E_KUBECONFIG is unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import kubernetes
import pytest
from operator_helpers import Cluster, decode, wait_for
from operator_process import REPO, find_secrets, start_operator

KUBECONFIG = os.environ.get("TOKENSYNC_E2E_KUBECONFIG")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not KUBECONFIG, reason="set TOKENSYNC_E2E_KUBECONFIG to run"),
]


@pytest.fixture
def e2e_cluster(ca, token_endpoint, tmp_path: Path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    kubeconfig = str(Path(KUBECONFIG).expanduser())
    subprocess.run(
        [
            kubectl,
            f"--kubeconfig={kubeconfig}",
            "apply",
            "-f",
            str(REPO / "crds" / "oauth2credential.yaml"),
        ],
        check=True,
    )
    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(api)
    namespace = f"tokensync-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    operator = start_operator(
        Path(kubeconfig),
        tmp_path / "operator.log",
        f"--namespace={namespace}",
        "--no-deny-private-networks",
    )
    try:
        yield Cluster(None, api, namespace, ca, token_endpoint), operator
    finally:
        operator.stop()
        core.delete_namespace(namespace)
        assert find_secrets(operator.log(), token_endpoint) == []


def test_create_refresh_delete(e2e_cluster, token_endpoint):
    cluster, _ = e2e_cluster
    client = token_endpoint.add_client(lifetime=10)
    cluster.create_credential("e2e", client)
    cluster.wait_ready("e2e", reason="TokenIssued", timeout=60)
    first = decode(wait_for(lambda: cluster.secret("e2e")))["access_token"]
    wait_for(
        lambda: decode(cluster.secret("e2e"))["access_token"] != first,
        timeout=30,
        what="a refreshed token",
    )
    cluster.delete_credential("e2e")
    wait_for(lambda: cluster.secret("e2e") is None, timeout=120, what="garbage collection")
