"""`tokensync check` with private_key_jwt, client_secret_jwt, tls_client_auth and issuerURL,
against the real oidc-provider."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from idp.idpcases import active_for
from idp.idplib import OIDCProviderIdP

from fixtures.token_servers import ClientCert
from servers.oidc import OIDCProvider
from servers.quirky import ServerTLS
from tokensync import cli


def run_check(capsys, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["check", "-f", str(path), "-o", "json", *args])
    return code, json.loads(capsys.readouterr().out)


def secret(name: str, data: dict[str, bytes], type_: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": type_,
        "metadata": {"name": name, "labels": {"tokensync.dev/credential-source": "true"}},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def write_manifest(tmp_path: Path, spec: dict[str, Any], *sources: dict[str, Any]) -> Path:
    credential = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": spec,
    }
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump_all([credential, *sources], sort_keys=False))
    return path


def test_private_key_jwt(capsys, tmp_path, oidc_provider: OIDCProvider):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    client = oidc_provider.add_client("private_key_jwt", metadata={"jwks": {"keys": [jwk]}})
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = write_manifest(
        tmp_path,
        {
            "tokenURL": client.token_url,
            "allowInsecureHTTP": True,
            "clientID": client.client_id,
            "clientAuthentication": "private_key_jwt",
            "clientAssertion": {"keyRef": {"name": "signing-key", "key": "key.pem"}},
            "scope": "api:read",
        },
        secret("signing-key", {"key.pem": pem}),
    )
    code, report = run_check(capsys, path)
    assert code == 0, report
    assert report["request"]["clientAuthentication"] == "private_key_jwt"
    assert "signing-key" in report["request"]["clientAssertionKey"]
    assert pem.decode().splitlines()[1] not in json.dumps(report)


def test_client_secret_jwt_and_issuer_discovery(capsys, tmp_path, oidc_provider: OIDCProvider):
    client = oidc_provider.add_client("client_secret_jwt")
    path = write_manifest(
        tmp_path,
        {
            "issuerURL": oidc_provider.issuer,
            "allowInsecureHTTP": True,
            "clientID": client.client_id,
            "clientAuthentication": "client_secret_jwt",
            "clientAssertion": {"algorithm": "HS256"},
            "clientSecretRef": {"name": "client", "key": "secret"},
        },
        secret("client", {"secret": client.client_secret.encode()}),
    )
    code, report = run_check(capsys, path)
    assert code == 0, report
    assert report["request"]["endpoint"] == oidc_provider.token_url
    assert report["request"]["discoveredFrom"] == oidc_provider.issuer
    assert client.client_secret not in json.dumps(report)


def test_discovery_failure_is_reported(capsys, tmp_path, oidc_provider: OIDCProvider):
    path = write_manifest(
        tmp_path,
        {
            "issuerURL": oidc_provider.issuer + "/not-the-issuer",
            "allowInsecureHTTP": True,
            "clientID": "c",
            "clientSecretRef": {"name": "client", "key": "secret"},
        },
        secret("client", {"secret": b"s3cret-value"}),
    )
    code, report = run_check(capsys, path)
    assert code == 4
    assert report["result"]["stage"] == "discovery"
    assert "/not-the-issuer/.well-known/" in report["result"]["problems"][0]


@pytest.mark.parametrize("probe", [False, True], ids=["check", "probe"])
def test_tls_client_auth(capsys, tmp_path, token_ca, client_ca, client_cert: ClientCert, probe):
    """With --probe, from a JSON body (oidc-provider reads only form bodies): the same
    method with a form body. oidc-provider's introspection calls the token active."""
    tls = ServerTLS.for_ca(token_ca, client_ca=client_ca)
    material = (tls.cert_chain_pem, tls.private_key_pem, client_ca.cert_pem.bytes())
    with OIDCProvider.start(tmp_path, mtls=material) as provider:
        client = provider.add_client(
            "tls_client_auth",
            metadata={"tls_client_auth_san_email": "tokensync-client@tokensync.test"},
        )
        path = write_manifest(
            tmp_path,
            {
                "tokenURL": client.token_url,
                "clientID": client.client_id,
                "clientAuthentication": "tls_client_auth",
                "tls": {
                    "caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"},
                    "clientCertificateRef": {"name": "client-cert"},
                },
                **({"contentType": "application/json"} if probe else {}),
            },
            secret("ca", {"ca.crt": token_ca.cert_pem.bytes()}),
            secret(
                "client-cert",
                {"tls.crt": client_cert.cert_pem, "tls.key": client_cert.key_pem},
                "kubernetes.io/tls",
            ),
        )
        code, report = run_check(capsys, path, "--show-token", *(["--probe"] if probe else []))
        assert code == 0, report
        introspect = OIDCProviderIdP(provider).introspect
        assert active_for(introspect, report["result"]["accessToken"], client.client_id)
    assert report["request"]["clientCertificate"] == "Secret 'client-cert'"
    if probe:
        assert [a["combination"] for a in report["probe"]["attempts"]] == [
            "tls_client_auth + JSON (scope none)",
            "tls_client_auth + form (scope none)",
        ]
        assert report["probe"]["specLines"][:2] == [
            "clientAuthentication: tls_client_auth",
            "contentType: application/x-www-form-urlencoded",
        ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"clientAuthentication": "private_key_jwt"}, "spec.clientAssertion.keyRef: is required"),
        (
            {
                "clientAuthentication": "workload_identity",
                "workloadIdentity": {"serviceAccountName": "sa", "audience": "api://x"},
            },
            "run with --from-cluster",
        ),
    ],
)
def test_spec_problems(capsys, tmp_path, spec, problem):
    path = write_manifest(
        tmp_path, {"tokenURL": "https://idp.example/token", "clientID": "c", **spec}
    )
    code, report = run_check(capsys, path)
    assert code == 2
    assert any(problem in p for p in report["result"]["problems"])


# ---- the examples, checked against oidc-provider

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_against(tmp_path: Path, name: str, token_url: str, client_id: str) -> Path:
    docs = list(yaml.safe_load_all((EXAMPLES / name).read_text()))
    for doc in docs:
        if doc["kind"] == "OAuth2Credential":
            doc["spec"].update(tokenURL=token_url, clientID=client_id, allowInsecureHTTP=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def pem_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("example", "key_name", "kid", "make_key"),
    [
        ("okta-private-key-jwt.yaml", "okta-signing-key/private.pem", "tokensync-2026", "rsa"),
        ("keycloak-signed-jwt.yaml", "keycloak-signing-key/private.pem", None, "p256"),
    ],
)
def test_key_examples(capsys, tmp_path, oidc_provider, example, key_name, kid, make_key):
    from cryptography.hazmat.primitives.asymmetric import ec

    if make_key == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid:
        jwk["kid"] = kid
    client = oidc_provider.add_client(
        "private_key_jwt", metadata={"jwks": {"keys": [jwk]}}, scope="api:read"
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = example_against(tmp_path, example, client.token_url, client.client_id)
    # The examples' scope is the IdP's; oidc-provider knows api:read only.
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["kind"] == "OAuth2Credential":
            doc["spec"]["scope"] = "api:read"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    key_file = pem_file(tmp_path, "key.pem", pem)
    code, report = run_check(capsys, path, "--ref", f"{key_name}={key_file}")
    assert code == 0, report["result"]["message"]
    assert report["request"]["clientAuthentication"] == "private_key_jwt"


def test_entra_certificate_example(capsys, tmp_path, oidc_provider):
    import trustme

    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = rsa_ca.issue_cert("orders-sync.example", key_type=trustme.KeyType.RSA)
    key_pem = leaf.private_key_pem.bytes()
    cert_pem = leaf.cert_chain_pems[0].bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    client = oidc_provider.add_client("private_key_jwt", metadata={"jwks": {"keys": [jwk]}})
    path = example_against(
        tmp_path, "entra-id-certificate.yaml", client.token_url, client.client_id
    )
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["kind"] == "OAuth2Credential":
            doc["spec"]["scope"] = "api:read"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    code, report = run_check(
        capsys,
        path,
        "--ref",
        f"entra-orders-cert/tls.key={pem_file(tmp_path, 'tls.key', key_pem)}",
        "--ref",
        f"entra-orders-cert/tls.crt={pem_file(tmp_path, 'tls.crt', cert_pem)}",
    )
    assert code == 0, report
    assert "x5t#S256" in report["request"]["clientAssertionKey"]
