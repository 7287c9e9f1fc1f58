"""Flux (kstatus), Argo CD (the Lua check) and `kubectl wait` agree with Ready, Reconciling
and Stalled, on statuses the real operator wrote: ready, pending, stalled (new and after
an edit), refused by the endpoint, suspended."""

from __future__ import annotations

from typing import Any

import pytest
from gitops.health import argocd_health, kstatus
from operator_helpers import decode, wait_for

pytestmark = pytest.mark.envtest


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def verdicts(obj: dict[str, Any]) -> tuple[str, str]:
    return kstatus(obj)["status"], argocd_health(obj)["status"]


def wait_condition(cluster, name: str, type_: str, status: str = "True", timeout: float = 30):
    def probe() -> dict[str, Any] | None:
        obj = cluster.credential(name)
        c = conditions(obj).get(type_)
        return obj if c and c["status"] == status else None

    try:
        return wait_for(probe, timeout, f"{name} {type_}={status}")
    except AssertionError as error:
        raise AssertionError(f"{error}; status: {cluster.credential(name).get('status')}") from None


def kubectl_wait(cluster, name: str, condition: str, timeout: str = "60s") -> str:
    result = cluster.cp.kubectl(
        "wait", f"--for=condition={condition}", f"o2c/{name}", "-n", cluster.ns,
        f"--timeout={timeout}", check=False, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ready_is_current_and_healthy_and_kubectl_wait_returns(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    # kubectl wait starts before the credential exists' status does: it must wait, then
    # return as soon as Ready=True.
    cluster.create_credential("ready", client)
    out = kubectl_wait(cluster, "ready", "Ready")
    assert "condition met" in out

    obj = cluster.credential("ready")
    assert verdicts(obj) == ("Current", "Healthy")
    found = conditions(obj)
    assert set(found) == {"Ready"}
    generation = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == generation
    assert obj["status"]["tokenGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in found.values())


def test_pending_first_token_is_in_progress_then_current(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    token_endpoint.fail(client, 503)  # transient: retried, 1 s doubling
    cluster.create_credential("pending", client)
    obj = wait_condition(cluster, "pending", "Reconciling")
    found = conditions(obj)
    assert found["Ready"]["status"] == "False" and "Stalled" not in found
    assert verdicts(obj) == ("InProgress", "Progressing")

    token_endpoint.heal(client)
    cluster.wait_ready("pending", reason="TokenIssued", timeout=30)
    obj = cluster.credential("pending")
    assert "Reconciling" not in conditions(obj)
    assert verdicts(obj) == ("Current", "Healthy")


def test_unlabelled_source_is_stalled_failed_degraded_until_fixed(
    cluster, operator, token_endpoint
):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret("client", {"client_secret": client.secret}, labelled=False)
    cluster.create_credential("stalled", client, source=False)
    out = kubectl_wait(cluster, "stalled", "Stalled")
    assert "condition met" in out

    obj = cluster.credential("stalled")
    found = conditions(obj)
    assert found["Stalled"]["reason"] == found["Ready"]["reason"] == "ReferenceNotLabeled"
    assert "Reconciling" not in found
    assert verdicts(obj) == ("Failed", "Degraded")

    # The fix: label (and bind) the Secret; the same credential becomes Current.
    cluster.source_secret(
        "client",
        {"client_secret": client.secret},
        allowed_urls=token_endpoint.url.split("/oauth2")[0] + "/",
    )
    cluster.wait_ready("stalled", reason="TokenIssued")
    obj = cluster.credential("stalled")
    assert "Stalled" not in conditions(obj)
    assert verdicts(obj) == ("Current", "Healthy")


def test_a_broken_edit_is_failed_at_once_not_in_progress(cluster, operator, token_endpoint):
    """The GitOps case: a commit breaks a working credential. status.observedGeneration
    follows the edit, so kstatus reports Failed instead of waiting for a generation that
    will never be served; the old token stays in the Secret."""
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("edited", client)
    cluster.wait_ready("edited", reason="TokenIssued")
    token = decode(cluster.secret("edited"))["access_token"]

    cluster.patch_credential(
        "edited", {"spec": {"clientSecretRef": {"name": "client", "key": "no-such-key"}}}
    )
    obj = wait_condition(cluster, "edited", "Stalled")
    assert conditions(obj)["Stalled"]["reason"] == "ReferenceKeyMissing"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert obj["status"]["tokenGeneration"] == 1
    assert verdicts(obj) == ("Failed", "Degraded")
    assert decode(cluster.secret("edited"))["access_token"] == token

    # Reverting the commit serves generation 3.
    cluster.patch_credential(
        "edited", {"spec": {"clientSecretRef": {"name": "client", "key": "client_secret"}}}
    )
    obj = wait_for(
        lambda: (
            (o := cluster.credential("edited"))
            and o["status"].get("tokenGeneration") == 3
            and set(conditions(o)) == {"Ready"}
            and o
        ),
        30,
        "generation 3 served",
    )
    assert verdicts(obj) == ("Current", "Healthy")


def test_a_refused_token_request_is_stalled(cluster, operator, token_endpoint):
    """401 invalid_client: configuration class, no token held: a person must act."""
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret(
        "client",
        {"client_secret": "not-the-secret"},
        allowed_urls=token_endpoint.url.split("/oauth2")[0] + "/",
    )
    cluster.create_credential("refused", client, source=False)
    obj = wait_condition(cluster, "refused", "Stalled")
    found = conditions(obj)
    assert found["Ready"]["reason"] == found["Stalled"]["reason"] == "TokenRequestFailed"
    assert obj["status"]["lastFailure"]["kind"] == "configuration"
    assert verdicts(obj) == ("Failed", "Degraded")


def test_suspended_is_suspended_for_argocd(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("paused", client)
    cluster.wait_ready("paused", reason="TokenIssued")
    cluster.patch_credential("paused", {"spec": {"suspend": True}})
    cluster.wait_ready("paused", status="False", reason="Suspended")
    obj = cluster.credential("paused")
    assert set(conditions(obj)) == {"Ready"}
    # kstatus has no notion of suspension: a Ready=False object is InProgress to it.
    assert verdicts(obj) == ("InProgress", "Suspended")


def test_kubectl_wait_times_out_on_a_stalled_credential(cluster, operator, token_endpoint):
    """`kubectl wait --for=condition=Ready` is no health check for broken specs: it waits
    out its timeout. Stalled is what tells a pipeline to stop waiting."""
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret("client", {"client_secret": client.secret}, labelled=False)
    cluster.create_credential("never", client, source=False)
    wait_condition(cluster, "never", "Stalled")
    result = cluster.cp.kubectl(
        "wait", "--for=condition=Ready", "o2c/never", "-n", cluster.ns, "--timeout=2s",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_not_current_before_the_operator_has_looked(cluster, own_operator, token_endpoint):
    """No operator runs (own_operator stopped the shared one): a new credential is not
    yet observed (the CRD defaults status.observedGeneration to 0), so kstatus does not
    call it Current; once an operator runs, it is."""
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("unseen", client)
    obj = cluster.credential("unseen")
    assert obj["status"] == {"observedGeneration": 0}
    assert verdicts(obj) == ("InProgress", "Progressing")

    own_operator("--no-deny-private-networks")
    cluster.wait_ready("unseen", reason="TokenIssued")
    assert verdicts(cluster.credential("unseen")) == ("Current", "Healthy")
