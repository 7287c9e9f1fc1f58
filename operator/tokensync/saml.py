"""The RFC 7522 SAML 2.0 bearer grant's assertion, built and signed here (no Kubernetes).

SAP SuccessFactors' token endpoint takes one as SAP documents it: the issuer and the
`api_key` attribute are the OAuth client (its API key), the NameID is the API user, the
audience `www.successfactors.com`, the bearer confirmation's Recipient the token URL, and
the signature is made with the private key whose X.509 certificate is registered for the
client. The XML signature itself is signxml's (a maintained XML-DSig library): an
enveloped, exclusive-c14n RSA-SHA256 (or ECDSA) signature placed right after the Issuer,
where the SAML schema wants it.

signxml and lxml are imported on first use: most operators never build an assertion.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokensync.assertion import KeyProblem, SigningKey

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XS_NS = "http://www.w3.org/2001/XMLSchema"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
PASSWORD_PROTECTED_TRANSPORT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
SUCCESSFACTORS_AUDIENCE = "www.successfactors.com"
API_KEY_ATTRIBUTE = "api_key"  # SuccessFactors finds the OAuth client by it
# A server whose clock is a little behind ours must not see an assertion from the future.
NOT_BEFORE_SKEW_SECONDS = 60
# The XML-DSig signature method for each key shape tokensync loads (assertion.py).
_SIGNATURE_METHODS = {
    "RS256": "rsa-sha256",
    "ES256": "ecdsa-sha256",
    "ES384": "ecdsa-sha384",
}


@dataclass(frozen=True)
class SAMLClaims:
    """What one assertion says; the time and the ID are added per request."""

    issuer: str
    subject: str
    audience: str
    recipient: str  # the token URL (RFC 7522 3: the bearer confirmation's Recipient)
    lifetime_seconds: int
    name_id_format: str = NAMEID_UNSPECIFIED
    attributes: Mapping[str, str] = field(default_factory=dict)


def text_problem(value: str) -> str | None:
    """Why a string cannot go into the assertion as it is, or None: XML 1.0 has no
    control characters, surrogates or U+FFFE/U+FFFF (and a server would not expect them)."""
    for char in value:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            return "must not contain control characters or lone surrogates"
        if code in (0xFFFE, 0xFFFF):
            return "must not contain the noncharacters U+FFFE or U+FFFF"
    return None


def signature_method(signing_key: SigningKey) -> str:
    """The XML-DSig signature method for this key; KeyProblem for a key SAML servers
    are not known to take (RSA-PSS)."""
    method = _SIGNATURE_METHODS.get(signing_key.algorithm)
    if method is None:
        raise KeyProblem(
            f"cannot sign a SAML assertion with {signing_key.algorithm}: use an RSA key "
            "(rsa-sha256) or an EC P-256 / P-384 key (ecdsa-sha256 / ecdsa-sha384)"
        )
    return method


def _instant(seconds: float) -> str:
    """xs:dateTime in UTC with a Z, as SAML 2.0 core 1.3.3 requires."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_assertion(claims: SAMLClaims, *, issued_at: float, assertion_id: str) -> Any:
    """The unsigned <saml2:Assertion> (an lxml element) with a signature placeholder after
    the Issuer; `assertion_id` must be an XML ID (start with a letter or '_')."""
    from lxml import etree

    def saml(parent: Any, tag: str, text: str | None = None, **attributes: str) -> Any:
        element = etree.SubElement(parent, f"{{{SAML_NS}}}{tag}", attributes)
        element.text = text
        return element

    expires = _instant(issued_at + claims.lifetime_seconds)
    root = etree.Element(
        f"{{{SAML_NS}}}Assertion",
        {"ID": assertion_id, "IssueInstant": _instant(issued_at), "Version": "2.0"},
        nsmap={"saml2": SAML_NS, "xs": XS_NS, "xsi": XSI_NS},
    )
    saml(root, "Issuer", claims.issuer)
    etree.SubElement(root, f"{{{DS_NS}}}Signature", {"Id": "placeholder"}, nsmap={"ds": DS_NS})
    subject = saml(root, "Subject")
    saml(subject, "NameID", claims.subject, Format=claims.name_id_format)
    confirmation = saml(subject, "SubjectConfirmation", Method=BEARER)
    saml(confirmation, "SubjectConfirmationData", NotOnOrAfter=expires, Recipient=claims.recipient)
    conditions = saml(
        root,
        "Conditions",
        NotBefore=_instant(issued_at - NOT_BEFORE_SKEW_SECONDS),
        NotOnOrAfter=expires,
    )
    saml(saml(conditions, "AudienceRestriction"), "Audience", claims.audience)
    authn = saml(
        root, "AuthnStatement", AuthnInstant=_instant(issued_at), SessionIndex=assertion_id
    )
    saml(saml(authn, "AuthnContext"), "AuthnContextClassRef", PASSWORD_PROTECTED_TRANSPORT)
    if claims.attributes:
        statement = saml(root, "AttributeStatement")
        for name, value in claims.attributes.items():
            attribute = saml(statement, "Attribute", Name=name)
            saml(attribute, "AttributeValue", value).set(f"{{{XSI_NS}}}type", "xs:string")
    return root


def sign_assertion(
    claims: SAMLClaims,
    signing_key: SigningKey,
    *,
    cert_pem: bytes | None,
    issued_at: float,
    assertion_id: str,
) -> bytes:
    """The signed assertion's XML. With `cert_pem` the certificate goes into KeyInfo
    (X509Data); without it, the public key (KeyValue)."""
    from lxml import etree
    from signxml import XMLSigner
    from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm

    signer = XMLSigner(
        signature_algorithm=signature_method(signing_key),
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signed = signer.sign(
        build_assertion(claims, issued_at=issued_at, assertion_id=assertion_id),
        key=signing_key.key,
        cert=cert_pem.decode("ascii") if cert_pem else None,
        reference_uri=assertion_id,
        id_attribute="ID",
    )
    return etree.tostring(signed)


ENCODINGS = ("base64url", "base64")


def encode(xml: bytes, encoding: str = "base64url") -> str:
    """The `assertion` parameter: base64url without padding or line breaks, as RFC 7522 2.1
    says, or (`base64`) the standard alphabet with padding, as some servers decode it."""
    if encoding == "base64":
        return base64.b64encode(xml).decode("ascii")
    return base64.urlsafe_b64encode(xml).rstrip(b"=").decode("ascii")


def new_assertion_id() -> str:
    return "_" + secrets.token_hex(16)


def saml2_bearer_factory(
    signing_key: SigningKey,
    claims: SAMLClaims,
    *,
    cert_pem: bytes | None = None,
    encoding: str = "base64url",
    clock: Callable[[], float] = time.time,
) -> Callable[[], str]:
    """A function returning a fresh encoded assertion (new ID, current time) per call."""
    signature_method(signing_key)  # a key that cannot sign fails here, before any request

    def make() -> str:
        xml = sign_assertion(
            claims,
            signing_key,
            cert_pem=cert_pem,
            issued_at=clock(),
            assertion_id=new_assertion_id(),
        )
        return encode(xml, encoding)

    return make
