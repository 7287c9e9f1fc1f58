"""The operator end to end, as a user sees it: create, refresh, rotate, delete, restart."""

from __future__ import annotations

import itertools
import time

import pytest
from operator_helpers import decode, wait_for

pytestmark = pytest.mark.envtest


def test_create_writes_secret_with_token(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    credential = cluster.create_credential("api", client)

    ready = cluster.wait_ready("api", reason="TokenIssued")
    secret = wait_for(lambda: cluster.secret("api"), what="managed Secret")
    data = decode(secret)
    token = client.issued[-1].token
    assert data["access_token"] == token
    assert data["token_type"] == "Bearer"
    assert data["authorization"] == f"Bearer {token}"
    assert data["expires_at"].endswith("Z")
    meta = secret["metadata"]
    assert meta["labels"]["tokensync.dev/credential"] == "api"
    assert {
        "tokensync.dev/expires-at",
        "tokensync.dev/issued-at",
        "tokensync.dev/config-hash",
    } <= set(meta["annotations"])
    (owner,) = meta["ownerReferences"]
    assert owner["uid"] == credential["metadata"]["uid"]
    assert owner["controller"] and owner["blockOwnerDeletion"]
    assert secret["type"] == "Opaque"
    assert "valid until" in ready["message"]
    status = cluster.credential("api")["status"]
    assert status["secretName"] == "api"
    assert status["observedGeneration"] == 1
    assert status["expiresAt"] == data["expires_at"]
    assert status["nextRefreshTime"] < status["expiresAt"]
    assert not any(c["type"] == "Refreshing" for c in status["conditions"])
    reasons = wait_for(lambda: [e["reason"] for e in cluster.events("api")] or None, what="events")
    assert "TokenIssued" in reasons
    assert len(client.requests) == 1


def test_short_tokens_are_renewed_before_they_expire(cluster, operator, token_endpoint):
    # The shortest lifetime the 10 s request floor can keep valid: renewed at half-life.
    client = token_endpoint.add_client(lifetime=24)
    cluster.create_credential(
        "short", client, secret={"template": {"token.txt": "${access_token}"}}
    )
    cluster.wait_ready("short", reason="TokenIssued")

    seen_tokens = set()

    def four_tokens_seen():
        secret = cluster.secret("short")
        if secret:
            seen_tokens.add(decode(secret)["access_token"])
        return len(client.issued) >= 4 and len(seen_tokens) >= 4

    wait_for(four_tokens_seen, timeout=75, what="four tokens in a row")
    issued = client.issued[:4]
    for previous, new in itertools.pairwise(issued):
        assert new.issued_at < previous.expires_at, "a token expired before the next was issued"
    assert {i.token for i in issued} <= seen_tokens | {client.issued[-1].token}
    assert decode(cluster.secret("short"))["token.txt"] in {i.token for i in client.issued}


def test_rotated_client_secret_is_used_for_the_next_token(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("rotate", client)
    cluster.wait_ready("rotate", reason="TokenIssued")
    first_token = client.issued[-1].token

    new_secret = token_endpoint.rotate(client)  # the old secret is revoked at once
    rotated_at = time.monotonic()
    cluster.source_secret("client", {"client_secret": new_secret}, allowed_urls=None)

    # Bound: the 10 s per-credential rate limit plus a few seconds of watch latency.
    wait_for(
        lambda: decode(cluster.secret("rotate"))["access_token"] != first_token,
        timeout=20,
        what="a token issued with the rotated secret",
    )
    assert time.monotonic() - rotated_at < 20
    assert client.issued[-1].token == decode(cluster.secret("rotate"))["access_token"]
    cluster.wait_ready("rotate", reason="TokenIssued")


def test_delete_garbage_collects_the_secret(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("gone", client)
    cluster.wait_ready("gone", reason="TokenIssued")
    cluster.delete_credential("gone")
    wait_for(lambda: cluster.secret("gone") is None, timeout=60, what="garbage collection")


def test_retain_keeps_the_secret_after_delete(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    credential = cluster.create_credential("kept", client, secret={"deletionPolicy": "Retain"})
    cluster.wait_ready("kept", reason="TokenIssued")
    secret = cluster.secret("kept")
    assert not secret["metadata"].get("ownerReferences")
    uid = credential["metadata"]["uid"]
    assert secret["metadata"]["annotations"]["tokensync.dev/owner-uid"] == uid
    cluster.delete_credential("kept")
    wait_for(lambda: _credential_gone(cluster, "kept"), what="credential deletion")
    time.sleep(3)  # give the garbage collector a chance to (wrongly) act
    assert cluster.secret("kept") is not None


def _credential_gone(cluster, name):
    try:
        cluster.credential(name)
    except Exception:
        return True
    return False


def test_secret_name_change_moves_the_token(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("mover", client)
    cluster.wait_ready("mover", reason="TokenIssued")
    cluster.patch_credential("mover", {"spec": {"secret": {"name": "moved"}}})
    wait_for(lambda: cluster.secret("moved"), what="the new Secret")
    wait_for(lambda: cluster.secret("mover") is None, what="the old Secret removed")
    status = cluster.credential("mover")["status"]
    assert status["secretName"] == "moved"


def test_restart_makes_no_token_requests_for_valid_tokens(cluster, own_operator, token_endpoint):
    first = own_operator("--no-deny-private-networks")
    clients = [token_endpoint.add_client(lifetime=3600) for _ in range(3)]
    for index, client in enumerate(clients):
        cluster.create_credential(f"keep-{index}", client, secret_name=f"client-{index}")
    for index in range(3):
        cluster.wait_ready(f"keep-{index}", reason="TokenIssued")
    first.stop()

    own_operator("--no-deny-private-networks")
    late = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("late", late, secret_name="client-late")
    cluster.wait_ready("late", reason="TokenIssued")  # the restarted operator is alive
    time.sleep(2)  # the restarted operator has re-examined every credential by now
    assert [len(c.requests) for c in clients] == [1, 1, 1]
    for index in range(3):
        cluster.wait_ready(f"keep-{index}", reason="TokenIssued")


def test_gitops_noise_causes_no_token_request(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("quiet", client)
    cluster.wait_ready("quiet", reason="TokenIssued")
    cluster.patch_credential(
        "quiet",
        {"metadata": {"labels": {"team": "a"}, "annotations": {"argocd.argoproj.io/sync": "x"}}},
    )
    # Re-applying the unchanged source bumps its resourceVersion only through a label edit.
    cluster.core.patch_namespaced_secret("client", cluster.ns, {"metadata": {"labels": {"x": "y"}}})
    time.sleep(3)
    assert len(client.requests) == 1


def test_refresh_requested_annotation_forces_one_refresh(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("poke", client)
    cluster.wait_ready("poke", reason="TokenIssued")
    stamp = "2026-11-23T10:00:00Z"
    cluster.patch_credential(
        "poke", {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": stamp}}}
    )
    wait_for(
        lambda: cluster.credential("poke")["status"].get("lastHandledRefreshRequest") == stamp,
        timeout=20,
        what="the refresh request served",
    )
    assert len(client.requests) == 2
    time.sleep(2)
    assert len(client.requests) == 2  # served once, not again
