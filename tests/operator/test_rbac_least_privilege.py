"""Least privilege, proven: deploy/'s RBAC grants exactly what the operator uses.

The operator runs as the ServiceAccount from deploy/ (so a missing permission is a real
403), exercises every kind of API call it makes, and the API server's audit log is
compared with the granted rules. The namespaced overlay's Role gets the same treatment.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from operator_helpers import decode, wait_for
from operator_process import OPERATOR_USER, REPO

pytestmark = pytest.mark.envtest

# Grants no request of the operator shows in an audit log, each with the reason it is
# needed anyway.
NOT_A_REQUEST = {
    # Checked by the OwnerReferencesPermissionEnforcement admission plugin when a managed
    # Secret with blockOwnerDeletion is created; never a request of its own.
    ("tokensync.dev", "oauth2credentials/finalizers", "update"),
}


def _rules(documents: list[dict], kind: str) -> set[tuple[str, str, str]]:
    granted = set()
    for doc in documents:
        if doc and doc.get("kind") == kind:
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((group, resource, verb))
    return granted


def _used(events: list[dict]) -> set[tuple[str, str, str]]:
    used = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/apis, /version) needs no grant
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def _exercise_every_call(cluster, token_endpoint) -> None:
    """One of each: list/watch credentials and labelled sources, read and create a
    Secret, update it on refresh, delete the old one after a rename, read an unlabelled
    Secret's and ConfigMap's metadata, patch status, post events."""
    short = token_endpoint.add_client(lifetime=5)
    cluster.create_credential("exercise", short)
    cluster.wait_ready("exercise", reason="TokenIssued")
    first = decode(cluster.secret("exercise"))["access_token"]
    wait_for(lambda: decode(cluster.secret("exercise"))["access_token"] != first, timeout=20)
    cluster.patch_credential("exercise", {"spec": {"secret": {"name": "exercise-moved"}}})
    wait_for(lambda: cluster.secret("exercise") is None, what="old Secret deleted")

    unlabelled = token_endpoint.add_client()
    cluster.source_secret("plain", {"client_secret": unlabelled.secret}, labelled=False)
    cluster.create_credential("unlabelled", unlabelled, secret_name="plain", source=False)
    cluster.wait_ready("unlabelled", "False", "ReferenceNotLabeled")
    cluster.core.create_namespaced_config_map(
        cluster.ns, {"metadata": {"name": "plain-ca"}, "data": {"ca.crt": "x"}}
    )
    cluster.create_credential(
        "unlabelled-ca",
        unlabelled,
        source=False,
        tls={"caRef": {"kind": "ConfigMap", "name": "plain-ca", "key": "ca.crt"}},
    )
    cluster.wait_ready("unlabelled-ca", "False", "ReferenceNotLabeled")


def test_cluster_role_grants_exactly_what_is_used(cluster, own_operator, token_endpoint, installed):
    since = time.time()
    own_operator("--no-deny-private-networks")
    _exercise_every_call(cluster, token_endpoint)

    documents = list(yaml.safe_load_all((REPO / "deploy/base/rbac-operator.yaml").read_text()))
    granted = _rules(documents, "ClusterRole")
    used = _used(installed.audit_events(user=OPERATOR_USER, since=since))
    assert used <= granted  # else the operator would have met a 403
    assert granted - used - NOT_A_REQUEST == set(), "granted but never used"


def test_namespaced_role_is_enough(cluster, own_operator, token_endpoint, installed):
    """The Role of deploy/namespaced/, bound in this namespace to a ServiceAccount of its
    own, serves a credential with no cluster-wide grant at all."""
    rendered = installed.kubectl("kustomize", str(REPO / "deploy/namespaced")).stdout
    role = next(
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Role" and d["metadata"]["name"] == "tokensync-operator"
    )
    role["metadata"] = {"name": "tokensync-namespaced", "namespace": cluster.ns}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "tokensync-namespaced", "namespace": cluster.ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "namespaced-operator", "namespace": cluster.ns}
        ],
    }
    installed.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]}),
    )
    kubeconfig: Path = installed.service_account_kubeconfig(cluster.ns, "namespaced-operator")
    user = f"system:serviceaccount:{cluster.ns}:namespaced-operator"

    since = time.time()
    own_operator(f"--namespace={cluster.ns}", "--no-deny-private-networks", kubeconfig=kubeconfig)
    _exercise_every_call(cluster, token_endpoint)

    granted = _rules([role], "Role")
    events = installed.audit_events(user=user, since=since - 1)
    assert all(e["responseStatus"]["code"] != 403 for e in events)
    assert _used(events) <= granted
    assert granted - _used(events) - NOT_A_REQUEST == set(), "granted but never used"
