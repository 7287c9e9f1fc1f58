"""The ValidatingAdmissionPolicy of deploy/ (issue 9, item 5): the operator's cluster-wide
Secret write grant cannot be turned into cluster-admin.

RBAC cannot restrict writes by type or label, so without the policy a compromised operator
pod could create a `kubernetes.io/service-account-token` Secret for any ServiceAccount (the
token controller fills it in) or rewrite any Secret of the cluster. The policy, applied
with the rest of deploy/ by the `installed` fixture, lets the operator's ServiceAccount
create, update and delete only Opaque and kubernetes.io/dockerconfigjson Secrets labelled
`tokensync.dev/credential`.

Every request here authenticates with a real token of the operator's ServiceAccount, as
the operator itself does; the operator test at the end still issues a token under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from operator_helpers import decode, wait_for

pytestmark = pytest.mark.envtest

CREDENTIAL_LABEL = "tokensync.dev/credential"
POLICY = "tokensync-operator-secrets"


@pytest.fixture
def as_operator(operator_kubeconfig: Path, installed: Any) -> kubernetes.client.CoreV1Api:
    """CoreV1Api authenticated as system:serviceaccount:tokensync-system:tokensync."""
    return kubernetes.client.CoreV1Api(installed.api_client(operator_kubeconfig))


def _secret(
    name: str, *, type_: str = "Opaque", labels: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}, **extra},
        "type": type_,
        "stringData": {"k": "v"},
    }


def _denied(call: Any, *args: Any, **kwargs: Any) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 403, caught.value.body
    return caught.value


def _policy_denies(error: ApiException) -> bool:
    """A denial by this policy (not by RBAC): the API server names the policy."""
    return POLICY in (error.body or "")


@pytest.fixture
def policy_active(as_operator: kubernetes.client.CoreV1Api, cluster: Any) -> None:
    """Policies reach the admission plugin through an informer: wait until it applies,
    probing with a dry run (admission runs, nothing is stored)."""
    probe = _secret(
        "probe",
        type_="kubernetes.io/service-account-token",
        annotations={"kubernetes.io/service-account.name": "default"},
    )

    def denied() -> bool:
        try:
            as_operator.create_namespaced_secret(cluster.ns, probe, dry_run="All")
        except ApiException as error:
            return error.status == 403 and _policy_denies(error)
        return False

    wait_for(denied, timeout=20, what=f"ValidatingAdmissionPolicy {POLICY} to deny")


def test_service_account_token_secret_is_denied(cluster, as_operator, installed):
    """The attack of issue 9: a token Secret for a ServiceAccount bound to cluster-admin."""
    installed.kubectl("create", "serviceaccount", "powerful", "-n", cluster.ns)
    installed.kubectl(
        "create",
        "clusterrolebinding",
        f"powerful-{cluster.ns}",
        "--clusterrole=cluster-admin",
        f"--serviceaccount={cluster.ns}:powerful",
    )
    try:
        steal = _secret(
            "stolen-token",
            type_="kubernetes.io/service-account-token",
            # Even carrying the label, since the type is not Opaque.
            labels={CREDENTIAL_LABEL: "x"},
            annotations={"kubernetes.io/service-account.name": "powerful"},
        )

        def denied_by_policy() -> bool:
            try:
                as_operator.create_namespaced_secret(cluster.ns, steal)
            except ApiException as error:
                return error.status == 403 and _policy_denies(error)
            # Created: the attack worked. Clean up and let wait_for report it.
            cluster.core.delete_namespaced_secret("stolen-token", cluster.ns)
            return False

        wait_for(denied_by_policy, timeout=20, what="the token Secret to be denied")
        assert cluster.secret("stolen-token") is None
    finally:
        installed.kubectl(
            "delete", "clusterrolebinding", f"powerful-{cluster.ns}", "--ignore-not-found"
        )


def test_unlabelled_secret_cannot_be_edited_or_deleted(cluster, as_operator, policy_active):
    """The operator writes with PATCH (RBAC grants patch, not update)."""
    cluster.core.create_namespaced_secret(cluster.ns, _secret("db-password"))
    edit = {"data": {"k": "eA=="}}
    assert _policy_denies(
        _denied(as_operator.patch_namespaced_secret, "db-password", cluster.ns, edit)
    )
    # Adopting it by adding the label: the old object has none.
    adopt = {"metadata": {"labels": {CREDENTIAL_LABEL: "adopted"}}}
    assert _policy_denies(
        _denied(as_operator.patch_namespaced_secret, "db-password", cluster.ns, adopt)
    )
    assert _policy_denies(_denied(as_operator.delete_namespaced_secret, "db-password", cluster.ns))
    assert decode(cluster.secret("db-password")) == {"k": "v"}
    assert not cluster.secret("db-password")["metadata"].get("labels")


def _pull_secret(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    body = _secret(name, type_="kubernetes.io/dockerconfigjson", labels=labels)
    return body | {"stringData": {".dockerconfigjson": '{"auths": {}}'}}


def test_other_secret_types_and_unlabelled_creates_are_denied(cluster, as_operator, policy_active):
    for body in (
        _secret("plain"),
        _secret("wrong-label", labels={"tokensync.dev/credential-source": "true"}),
        _pull_secret("unlabelled-registry"),
        _secret(
            "basic",
            type_="kubernetes.io/basic-auth",
            labels={CREDENTIAL_LABEL: "x"},
        )
        | {"stringData": {"username": "u", "password": "p"}},
    ):
        assert _policy_denies(_denied(as_operator.create_namespaced_secret, cluster.ns, body))


@pytest.mark.parametrize("kind", ["opaque", "dockerconfigjson"])
def test_labelled_managed_secret_types_can_be_written(cluster, as_operator, policy_active, kind):
    """Exactly the two types spec.secret.type offers."""
    labels = {CREDENTIAL_LABEL: "c"}
    body = (
        _secret("managed", labels=labels) if kind == "opaque" else _pull_secret("managed", labels)
    )
    as_operator.create_namespaced_secret(cluster.ns, body)
    as_operator.patch_namespaced_secret("managed", cluster.ns, {"data": {"k": "bmV3"}})
    assert decode(cluster.secret("managed"))["k"] == "new"
    # Dropping the label would release the Secret from the policy's protection: denied.
    release = {"metadata": {"labels": {CREDENTIAL_LABEL: None}}}
    assert _policy_denies(
        _denied(as_operator.patch_namespaced_secret, "managed", cluster.ns, release)
    )
    as_operator.delete_namespaced_secret("managed", cluster.ns)
    assert cluster.secret("managed") is None


def test_operator_still_issues_tokens_under_the_policy(
    cluster, own_operator, token_endpoint, policy_active
):
    """The real operator as deploy/'s ServiceAccount: create, refresh, and the delete of
    the old Secret after a rename all pass the policy."""
    own_operator("--no-deny-private-networks")
    client = token_endpoint.add_client(lifetime=5)
    cluster.create_credential("under-policy", client)
    cluster.wait_ready("under-policy", reason="TokenIssued")
    first = decode(cluster.secret("under-policy"))["access_token"]
    wait_for(
        lambda: decode(cluster.secret("under-policy"))["access_token"] != first,
        timeout=20,
        what="a refreshed token",
    )
    cluster.patch_credential("under-policy", {"spec": {"secret": {"name": "moved"}}})
    wait_for(lambda: cluster.secret("under-policy") is None, what="old Secret deleted")
    assert decode(cluster.secret("moved"))["access_token"] == client.issued[-1].token
    # A type change: the dry-run create, the delete and the create all pass.
    registry = {"type": "kubernetes.io/dockerconfigjson", "dockerConfig": {"registries": ["r.io"]}}
    cluster.patch_credential("under-policy", {"spec": {"secret": registry}})
    wait_for(
        lambda: (cluster.secret("moved") or {}).get("type") == registry["type"],
        what="the Secret re-created as a pull secret",
    )
