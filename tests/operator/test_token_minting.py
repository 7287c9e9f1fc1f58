"""Issue 18, item 1: what a compromised operator can mint with deploy/workload-identity.

The attack: with the operator's own ServiceAccount token, ask the TokenRequest API for a
token of a ServiceAccount bound to cluster-admin, with the API server's audience, and act
as cluster-admin. Every request here authenticates with a real token of the operator's
ServiceAccount against the real API server, with the overlay's RBAC and admission policy
applied exactly as rendered. RBAC decides which ServiceAccounts (a namespace grants one
with the documented `kubectl create role` / `rolebinding`); the policy decides which
audiences (those the ServiceAccount's owner listed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_helpers import SOURCE_LABEL, wait_for
from operator_process import OPERATOR_SA

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "api://tokensync-mint-test"
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the fixture's issuer
POLICY = "tokensync-operator-token-requests"
AUDIENCES_POLICY = "tokensync-operator-token-audiences"


def overlay_objects(installed: Any) -> list[dict]:
    """What deploy/workload-identity adds to deploy/ (the ClusterRole, its binding to the
    operator's ServiceAccount, and the TokenRequest policy)."""
    rendered = installed.kubectl("kustomize", str(REPO / "deploy" / "workload-identity")).stdout
    base = installed.kubectl("kustomize", str(REPO / "deploy")).stdout
    in_base = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(base) if d}
    return [
        d
        for d in yaml.safe_load_all(rendered)
        if d and (d["kind"], d["metadata"]["name"]) not in in_base
    ]


@pytest.fixture
def workload_identity_installed(installed: Any) -> Iterator[list[dict]]:
    objects = overlay_objects(installed)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
    ]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    installed.kubectl("apply", "--server-side", "-f", "-", input=listing)
    yield objects
    installed.kubectl("delete", "--ignore-not-found", "-f", "-", input=listing)


@pytest.fixture
def as_operator(installed: Any) -> kubernetes.client.CoreV1Api:
    kubeconfig = installed.service_account_kubeconfig(*OPERATOR_SA)
    return kubernetes.client.CoreV1Api(installed.api_client(kubeconfig))


def mint(api: kubernetes.client.CoreV1Api, namespace: str, name: str, **spec: Any) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    return api.create_namespaced_service_account_token(name, namespace, body).status.token


def refused(api: kubernetes.client.CoreV1Api, namespace: str, name: str, **spec: Any) -> str:
    with pytest.raises(ApiException) as caught:
        mint(api, namespace, name, **spec)
    assert caught.value.status == 403, caught.value.body
    return caught.value.body or ""


def opt_in(installed: Any, namespace: str, sa: str, as_user: str) -> None:
    """The README's two commands, run by a namespace admin (the escalation check lets
    them grant what they hold)."""
    role = f"tokensync-mint-{sa}"
    operator = f"--serviceaccount={OPERATOR_SA[0]}:{OPERATOR_SA[1]}"
    installed.kubectl(
        "-n", namespace, "create", "role", role, "--verb=create",
        "--resource=serviceaccounts/token", f"--resource-name={sa}", f"--as={as_user}",
    )  # fmt: skip
    installed.kubectl(
        "-n", namespace, "create", "rolebinding", role, f"--role={role}", operator,
        f"--as={as_user}",
    )  # fmt: skip


def namespace_admin(installed: Any, namespace: str) -> str:
    user = f"ns-admin-{uuid.uuid4().hex[:6]}"
    installed.kubectl(
        "-n", namespace, "create", "rolebinding", user, "--clusterrole=admin", f"--user={user}"
    )
    return user


def service_account(core: Any, namespace: str, name: str, audiences: str | None) -> None:
    annotations = {"tokensync.dev/allowed-audiences": audiences} if audiences else {}
    metadata = {"name": name, "labels": dict(SOURCE_LABEL), "annotations": annotations}
    core.create_namespaced_service_account(namespace, {"metadata": metadata})


def test_operator_cannot_mint_for_cluster_admin_in_kube_system(
    installed, workload_identity_installed, as_operator
):
    """The attack of the issue: a kube-system ServiceAccount bound to cluster-admin."""
    name = f"powerful-{uuid.uuid4().hex[:6]}"
    installed.kubectl("-n", "kube-system", "create", "serviceaccount", name)
    installed.kubectl(
        "create", "clusterrolebinding", name, "--clusterrole=cluster-admin",
        f"--serviceaccount=kube-system:{name}",
    )  # fmt: skip
    try:
        for spec in ({}, {"audiences": [API_SERVER_AUDIENCE]}, {"audiences": [AUDIENCE]}):
            body = refused(as_operator, "kube-system", name, **spec)
            assert "serviceaccounts/token" in body  # RBAC, not a missing account
    finally:
        installed.kubectl("delete", "clusterrolebinding", name)
        installed.kubectl("-n", "kube-system", "delete", "serviceaccount", name)


def test_operator_mints_only_what_the_namespace_granted(
    cluster, installed, workload_identity_installed, as_operator
):
    core = cluster.core
    service_account(core, cluster.ns, "app", AUDIENCE)
    service_account(core, cluster.ns, "other", AUDIENCE)  # labelled, but no RoleBinding
    opt_in(installed, cluster.ns, "app", namespace_admin(installed, cluster.ns))

    def granted() -> bool:  # RBAC and the policy reach the API server through informers
        try:
            return bool(mint(as_operator, cluster.ns, "app", audiences=[AUDIENCE]))
        except ApiException:
            return False

    wait_for(granted, timeout=20, what="the namespace's grant to apply")

    def policy_denies() -> bool:
        try:
            mint(as_operator, cluster.ns, "app", audiences=[API_SERVER_AUDIENCE])
        except ApiException as error:
            return error.status == 403 and AUDIENCES_POLICY in (error.body or "")
        return False

    wait_for(policy_denies, timeout=20, what=f"{AUDIENCES_POLICY} to deny")
    # A ServiceAccount its namespace did not grant: RBAC.
    body = refused(as_operator, cluster.ns, "other", audiences=[AUDIENCE])
    assert "serviceaccounts/token" in body
    # Audiences the API server accepts, or that the owner did not list: the policies.
    # No audiences: the API server fills in its own before admission, so either policy
    # may be the one that says no.
    body = refused(as_operator, cluster.ns, "app")
    assert POLICY in body or AUDIENCES_POLICY in body
    for spec, policy in (
        ({"audiences": [AUDIENCE], "expirationSeconds": 7200}, POLICY),
        ({"audiences": [API_SERVER_AUDIENCE]}, AUDIENCES_POLICY),
        ({"audiences": [AUDIENCE, API_SERVER_AUDIENCE]}, AUDIENCES_POLICY),
        ({"audiences": ["api://someone-else"]}, AUDIENCES_POLICY),
    ):
        assert policy in refused(as_operator, cluster.ns, "app", **spec), spec


def test_other_token_requests_are_not_affected(
    cluster, installed, workload_identity_installed, as_operator
):
    """The policies bind the operator only: where no account is labelled (no parameter)
    other users' TokenRequests, the kubelet's for pods among them, still succeed, and the
    operator's one for more than an hour is refused."""
    cluster.core.create_namespaced_service_account(cluster.ns, {"metadata": {"name": "plain"}})
    opt_in(installed, cluster.ns, "plain", namespace_admin(installed, cluster.ns))

    def policy_denies() -> bool:
        try:
            mint(as_operator, cluster.ns, "plain", audiences=[AUDIENCE], expirationSeconds=7200)
        except ApiException as error:
            return error.status == 403 and POLICY in (error.body or "")
        return False

    wait_for(policy_denies, timeout=20, what="the policy to deny a long-lived token")
    assert installed.kubectl("create", "token", "plain", "-n", cluster.ns).stdout.strip()
