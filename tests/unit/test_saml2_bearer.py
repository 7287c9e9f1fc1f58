"""`grantType: saml2_bearer` (RFC 7522) and `clientAuthentication: none`: the spec rules,
the request it makes, the assertion's content and placement of its signature, the key's
resolution and the config hash. The signature is verified independently (xmlsec1) in
tests/oauth2/test_successfactors_saml.py, against a SuccessFactors-like endpoint."""

from __future__ import annotations

import base64
import calendar
import time
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from tokensync import saml
from tokensync.assertion import KeyProblem, private_key_signer
from tokensync.oauth2 import SAML2_BEARER_GRANT, build_request_parts
from tokensync.secret import config_hash
from tokensync.sources import ReferenceProblem, Source, resolve_references
from tokensync.spec import ResolvedValues, SpecError, parse_spec, to_token_request

TOKEN_URL = "https://api.sf.example/oauth/token"
NS = {"saml2": saml.SAML_NS, "ds": saml.DS_NS}
CA = trustme.CA(key_type=trustme.KeyType.RSA)
CERT = CA.issue_cert("sf-client.example", key_type=trustme.KeyType.RSA)
KEY_PEM = CERT.private_key_pem.bytes()
CERT_PEM = CERT.cert_chain_pems[0].bytes()


def saml_spec(**grant: Any) -> dict[str, Any]:
    return {
        "tokenURL": TOKEN_URL,
        "clientID": "APIKEY123",
        "clientAuthentication": "none",
        "grantType": "saml2_bearer",
        "saml2Bearer": {
            "keyRef": {"name": "sf-key", "key": "tls.key"},
            "subject": "sfadmin",
            "companyID": "ACME01",
            **grant,
        },
    }


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec, name="c")
    return list(info.value.problems)


def values(**extra: Any) -> ResolvedValues:
    return ResolvedValues(**{"client_id": "APIKEY123", "grant_key_pem": KEY_PEM, **extra})


def sent_body(spec: dict[str, Any], resolved: ResolvedValues) -> tuple[dict[str, str], dict]:
    request = to_token_request(parse_spec(spec, name="c"), resolved)
    headers, body = build_request_parts(request)
    return headers, dict(parse_qsl(body.decode()))


def decoded(assertion: str) -> etree._Element:
    assert "=" not in assertion and "\n" not in assertion  # RFC 7522 2.1: base64url, no padding
    xml = base64.urlsafe_b64decode(assertion + "=" * (-len(assertion) % 4))
    return etree.fromstring(xml)


def test_the_request_is_what_successfactors_documents():
    headers, sent = sent_body(saml_spec(), values())
    assert "Authorization" not in headers  # none: a public client
    assert set(sent) == {"grant_type", "client_id", "assertion", "company_id"}
    assert (sent["grant_type"], sent["client_id"], sent["company_id"]) == (
        SAML2_BEARER_GRANT,
        "APIKEY123",
        "ACME01",
    )
    root = decoded(sent["assertion"])
    assert root.tag == f"{{{saml.SAML_NS}}}Assertion" and root.get("Version") == "2.0"
    # The schema's order: Issuer, then the signature, then Subject.
    children = [etree.QName(child).localname for child in root]
    assert children[:3] == ["Issuer", "Signature", "Subject"]
    assert root.findtext("saml2:Issuer", namespaces=NS) == "APIKEY123"
    assert root.findtext("saml2:Subject/saml2:NameID", namespaces=NS) == "sfadmin"
    data = root.find("saml2:Subject/saml2:SubjectConfirmation/saml2:SubjectConfirmationData", NS)
    assert data is not None and data.get("Recipient") == TOKEN_URL
    assert root.find("saml2:Subject/saml2:SubjectConfirmation", NS).get("Method") == saml.BEARER
    audience = "saml2:Conditions/saml2:AudienceRestriction/saml2:Audience"
    assert root.findtext(audience, namespaces=NS) == "www.successfactors.com"
    api_key = "saml2:AttributeStatement/saml2:Attribute[@Name='api_key']/saml2:AttributeValue"
    assert [v.text for v in root.findall(api_key, NS)] == ["APIKEY123"]
    reference = root.find("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    assert reference.get("URI") == "#" + root.get("ID")
    method = root.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm")
    assert method.endswith("#rsa-sha256")
    # Without certificateRef the public key goes into KeyInfo; no certificate.
    assert root.find("ds:Signature/ds:KeyInfo/ds:X509Data", NS) is None


def test_times_lifetime_and_a_fresh_assertion_per_request():
    spec = saml_spec(lifetimeSeconds=120)
    request = to_token_request(parse_spec(spec, name="c"), values())
    first, second = (
        decoded(dict(parse_qsl(build_request_parts(request)[1].decode()))["assertion"])
        for _ in "ab"
    )
    assert first.get("ID") != second.get("ID")

    def at(text: str) -> int:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))

    issued = at(first.get("IssueInstant"))
    assert abs(issued - time.time()) < 5
    conditions = first.find("saml2:Conditions", NS)
    assert at(conditions.get("NotOnOrAfter")) - issued == 120
    assert issued - at(conditions.get("NotBefore")) == saml.NOT_BEFORE_SKEW_SECONDS
    data = first.find(".//saml2:SubjectConfirmationData", NS)
    assert data.get("NotOnOrAfter") == conditions.get("NotOnOrAfter")


def test_overrides_certificate_and_attributes():
    spec = saml_spec(
        issuer="https://issuer.example",
        audience="https://sp.example",
        nameIDFormat="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        attributes={"api_key": "OTHER", "role": "reader"},
        certificateRef={"name": "sf-key", "key": "tls.crt"},
    )
    _, sent = sent_body(spec, values(grant_cert_pem=CERT_PEM))
    root = decoded(sent["assertion"])
    assert root.findtext("saml2:Issuer", namespaces=NS) == "https://issuer.example"
    name_id = root.find("saml2:Subject/saml2:NameID", NS)
    assert name_id.get("Format").endswith(":emailAddress")
    attributes = {
        a.get("Name"): a.findtext("saml2:AttributeValue", namespaces=NS)
        for a in root.findall("saml2:AttributeStatement/saml2:Attribute", NS)
    }
    assert attributes == {"api_key": "OTHER", "role": "reader"}
    x509 = root.findtext("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=NS)
    assert "".join(x509.split()) in "".join(CERT_PEM.decode().split())


def test_an_ec_key_signs_with_ecdsa_and_rsa_pss_is_refused():
    ec_pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _, sent = sent_body(saml_spec(), values(grant_key_pem=ec_pem))
    method = decoded(sent["assertion"]).find(".//ds:SignatureMethod", NS).get("Algorithm")
    assert method.endswith("#ecdsa-sha384")
    pss = private_key_signer(KEY_PEM, algorithm="PS256")
    with pytest.raises(KeyProblem, match="RSA key"):
        saml.signature_method(pss)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"subject": None}, "spec.saml2Bearer.subject"),
        ({"keyRef": None}, "spec.saml2Bearer.keyRef"),
        ({"subject": ""}, "spec.saml2Bearer.subject"),
        ({"subject": "a\x00b"}, "spec.saml2Bearer.subject"),
        ({"issuer": "x\x1by"}, "spec.saml2Bearer.issuer"),
        ({"audience": ""}, "spec.saml2Bearer.audience"),
        ({"lifetimeSeconds": 10}, "spec.saml2Bearer.lifetimeSeconds"),
        ({"lifetimeSeconds": 7200}, "spec.saml2Bearer.lifetimeSeconds"),
        ({"attributes": {f"a{i}": "v" for i in range(17)}}, "spec.saml2Bearer.attributes"),
        ({"attributes": {"role": "x\x07"}}, "spec.saml2Bearer.attributes.role"),
    ],
)
def test_saml2_bearer_rules(change, path):
    spec = saml_spec(**change)
    spec["saml2Bearer"] = {k: v for k, v in spec["saml2Bearer"].items() if v is not None}
    assert any(p.startswith(path + ":") for p in problems(spec)), problems(spec)


def test_grant_and_none_rules():
    without = {k: v for k, v in saml_spec().items() if k != "saml2Bearer"}
    assert any(p.startswith("spec.saml2Bearer:") for p in problems(without))
    elsewhere = {**saml_spec(), "grantType": "jwt_bearer"}
    assert any(p.startswith("spec.saml2Bearer:") for p in problems(elsewhere))
    reserved = {**saml_spec(), "extraParameters": {"ASSERTION": "x", "company_id": "y"}}
    found = problems(reserved)
    assert any(p.startswith("spec.extraParameters.ASSERTION:") for p in found)
    assert any(p.startswith("spec.extraParameters.company_id:") for p in found)
    # Without companyID, extraParameters may carry company_id.
    grant = {k: v for k, v in saml_spec()["saml2Bearer"].items() if k != "companyID"}
    plain = {**saml_spec(), "saml2Bearer": grant, "extraParameters": {"company_id": "ACME01"}}
    assert sent_body(plain, values())[1]["company_id"] == "ACME01"
    # none: a public client, only with a grant that carries its own proof, no secret.
    public_cc = {
        "tokenURL": TOKEN_URL,
        "clientID": "a",
        "clientAuthentication": "none",
    }
    assert any(p.startswith("spec.clientAuthentication:") for p in problems(public_cc))
    with_secret = {**saml_spec(), "clientSecretRef": {"name": "s", "key": "k"}}
    assert any(p.startswith("spec.clientSecretRef:") for p in problems(with_secret))
    # The grant with a confidential client: HTTP Basic as usual.
    basic = {
        **saml_spec(),
        "clientAuthentication": "header",
        "clientSecretRef": {"name": "s", "key": "k"},
    }
    headers, sent = sent_body(basic, values(client_secret="s3cret"))
    assert headers["Authorization"].startswith("Basic ") and "client_id" not in sent


def _source(data: dict[str, bytes]) -> Source:
    return Source(
        kind="Secret",
        name="sf-key",
        data=data,
        type="kubernetes.io/tls",
        allowed_token_urls=None,
        oversized=frozenset(),
    )


def test_the_key_and_certificate_are_resolved_and_checked():
    spec = parse_spec(saml_spec(certificateRef={"name": "sf-key", "key": "tls.crt"}), name="c")
    sources = {"sf-key": _source({"tls.key": KEY_PEM, "tls.crt": CERT_PEM})}

    def resolve() -> ResolvedValues | ReferenceProblem:
        result = resolve_references(spec, lambda kind, name: sources.get(name), lambda u, a: True)
        assert isinstance(result, ResolvedValues | ReferenceProblem)
        return result

    resolved = resolve()
    assert isinstance(resolved, ResolvedValues)
    assert (resolved.grant_key_pem, resolved.grant_cert_pem) == (KEY_PEM, CERT_PEM)
    other = CA.issue_cert("other.example", key_type=trustme.KeyType.RSA)
    sources["sf-key"] = _source({"tls.key": KEY_PEM, "tls.crt": other.cert_chain_pems[0].bytes()})
    problem = resolve()
    assert isinstance(problem, ReferenceProblem) and problem.reason == "ReferenceInvalid"
    assert "saml2Bearer.keyRef" in problem.message and "does not match" in problem.message
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sources["sf-key"] = _source({"tls.key": weak, "tls.crt": CERT_PEM})
    problem = resolve()
    assert isinstance(problem, ReferenceProblem) and "sf-key" in problem.message
    assert "PRIVATE KEY" not in problem.message


def test_a_client_id_that_cannot_be_the_issuer_is_a_reference_problem():
    spec = parse_spec(saml_spec(), name="c")
    with pytest.raises(KeyProblem, match="control characters"):
        to_token_request(spec, ResolvedValues(client_id="a\x01b", grant_key_pem=KEY_PEM))


def test_config_hash_follows_the_grant():
    base = config_hash(parse_spec(saml_spec(), name="c"), values())
    for change in ({"subject": "other"}, {"companyID": "B"}, {"attributes": {"r": "x"}}):
        assert base != config_hash(parse_spec(saml_spec(**change), name="c"), values())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert base != config_hash(parse_spec(saml_spec(), name="c"), values(grant_key_pem=other_key))


def test_the_standard_base64_encoding():
    _, sent = sent_body(saml_spec(encoding="base64"), values())
    assertion = sent["assertion"]
    assert len(assertion) % 4 == 0 and "-" not in assertion and "_" not in assertion
    root = etree.fromstring(base64.b64decode(assertion, validate=True))
    assert root.findtext("saml2:Issuer", namespaces=NS) == "APIKEY123"
    assert any(
        p.startswith("spec.saml2Bearer.encoding:") for p in problems(saml_spec(encoding="hex"))
    )
