"""Client assertions (RFC 7523): keys, headers, claims; spec rules of the new methods."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokensync import assertion
from tokensync.oauth2 import CLIENT_ASSERTION_TYPE, TokenRequest, build_request_parts
from tokensync.secret import config_hash
from tokensync.sources import ReferenceProblem, Source, resolve_references
from tokensync.spec import SpecError, parse_spec, to_token_request


def pem(key: Any, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())


def test_claims_and_header():
    signer = assertion.private_key_signer(pem(RSA), key_id="kid-1")
    token = assertion.sign_assertion(
        signer, "client-a", "https://idp/token", issued_at=1000, jti="j"
    )
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    claims = jwt.decode(
        token,
        RSA.public_key(),
        algorithms=["RS256"],
        audience="https://idp/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "client-a",
        "sub": "client-a",
        "aud": "https://idp/token",
        "jti": "j",
        "iat": 1000,
        "exp": 1060,
    }


def test_factory_makes_a_fresh_assertion_each_call():
    make = assertion.assertion_factory(assertion.secret_signer("s" * 32), "c", "aud")
    first, second = (jwt.decode(make(), "s" * 32, ["HS256"], audience="aud") for _ in range(2))
    assert first["jti"] != second["jti"]


@pytest.mark.parametrize(
    ("key", "fmt", "expected"),
    [
        (RSA, serialization.PrivateFormat.PKCS8, "RS256"),
        (RSA, serialization.PrivateFormat.TraditionalOpenSSL, "RS256"),
        (P256, serialization.PrivateFormat.PKCS8, "ES256"),
        (P256, serialization.PrivateFormat.TraditionalOpenSSL, "ES256"),
        (ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.PKCS8, "ES384"),
    ],
)
def test_default_algorithm_from_the_key(key, fmt, expected):
    assert assertion.private_key_signer(pem(key, fmt)).algorithm == expected


def test_ec_parameters_block_before_the_key_is_skipped():
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    sec1 = pem(P256, serialization.PrivateFormat.TraditionalOpenSSL)
    assert assertion.private_key_signer(params + sec1).algorithm == "ES256"


@pytest.mark.parametrize(
    ("key_pem", "problem"),
    [
        (b"not a key", "no PEM private key"),
        (pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "2048"),
        (pem(ec.generate_private_key(ec.SECP521R1())), "P-256 or P-384"),
        (pem(ed25519.Ed25519PrivateKey.generate()), "RSA or EC"),
        (
            RSA.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted",
        ),
    ],
    ids=["not-pem", "rsa-1024", "p-521", "ed25519", "encrypted"],
)
def test_unusable_keys(key_pem, problem):
    with pytest.raises(assertion.KeyProblem, match=problem):
        assertion.private_key_signer(key_pem)


@pytest.mark.parametrize(
    ("key", "algorithm"), [(RSA, "ES256"), (P256, "RS256"), (P256, "ES384"), (RSA, "HS256")]
)
def test_algorithm_must_fit_the_key(key, algorithm):
    with pytest.raises(assertion.KeyProblem):
        assertion.private_key_signer(pem(key), algorithm=algorithm)


def test_certificate_adds_x5t_headers():
    ca = trustme.CA()
    leaf = ca.issue_cert("client.tokensync.test")
    cert_pem = leaf.cert_chain_pems[0].bytes()
    signer = assertion.private_key_signer(leaf.private_key_pem.bytes(), cert_pem=cert_pem)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = jwt.get_unverified_header(assertion.assertion_factory(signer, "c", "a")())
    assert header["x5t#S256"] == b64(hashlib.sha256(der).digest())
    assert header["x5t"] == b64(hashlib.sha1(der).digest())


def test_certificate_of_another_key_is_refused():
    leaf = trustme.CA().issue_cert("client.tokensync.test")
    with pytest.raises(assertion.KeyProblem, match="does not match"):
        assertion.private_key_signer(pem(RSA), cert_pem=leaf.cert_chain_pems[0].bytes())


def test_request_body_of_an_assertion_method():
    request = TokenRequest(
        token_url="https://idp/token",
        client_id="c",
        client_secret="",
        client_authentication="private_key_jwt",
        client_assertion=lambda: "signed.jwt.value",
    )
    headers, body = build_request_parts(request)
    assert "Authorization" not in headers
    assert body == (
        b"grant_type=client_credentials&client_id=c&client_assertion_type="
        + CLIENT_ASSERTION_TYPE.replace(":", "%3A").encode()
        + b"&client_assertion=signed.jwt.value"
    )


def test_tls_client_auth_body_has_the_client_id_only():
    request = TokenRequest(
        token_url="https://idp/token",
        client_id="c",
        client_secret="",
        client_authentication="tls_client_auth",
    )
    with pytest.raises(Exception, match="client certificate"):
        build_request_parts(request)


# ---- spec rules


def spec_of(**fields: Any) -> dict[str, Any]:
    return {"tokenURL": "https://idp.example/token", "clientID": "c", **fields}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"clientAuthentication": "private_key_jwt"}, "spec.clientAssertion.keyRef: is required"),
        (
            {
                "clientAuthentication": "private_key_jwt",
                "clientAssertion": {"keyRef": {"name": "k"}},
                "clientSecretRef": {"name": "s", "key": "k"},
            },
            "spec.clientSecretRef: is not allowed",
        ),
        ({"clientAuthentication": "client_secret_jwt"}, "spec.clientSecretRef: is required"),
        ({"clientAuthentication": "tls_client_auth"}, "spec.tls.clientCertificateRef: is required"),
        (
            {"clientAuthentication": "workload_identity"},
            "spec.workloadIdentity.audience: is required",
        ),
        (
            {
                "clientAuthentication": "workload_identity",
                "workloadIdentity": {"serviceAccountName": "sa", "audience": "a"},
                "clientSecretRef": {"name": "s", "key": "k"},
            },
            "spec.clientSecretRef: is not allowed",
        ),
        (
            {
                "clientAuthentication": "workload_identity",
                "workloadIdentity": {
                    "serviceAccountName": "sa",
                    "audience": "a",
                    "expirationSeconds": 60,
                },
            },
            "spec.workloadIdentity.expirationSeconds",
        ),
        (
            {
                "clientAuthentication": "client_secret_jwt",
                "clientSecretRef": {"name": "s", "key": "k"},
                "clientAssertion": {"algorithm": "RS256"},
            },
            "client_secret_jwt signs with HS256",
        ),
        (
            {
                "clientAuthentication": "private_key_jwt",
                "clientAssertion": {"keyRef": {"name": "k"}, "algorithm": "HS256"},
            },
            "private_key_jwt signs with",
        ),
        (
            {
                "clientSecretRef": {"name": "s", "key": "k"},
                "clientAssertion": {"audience": "x"},
            },
            "spec.clientAssertion: is only used",
        ),
        (
            {"clientSecretRef": {"name": "s", "key": "k"}, "issuerURL": "https://idp.example"},
            "exactly one of tokenURL and issuerURL",
        ),
    ],
)
def test_spec_rules_of_the_new_methods(fields, problem):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_of(**fields), name="x")
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_tls_secret_key_ref_reads_tls_key_and_tls_crt():
    spec = parse_spec(
        spec_of(clientAuthentication="private_key_jwt", clientAssertion={"keyRef": {"name": "k"}}),
        name="x",
    )
    assert [(r.name, r.key) for r in spec.references] == [("k", "tls.key"), ("k", "tls.crt")]


def _key_spec(**assertion_fields: Any):
    return parse_spec(
        spec_of(
            clientAuthentication="private_key_jwt",
            clientAssertion={"keyRef": {"name": "key", "key": "key.pem"}, **assertion_fields},
        ),
        name="x",
    )


def _lookup(data: dict[str, bytes], type_: str = "Opaque"):
    return lambda kind, name: Source(kind, name, data, type=type_)


def test_weak_key_is_reference_invalid_and_names_no_key_material():
    weak = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    result = resolve_references(_key_spec(), _lookup({"key.pem": weak}), lambda u, a: True)
    assert isinstance(result, ReferenceProblem)
    assert result.reason == "ReferenceInvalid"
    assert "Secret 'key'" in result.message and "-----" not in result.message


def test_key_secret_must_be_tls_typed_without_a_key():
    spec = parse_spec(
        spec_of(clientAuthentication="private_key_jwt", clientAssertion={"keyRef": {"name": "k"}}),
        name="x",
    )
    leaf = trustme.CA().issue_cert("c.test")
    data = {"tls.key": leaf.private_key_pem.bytes(), "tls.crt": leaf.cert_chain_pems[0].bytes()}
    bad = resolve_references(spec, _lookup(data), lambda u, a: True)
    assert isinstance(bad, ReferenceProblem) and "kubernetes.io/tls" in bad.message
    good = resolve_references(spec, _lookup(data, "kubernetes.io/tls"), lambda u, a: True)
    request = to_token_request(spec, good)
    header = jwt.get_unverified_header(request.client_assertion())
    assert "x5t#S256" in header


def test_config_hash_covers_the_key():
    spec = _key_spec()
    first = resolve_references(spec, _lookup({"key.pem": pem(RSA)}), lambda u, a: True)
    second = resolve_references(spec, _lookup({"key.pem": pem(P256)}), lambda u, a: True)
    assert config_hash(spec, first) != config_hash(spec, second)
    assert config_hash(_key_spec(keyID="k2"), first) != config_hash(spec, first)
    assert pem(RSA).decode() not in config_hash(spec, first)


def test_assertion_audience_defaults_to_the_token_url():
    spec = _key_spec()
    values = resolve_references(spec, _lookup({"key.pem": pem(RSA)}), lambda u, a: True)
    claims = jwt.decode(
        to_token_request(spec, values).client_assertion(),
        RSA.public_key(),
        algorithms=["RS256"],
        audience="https://idp.example/token",
    )
    assert claims["iss"] == claims["sub"] == "c"
    custom = _key_spec(audience="https://idp.example")
    claims = jwt.decode(
        to_token_request(custom, values).client_assertion(),
        RSA.public_key(),
        algorithms=["RS256"],
        audience="https://idp.example",
    )
    assert claims["exp"] - claims["iat"] == 60


def test_secret_never_in_the_spec_repr():
    secret = secrets.token_urlsafe(16)
    signer = assertion.secret_signer(secret)
    assert secret not in repr(signer)


def test_key_secret_binding_is_enforced():
    """Assertions signed with a key bound to one endpoint are never sent elsewhere."""
    from tokensync.secret import url_allowed

    def lookup(kind, name):
        return Source(
            kind, name, {"key.pem": pem(RSA)}, allowed_token_urls="https://other.example/"
        )

    result = resolve_references(_key_spec(), lookup, url_allowed)
    assert isinstance(result, ReferenceProblem)
    assert result.reason == "TokenURLNotAllowed"
