"""`grantType: jwt_bearer` (RFC 7523 2.1): the spec rules, the request it makes, the
assertion's claims, the key's resolution and the config hash."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokensync.oauth2 import JWT_BEARER_GRANT, _assertion_in, build_request_parts
from tokensync.secret import config_hash
from tokensync.sources import ReferenceProblem, Source, resolve_references
from tokensync.spec import ResolvedValues, SpecError, parse_spec, to_token_request

TOKEN_URL = "https://idp.example/realms/r/protocol/openid-connect/token"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


def signed(**grant: Any) -> dict[str, Any]:
    return {
        "tokenURL": TOKEN_URL,
        "clientID": "acme",
        "clientSecretRef": {"name": "client", "key": "secret"},
        "grantType": "jwt_bearer",
        "jwtBearer": {
            "keyRef": {"name": "grant-key", "key": "key.pem"},
            "issuer": "https://issuer.example",
            "subject": "alice",
            **grant,
        },
    }


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec, name="c")
    return list(info.value.problems)


def body_of(spec: dict[str, Any], values: ResolvedValues) -> dict[str, str]:
    request = to_token_request(parse_spec(spec, name="c"), values)
    _headers, body = build_request_parts(request)
    return dict(parse_qsl(body.decode()))


def values() -> ResolvedValues:
    return ResolvedValues(client_id="acme", client_secret="s3cret", grant_key_pem=KEY_PEM)


def test_signed_assertion_is_the_grant():
    sent = body_of(signed(keyID="k1", lifetimeSeconds=120), values())
    assert sent["grant_type"] == JWT_BEARER_GRANT
    header = jwt.get_unverified_header(sent["assertion"])
    assert (header["alg"], header["kid"]) == ("RS256", "k1")
    claims = jwt.decode(
        sent["assertion"], KEY.public_key(), algorithms=["RS256"], audience=TOKEN_URL
    )
    assert (claims["iss"], claims["sub"]) == ("https://issuer.example", "alice")
    assert claims["exp"] - claims["iat"] == 120
    assert claims["jti"]
    assert "client_assertion" not in sent  # the client authenticates with Basic here


def test_a_fresh_assertion_per_request_and_the_audience_field():
    spec = signed(audience="https://idp.example/realms/r")
    request = to_token_request(parse_spec(spec, name="c"), values())
    first, second = (dict(parse_qsl(build_request_parts(request)[1].decode())) for _ in "ab")
    claims = [
        jwt.decode(s["assertion"], options={"verify_signature": False}) for s in (first, second)
    ]
    assert claims[0]["jti"] != claims[1]["jti"]
    assert claims[0]["aud"] == "https://idp.example/realms/r"


def test_default_lifetime_and_algorithm_from_the_key():
    spec = parse_spec(signed(), name="c")
    assert spec.jwt_bearer is not None
    assert spec.jwt_bearer.lifetime_seconds == 300
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sent = body_of(
        signed(), ResolvedValues(client_id="acme", client_secret="s", grant_key_pem=ec_pem)
    )
    assert jwt.get_unverified_header(sent["assertion"])["alg"] == "ES256"


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (signed(issuer=None), "spec.jwtBearer.issuer"),
        (signed(subject=None), "spec.jwtBearer.subject"),
        ({**signed(), "jwtBearer": None}, "spec.jwtBearer"),
        ({**signed(), "grantType": "client_credentials"}, "spec.jwtBearer"),
        (
            signed(workloadIdentity={"serviceAccountName": "app", "audience": "x"}),
            "spec.jwtBearer",
        ),
        (signed(lifetimeSeconds=5), "spec.jwtBearer.lifetimeSeconds"),
        (signed(algorithm="HS256"), "spec.jwtBearer.algorithm"),
        ({**signed(), "extraParameters": {"Assertion": "x"}}, "spec.extraParameters.Assertion"),
    ],
)
def test_spec_rules(spec, path):
    spec = {
        **spec,
        "jwtBearer": {k: v for k, v in (spec["jwtBearer"] or {}).items() if v is not None},
    }
    if not spec["jwtBearer"] and spec.get("grantType") == "jwt_bearer":
        spec.pop("jwtBearer")
    assert any(p.startswith(path + ":") for p in problems(spec)), problems(spec)


def test_service_account_grant_and_its_rules():
    spec: dict[str, Any] = {
        "tokenURL": TOKEN_URL,
        "clientID": "acme",
        "clientSecretRef": {"name": "client", "key": "secret"},
        "grantType": "jwt_bearer",
        "jwtBearer": {"workloadIdentity": {"serviceAccountName": "app", "audience": "aud"}},
    }
    parsed = parse_spec(spec, name="c")
    assert parsed.jwt_bearer is not None and parsed.jwt_bearer.workload_identity is not None
    assert parsed.jwt_bearer.workload_identity.expiration_seconds == 600
    assert parsed.references == (parsed.client_secret_ref,)
    # Attached by tokensync.identity once minted: nothing to send before that.
    assert to_token_request(parsed, ResolvedValues(client_id="acme")).grant_assertion is None
    with_subject = {**spec, "jwtBearer": {**spec["jwtBearer"], "subject": "x"}}
    assert any(p.startswith("spec.jwtBearer.subject:") for p in problems(with_subject))
    both = {
        **spec,
        "clientSecretRef": None,
        "clientAuthentication": "workload_identity",
        "workloadIdentity": {"serviceAccountName": "app", "audience": "aud"},
    }
    both = {k: v for k, v in both.items() if v is not None}
    assert any(p.startswith("spec.jwtBearer.workloadIdentity:") for p in problems(both))


def test_the_grant_assertion_is_redacted_like_a_client_assertion():
    assert _assertion_in(b"grant_type=x&assertion=a.b.c&client_assertion=d.e.f") == [
        "a.b.c",
        "d.e.f",
    ]
    assert _assertion_in(b'{"assertion": "a.b.c"}') == ["a.b.c"]


def _source(data: dict[str, bytes]) -> Source:
    return Source(
        kind="Secret",
        name="x",
        data=data,
        type="Opaque",
        allowed_token_urls=None,
        oversized=frozenset(),
    )


def test_the_key_is_resolved_and_checked():
    spec = parse_spec(signed(), name="c")
    sources = {
        "client": _source({"secret": b"s3cret"}),
        "grant-key": _source({"key.pem": KEY_PEM}),
    }
    resolved = resolve_references(spec, lambda kind, name: sources.get(name), lambda u, a: True)
    assert isinstance(resolved, ResolvedValues)
    assert resolved.grant_key_pem == KEY_PEM
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sources["grant-key"] = _source({"key.pem": weak})
    problem = resolve_references(spec, lambda kind, name: sources.get(name), lambda u, a: True)
    assert isinstance(problem, ReferenceProblem)
    assert problem.reason == "ReferenceInvalid"
    assert "jwtBearer.keyRef" in problem.message and "grant-key" in problem.message


def test_config_hash_follows_the_grant():
    base = config_hash(parse_spec(signed(), name="c"), values())
    assert base != config_hash(parse_spec(signed(subject="bob"), name="c"), values())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    changed = ResolvedValues(client_id="acme", client_secret="s3cret", grant_key_pem=other_key)
    assert base != config_hash(parse_spec(signed(), name="c"), changed)
