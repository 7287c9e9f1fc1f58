"""`grantType: jwt_bearer` (RFC 7523 2.1) against Keycloak's JWT Authorization Grant:
tokensync signs the assertion with a key from a file (as from a Secret) and Keycloak
issues a token for the user linked to the assertion's subject, which its own
introspection confirms."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from idp.idpcases import KEYCLOAKS, jwk_of
from idp.idplib import Hydra, Keycloak

from tokensync import cli
from tokensync.oauth2 import JWT_BEARER_GRANT


def grant_setup(keycloak: Keycloak) -> tuple[str, str, bytes, str, object]:
    """A JWT Authorization Grant provider trusting a fresh EC key, a user linked as
    `subject`, and a client allowed the grant: (issuer, subject, key PEM, username, client)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    alias = f"signer-{secrets.token_hex(3)}"
    issuer = f"https://{alias}.example.com"
    keycloak.add_jwt_grant_provider(alias, issuer, public_key_pem=public.decode())
    subject = f"bot-{secrets.token_hex(3)}"
    username = keycloak.add_linked_user(alias, subject)
    client = keycloak.add_grant_client(alias)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # SEC1
        serialization.NoEncryption(),
    )
    return issuer, subject, pem, username, client


def check_grant(
    capsys, tmp_path, token_url: str, client: Any, pem: bytes, grant: dict[str, Any], **spec: Any
) -> tuple[int, dict[str, Any], str]:
    """`tokensync check` of a jwt_bearer credential, its signing key from a file (as from
    a Secret): exit code, JSON report and the whole output."""
    credential = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "grant"},
        "spec": {
            "tokenURL": token_url,
            "allowInsecureHTTP": True,
            "clientID": client.client_id,
            "clientSecretRef": {"name": "client", "key": "secret"},
            "grantType": "jwt_bearer",
            "jwtBearer": {"keyRef": {"name": "grant-key", "key": "key.pem"}, **grant},
            **spec,
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(credential))
    (tmp_path / "secret").write_text(client.client_secret)
    (tmp_path / "key.pem").write_bytes(pem)
    code = cli.main(
        [
            "check",
            "-f",
            str(tmp_path / "c.yaml"),
            "--client-secret-file",
            str(tmp_path / "secret"),
            "--ref",
            f"grant-key/key.pem={tmp_path / 'key.pem'}",
            "-o",
            "json",
            "--show-token",
        ]
    )
    out = capsys.readouterr().out
    return code, json.loads(out), out


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_jwt_bearer_grant_through_check(capsys, tmp_path, request, server):
    keycloak = request.getfixturevalue(server)
    issuer, subject, pem, username, client = grant_setup(keycloak)
    grant = {"issuer": issuer, "subject": subject, "audience": keycloak.issuer}
    code, report, _ = check_grant(capsys, tmp_path, keycloak.token_url, client, pem, grant)
    assert code == 0, report["result"]
    assert report["request"]["grant"].startswith("jwt_bearer (assertion signed with Secret")
    verdict = keycloak.introspect(report["result"]["accessToken"])
    assert verdict["active"] is True
    assert (verdict["username"], verdict["client_id"]) == (username, client.client_id)


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_wrong_subject_is_refused(capsys, tmp_path, request, server):
    keycloak = request.getfixturevalue(server)
    issuer, _subject, pem, _username, client = grant_setup(keycloak)
    grant = {"issuer": issuer, "subject": "nobody-linked", "audience": keycloak.issuer}
    code, report, out = check_grant(capsys, tmp_path, keycloak.token_url, client, pem, grant)
    assert code != 0
    assert report["result"]["httpStatus"] == 400, report["result"]
    assert client.client_secret not in out


def hydra_grant_setup(hydra: Hydra, method: str) -> tuple[dict[str, str], bytes, Any]:
    """A trust relationship in Hydra for a fresh EC key (kid `grant-1`) about a fresh
    subject, scope `api:read`, and a `method` client allowed the grant: (the jwtBearer
    fields, key PEM, client)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = f"https://signer-{secrets.token_hex(3)}.example.com"
    subject = f"bot-{secrets.token_hex(3)}"
    hydra.trust_jwt_grant_issuer(issuer, subject, jwk_of(key, "grant-1", "ES256"), ["api:read"])
    client = hydra.add_client(method, grant_types=(JWT_BEARER_GRANT,))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"keyID": "grant-1", "issuer": issuer, "subject": subject}, pem, client


def test_jwt_bearer_grant_on_hydra(capsys, tmp_path, hydra):
    """ORY Hydra's JWT bearer grant: a trust relationship for the assertion's issuer and
    subject with the public key (by `kid`), a client allowed the grant; Hydra's own
    introspection names the subject and the client."""
    grant, pem, client = hydra_grant_setup(hydra, "header")
    subject = grant["subject"]
    code, report, _ = check_grant(
        capsys, tmp_path, hydra.token_url, client, pem, grant, scope="api:read"
    )
    assert code == 0, report["result"]
    verdict = hydra.introspect(report["result"]["accessToken"])
    assert verdict["active"] is True, verdict
    assert (verdict["sub"], verdict["client_id"]) == (subject, client.client_id)
    assert verdict["scope"] == "api:read"
