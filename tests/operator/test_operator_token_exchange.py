"""`grantType: token_exchange` (RFC 8693) with a ServiceAccount token as the subject
token, through the operator: the token is minted by this control plane only with the
workload identity opt-ins, sent as `subject_token` (type jwt) with the spec's audience,
resource, scope and requested token type, and verified by the endpoint against the API
server's own JWKS (tests/servers/federated.py). The Secret-sourced subject token is proven
against Keycloak in tests/operator/test_operator_idp.py."""

from __future__ import annotations

import secrets
import time
from urllib.parse import parse_qsl

import pytest
from operator_helpers import decode
from test_identity import (  # noqa: F401 - wi_kubeconfig and federated are fixtures
    AUDIENCE,
    INSECURE,
    allow_minting,
    create_credential,
    federated,
    service_account,
    token_requests,
    wi_kubeconfig,
)

from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def exchange_credential(cluster, server, name: str, sa: str, client_id: str, secret: str) -> None:
    cluster.source_secret(
        f"{name}-client", {"client_secret": secret}, allowed_urls=server.base_url + "/"
    )
    create_credential(
        cluster,
        name,
        {
            "tokenURL": server.token_url,
            "clientID": client_id,
            "clientSecretRef": {"name": f"{name}-client", "key": "client_secret"},
            "grantType": "token_exchange",
            "tokenExchange": {
                "workloadIdentity": {"serviceAccountName": sa, "audience": AUDIENCE},
                "requestedTokenType": ACCESS_TOKEN,
            },
            "audience": "inventory-api",
            "resource": "https://inventory.example.com/",
            "scope": "inventory:read",
        },
    )


def test_a_serviceaccount_token_is_exchanged(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    federated,  # noqa: F811
):
    since = time.time() - 1
    operator = own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    allow_minting(installed, cluster.ns, "app")
    client_secret = secrets.token_urlsafe(24)
    federated.clients["exchanger"] = client_secret
    federated.federation["exchanger"] = f"system:serviceaccount:{cluster.ns}:app"
    exchange_credential(cluster, federated, "te", "app", "exchanger", client_secret)

    cluster.wait_ready("te", reason="TokenIssued")
    assert decode(cluster.secret("te"))["access_token"] in federated.tokens
    (sent,) = federated.exchanges
    assert sent["subject_token_type"] == JWT
    assert sent["requested_token_type"] == ACCESS_TOKEN
    assert (sent["audience"], sent["resource"], sent["scope"]) == (
        "inventory-api",
        "https://inventory.example.com/",
        "inventory:read",
    )
    assert "client_assertion" not in sent  # the client authenticated with its secret
    (claims,) = federated.verified_claims
    assert claims["sub"] == f"system:serviceaccount:{cluster.ns}:app"
    assert claims["aud"] == [AUDIENCE]
    (minted,) = token_requests(installed, cluster.ns, since)
    assert (minted["objectRef"]["name"], minted["responseStatus"]["code"]) == ("app", 201)
    # Neither the issued token, the subject token nor the client secret is logged.
    subjects = [
        value
        for r in federated.received
        for key, value in parse_qsl(r.body.decode())
        if key == "subject_token"
    ]
    assert len(subjects) == 1
    leaks = {v for t in [*federated.tokens, *subjects] for v in secret_variants(t)}
    leaks |= secret_variants(client_secret, client_id="exchanger")
    assert not [v for v in leaks if v in operator.log()]


def test_without_the_opt_ins_nothing_is_minted(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    federated,  # noqa: F811
):
    """The opt-ins of workload identity hold for a subject token: an unlabelled
    ServiceAccount, and an operator without --enable-workload-identity, mint nothing."""
    since = time.time() - 1
    own_operator(*INSECURE, "--namespace", cluster.ns, kubeconfig=wi_kubeconfig)
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    allow_minting(installed, cluster.ns, "app")
    exchange_credential(cluster, federated, "no-flag", "app", "exchanger", "s")
    ready = cluster.wait_ready("no-flag", "False", "InvalidSpec")
    assert "tokenExchange.workloadIdentity" in ready["message"]
    assert "--enable-workload-identity" in ready["message"]
    assert not token_requests(installed, cluster.ns, since)
    assert not federated.received


def test_an_unlabelled_serviceaccount_is_not_minted_for(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    federated,  # noqa: F811
):
    since = time.time() - 1
    own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(
        cluster, "plain", labelled=False, urls=federated.base_url + "/", audiences=AUDIENCE
    )
    allow_minting(installed, cluster.ns, "plain")
    exchange_credential(cluster, federated, "unlabelled", "plain", "exchanger", "s")
    cluster.wait_ready("unlabelled", "False", "ReferenceNotLabeled")
    assert not token_requests(installed, cluster.ns, since)
    assert not federated.received
