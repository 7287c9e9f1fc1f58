"""Issue 11 end to end through the operator: private_key_jwt against oidc-provider, and
workload identity against a token endpoint that verifies ServiceAccount tokens with the
API server's own discovery; every missing opt-in gives its reason and mints nothing (the
audit log shows no TokenRequest).

The token servers listen on plain http on loopback: the operators here run with
--allow-insecure and without the private-network guard, and credentials set
allowInsecureHTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from operator_helpers import SOURCE_LABEL, decode, wait_for
from operator_process import OPERATOR_USER

from servers.federated import FederatedTokenServer
from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
INSECURE = ("--allow-insecure", "--no-deny-private-networks")
WI_SA = ("tokensync-system", "tokensync-wi")
WI_USER = "system:serviceaccount:tokensync-system:tokensync-wi"
AUDIENCE = "api://tokensync-test"
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the fixture's issuer


def create_credential(cluster, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": name},
        "spec": {"allowInsecureHTTP": True, **spec},
    }
    cluster.custom.create_namespaced_custom_object(
        "tokensync.dev", "v1alpha1", cluster.ns, "oauth2credentials", body
    )


# ---- private_key_jwt against oidc-provider


def test_private_key_jwt_through_the_operator(cluster, own_operator, oidc_provider):
    operator = own_operator(*INSECURE, "--namespace", cluster.ns)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    client = oidc_provider.add_client("private_key_jwt", metadata={"jwks": {"keys": [jwk]}})
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cluster.source_secret("signing-key", {"key.pem": pem}, allowed_urls=client.token_url)
    create_credential(
        cluster,
        "pkjwt",
        {
            "tokenURL": client.token_url,
            "clientID": client.client_id,
            "clientAuthentication": "private_key_jwt",
            "clientAssertion": {
                "keyRef": {"name": "signing-key", "key": "key.pem"},
                "keyID": "k1",
            },
            "scope": "api:read",
        },
    )
    cluster.wait_ready("pkjwt", reason="TokenIssued")
    token = decode(cluster.secret("pkjwt"))["access_token"]

    def issued() -> list:
        return [i for i in oidc_provider.issued() if i["client_id"] == client.client_id]

    assert len(issued()) == 1
    # Key rotation: the config-hash covers the key, so a new key means a new token at once.
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(new_key.public_key(), as_dict=True), "kid": "k1"}
    oidc_provider.add_client(
        "private_key_jwt", client_id=client.client_id, metadata={"jwks": {"keys": [new_jwk]}}
    )
    new_pem = new_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cluster.source_secret("signing-key", {"key.pem": new_pem}, allowed_urls=client.token_url)
    wait_for(lambda: len(issued()) == 2, 30, "a token signed with the rotated key")
    cluster.wait_ready("pkjwt", reason="TokenIssued")
    assert decode(cluster.secret("pkjwt"))["access_token"] != token
    leaks = secret_variants(token) | {pem.splitlines()[1], new_pem.splitlines()[1]}
    assert not [v for v in leaks if v in operator.log()]


def test_weak_key_is_reference_invalid(cluster, own_operator, oidc_provider):
    own_operator(*INSECURE, "--namespace", cluster.ns)
    client = oidc_provider.add_client("private_key_jwt", metadata={"jwks": {"keys": []}})
    cluster.source_secret("bad-key", {"key.pem": "not a key"})
    create_credential(
        cluster,
        "weak",
        {
            "tokenURL": client.token_url,
            "clientID": client.client_id,
            "clientAuthentication": "private_key_jwt",
            "clientAssertion": {"keyRef": {"name": "bad-key", "key": "key.pem"}},
        },
    )
    ready = cluster.wait_ready("weak", "False", "ReferenceInvalid")
    assert "Secret 'bad-key'" in ready["message"]


# ---- workload identity


@pytest.fixture(scope="session")
def wi_kubeconfig(installed) -> Path:
    """A ServiceAccount with the base operator role plus the RBAC of the
    deploy/workload-identity overlay, exactly as rendered (bound to this account instead
    of the operator's, so the other tests keep their least-privilege operator)."""
    rendered = installed.kubectl("kustomize", str(REPO / "deploy" / "workload-identity")).stdout
    objects = []
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["metadata"]["name"] == "tokensync-workload-identity":
            if doc["kind"] == "ClusterRoleBinding":
                doc["metadata"]["name"] = "tokensync-wi-test"
                doc["subjects"] = [
                    {"kind": "ServiceAccount", "name": WI_SA[1], "namespace": WI_SA[0]}
                ]
            objects.append(doc)
    assert [o["kind"] for o in objects] == ["ClusterRole", "ClusterRoleBinding"]
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "tokensync-wi-test-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "tokensync-operator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": WI_SA[1], "namespace": WI_SA[0]}],
        }
    )
    installed.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )
    return installed.service_account_kubeconfig(*WI_SA)


@pytest.fixture
def federated(installed, tmp_path) -> Iterator[FederatedTokenServer]:
    def fetch(path: str) -> bytes:
        return installed.kubectl("get", "--raw", path).stdout.encode()

    server = FederatedTokenServer(
        fetch=fetch,
        audience=AUDIENCE,
        federation={},
        issuance_log=tmp_path / "federated-issued.jsonl",
    ).start()
    yield server
    server.stop()


def service_account(cluster, name: str, *, labelled=True, urls=None, audiences=None) -> None:
    metadata: dict[str, Any] = {"name": name, "labels": dict(SOURCE_LABEL) if labelled else {}}
    annotations = {}
    if urls is not None:
        annotations["tokensync.dev/allowed-token-urls"] = urls
    if audiences is not None:
        annotations["tokensync.dev/allowed-audiences"] = audiences
    metadata["annotations"] = annotations
    cluster.core.create_namespaced_service_account(cluster.ns, {"metadata": metadata})


def workload_credential(cluster, server, name: str, sa: str, audience: str = AUDIENCE) -> str:
    client_id = f"{name}-client"
    server.federation[client_id] = f"system:serviceaccount:{cluster.ns}:{sa}"
    create_credential(
        cluster,
        name,
        {
            "tokenURL": server.token_url,
            "clientID": client_id,
            "clientAuthentication": "workload_identity",
            "workloadIdentity": {"serviceAccountName": sa, "audience": audience},
        },
    )
    return client_id


def allow_minting(installed, namespace: str, sa: str) -> None:
    """The namespace's consent in RBAC (docs/guides/workload-identity.md), for WI_SA."""
    role = f"tokensync-mint-{sa}"
    installed.kubectl(
        "-n", namespace, "create", "role", role, "--verb=create",
        "--resource=serviceaccounts/token", f"--resource-name={sa}",
    )  # fmt: skip
    installed.kubectl(
        "-n", namespace, "create", "rolebinding", role, f"--role={role}",
        f"--serviceaccount={WI_SA[0]}:{WI_SA[1]}",
    )  # fmt: skip


def token_requests(installed, namespace: str, since: float) -> list[dict]:
    return [
        e
        for e in installed.audit_events(user=WI_USER, since=since)
        if (e.get("objectRef") or {}).get("subresource") == "token"
        and (e.get("objectRef") or {}).get("namespace") == namespace
    ]


def test_workload_identity_gets_a_token(cluster, installed, own_operator, wi_kubeconfig, federated):
    since = time.time() - 1
    operator = own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    allow_minting(installed, cluster.ns, "app")
    client_id = workload_credential(cluster, federated, "wi", "app")
    cluster.wait_ready("wi", reason="TokenIssued")
    assert decode(cluster.secret("wi"))["access_token"] in federated.tokens
    (claims,) = federated.verified_claims
    assert claims["sub"] == f"system:serviceaccount:{cluster.ns}:app"
    assert claims["aud"] == [AUDIENCE]
    assert claims["exp"] - claims["iat"] == 600
    assert federated.issued[0].client_id == client_id
    (minted,) = token_requests(installed, cluster.ns, since)
    assert (minted["verb"], minted["objectRef"]["name"]) == ("create", "app")
    assert minted["responseStatus"]["code"] == 201
    # Least privilege: what the operator did with ServiceAccounts is exactly what the
    # deploy/workload-identity overlay grants (get serviceaccounts, create .../token).
    used = {
        (e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource"))
        for e in installed.audit_events(user=WI_USER, since=since)
        if (e.get("objectRef") or {}).get("resource") == "serviceaccounts"
    }
    assert used == {("get", "serviceaccounts", None), ("create", "serviceaccounts", "token")}
    # Neither the issued token nor the ServiceAccount token sent as assertion is logged.
    assertions = [
        value
        for r in federated.received
        for key, value in parse_qsl(r.body.decode())
        if key == "client_assertion"
    ]
    assert len(assertions) == 1
    secrets = [*federated.tokens, *assertions]
    assert not [v for t in secrets for v in secret_variants(t) if v in operator.log()]


def test_each_missing_opt_in_gives_its_reason_and_mints_nothing(
    cluster, installed, own_operator, wi_kubeconfig, federated
):
    since = time.time() - 1
    own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    urls = federated.base_url + "/"
    service_account(cluster, "unlabelled", labelled=False, urls=urls, audiences=AUDIENCE)
    service_account(cluster, "no-urls", audiences=AUDIENCE)
    service_account(cluster, "other-urls", urls="https://idp.example/", audiences=AUDIENCE)
    service_account(cluster, "no-audiences", urls=urls)
    service_account(
        cluster, "api-audience", urls=urls, audiences=f"{AUDIENCE},{API_SERVER_AUDIENCE}"
    )
    cases = {
        "unlabelled": ("unlabelled", AUDIENCE, "ReferenceNotLabeled"),
        "no-urls": ("no-urls", AUDIENCE, "TokenURLNotAllowed"),
        "other-urls": ("other-urls", AUDIENCE, "TokenURLNotAllowed"),
        "no-audiences": ("no-audiences", AUDIENCE, "ReferenceNotLabeled"),
        "api-audience": ("api-audience", API_SERVER_AUDIENCE, "InvalidSpec"),
        "missing-sa": ("does-not-exist", AUDIENCE, "ReferenceNotFound"),
    }
    for name, (sa, audience, _) in cases.items():
        allow_minting(installed, cluster.ns, sa)  # RBAC allows: the operator's checks refuse
        workload_credential(cluster, federated, name, sa, audience)
    for name, (_, _, reason) in cases.items():
        cluster.wait_ready(name, "False", reason)
    assert token_requests(installed, cluster.ns, since) == []
    assert federated.received == []


def test_without_the_operator_flag_nothing_is_minted(
    cluster, installed, own_operator, wi_kubeconfig, federated
):
    since = time.time() - 1
    own_operator(*INSECURE, "--namespace", cluster.ns, kubeconfig=wi_kubeconfig)
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    workload_credential(cluster, federated, "wi", "app")
    ready = cluster.wait_ready("wi", "False", "InvalidSpec")
    assert "--enable-workload-identity" in ready["message"]
    assert token_requests(installed, cluster.ns, since) == []
    assert federated.received == []


def test_without_the_namespaces_role_binding_nothing_is_minted(
    cluster, installed, own_operator, wi_kubeconfig, federated
):
    """Issue 18: the overlay grants no minting; a namespace that did not bind the Role for
    this ServiceAccount gets a Ready condition that says how, and the IdP sees nothing."""
    since = time.time() - 1
    own_operator(
        *INSECURE, "--enable-workload-identity", "--namespace", cluster.ns, kubeconfig=wi_kubeconfig
    )
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    workload_credential(cluster, federated, "wi", "app")
    ready = cluster.wait_ready("wi", "False", "ReferenceNotLabeled")
    assert "create rolebinding" in ready["message"]
    assert "--resource-name=app" in ready["message"]
    (denied,) = token_requests(installed, cluster.ns, since)[:1]
    assert denied["responseStatus"]["code"] == 403
    assert federated.received == []


def can_mint(installed, namespace: str, account: str = "", user: str = WI_USER) -> str:
    """`kubectl auth can-i` for TokenRequest: the subresource must be a flag, since
    `serviceaccounts/token` would ask about a ServiceAccount named "token"."""
    resource = f"serviceaccounts/{account}" if account else "serviceaccounts"
    result = installed.kubectl(
        "auth", "can-i", "create", resource, "--subresource=token", f"--as={user}",
        "-n", namespace, check=False,
    )  # fmt: skip
    return result.stdout.strip()


def test_default_install_cannot_mint(installed):
    """The first opt-in's RBAC half: the default operator role grants no TokenRequest."""
    for namespace in ("default", "kube-system", "tokensync-system"):
        assert can_mint(installed, namespace, user=OPERATOR_USER) == "no", namespace


def test_the_overlay_grants_no_minting(cluster, installed, wi_kubeconfig):
    """Issue 18: deploy/workload-identity reads ServiceAccounts but mints nowhere by itself;
    the namespace's RoleBinding grants exactly the account it names (the positive control
    shows the question would see a grant)."""
    for namespace in ("default", "kube-system", "tokensync-system", cluster.ns):
        assert can_mint(installed, namespace) == "no", namespace
    allow_minting(installed, cluster.ns, "app")
    assert can_mint(installed, cluster.ns, "app") == "yes"
    assert can_mint(installed, cluster.ns, "other") == "no"
    assert can_mint(installed, "default", "app") == "no"


# ---- discovery


def test_issuer_url_discovers_the_endpoint_and_method(cluster, own_operator, oidc_provider):
    own_operator(*INSECURE, "--namespace", cluster.ns)
    client = oidc_provider.add_client("client_secret_basic", scope="api:read")
    cluster.source_secret(
        "oidc-client",
        {"client_secret": client.client_secret},
        allowed_urls=oidc_provider.issuer + "/",
    )
    spec = {
        "issuerURL": oidc_provider.issuer,
        "clientID": client.client_id,
        "clientSecretRef": {"name": "oidc-client", "key": "client_secret"},
        "scope": "api:read",
    }
    create_credential(cluster, "discovered", spec)
    create_credential(cluster, "wrong-issuer", {**spec, "issuerURL": oidc_provider.issuer + "/x"})
    cluster.wait_ready("discovered", reason="TokenIssued")
    status = cluster.credential("discovered")["status"]
    assert status["tokenURL"] == oidc_provider.token_url
    ready = cluster.wait_ready("wrong-issuer", "False", "DiscoveryFailed")
    assert oidc_provider.issuer + "/x/.well-known/" in ready["message"]


# ---- tokensync check --from-cluster with workload identity


def test_check_mints_with_the_users_permissions(cluster, installed, federated, tmp_path):
    from fixtures.token_servers import run_tokensync

    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    service_account(cluster, "closed", labelled=False, urls=federated.base_url + "/")
    federated.federation["check-client"] = f"system:serviceaccount:{cluster.ns}:app"
    results = {}
    for sa in ("app", "closed"):
        manifest = {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": "wi", "namespace": cluster.ns},
            "spec": {
                "tokenURL": federated.token_url,
                "allowInsecureHTTP": True,
                "clientID": "check-client",
                "clientAuthentication": "workload_identity",
                "workloadIdentity": {"serviceAccountName": sa, "audience": AUDIENCE},
            },
        }
        path = tmp_path / f"{sa}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        results[sa] = run_tokensync(
            "check", "-f", str(path), "--from-cluster", "--kubeconfig", str(installed.kubeconfig)
        )
    ok = results["app"]
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "result: token issued" in ok.stdout
    assert "--enable-workload-identity" in ok.stdout  # the note on the operator's opt-in
    (claims,) = federated.verified_claims
    assert claims["sub"] == f"system:serviceaccount:{cluster.ns}:app"
    refused = results["closed"]
    assert refused.returncode == 3
    assert "ReferenceNotLabeled" in refused.stdout
    assert len(federated.issued) == 1


def test_the_federated_endpoint_really_verifies(cluster, installed, federated):
    """The test IdP is only worth something if it refuses what a real IdP refuses."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    for name in ("app", "other"):
        service_account(cluster, name)
    subject = f"system:serviceaccount:{cluster.ns}:app"
    federated.federation["c"] = subject

    def token(sa: str, audience: str) -> str:
        return installed.kubectl(
            "create", "token", sa, "-n", cluster.ns, "--audience", audience
        ).stdout.strip()

    good = token("app", AUDIENCE)
    assert federated.verify(good, "c")["sub"] == subject
    with pytest.raises(jwt.InvalidAudienceError):
        federated.verify(token("app", "api://someone-else"), "c")
    with pytest.raises(jwt.exceptions.InvalidSubjectError):
        federated.verify(token("other", AUDIENCE), "c")
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header["kid"]})
    with pytest.raises(jwt.InvalidSignatureError):
        federated.verify(forged, "c")
    # The genuine token, verified as if a minute after it expired:
    lifetime = claims["exp"] - claims["iat"]
    with pytest.raises(jwt.ExpiredSignatureError):
        federated.verify(good, "c", ahead=lifetime + 60)


# ---- client_secret_jwt and tls_client_auth through the operator


def test_client_secret_jwt_through_the_operator(cluster, own_operator, oidc_provider):
    operator = own_operator(*INSECURE, "--namespace", cluster.ns)
    client = oidc_provider.add_client(
        "client_secret_jwt", metadata={"token_endpoint_auth_signing_alg": "HS512"}
    )
    cluster.source_secret(
        "csjwt-client", {"client_secret": client.client_secret}, allowed_urls=client.token_url
    )
    create_credential(
        cluster,
        "csjwt",
        {
            "tokenURL": client.token_url,
            "clientID": client.client_id,
            "clientSecretRef": {"name": "csjwt-client", "key": "client_secret"},
            "clientAuthentication": "client_secret_jwt",
            "clientAssertion": {"algorithm": "HS512"},
        },
    )
    cluster.wait_ready("csjwt", reason="TokenIssued")
    assert [i for i in oidc_provider.issued() if i["client_id"] == client.client_id]
    leaks = secret_variants(client.client_secret, client_id=client.client_id)
    assert not [v for v in leaks if v in operator.log()]


def test_tls_client_auth_through_the_operator(
    cluster, own_operator, tmp_path, client_ca, client_cert
):
    from servers.oidc import OIDCProvider
    from servers.quirky import ServerTLS

    own_operator("--no-deny-private-networks", "--namespace", cluster.ns)
    tls = ServerTLS.for_ca(cluster.ca, client_ca=client_ca)
    material = (tls.cert_chain_pem, tls.private_key_pem, client_ca.cert_pem.bytes())
    with OIDCProvider.start(tmp_path, mtls=material) as provider:
        client = provider.add_client(
            "tls_client_auth",
            metadata={"tls_client_auth_san_email": "tokensync-client@tokensync.test"},
        )
        cluster.core.create_namespaced_secret(
            cluster.ns,
            {
                "metadata": {
                    "name": "client-cert",
                    "labels": dict(SOURCE_LABEL),
                    "annotations": {"tokensync.dev/allowed-token-urls": client.token_url},
                },
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": client_cert.cert_pem.decode(),
                    "tls.key": client_cert.key_pem.decode(),
                },
            },
        )
        create_credential(
            cluster,
            "mtls",
            {
                "tokenURL": client.token_url,
                "allowInsecureHTTP": False,
                "clientID": client.client_id,
                "clientAuthentication": "tls_client_auth",
                "tls": {
                    "caRef": cluster.ca_configmap(),
                    "clientCertificateRef": {"name": "client-cert"},
                },
            },
        )
        cluster.wait_ready("mtls", reason="TokenIssued")
        assert [i for i in provider.issued() if i["client_id"] == client.client_id]


def test_flag_without_the_rbac_overlay_says_so(cluster, installed, own_operator, federated):
    """The default install's operator (base RBAC) with the flag: Forbidden, shown in Ready."""
    since = time.time() - 1
    own_operator(*INSECURE, "--enable-workload-identity", "--namespace", cluster.ns)
    service_account(cluster, "app", urls=federated.base_url + "/", audiences=AUDIENCE)
    workload_credential(cluster, federated, "wi", "app")
    ready = cluster.wait_ready("wi", "False", "InvalidSpec")
    assert "deploy/workload-identity/" in ready["message"]
    operator_user = "system:serviceaccount:tokensync-system:tokensync"
    minted = [
        e
        for e in installed.audit_events(user=operator_user, since=since)
        if (e.get("objectRef") or {}).get("subresource") == "token"
    ]
    assert minted == []
    assert federated.received == []
