"""Someone else deletes or edits a managed Secret: it is restored at once, not at the next
refresh point."""

from __future__ import annotations

import pytest
from operator_helpers import decode, wait_for

pytestmark = pytest.mark.envtest


def test_deleted_secret_is_recreated(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("restore", client)
    cluster.wait_ready("restore", reason="TokenIssued")
    cluster.core.delete_namespaced_secret("restore", cluster.ns)
    secret = wait_for(lambda: cluster.secret("restore"), timeout=20, what="the Secret back")
    assert decode(secret)["access_token"] == client.issued[-1].token
    assert len(client.issued) == 2  # SecretMissing: a fresh token, the old may be revoked


def test_emptied_secret_is_refilled(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("refill", client)
    cluster.wait_ready("refill", reason="TokenIssued")
    cluster.core.patch_namespaced_secret(
        "refill", cluster.ns, [{"op": "remove", "path": "/data/access_token"}]
    )
    wait_for(
        lambda: "access_token" in (cluster.secret("refill").get("data") or {}),
        timeout=20,
        what="access_token restored",
    )


def test_own_writes_cause_no_extra_requests(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("calm", client)
    cluster.wait_ready("calm", reason="TokenIssued")
    # Label edits on the managed Secret (e.g. by a GitOps tool) change nothing either.
    cluster.core.patch_namespaced_secret("calm", cluster.ns, {"metadata": {"labels": {"a": "b"}}})
    cluster.wait_ready("calm", reason="TokenIssued")
    assert len(client.requests) == 1
