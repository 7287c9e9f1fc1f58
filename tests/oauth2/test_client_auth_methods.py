"""private_key_jwt, client_secret_jwt (RFC 7523) and tls_client_auth (RFC 8705) against
the real oidc-provider: each method gets a token, and each misconfiguration is refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fixtures.token_servers import ClientCert
from servers.oidc import OIDCClient, OIDCProvider
from servers.quirky import ServerTLS
from tokensync import assertion
from tokensync.oauth2 import (
    ConfigurationError,
    TLSSettings,
    TokenRequest,
    build_request_parts,
    fetch_token,
)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(key, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_jwk(key, kid: str | None = None) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else None
    algorithm = algorithm or jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid} if kid else jwk


def register_key_client(
    provider: OIDCProvider, *keys, alg: str | None = None, kid: str | None = None
) -> OIDCClient:
    metadata: dict = {"jwks": {"keys": [public_jwk(k, kid) for k in keys]}}
    if alg:
        metadata["token_endpoint_auth_signing_alg"] = alg
    return provider.add_client("private_key_jwt", metadata=metadata)


def assertion_request(
    client: OIDCClient, signer: assertion.SigningKey, audience: str | None = None, **overrides
) -> TokenRequest:
    factory = assertion.assertion_factory(signer, client.client_id, audience or client.token_url)
    settings = {
        "token_url": client.token_url,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "client_authentication": client.client_authentication,
        "client_assertion": factory,
        "scope": "api:read",
        "timeout_seconds": 10,
    }
    return TokenRequest(**{**settings, **overrides})


def issued_to(provider: OIDCProvider, client: OIDCClient, access_token: str) -> bool:
    digest = hashlib.sha256(access_token.encode()).hexdigest()
    return any(
        e["token_sha256"] == digest and e["client_id"] == client.client_id
        for e in provider.issued()
    )


# ---- private_key_jwt


@pytest.mark.parametrize(
    ("make_key", "fmt", "algorithm"),
    [
        (rsa_key, serialization.PrivateFormat.PKCS8, None),  # RS256 from the key
        (rsa_key, serialization.PrivateFormat.TraditionalOpenSSL, "PS256"),  # PKCS#1
        (lambda: ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8, None),
        (
            lambda: ec.generate_private_key(ec.SECP384R1()),
            serialization.PrivateFormat.TraditionalOpenSSL,  # SEC1
            "ES384",
        ),
    ],
    ids=["RS256-pkcs8", "PS256-pkcs1", "ES256-pkcs8", "ES384-sec1"],
)
def test_private_key_jwt_gets_a_token(make_key, fmt, algorithm, oidc_provider: OIDCProvider):
    key = make_key()
    signer = assertion.private_key_signer(pem(key, fmt), algorithm=algorithm)
    client = register_key_client(oidc_provider, key, alg=signer.algorithm)
    token = fetch_token(assertion_request(client, signer))
    assert token.scope == "api:read"
    assert issued_to(oidc_provider, client, token.access_token)


def test_every_request_carries_a_fresh_assertion(oidc_provider: OIDCProvider):
    """oidc-provider refuses a replayed jti, so two tokens prove two assertions."""
    key = rsa_key()
    client = register_key_client(oidc_provider, key)
    request = assertion_request(client, assertion.private_key_signer(pem(key)))
    first, second = fetch_token(request), fetch_token(request)
    assert first.access_token != second.access_token


def test_issuer_as_audience_is_accepted(oidc_provider: OIDCProvider):
    key = ec.generate_private_key(ec.SECP256R1())
    client = register_key_client(oidc_provider, key, kid="k1")
    signer = assertion.private_key_signer(pem(key), key_id="k1")
    token = fetch_token(assertion_request(client, signer, audience=oidc_provider.issuer))
    assert token.access_token


def test_a_key_the_idp_does_not_know_is_refused_with_a_hint(oidc_provider: OIDCProvider):
    client = register_key_client(oidc_provider, rsa_key())
    stranger = assertion.private_key_signer(pem(rsa_key()))
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(assertion_request(client, stranger))
    assert (caught.value.http_status, caught.value.oauth_error) == (401, "invalid_client")
    assert "private_key_jwt" in caught.value.hint


def test_a_wrong_audience_is_refused(oidc_provider: OIDCProvider):
    key = rsa_key()
    client = register_key_client(oidc_provider, key)
    signer = assertion.private_key_signer(pem(key))
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(assertion_request(client, signer, audience="https://elsewhere.test/token"))
    assert caught.value.oauth_error == "invalid_client"
    assert "clientAssertion.audience" in caught.value.hint


def test_an_assertion_for_a_secret_client_is_refused(oidc_provider: OIDCProvider):
    """The method must match the registration: a client_secret_basic client cannot use a
    private_key_jwt assertion."""
    key = rsa_key()
    client = oidc_provider.add_client("client_secret_basic")
    signer = assertion.private_key_signer(pem(key))
    request = assertion_request(client, signer, client_authentication="private_key_jwt")
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request)
    assert caught.value.oauth_error == "invalid_client"


# ---- client_secret_jwt


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_client_secret_jwt_gets_a_token(algorithm, oidc_provider: OIDCProvider):
    client = oidc_provider.add_client(
        "client_secret_jwt", metadata={"token_endpoint_auth_signing_alg": algorithm}
    )
    signer = assertion.secret_signer(client.client_secret, algorithm=algorithm)
    request = assertion_request(client, signer)
    token = fetch_token(request)
    assert issued_to(oidc_provider, client, token.access_token)
    # The secret itself never travels: only the assertion and the client id do.
    headers, body = build_request_parts(request)
    assert "Authorization" not in headers
    assert b"client_secret=" not in body and b"client_assertion=" in body


def test_client_secret_jwt_with_the_wrong_secret_is_refused(oidc_provider: OIDCProvider):
    client = oidc_provider.add_client("client_secret_jwt")
    signer = assertion.secret_signer("not the secret " + client.client_secret)
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(assertion_request(client, signer))
    assert caught.value.oauth_error == "invalid_client"
    assert client.client_secret not in str(caught.value)


# ---- tls_client_auth


@pytest.fixture(scope="module")
def mtls_provider(tmp_path_factory, token_ca: trustme.CA, client_ca: trustme.CA) -> Iterator:
    tls = ServerTLS.for_ca(token_ca, client_ca=client_ca)
    material = (tls.cert_chain_pem, tls.private_key_pem, client_ca.cert_pem.bytes())
    with OIDCProvider.start(tmp_path_factory.mktemp("oidc-mtls"), mtls=material) as provider:
        yield provider


def mtls_request(client: OIDCClient, token_ca, cert: ClientCert | None) -> TokenRequest:
    return TokenRequest(
        token_url=client.token_url,
        client_id=client.client_id,
        client_secret="",
        client_authentication="tls_client_auth",
        scope="api:read",
        timeout_seconds=10,
        tls=TLSSettings(
            ca_pem=token_ca.cert_pem.bytes(),
            client_cert_pem=cert.cert_pem if cert else None,
            client_key_pem=cert.key_pem if cert else None,
        ),
    )


def test_tls_client_auth_gets_a_token(mtls_provider, token_ca, client_cert: ClientCert):
    client = mtls_provider.add_client(
        "tls_client_auth", metadata={"tls_client_auth_san_email": "tokensync-client@tokensync.test"}
    )
    assert client.token_url.startswith("https://")
    token = fetch_token(mtls_request(client, token_ca, client_cert))
    assert issued_to(mtls_provider, client, token.access_token)


def test_tls_client_auth_with_another_certificate_is_refused(
    mtls_provider, token_ca, client_ca: trustme.CA
):
    client = mtls_provider.add_client(
        "tls_client_auth", metadata={"tls_client_auth_san_email": "tokensync-client@tokensync.test"}
    )
    leaf = client_ca.issue_cert("someone-else@tokensync.test")
    other = ClientCert(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(mtls_request(client, token_ca, other))
    assert caught.value.oauth_error == "invalid_client"
    assert "tls_client_auth" in caught.value.hint


def test_tls_client_auth_without_a_certificate_is_refused_before_sending(mtls_provider, token_ca):
    client = mtls_provider.add_client(
        "tls_client_auth", metadata={"tls_client_auth_san_email": "x@tokensync.test"}
    )
    before = len(mtls_provider.issued())
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(mtls_request(client, token_ca, None))
    assert "client certificate" in str(caught.value)
    assert len(mtls_provider.issued()) == before
