"""The operator against Keycloak (both pinned versions), ORY Hydra and oidc-provider
(tests/idp): every client authentication method each server supports, and issuerURL
discovery, gets a token into the managed Secret, which the server's own introspection
calls active and issued to that client; workload identity with Keycloak's Kubernetes
identity provider verifying ServiceAccount tokens this control plane minted.

The servers listen on plain http on loopback: the operators run with --allow-insecure and
without the private-network guard, and credentials set allowInsecureHTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from idp.idpcases import DISCOVERY, KEY_NAME, KEYCLOAKS, SERVER_CASES, Setup, active_for
from idp.idplib import Hydra, Keycloak, OIDCProviderIdP
from operator_helpers import decode, wait_for
from test_identity import (  # noqa: F401 - wi_kubeconfig is a fixture
    INSECURE,
    allow_minting,
    create_credential,
    service_account,
    token_requests,
    wi_kubeconfig,
)

from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest


def idp_credential(cluster, name: str, setup: Setup) -> None:
    """The credential of `setup`, with its client secret or signing key as a labelled
    source bound to the server's token URL."""
    url = setup.client.token_url
    spec: dict[str, Any] = {"tokenURL": url, "clientID": setup.client.client_id, **setup.spec}
    if setup.secret:
        cluster.source_secret(f"{name}-client", {"client_secret": setup.secret}, allowed_urls=url)
        spec["clientSecretRef"] = {"name": f"{name}-client", "key": "client_secret"}
    if setup.key_pem is not None:
        cluster.source_secret(
            f"{name}-{KEY_NAME}", {"key.pem": setup.key_pem.decode()}, allowed_urls=url
        )
        assertion = dict(setup.spec["clientAssertion"])
        assertion["keyRef"] = {"name": f"{name}-{KEY_NAME}", "key": "key.pem"}
        spec["clientAssertion"] = assertion
    if setup.client_cert is not None and setup.ca_pem is not None:
        cert, key = (pem.decode() for pem in setup.client_cert)
        cluster.source_secret(
            f"{name}-cert",
            {"tls.crt": cert, "tls.key": key},
            allowed_urls=url,
            secret_type="kubernetes.io/tls",
        )
        cluster.source_secret(f"{name}-ca", {"ca.crt": setup.ca_pem.decode()}, allowed_urls=url)
        spec["tls"] = {
            "caRef": {"kind": "Secret", "name": f"{name}-ca", "key": "ca.crt"},
            "clientCertificateRef": {"name": f"{name}-cert"},
        }
    # None: a field the case leaves out (tokenURL with issuerURL discovery)
    create_credential(cluster, name, {k: v for k, v in spec.items() if v is not None})


def _all_methods(cluster, own_operator, server: Keycloak | Hydra | OIDCProviderIdP, cases) -> dict:
    operator = own_operator(*INSECURE)
    setups = {}
    for number, case in enumerate(cases):
        name = f"{server.name}-{number}"
        setups[name] = (case, case.setup(server))
        idp_credential(cluster, name, setups[name][1])
    issued = {}
    for name, (case, setup) in setups.items():
        cluster.wait_ready(name, reason="TokenIssued", timeout=60)
        data = decode(cluster.secret(name))
        assert active_for(server.introspect, data["access_token"], setup.client.client_id), (
            case.label
        )
        issued[case.label] = data
        leaks = secret_variants(data["access_token"])
        if setup.secret:
            leaks |= secret_variants(setup.secret, client_id=setup.client.client_id)
        assert not [v for v in leaks if v in operator.log()], case.label
    return issued


@pytest.mark.parametrize("server_name", list(SERVER_CASES))
def test_every_method_through_the_operator(cluster, own_operator, request, server_name):
    """Both pinned Keycloak versions, Hydra and oidc-provider: every method, and issuerURL
    discovery."""
    server = request.getfixturevalue(server_name)
    issued = _all_methods(cluster, own_operator, server, [*SERVER_CASES[server_name], DISCOVERY])
    for data in issued.values():
        # Hydra answers `bearer`: kept as token_type, canonical in authorization.
        assert data["token_type"] == ("bearer" if server.name == "hydra" else "Bearer")
        assert data["authorization"] == f"Bearer {data['access_token']}"


# ---- workload identity with Keycloak's Kubernetes identity provider


def keycloak_workload_credential(
    cluster, keycloak: Keycloak, alias: str, name: str, sa: str, **spec: Any
) -> str:
    client = keycloak.add_client(
        "workload_identity", federated=(alias, f"system:serviceaccount:{cluster.ns}:{sa}")
    )
    create_credential(
        cluster,
        name,
        {
            "tokenURL": keycloak.token_url,
            "clientID": client.client_id,
            "clientAuthentication": "workload_identity",
            # Keycloak's federated validator accepts only its realm issuer as audience.
            "workloadIdentity": {"serviceAccountName": sa, "audience": keycloak.issuer},
            **spec,
        },
    )
    return client.client_id


def test_keycloak_verifies_the_clusters_serviceaccount_tokens(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    keycloak,
    keycloak_kubernetes,
):
    """Keycloak 26.5 refuses a client_id that differs from the assertion's sub
    (`system:serviceaccount:<ns>:<sa>`); with clientIDInRequest: false it issues the token
    (issue 21 finding 1), and the hint names the field."""
    since = time.time() - 1
    operator = own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(cluster, "app", urls=keycloak.issuer + "/", audiences=keycloak.issuer)
    allow_minting(installed, cluster.ns, "app")  # the namespace's consent (issue 18)
    client_id = keycloak_workload_credential(
        cluster, keycloak, keycloak_kubernetes, "wi", "app", clientIDInRequest=False
    )
    cluster.wait_ready("wi", reason="TokenIssued", timeout=60)
    token = decode(cluster.secret("wi"))["access_token"]
    assert active_for(keycloak.introspect, token, client_id)
    assert token_requests(installed, cluster.ns, since)  # minted by this control plane

    keycloak_workload_credential(cluster, keycloak, keycloak_kubernetes, "wi-client-id", "app")
    refused = cluster.wait_ready("wi-client-id", "False", "TokenRequestFailed", timeout=60)
    failure = cluster.credential("wi-client-id")["status"]["lastFailure"]
    assert failure["error"] == "invalid_client", failure
    assert "clientIDInRequest: false" in refused["message"]
    assert not [v for v in secret_variants(token) if v in operator.log()]


def test_the_newer_keycloak_accepts_the_client_id_with_a_workload_assertion(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    keycloak_newer,
    keycloak_newer_kubernetes,
):
    """The version difference the docs state: Keycloak 26.7 finds the client by the
    federated subject and accepts a client_id next to the assertion (the default,
    clientIDInRequest: true), where 26.5 refuses it (the test above)."""
    own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(
        cluster, "app", urls=keycloak_newer.issuer + "/", audiences=keycloak_newer.issuer
    )
    allow_minting(installed, cluster.ns, "app")
    client_id = keycloak_workload_credential(
        cluster, keycloak_newer, keycloak_newer_kubernetes, "wi-newer", "app"
    )
    cluster.wait_ready("wi-newer", reason="TokenIssued", timeout=60)
    token = decode(cluster.secret("wi-newer"))["access_token"]
    assert active_for(keycloak_newer.introspect, token, client_id)


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_check_from_cluster_gets_a_keycloak_token_for_a_serviceaccount(
    cluster, installed, request, server, tmp_path
):
    """`tokensync check --from-cluster` mints the ServiceAccount token with the user's own
    permissions and Keycloak's Kubernetes identity provider verifies it. With the default
    clientIDInRequest, 26.5 refuses (the hint names the field) and `--probe` finds the one
    change, `clientIDInRequest: false`; 26.7 issues at once."""
    from fixtures.token_servers import run_tokensync

    keycloak = request.getfixturevalue(server)
    alias = request.getfixturevalue(f"{server}_kubernetes")
    service_account(cluster, "app", urls=keycloak.issuer + "/", audiences=keycloak.issuer)
    subject = f"system:serviceaccount:{cluster.ns}:app"
    client = keycloak.add_client("workload_identity", federated=(alias, subject))
    manifest = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "wi-check", "namespace": cluster.ns},
        "spec": {
            "tokenURL": keycloak.token_url,
            "allowInsecureHTTP": True,
            "clientID": client.client_id,
            "clientAuthentication": "workload_identity",
            "workloadIdentity": {"serviceAccountName": "app", "audience": keycloak.issuer},
        },
    }
    path = tmp_path / "wi.yaml"
    path.write_text(yaml.safe_dump(manifest))

    def check(*extra: str) -> tuple[int, dict[str, Any]]:
        done = run_tokensync(
            "check", "-f", str(path), "--from-cluster", "--kubeconfig", str(installed.kubeconfig),
            "-o", "json", "--show-token", *extra,
        )  # fmt: skip
        return done.returncode, json.loads(done.stdout)

    code, report = check()
    probe_code, probed = check("--probe")
    attempts = [a["outcome"] for a in probed["probe"]["attempts"]]
    if server == "keycloak":  # 26.5
        assert code != 0, report["result"]
        assert report["result"]["error"] == "invalid_client", report["result"]
        assert "clientIDInRequest: false" in report["result"]["hint"]
        assert len(attempts) == 2 and attempts[0].startswith("HTTP 400 invalid_client"), attempts
        assert "clientIDInRequest: false" in probed["probe"]["specLines"]
    else:
        assert code == 0, report["result"]
        assert active_for(keycloak.introspect, report["result"]["accessToken"], client.client_id)
        assert attempts == ["token issued"]
        assert not [line for line in probed["probe"]["specLines"] if "clientIDInRequest" in line]
    assert probe_code == 0, probed["result"]
    token = probed["result"]["accessToken"]
    assert active_for(keycloak.introspect, token, client.client_id)


# ---- grantType jwt_bearer (RFC 7523 2.1) with Keycloak's JWT Authorization Grant


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_keycloak_jwt_bearer_grants_through_the_operator(
    cluster,
    installed,
    own_operator,
    wi_kubeconfig,  # noqa: F811 - the fixture imported above
    request,
    server,
):
    """Two grants: an assertion signed with a key from a Secret, and a ServiceAccount
    token of this control plane (verified by Keycloak with the cluster's JWKS). On both
    pinned versions."""
    from idp.idplib import KUBE_ISSUER
    from idp.test_idp_grants import grant_setup

    keycloak = request.getfixturevalue(server)
    request.getfixturevalue(f"{server}_kubernetes")  # the mirror of the cluster's issuer
    operator = own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    url = keycloak.issuer + "/"
    # 1. signed with a key from a Secret
    issuer, subject, pem, username, client = grant_setup(keycloak)
    cluster.source_secret("grant-client", {"client_secret": client.client_secret}, allowed_urls=url)
    cluster.source_secret("grant-key", {"key.pem": pem.decode()}, allowed_urls=url)
    create_credential(
        cluster,
        "signed",
        {
            "tokenURL": keycloak.token_url,
            "clientID": client.client_id,
            "clientSecretRef": {"name": "grant-client", "key": "client_secret"},
            "grantType": "jwt_bearer",
            "jwtBearer": {
                "keyRef": {"name": "grant-key", "key": "key.pem"},
                "issuer": issuer,
                "subject": subject,
                "audience": keycloak.issuer,
            },
        },
    )
    # 2. a ServiceAccount token as the grant, in a realm of its own: Keycloak finds the
    # provider by the assertion's issuer, which its Kubernetes provider (workload
    # identity) in the main realm shares.
    realm = keycloak.new_realm()
    url = realm.issuer + "/"
    alias = "cluster-grant"
    realm.add_jwt_grant_provider(
        alias, KUBE_ISSUER, jwks_url=f"{KUBE_ISSUER}/openid/v1/jwks", max_expiration_seconds=3600
    )
    sa_user = realm.add_linked_user(alias, f"system:serviceaccount:{cluster.ns}:app")
    sa_client = realm.add_grant_client(alias)
    service_account(cluster, "app", urls=url, audiences=realm.issuer)
    allow_minting(installed, cluster.ns, "app")
    cluster.source_secret(
        "sa-grant-client", {"client_secret": sa_client.client_secret}, allowed_urls=url
    )
    create_credential(
        cluster,
        "from-sa",
        {
            "tokenURL": realm.token_url,
            "clientID": sa_client.client_id,
            "clientSecretRef": {"name": "sa-grant-client", "key": "client_secret"},
            "grantType": "jwt_bearer",
            "jwtBearer": {
                "workloadIdentity": {"serviceAccountName": "app", "audience": realm.issuer}
            },
        },
    )
    for name, user, grant_client, server in (
        ("signed", username, client, keycloak),
        ("from-sa", sa_user, sa_client, realm),
    ):
        cluster.wait_ready(name, reason="TokenIssued", timeout=60)
        token = decode(cluster.secret(name))["access_token"]
        verdict = server.introspect(token)
        assert verdict["active"] is True, verdict
        assert (verdict["username"], verdict["client_id"]) == (user, grant_client.client_id)
        assert not [v for v in secret_variants(token) if v in operator.log()]


def test_hydra_jwt_bearer_grant_through_the_operator(cluster, own_operator, hydra):
    """ORY Hydra's JWT bearer grant: a trust relationship for the assertion's issuer,
    subject and key ID; the signing key in a Secret, the audience left to its default (the
    token URL); Hydra's introspection names the subject, the client and the scope."""
    from idp.test_idp_grants import hydra_grant_setup

    operator = own_operator(*INSECURE)
    grant, pem, client = hydra_grant_setup(hydra, "body")
    url = hydra.token_url
    cluster.source_secret("hg-client", {"client_secret": client.client_secret}, allowed_urls=url)
    cluster.source_secret("hg-key", {"key.pem": pem.decode()}, allowed_urls=url)
    create_credential(
        cluster,
        "hydra-grant",
        {
            "tokenURL": url,
            "clientID": client.client_id,
            "clientSecretRef": {"name": "hg-client", "key": "client_secret"},
            "clientAuthentication": "body",
            "scope": "api:read",
            "grantType": "jwt_bearer",
            "jwtBearer": {"keyRef": {"name": "hg-key", "key": "key.pem"}, **grant},
        },
    )
    cluster.wait_ready("hydra-grant", reason="TokenIssued", timeout=60)
    data = decode(cluster.secret("hydra-grant"))
    verdict = hydra.introspect(data["access_token"])
    assert verdict["active"] is True, verdict
    assert (verdict["sub"], verdict["client_id"]) == (grant["subject"], client.client_id)
    assert verdict["scope"] == "api:read"
    assert data["authorization"] == f"Bearer {data['access_token']}"
    leaks = secret_variants(data["access_token"])
    leaks |= secret_variants(client.client_secret, client_id=client.client_id)
    assert not [v for v in leaks if v in operator.log()]


# ---- grantType token_exchange (RFC 8693) with Keycloak's standard token exchange


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_keycloak_token_exchange_through_the_operator(cluster, own_operator, request, server):
    """The subject token is a Keycloak access token of another client, kept in a labelled
    Secret bound to the realm; a new subject token there is exchanged at once. (Standard
    token exchange takes only tokens of its own realm, so not a ServiceAccount token: that
    one is proven in test_operator_token_exchange.py.) On both pinned versions."""
    keycloak = request.getfixturevalue(server)
    operator = own_operator(*INSECURE)
    url = keycloak.issuer + "/"
    initial, requester = keycloak.add_exchange_clients()
    first_user, password = keycloak.add_user()
    subject = keycloak.password_token(initial, first_user, password)
    cluster.source_secret("te-client", {"client_secret": requester.client_secret}, allowed_urls=url)
    cluster.source_secret("te-subject", {"token": subject}, allowed_urls=url)
    create_credential(
        cluster,
        "te",
        {
            "tokenURL": keycloak.token_url,
            "clientID": requester.client_id,
            "clientSecretRef": {"name": "te-client", "key": "client_secret"},
            "grantType": "token_exchange",
            "tokenExchange": {
                "subjectTokenRef": {"name": "te-subject", "key": "token"},
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            },
        },
    )
    cluster.wait_ready("te", reason="TokenIssued", timeout=60)
    token = decode(cluster.secret("te"))["access_token"]
    verdict = keycloak.introspect(token)
    assert verdict["active"] is True, verdict
    assert (verdict["username"], verdict["client_id"]) == (first_user, requester.client_id)

    # Another user's token in the Secret: exchanged at once (the config-hash covers it).
    second_user, password = keycloak.add_user()
    second_subject = keycloak.password_token(initial, second_user, password)
    cluster.core.patch_namespaced_secret(
        "te-subject", cluster.ns, {"stringData": {"token": second_subject}}
    )

    def exchanged_again() -> str | None:
        data = decode(cluster.secret("te"))
        return data["access_token"] if data["access_token"] != token else None

    second = wait_for(exchanged_again, 60, "a token exchanged for the new subject token")
    verdict = keycloak.introspect(second)
    assert (verdict["username"], verdict["client_id"]) == (second_user, requester.client_id)
    leaks = set()
    for value in (token, second, subject, second_subject):
        leaks |= secret_variants(value)
    leaks |= secret_variants(requester.client_secret, client_id=requester.client_id)
    assert not [v for v in leaks if v in operator.log()]


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_keycloak_exchanges_another_credentials_token(cluster, own_operator, request, server):
    """`secret.asSource` against a real server: `upstream` gets a client-credentials token
    on Keycloak's HTTPS listener and offers its managed Secret to that listener only;
    `exchanged` sends it there as the subject token (standard token exchange), and
    Keycloak's introspection names the requester and upstream's service account."""
    keycloak = request.getfixturevalue(server)
    operator = own_operator(*INSECURE)
    https_issuer = keycloak.mtls_token_url.removesuffix("/protocol/openid-connect/token")
    url = https_issuer + "/"
    initial, requester = keycloak.add_exchange_clients()
    assert keycloak.tls_ca is not None
    cluster.source_secret(
        "kc-ca", {"ca.crt": keycloak.tls_ca.cert_pem.bytes().decode()}, allowed_urls=url
    )
    tls = {"caRef": {"kind": "Secret", "name": "kc-ca", "key": "ca.crt"}}
    for name, client in (("upstream", initial), ("exchanged", requester)):
        cluster.source_secret(
            f"{name}-client", {"client_secret": client.client_secret}, allowed_urls=url
        )
    common = {"tokenURL": keycloak.mtls_token_url, "tls": tls}
    create_credential(
        cluster,
        "exchanged",
        {
            **common,
            "clientID": requester.client_id,
            "clientSecretRef": {"name": "exchanged-client", "key": "client_secret"},
            "grantType": "token_exchange",
            "tokenExchange": {
                "subjectTokenRef": {"name": "upstream", "key": "access_token"},
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            },
        },
    )
    create_credential(
        cluster,
        "upstream",
        {
            **common,
            "clientID": initial.client_id,
            "clientSecretRef": {"name": "upstream-client", "key": "client_secret"},
            "secret": {"asSource": {"allowedTokenURLs": [url]}},
        },
    )
    cluster.wait_ready("upstream", reason="TokenIssued", timeout=60)
    cluster.wait_ready("exchanged", reason="TokenIssued", timeout=60)
    subject = decode(cluster.secret("upstream"))["access_token"]
    token = decode(cluster.secret("exchanged"))["access_token"]
    verdict = keycloak.introspect(token)
    assert verdict["active"] is True, verdict
    assert verdict["client_id"] == requester.client_id, verdict
    assert verdict["username"] == f"service-account-{initial.client_id}", verdict
    leaks = secret_variants(token) | secret_variants(subject)
    for client in (initial, requester):
        leaks |= secret_variants(client.client_secret, client_id=client.client_id)
    assert not [v for v in leaks if v in operator.log()]
