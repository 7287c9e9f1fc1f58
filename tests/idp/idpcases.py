"""The client authentication matrix against Keycloak, Hydra and oidc-provider, shared by
the check tests (tests/idp) and the operator tests (tests/operator/test_operator_idp.py):
each case registers a client on the server and says which spec fields and which files
(client secret, signing key) a credential needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from idp.idplib import Hydra, IdPClient, Keycloak, OIDCProviderIdP

KEY_NAME = "signing-key"
CERT_NAME = "client-cert"  # tls_client_auth: the kubernetes.io/tls Secret
CA_NAME = "server-ca"  # tls_client_auth: the CA of the HTTPS listener


@dataclass
class Setup:
    """What a credential needs: the client, spec fields, and referenced data."""

    client: IdPClient
    spec: dict[str, Any]
    key_pem: bytes | None = None  # private_key_jwt: the key Secret's data
    secret: str = field(default="", repr=False)
    # tls_client_auth: the kubernetes.io/tls Secret's tls.crt and tls.key, and the CA of
    # the server's certificate (tls.caRef)
    client_cert: tuple[bytes, bytes] | None = field(default=None, repr=False)
    ca_pem: bytes | None = None


def _key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1())


def _pem(key: Any, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def jwk_of(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of a private key, with its kid, use and alg."""
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else None
    algorithm = algorithm or jwt.algorithms.ECAlgorithm
    return {
        **algorithm.to_jwk(key.public_key(), as_dict=True),
        "kid": kid,
        "use": "sig",
        "alg": alg,
    }


@dataclass(frozen=True)
class Case:
    """One method (and for private_key_jwt, one key type and format). `discovered`: the
    spec names the server's issuerURL instead of tokenURL and clientAuthentication, so
    discovery finds both (a client-secret method)."""

    label: str
    method: str
    key: str | None = None  # rsa | p256 | p384
    key_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8
    algorithm: str | None = None
    discovered: bool = False

    def setup(self, server: Keycloak | Hydra | OIDCProviderIdP) -> Setup:
        spec: dict[str, Any] = {"clientAuthentication": self.method}
        if self.discovered:  # None: the credential leaves tokenURL out
            spec = {"tokenURL": None, "issuerURL": server.issuer}
        if isinstance(server, Hydra):
            spec["scope"] = "api:read"  # of the scopes its clients are registered with
        if self.method == "tls_client_auth":
            assert isinstance(server, Keycloak) and server.tls_ca is not None
            client = server.add_client(self.method)
            cert = server.client_certificate(client)
            spec["tls"] = {
                "caRef": {"kind": "Secret", "name": CA_NAME, "key": "ca.crt"},
                "clientCertificateRef": {"name": CERT_NAME},
            }
            return Setup(
                client,
                spec,
                client_cert=(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes()),
                ca_pem=server.tls_ca.cert_pem.bytes(),
            )
        if self.method != "private_key_jwt":
            client = server.add_client(self.method)
            spec["clientSecretRef"] = {"name": "client", "key": "client_secret"}
            return Setup(client, spec, secret=client.client_secret)
        key = _key(self.key or "rsa")
        algorithm = (
            self.algorithm or {"rsa": "RS256", "p256": "ES256", "p384": "ES384"}[self.key or "rsa"]
        )
        jwks = {"keys": [jwk_of(key, "k1", algorithm)]}
        if isinstance(server, Keycloak):
            client = server.add_client(self.method, jwks=jwks)
        else:
            client = server.add_client(self.method, jwks=jwks, algorithm=algorithm)
        spec["clientAssertion"] = {
            "keyRef": {"name": KEY_NAME, "key": "key.pem"},
            "keyID": "k1",
            "algorithm": algorithm,
        }
        return Setup(client, spec, key_pem=_pem(key, self.key_format))


PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC

KEYCLOAK_CASES = [
    Case("header", "header"),
    Case("body", "body"),
    Case("client_secret_jwt", "client_secret_jwt"),
    Case("private_key_jwt-RS256-pkcs1", "private_key_jwt", "rsa", PKCS1),
    Case("private_key_jwt-PS256", "private_key_jwt", "rsa", algorithm="PS256"),
    Case("private_key_jwt-ES256-sec1", "private_key_jwt", "p256", PKCS1),
    Case("private_key_jwt-ES384", "private_key_jwt", "p384"),
]
# Keycloak's x509 client authenticator on its HTTPS listener (tests/fixtures/idp_servers.py).
KEYCLOAK_CASES_MTLS = [*KEYCLOAK_CASES, Case("tls_client_auth", "tls_client_auth")]
# Hydra (fosite) supports client_secret_basic, client_secret_post and private_key_jwt
# for client credentials; not client_secret_jwt or tls_client_auth.
HYDRA_CASES = [
    Case("header", "header"),
    Case("body", "body"),
    Case("private_key_jwt-RS256", "private_key_jwt", "rsa"),
    Case("private_key_jwt-ES256", "private_key_jwt", "p256"),
]
# oidc-provider (tests/servers/oidc_server.mjs) enables every one of Keycloak's cases;
# tls_client_auth needs its mTLS port (tests/oauth2/test_check_identity.py).
OIDC_PROVIDER_CASES = KEYCLOAK_CASES
# Every server with the cases it supports, by fixture name (tests/fixtures/idp_servers.py).
SERVER_CASES = {
    "keycloak": KEYCLOAK_CASES_MTLS,
    "keycloak_newer": KEYCLOAK_CASES_MTLS,  # the second pinned version (keycloak/versions)
    "hydra": HYDRA_CASES,
    "oidc_idp": OIDC_PROVIDER_CASES,
}
# Both pinned Keycloak versions, for the grant tests (only Keycloak has those grants here).
KEYCLOAKS = [server for server in SERVER_CASES if server.startswith("keycloak")]
# issuerURL alone: each server's discovery document lists client_secret_basic, so the
# method found is `header`.
DISCOVERY = Case("issuerURL", "header", discovered=True)


def active_for(introspect: Callable[[str], dict[str, Any]], token: str, client_id: str) -> bool:
    """The server's own introspection says the token is active and was issued to
    `client_id`."""
    verdict = introspect(token)
    assert verdict.get("active") is True, json.dumps(verdict)[:500]
    return verdict.get("client_id") == client_id
