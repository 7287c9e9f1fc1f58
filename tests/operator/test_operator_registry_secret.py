"""secret.type: kubernetes.io/dockerconfigjson on a real control plane: image pull
Secrets for registries that take an OAuth2 access token as a password, kept fresh like
any managed Secret, and a type change (which Kubernetes refuses in place) carried out by
re-creating the Secret, whether the operator saw the old type or only its metadata."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from operator_helpers import decode, wait_for

pytestmark = pytest.mark.envtest

DOCKER = "kubernetes.io/dockerconfigjson"
REGISTRIES = ["europe-docker.pkg.dev", "registry.example.com:5000/team"]


def docker_secret(**docker_config: Any) -> dict[str, Any]:
    return {"type": DOCKER, "dockerConfig": {"registries": REGISTRIES, **docker_config}}


def auths(secret: dict[str, Any]) -> dict[str, Any]:
    return json.loads(decode(secret)[".dockerconfigjson"])["auths"]


def assert_pull_secret_for(secret: dict[str, Any], token: str, username: str) -> None:
    assert secret["type"] == DOCKER
    entries = auths(secret)
    assert sorted(entries) == sorted(REGISTRIES)
    for entry in entries.values():
        assert entry["username"] == username
        assert entry["password"] == token
        assert base64.b64decode(entry["auth"]).decode() == f"{username}:{token}"
    assert decode(secret)["access_token"] == token  # the usual keys are still there


def test_a_pull_secret_holds_each_new_token_for_every_registry(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=12)
    cluster.create_credential("registry", client, secret=docker_secret())
    cluster.wait_ready("registry", reason="TokenIssued")
    assert_pull_secret_for(cluster.secret("registry"), client.issued[-1].token, "oauth2accesstoken")
    first = client.issued[-1].token
    wait_for(lambda: len(client.issued) >= 2, timeout=30, what="a renewal")
    wait_for(
        lambda: auths(cluster.secret("registry"))[REGISTRIES[0]]["password"] != first,
        what="the renewed token in .dockerconfigjson",
    )
    assert_pull_secret_for(cluster.secret("registry"), client.issued[-1].token, "oauth2accesstoken")


def test_changing_the_type_recreates_the_secret_both_ways(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("switch", client)
    cluster.wait_ready("switch", reason="TokenIssued")
    opaque_uid = cluster.secret("switch")["metadata"]["uid"]

    cluster.patch_credential("switch", {"spec": {"secret": docker_secret(username="robot")}})
    wait_for(
        lambda: (cluster.secret("switch") or {}).get("type") == DOCKER,
        what="the Secret re-created as a pull secret",
    )
    cluster.wait_ready("switch", reason="TokenIssued")
    secret = cluster.secret("switch")
    assert secret["metadata"]["uid"] != opaque_uid
    assert_pull_secret_for(secret, client.issued[-1].token, "robot")
    reasons = [e["reason"] for e in cluster.events("switch")]
    assert "SecretRecreated" in reasons

    # Back: dockerConfig must go with the type (the API server refuses it otherwise).
    cluster.patch_credential(
        "switch", {"spec": {"secret": {"type": "Opaque", "dockerConfig": None}}}
    )
    wait_for(
        lambda: (cluster.secret("switch") or {}).get("type") == "Opaque",
        what="the Secret re-created as Opaque",
    )
    cluster.wait_ready("switch", reason="TokenIssued")
    data = decode(cluster.secret("switch"))
    assert ".dockerconfigjson" not in data
    assert data["access_token"] == client.issued[-1].token
    assert len(client.issued) == 3  # one token per generation, none lost in between


def test_a_type_change_made_while_the_operator_was_down(cluster, own_operator, token_endpoint):
    """After a restart the operator knows its Secrets from the metadata-only watch, which
    has no type: the patch carries the type, the API server refuses the change (422), and
    the operator reads the Secret and re-creates it."""
    first = own_operator("--no-deny-private-networks")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("offline-switch", client)
    cluster.wait_ready("offline-switch", reason="TokenIssued")
    first.stop()

    cluster.patch_credential("offline-switch", {"spec": {"secret": docker_secret()}})
    own_operator("--no-deny-private-networks")
    wait_for(
        lambda: (cluster.secret("offline-switch") or {}).get("type") == DOCKER,
        what="the Secret re-created as a pull secret by the restarted operator",
    )
    cluster.wait_ready("offline-switch", reason="TokenIssued")
    assert_pull_secret_for(
        cluster.secret("offline-switch"), client.issued[-1].token, "oauth2accesstoken"
    )


def test_the_api_server_refuses_a_pull_secret_without_registries(cluster, operator):
    for secret, expected in (
        ({"type": DOCKER}, "dockerConfig is required"),
        ({"dockerConfig": {"registries": REGISTRIES}}, "dockerConfig is required"),
        ({"type": DOCKER, "dockerConfig": {"registries": ["https://x.io"]}}, "registries"),
        (
            {**docker_secret(), "template": {".dockerconfigjson": "{}"}},
            "may not set .dockerconfigjson",
        ),
    ):
        spec = {"tokenURL": "https://idp.example/token", "clientID": "c", "secret": secret}
        spec["clientSecretRef"] = {"name": "client", "key": "client_secret"}
        with pytest.raises(Exception) as refused:
            cluster.create_credential_object("refused", spec)
        assert getattr(refused.value, "status", None) == 422, refused.value
        assert expected in (getattr(refused.value, "body", "") or ""), refused.value.body
