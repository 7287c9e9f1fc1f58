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

from fixtures.polling import wait_for
from tokensync.redact import secret_variants
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED

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


def test_another_credentials_token_is_exchanged_once_offered(cluster, operator, token_endpoint):
    """tokenExchange.subjectTokenRef naming another credential's managed Secret: refused
    until that credential offers its token (secret.asSource), then exchanged, exchanged
    again after each renewal upstream, and refused again once the offer is withdrawn."""
    base = token_endpoint.url.split("/oauth2")[0] + "/"
    upstream = token_endpoint.add_client(lifetime=600)
    cluster.create_credential("portal", upstream)
    exchanger = token_endpoint.add_client(lifetime=600)
    cluster.source_secret("orders-client", {"client_secret": exchanger.secret}, allowed_urls=base)
    subject = {"subjectTokenRef": {"name": "portal", "key": "access_token"}}
    cluster.create_credential_object(
        "orders",
        cluster.credential_spec(
            exchanger, "orders-client", grantType="token_exchange", tokenExchange=subject
        ),
    )
    cluster.wait_ready("portal", reason="TokenIssued")
    refused = cluster.wait_ready("orders", "False", "ReferenceInvalid")
    assert "spec.secret.asSource" in refused["message"]
    assert not exchanger.requests  # nothing was sent

    cluster.patch_credential(
        "portal", {"spec": {"secret": {"asSource": {"allowedTokenURLs": [base]}}}}
    )

    def exchanged_current_portal_token() -> str | None:
        portal = decode(cluster.secret("portal") or {}).get("access_token")
        orders = decode(cluster.secret("orders") or {}).get("access_token")
        issued = {i.token: i.subject_token for i in exchanger.issued}
        return portal if orders and portal and issued.get(orders) == portal else None

    first = wait_for(exchanged_current_portal_token, 30, "orders holds portal's token, exchanged")
    labels = (cluster.secret("portal") or {})["metadata"]["labels"]
    assert labels["tokensync.dev/credential-source"] == "true"
    cluster.wait_ready("orders", reason="TokenIssued")

    # A renewal upstream is a new subject token: exchanged again at once.
    cluster.patch_credential(
        "portal",
        {"metadata": {"annotations": {ANNOTATION_REFRESH_REQUESTED: "2026-12-07T00:00:00Z"}}},
    )
    second = wait_for(
        lambda: (t := exchanged_current_portal_token()) != first and t,
        30,
        "orders exchanged portal's renewed token",
    )
    assert second and second != first

    # Withdrawn: the label and binding leave the Secret, and orders reports it.
    cluster.patch_credential("portal", {"spec": {"secret": {"asSource": None}}})

    def withdrawn() -> bool:
        secret = cluster.secret("portal") or {}
        return "tokensync.dev/credential-source" not in (secret["metadata"].get("labels") or {})

    wait_for(withdrawn, 30, "portal's Secret no longer offered")
    annotations = (cluster.secret("portal") or {})["metadata"].get("annotations") or {}
    assert "tokensync.dev/allowed-token-urls" not in annotations

    def reported() -> dict | None:
        status = cluster.credential("orders").get("status") or {}
        found = [c for c in status.get("conditions") or [] if c["reason"] == "ReferenceInvalid"]
        return found[0] if found else None

    assert (
        "spec.secret.asSource" in wait_for(reported, 30, "orders reports the withdrawal")["message"]
    )
