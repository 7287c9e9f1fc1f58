"""tls.clientCertificateRef.certificateKey / privateKeyKey: a client certificate from a
Secret of any type under named keys (an SAP BTP x509 service binding), while a reference
without them still needs a kubernetes.io/tls Secret."""

from __future__ import annotations

from typing import Any

import pytest

from tokensync.secret import config_hash
from tokensync.sources import ReferenceProblem, Source, resolve_references
from tokensync.spec import Ref, ResolvedValues, SpecError, parse_spec

TOKEN_URL = "https://acme.authentication.cert.eu10.hana.ondemand.com/oauth/token"
CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"


def x509(**ref: Any) -> dict[str, Any]:
    return {
        "tokenURL": TOKEN_URL,
        "clientIDRef": {"name": "binding", "key": "clientid"},
        "clientAuthentication": "tls_client_auth",
        "tls": {"clientCertificateRef": {"name": "binding", **ref}},
    }


def binding(secret_type: str = "Opaque", **data: bytes) -> Source:
    values = {"clientid": b"sb-acme!t1", "certificate": CERT, "key": KEY, **data}
    return Source(kind="Secret", name="binding", data=values, type=secret_type)


def resolve(spec: dict[str, Any], source: Source) -> Any:
    return resolve_references(
        parse_spec(spec, name="c"), lambda kind, name: source, lambda url, allowed: True
    )


def test_named_keys_of_an_opaque_secret():
    spec = x509(certificateKey="certificate", privateKeyKey="key")
    parsed = parse_spec(spec, name="c")
    assert parsed.references == (
        Ref("binding", "clientid"),
        Ref("binding", "certificate"),
        Ref("binding", "key"),
    )
    resolved = resolve(spec, binding())
    assert isinstance(resolved, ResolvedValues)
    assert (resolved.client_id, resolved.client_cert_pem, resolved.client_key_pem) == (
        "sb-acme!t1",
        CERT,
        KEY,
    )


def test_without_named_keys_the_secret_must_be_kubernetes_tls():
    problem = resolve(x509(), binding(**{"tls.crt": CERT, "tls.key": KEY}))
    assert isinstance(problem, ReferenceProblem)
    assert problem.reason == "ReferenceInvalid"
    assert "kubernetes.io/tls" in problem.message
    typed = resolve(x509(), binding("kubernetes.io/tls", **{"tls.crt": CERT, "tls.key": KEY}))
    assert isinstance(typed, ResolvedValues) and typed.client_cert_pem == CERT


def test_a_missing_named_key_is_reported():
    source = Source(
        kind="Secret", name="binding", data={"clientid": b"x", "certificate": CERT}, type="Opaque"
    )
    problem = resolve(x509(certificateKey="certificate", privateKeyKey="key"), source)
    assert isinstance(problem, ReferenceProblem)
    assert problem.reason == "ReferenceKeyMissing"
    assert "'key'" in problem.message


@pytest.mark.parametrize(
    "ref",
    [
        {"certificateKey": "certificate"},
        {"privateKeyKey": "key"},
        {"certificateKey": "pem", "privateKeyKey": "pem"},
        {"certificateKey": "a/b", "privateKeyKey": "key"},
    ],
)
def test_spec_rules(ref):
    with pytest.raises(SpecError) as info:
        parse_spec(x509(**ref), name="c")
    assert any(p.startswith("spec.tls.clientCertificateRef") for p in info.value.problems)


def test_config_hash_unchanged_without_named_keys_and_follows_them():
    values = ResolvedValues(client_id="sb-acme!t1", client_cert_pem=CERT, client_key_pem=KEY)
    plain = config_hash(parse_spec(x509(), name="c"), values)
    named = config_hash(parse_spec(x509(certificateKey="c", privateKeyKey="k"), name="c"), values)
    explicit_defaults = x509(certificateKey="tls.crt", privateKeyKey="tls.key")
    assert plain != named
    assert plain == config_hash(parse_spec(explicit_defaults, name="c"), values)
