"""spec.rolloutRestart through the operator on the real control plane: after each new
token the listed Deployment's pod template gets tokensync.dev/restarted-at (the
Deployment controller then rolls a new ReplicaSet), once per token; only with the flag,
and only where the namespace granted patch on that workload (the audit log shows what
the operator did); a refusal is a Warning event and Ready stays True."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from operator_helpers import wait_for

pytestmark = pytest.mark.envtest

POLICY = (
    Path(__file__).resolve().parents[2]
    / "deploy/rollout-restart/component/admission-policy-workloads.yaml"
)

OPERATOR_USER = "system:serviceaccount:tokensync-system:tokensync"
ANNOTATION = "tokensync.dev/restarted-at"


def deployment(cluster, name: str) -> None:
    apps = kubernetes.client.AppsV1Api(cluster.core.api_client)
    labels = {"app": name}
    apps.create_namespaced_deployment(
        cluster.ns,
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
                },
            },
        },
    )


def restarted_at(cluster, name: str) -> str | None:
    apps = kubernetes.client.AppsV1Api(cluster.core.api_client)
    found = apps.read_namespaced_deployment(name, cluster.ns)
    return (found.spec.template.metadata.annotations or {}).get(ANNOTATION)


def grant_patch(installed, namespace: str, name: str) -> None:
    """The namespace's consent for one Deployment (docs/guides/rollout-restart.md)."""
    role = f"tokensync-restart-deployment-{name}"
    installed.kubectl(
        "-n", namespace, "create", "role", role, "--verb=patch",
        "--resource=deployments.apps", f"--resource-name={name}",
    )  # fmt: skip
    installed.kubectl(
        "-n", namespace, "create", "rolebinding", role, f"--role={role}",
        "--serviceaccount=tokensync-system:tokensync",
    )  # fmt: skip


def issued_at(cluster, secret: str) -> str:
    found = cluster.secret(secret)
    assert found is not None
    return found["metadata"]["annotations"]["tokensync.dev/issued-at"]


def workload_requests(installed, namespace: str, since: float) -> list[tuple[str, str, int]]:
    return [
        (e["verb"], e["objectRef"]["name"], e["responseStatus"]["code"])
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if e.get("userAgent", "").startswith("tokensync/")  # not the test's kubectl
        and (e.get("objectRef") or {}).get("resource") in ("deployments", "statefulsets")
        and (e.get("objectRef") or {}).get("namespace") == namespace
    ]


@pytest.fixture
def workload_policy(installed) -> Iterator[Path]:
    """The overlay's admission policy on workloads; the operator's kubeconfig."""
    installed.kubectl("apply", "-f", str(POLICY))
    yield installed.service_account_kubeconfig("tokensync-system", "tokensync")
    installed.kubectl("delete", "-f", str(POLICY))


def patch_as_operator(
    kubeconfig: Path, namespace: str, name: str, patch: dict, dry_run: bool = False
) -> str | None:
    """A merge patch with the operator's own credentials (a PATCH alone: it may not even
    GET the workload); the refusal's message, or None when admitted."""
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    apps = kubernetes.client.AppsV1Api(api)
    try:
        apps.patch_namespaced_deployment(name, namespace, patch, dry_run="All" if dry_run else None)
    except kubernetes.client.exceptions.ApiException as error:
        return f"{error.status} {error.body}"
    finally:
        api.close()
    return None


def test_new_tokens_restart_the_granted_deployment(
    cluster, installed, own_operator, token_endpoint, workload_policy
):
    since = time.time() - 1
    own_operator(
        "--enable-rollout-restart", "--no-deny-private-networks", "--namespace", cluster.ns
    )
    deployment(cluster, "orders")
    deployment(cluster, "billing")  # listed, but the namespace grants nothing on it
    grant_patch(installed, cluster.ns, "orders")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential(
        "api",
        client,
        rolloutRestart=[
            {"kind": "Deployment", "name": "orders"},
            {"kind": "Deployment", "name": "billing"},
        ],
    )
    cluster.wait_ready("api", reason="TokenIssued")
    first = wait_for(lambda: restarted_at(cluster, "orders"), what="the first restart")
    assert first == issued_at(cluster, "api")

    # The admission policy let that patch through; anything else the operator's
    # ServiceAccount might change on the granted Deployment is refused.
    # (Server-side dry runs: admission runs, nothing is stored; the first waits until
    # the API server has loaded the policy.)
    def attempt(patch: dict) -> str | None:
        return patch_as_operator(workload_policy, cluster.ns, "orders", patch, dry_run=True)

    label = {"metadata": {"labels": {"team": "x"}}}
    wait_for(lambda: attempt(label), what="the policy in force")
    for patch in (
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}}},
        {"spec": {"template": {"metadata": {"annotations": {"other": "x"}}}}},
        {"spec": {"template": {"metadata": {"labels": {"app": "orders", "x": "y"}}}}},
        {"spec": {"replicas": 5}},
        label,
    ):
        refused = attempt(patch)
        assert refused is not None, patch
        assert "may change only the pod template annotation" in refused, refused
    own = {"spec": {"template": {"metadata": {"annotations": {ANNOTATION: "x"}}}}}
    assert patch_as_operator(workload_policy, cluster.ns, "orders", own) is None
    first = restarted_at(cluster, "orders")
    assert restarted_at(cluster, "billing") is None
    refused = wait_for(
        lambda: [e for e in cluster.events("api") if e["reason"] == "RolloutRestartFailed"],
        what="the refusal's event",
    )
    assert "Deployment 'billing'" in refused[0]["message"]
    assert "--resource-name=billing" in refused[0]["message"]  # how to grant it
    assert cluster.condition("api")["status"] == "True"

    # A new token (requested here; the same after a renewal) restarts once more.
    time.sleep(1.1)  # issued-at has second precision
    cluster.patch_credential(
        "api", {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "one"}}}
    )
    second = wait_for(
        lambda: (value := restarted_at(cluster, "orders")) != first and value,
        what="the second restart",
    )
    assert second == issued_at(cluster, "api")
    assert len(client.issued) == 2
    # One patch per new token on the granted Deployment, one refused on the other,
    # nothing else on workloads (no read, no list, no other verb).
    requests = wait_for(
        lambda: (r := workload_requests(installed, cluster.ns, since)) and len(r) >= 4 and r,
        what="audit events",
    )
    assert sorted(requests) == [
        ("patch", "billing", 403),
        ("patch", "billing", 403),
        ("patch", "orders", 200),
        ("patch", "orders", 200),
    ]


def test_without_the_flag_nothing_is_restarted(cluster, installed, own_operator, token_endpoint):
    since = time.time() - 1
    own_operator("--no-deny-private-networks", "--namespace", cluster.ns)
    deployment(cluster, "orders")
    grant_patch(installed, cluster.ns, "orders")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential(
        "api", client, rolloutRestart=[{"kind": "Deployment", "name": "orders"}]
    )
    cluster.wait_ready("api", reason="TokenIssued")
    warnings = wait_for(
        lambda: cluster.credential("api").get("status", {}).get("warnings"), what="warnings"
    )
    assert any("--enable-rollout-restart" in w for w in warnings)
    assert restarted_at(cluster, "orders") is None
    assert not workload_requests(installed, cluster.ns, since)
