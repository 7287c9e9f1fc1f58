"""The operator end to end: create, refresh, delete, as a user sees it."""

from __future__ import annotations

from operator_helpers import decode, wait_for

pytestmark = __import__("pytest").mark.envtest


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
    assert owner["uid"] == credential["metadata"]["uid"] and owner["controller"]
    assert secret["type"] == "Opaque"
    assert "valid until" in ready["message"]
    status = cluster.credential("api")["status"]
    assert status["secretName"] == "api"
    assert status["observedGeneration"] == 1
    reasons = wait_for(lambda: [e["reason"] for e in cluster.events("api")] or None, what="events")
    assert "TokenIssued" in reasons
