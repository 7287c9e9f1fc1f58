"""The operator against the real OAuth2 server (oidc-provider) and a Cognito-style
endpoint. Both listen on plain http on loopback, so this operator runs with
--allow-insecure and the credentials set allowInsecureHTTP."""

from __future__ import annotations

import pytest
from operator_helpers import decode, wait_for

from servers.oidc import RESOURCE
from servers.quirky import CognitoServer
from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest

INSECURE_OPERATOR = ("--allow-insecure", "--no-deny-private-networks")


def _credential(cluster, name, token_url, client_id, secret, **spec):
    cluster.source_secret(f"{name}-client", {"client_secret": secret}, allowed_urls=token_url)
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": name},
        "spec": {
            "tokenURL": token_url,
            "allowInsecureHTTP": True,
            "clientID": client_id,
            "clientSecretRef": {"name": f"{name}-client", "key": "client_secret"},
            **spec,
        },
    }
    cluster.custom.create_namespaced_custom_object(
        "tokensync.dev", "v1alpha1", cluster.ns, "oauth2credentials", body
    )


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_oidc_provider_issues_tokens_through_the_operator(
    cluster, own_operator, oidc_provider, method
):
    operator = own_operator(*INSECURE_OPERATOR)
    client = oidc_provider.add_client(method)
    _credential(
        cluster,
        "oidc",
        client.token_url,
        client.client_id,
        client.client_secret,
        clientAuthentication=client.client_authentication,
        scope=client.scope,
        resource=RESOURCE,
    )
    cluster.wait_ready("oidc", reason="TokenIssued")
    token = decode(cluster.secret("oidc"))["access_token"]
    assert token
    issued = [i for i in oidc_provider.issued() if i.get("client_id") == client.client_id]
    assert len(issued) == 1
    warnings = cluster.credential("oidc")["status"].get("warnings") or []
    assert any("allowInsecureHTTP" in w for w in warnings)
    leaks = secret_variants(client.client_secret, client_id=client.client_id)
    leaks |= secret_variants(token)
    assert not [v for v in leaks if v in operator.log()]


def test_cognito_json_trap_gives_the_hint_then_works(
    cluster, own_operator, start_server, credentials
):
    own_operator(*INSECURE_OPERATOR)
    server = start_server(CognitoServer, clients={credentials.client_id: credentials.client_secret})
    _credential(
        cluster,
        "cognito",
        server.token_url,
        credentials.client_id,
        credentials.client_secret,
        contentType="application/json",
        scope="api/read",
    )
    ready = cluster.wait_ready("cognito", "False", "TokenRequestFailed")
    assert "application/x-www-form-urlencoded" in ready["message"]
    assert cluster.credential("cognito")["status"]["lastFailure"]["httpStatus"] == 401

    cluster.patch_credential(
        "cognito", {"spec": {"contentType": "application/x-www-form-urlencoded"}}
    )
    cluster.wait_ready("cognito", reason="TokenIssued", timeout=30)
    assert decode(cluster.secret("cognito"))["access_token"] == server.tokens[-1]
    wait_for(lambda: cluster.condition("cognito", "Refreshing") is None, what="no Refreshing")
