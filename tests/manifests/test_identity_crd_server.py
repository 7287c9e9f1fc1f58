"""The CEL rules of issue 11's fields on a real kube-apiserver: tokenURL xor issuerURL, the
secret/key/certificate each clientAuthentication needs, clientAssertion and
workloadIdentity only with their methods (server-side dry run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from manifestlib import DEPLOY

from fixtures.controlplane import ControlPlane

pytestmark = pytest.mark.envtest

SECRET = {"name": "client", "key": "client_secret"}
KEY = {"keyRef": {"name": "signing-key"}}
WI = {"serviceAccountName": "app", "audience": "api://AzureADTokenExchange"}
CERT = {"clientCertificateRef": {"name": "client-cert"}}
GRANT = {
    "keyRef": {"name": "grant-key", "key": "key.pem"},
    "issuer": "https://signer.example.com",
    "subject": "bot",
}
SUBJECT = {"subjectTokenRef": {"name": "subject", "key": "token"}}
SAML = {"keyRef": {"name": "sf-key", "key": "tls.key"}, "subject": "sfadmin"}
PUBLIC = {"clientAuthentication": "none", "grantType": "saml2_bearer"}
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
STS = "https://sts.example.com/v1/"


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    control_plane.kubectl("apply", "-k", str(DEPLOY))
    control_plane.wait_established("oauth2credentials.tokensync.dev")
    name = control_plane.create_namespace("identity-cel")
    yield name
    control_plane.delete_namespace(name)


def spec_of(**fields: Any) -> dict[str, Any]:
    spec = {"tokenURL": "https://idp.example.com/oauth2/token", "clientID": "client", **fields}
    return {k: v for k, v in spec.items() if v is not None}


def dry_run(cp: ControlPlane, namespace: str, spec: dict[str, Any]) -> Any:
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "probe"},
        "spec": spec,
    }
    return cp.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(body),
        check=False,
    )


@pytest.mark.parametrize(
    "spec",
    [
        spec_of(clientSecretRef=SECRET),
        spec_of(
            tokenURL=None, issuerURL="https://login.example.com/tenant", clientSecretRef=SECRET
        ),
        spec_of(clientAuthentication="private_key_jwt", clientAssertion=KEY),
        spec_of(
            clientAuthentication="private_key_jwt",
            clientAssertion={
                "keyRef": {"name": "k", "key": "key.pem"},
                "algorithm": "PS256",
                "keyID": "kid-1",
                "audience": "https://login.example.com",
            },
        ),
        spec_of(
            clientAuthentication="client_secret_jwt",
            clientSecretRef=SECRET,
            clientAssertion={"algorithm": "HS512"},
        ),
        spec_of(clientAuthentication="tls_client_auth", tls=CERT),
        spec_of(clientAuthentication="workload_identity", workloadIdentity=WI),
        spec_of(
            clientAuthentication="workload_identity",
            workloadIdentity=WI,
            clientIDInRequest=False,
        ),
        spec_of(clientSecretRef=SECRET, clientIDInRequest=True),
        spec_of(clientSecretRef=SECRET, grantType="jwt_bearer", jwtBearer=GRANT),
        spec_of(clientSecretRef=SECRET, grantType="jwt_bearer", jwtBearer={"workloadIdentity": WI}),
        spec_of(clientSecretRef=SECRET, grantType="token_exchange", tokenExchange=SUBJECT),
        spec_of(
            clientSecretRef=SECRET,
            grantType="token_exchange",
            tokenExchange={
                "workloadIdentity": WI,
                "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
                "requestedTokenType": ACCESS_TOKEN,
            },
            audience="target-service",
            resource="https://api.example.com/",
            scope="read",
        ),
        spec_of(
            clientAuthentication="tls_client_auth",
            tls={
                "clientCertificateRef": {
                    "name": "binding",
                    "certificateKey": "certificate",
                    "privateKeyKey": "key",
                }
            },
        ),
        spec_of(
            clientSecretRef=SECRET,
            rolloutRestart=[
                {"kind": "Deployment", "name": "orders"},
                {"kind": "StatefulSet", "name": "orders"},
                {"kind": "DaemonSet", "name": "agent"},
            ],
        ),
        spec_of(**PUBLIC, saml2Bearer=SAML),
        spec_of(
            **PUBLIC,
            saml2Bearer={
                **SAML,
                "certificateRef": {"name": "sf-key", "key": "tls.crt"},
                "issuer": "client",
                "audience": "www.successfactors.com",
                "nameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
                "companyID": "ACME01",
                "attributes": {"use_username": "true"},
                "lifetimeSeconds": 600,
                "encoding": "base64",
            },
            extraParameters={"target": "odata"},
        ),
        spec_of(clientAuthentication="none", grantType="jwt_bearer", jwtBearer=GRANT),
        spec_of(clientSecretRef=SECRET, secret={"asSource": {"allowedTokenURLs": [STS]}}),
    ],
    ids=[
        "header",
        "issuer",
        "pkjwt-tls-secret",
        "pkjwt-key",
        "csjwt",
        "mtls",
        "workload",
        "workload-no-client-id",
        "header-client-id-true",
        "jwt-bearer-key",
        "jwt-bearer-serviceaccount",
        "token-exchange-secret",
        "token-exchange-serviceaccount",
        "mtls-named-keys",
        "rollout-restart",
        "saml2-bearer",
        "saml2-bearer-every-field",
        "jwt-bearer-public-client",
        "as-source",
    ],
)
def test_valid_specs_are_accepted(control_plane, namespace, spec):
    result = dry_run(control_plane, namespace, spec)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (spec_of(tokenURL=None, clientSecretRef=SECRET), "spec.tokenURL or spec.issuerURL"),
        (
            spec_of(issuerURL="https://login.example.com", clientSecretRef=SECRET),
            "spec.tokenURL or spec.issuerURL",
        ),
        (
            spec_of(tokenURL=None, issuerURL="http://login.example.com", clientSecretRef=SECRET),
            "spec.issuerURL must use https://",
        ),
        (spec_of(), "spec.clientSecretRef is required"),
        (
            spec_of(
                clientAuthentication="private_key_jwt", clientAssertion=KEY, clientSecretRef=SECRET
            ),
            "spec.clientSecretRef is not allowed",
        ),
        (
            spec_of(clientAuthentication="private_key_jwt"),
            "spec.clientAssertion.keyRef is required",
        ),
        (
            spec_of(
                clientAuthentication="client_secret_jwt",
                clientSecretRef=SECRET,
                clientAssertion=KEY,
            ),
            "spec.clientAssertion.keyRef is only used",
        ),
        (
            spec_of(
                clientAuthentication="client_secret_jwt",
                clientSecretRef=SECRET,
                clientAssertion={"algorithm": "RS256"},
            ),
            "spec.clientAssertion.algorithm",
        ),
        (
            spec_of(clientSecretRef=SECRET, clientAssertion={"keyID": "x"}),
            "spec.clientAssertion is only used",
        ),
        (
            spec_of(clientAuthentication="tls_client_auth"),
            "spec.tls.clientCertificateRef is required",
        ),
        (spec_of(clientAuthentication="workload_identity"), "spec.workloadIdentity is required"),
        (
            spec_of(clientSecretRef=SECRET, workloadIdentity=WI),
            "spec.workloadIdentity is required with, and only used with",
        ),
        (
            spec_of(
                clientAuthentication="workload_identity",
                workloadIdentity={**WI, "expirationSeconds": 60},
            ),
            "spec.workloadIdentity.expirationSeconds",
        ),
        (
            spec_of(clientSecretRef=SECRET, clientIDInRequest=False),
            "spec.clientIDInRequest can be false only with",
        ),
        (
            spec_of(clientAuthentication="tls_client_auth", tls=CERT, clientIDInRequest=False),
            "spec.clientIDInRequest can be false only with",
        ),
        (
            spec_of(clientSecretRef=SECRET, grantType="jwt_bearer"),
            "spec.jwtBearer is required with, and only used with, grantType: jwt_bearer",
        ),
        (
            spec_of(clientSecretRef=SECRET, jwtBearer=GRANT),
            "spec.jwtBearer is required with, and only used with, grantType: jwt_bearer",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="jwt_bearer",
                jwtBearer={**GRANT, "workloadIdentity": WI},
            ),
            "spec.jwtBearer needs exactly one of keyRef and workloadIdentity",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="jwt_bearer",
                jwtBearer={"keyRef": GRANT["keyRef"], "issuer": "https://signer.example.com"},
            ),
            "spec.jwtBearer.issuer and spec.jwtBearer.subject are required",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="jwt_bearer",
                jwtBearer={"workloadIdentity": WI, "subject": "x"},
            ),
            "are only used with spec.jwtBearer.keyRef",
        ),
        (
            spec_of(
                clientAuthentication="workload_identity",
                workloadIdentity=WI,
                grantType="jwt_bearer",
                jwtBearer={"workloadIdentity": WI},
            ),
            "spec.jwtBearer.workloadIdentity cannot be combined",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="jwt_bearer",
                jwtBearer=GRANT,
                extraParameters={"assertion": "x"},
            ),
            "spec.extraParameters may not set assertion",
        ),
        (
            spec_of(clientSecretRef=SECRET, grantType="token_exchange"),
            "spec.tokenExchange is required with, and only used with, grantType: token_exchange",
        ),
        (
            spec_of(clientSecretRef=SECRET, tokenExchange=SUBJECT),
            "spec.tokenExchange is required with, and only used with, grantType: token_exchange",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="token_exchange",
                tokenExchange={**SUBJECT, "workloadIdentity": WI},
            ),
            "spec.tokenExchange needs exactly one of subjectTokenRef and workloadIdentity",
        ),
        (
            spec_of(clientSecretRef=SECRET, grantType="token_exchange", tokenExchange={}),
            "spec.tokenExchange needs exactly one of subjectTokenRef and workloadIdentity",
        ),
        (
            spec_of(
                clientAuthentication="workload_identity",
                workloadIdentity=WI,
                grantType="token_exchange",
                tokenExchange={"workloadIdentity": WI},
            ),
            "spec.tokenExchange.workloadIdentity cannot be combined",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="token_exchange",
                tokenExchange=SUBJECT,
                extraParameters={"Actor_Token": "x"},
            ),
            "spec.extraParameters may not set subject_token",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="token_exchange",
                tokenExchange={**SUBJECT, "subjectTokenType": "access_token"},
            ),
            "spec.tokenExchange.subjectTokenType",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                grantType="token_exchange",
                tokenExchange={**SUBJECT, "requestedTokenType": "urn:a b"},
            ),
            "spec.tokenExchange.requestedTokenType",
        ),
        (
            spec_of(
                clientAuthentication="tls_client_auth",
                tls={"clientCertificateRef": {"name": "binding", "certificateKey": "certificate"}},
            ),
            "certificateKey and privateKeyKey are set together or not at all",
        ),
        (
            spec_of(
                clientAuthentication="tls_client_auth",
                tls={
                    "clientCertificateRef": {
                        "name": "binding",
                        "certificateKey": "pem",
                        "privateKeyKey": "pem",
                    }
                },
            ),
            "certificateKey and privateKeyKey must name different keys",
        ),
        (
            spec_of(clientSecretRef=SECRET, rolloutRestart=[{"kind": "Pod", "name": "a"}]),
            'spec.rolloutRestart[0].kind: Unsupported value: "Pod"',
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                rolloutRestart=[{"kind": "Deployment", "name": "a"}] * 2,
            ),
            "spec.rolloutRestart[1]: Duplicate value",
        ),
        (spec_of(clientAuthentication="none"), "spec.clientAuthentication none (a public client)"),
        (
            spec_of(**PUBLIC, saml2Bearer=SAML, clientSecretRef=SECRET),
            "spec.clientSecretRef is not allowed",
        ),
        (
            spec_of(**PUBLIC),
            "spec.saml2Bearer is required with, and only used with, grantType: saml2_bearer",
        ),
        (
            spec_of(clientSecretRef=SECRET, saml2Bearer=SAML),
            "spec.saml2Bearer is required with, and only used with, grantType: saml2_bearer",
        ),
        (
            spec_of(**PUBLIC, saml2Bearer={"keyRef": SAML["keyRef"]}),
            "spec.saml2Bearer.subject: Required value",
        ),
        (
            spec_of(**PUBLIC, saml2Bearer={**SAML, "subject": "a\u0007b"}),
            "spec.saml2Bearer.subject must not contain control characters",
        ),
        (
            spec_of(**PUBLIC, saml2Bearer={**SAML, "encoding": "hex"}),
            'spec.saml2Bearer.encoding: Unsupported value: "hex"',
        ),
        (
            spec_of(**PUBLIC, saml2Bearer=SAML, extraParameters={"ASSERTION": "x"}),
            "spec.extraParameters may not set assertion",
        ),
        (
            spec_of(
                **PUBLIC,
                saml2Bearer={**SAML, "companyID": "ACME01"},
                extraParameters={"company_id": "OTHER"},
            ),
            "spec.extraParameters may not set company_id",
        ),
        (
            spec_of(clientSecretRef=SECRET, secret={"asSource": {"allowedTokenURLs": []}}),
            "spec.secret.asSource.allowedTokenURLs: Invalid value",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                secret={"asSource": {"allowedTokenURLs": ["http://sts.example.com/v1/"]}},
            ),
            "spec.secret.asSource.allowedTokenURLs[0]: Invalid value",
        ),
        (
            spec_of(
                clientSecretRef=SECRET,
                secret={"asSource": {"allowedTokenURLs": [f"{STS}{i}/" for i in range(9)]}},
            ),
            "spec.secret.asSource.allowedTokenURLs: Too many",
        ),
    ],
)
def test_invalid_specs_are_rejected(control_plane, namespace, spec, words):
    result = dry_run(control_plane, namespace, spec)
    assert result.returncode != 0, f"accepted: {spec}"
    assert words in result.stderr, result.stderr


def test_workload_identity_overlay_renders_and_is_accepted(control_plane, namespace):
    """deploy/workload-identity: the base plus its component's RBAC and flag, accepted by
    the API server (server-side dry run)."""
    rendered = control_plane.kubectl("kustomize", str(DEPLOY / "workload-identity"))
    text = rendered.stdout
    assert "--enable-workload-identity" in text
    assert "serviceaccounts/token" in text
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    assert "tokensync-workload-identity" in result.stdout
