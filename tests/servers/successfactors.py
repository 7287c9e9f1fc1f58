"""A SuccessFactors-like `/oauth/token` that takes the SAML 2.0 bearer grant (RFC 7522)
and checks the assertion the way SAP documents it, with an independent verifier.

What it checks, in order: a form body with company_id, client_id, grant_type
`urn:ietf:params:oauth:grant-type:saml2-bearer` and assertion; a known company and an OAuth
client registered in it; the assertion decoded (standard base64 or RFC 7522's base64url,
both by default: which of them SAP's decoder takes is not documented) and parsed without
entities or network; exactly one Assertion as the document root; its signature verified
by `xmlsec1` (not by the library that signed it) against the certificate registered for
the client only, never a key the assertion brings, and signing the root itself (no
signature wrapping); the Issuer and the `api_key` attribute are the client ID; the NameID
is a user of the company; the audience is www.successfactors.com; a bearer
SubjectConfirmation whose Recipient is this token URL; the time window (NotBefore /
NotOnOrAfter, 60 s of skew); and the assertion ID is never seen twice (a bearer assertion
is single-use).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers.quirky import FORM, Received, Reply, TokenServer, oauth_error, parse_body

SAML2_BEARER = "urn:ietf:params:oauth:grant-type:saml2-bearer"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
AUDIENCE = "www.successfactors.com"
SKEW_SECONDS = 60
XMLSEC1 = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"


@dataclass
class Company:
    """A SuccessFactors company: its users and its registered OAuth clients (API key ->
    the X.509 certificate, PEM, registered for the client)."""

    users: set[str] = field(default_factory=set)
    clients: dict[str, bytes] = field(default_factory=dict)


class AssertionRejected(ValueError):
    """Why an assertion is not accepted (the error_description sent back)."""


def verify_signature(xml: bytes, cert_pem: bytes) -> None:
    """xmlsec1 verifies the signature with `cert_pem` only (`--enabled-key-data key-name`
    stops it from using a certificate or key carried in KeyInfo)."""
    with tempfile.TemporaryDirectory() as work:
        document, cert = Path(work, "assertion.xml"), Path(work, "cert.pem")
        document.write_bytes(xml)
        cert.write_bytes(cert_pem)
        result = subprocess.run(
            [
                XMLSEC1,
                "--verify",
                "--pubkey-cert-pem",
                str(cert),
                "--enabled-key-data",
                "key-name",
                "--id-attr:ID",
                f"{SAML_NS}:Assertion",
                str(document),
            ],
            capture_output=True,
            timeout=20,
        )
    if result.returncode != 0:
        raise AssertionRejected("the assertion's signature does not verify")


def _instant(text: str | None) -> float:
    if not text:
        raise AssertionRejected("a time is missing")
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise AssertionRejected(f"{text!r} is not a UTC xs:dateTime") from None


def decode_assertion(value: str, encodings: tuple[str, ...]) -> bytes:
    """The assertion's XML: `base64` is the standard alphabet with its padding (a strict
    decoder, as Java's Base64.getDecoder() is), `base64url` RFC 7522's alphabet, padding
    optional; a server taking both is what Apache Commons Codec's decoder does."""
    for encoding in encodings:
        text = value
        if encoding == "base64url":
            text = value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4)
            if "+" in value or "/" in value:
                continue
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise AssertionRejected("the assertion is not " + " or ".join(encodings))


class SuccessFactorsServer(TokenServer):
    """SAP SuccessFactors' OAuth token endpoint for the SAML 2.0 bearer grant."""

    name = "successfactors"
    path = "/oauth/token"

    def __init__(
        self,
        companies: dict[str, Company],
        *,
        lifetime: float = 86399,
        encodings: tuple[str, ...] = ("base64", "base64url"),
        **kwargs: Any,
    ):
        super().__init__(lifetime=lifetime, **kwargs)
        self.companies = companies
        self.encodings = encodings
        self.seen_ids: set[str] = set()
        self.assertions: list[bytes] = []  # every decoded assertion received, for tests
        self._seen_lock = threading.Lock()

    def handle(self, received: Received) -> Reply:
        content_type = (received.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != FORM:
            return oauth_error(400, "invalid_request", "the body must be form-urlencoded")
        params = parse_body(content_type, received.body) or {}
        missing = [
            k for k in ("company_id", "client_id", "grant_type", "assertion") if not params.get(k)
        ]
        if missing:
            return oauth_error(400, "invalid_request", "missing " + ", ".join(missing))
        if params["grant_type"] != SAML2_BEARER:
            return oauth_error(400, "unsupported_grant_type")
        company = self.companies.get(str(params["company_id"]))
        client_id = str(params["client_id"])
        if company is None or client_id not in company.clients:
            return oauth_error(401, "invalid_client", "unknown company or API key")
        try:
            xml = decode_assertion(str(params["assertion"]), self.encodings)
            with self._seen_lock:
                self.assertions.append(xml)
            user = self.check_assertion(xml, company, client_id)
        except AssertionRejected as rejected:
            return oauth_error(400, "invalid_grant", str(rejected))
        return self.issue(client_id, None, extra={"user": user})

    def check_assertion(self, xml: bytes, company: Company, client_id: str) -> str:
        """The user the assertion is for, or AssertionRejected."""
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(xml, parser)
        except etree.XMLSyntaxError:
            raise AssertionRejected("the assertion is not XML") from None
        if root.tag != f"{{{SAML_NS}}}Assertion" or root.get("Version") != "2.0":
            raise AssertionRejected("the document is not a SAML 2.0 Assertion")
        if len(root.findall(f".//{{{SAML_NS}}}Assertion")):
            raise AssertionRejected("an assertion may not contain another")
        references = root.findall(
            f"{{{DS_NS}}}Signature/{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference"
        )
        if len(references) != 1 or references[0].get("URI") != "#" + (root.get("ID") or "?"):
            raise AssertionRejected("the signature must sign the assertion itself")
        verify_signature(xml, company.clients[client_id])

        def text(path: str) -> str | None:
            found = root.find(path, {"saml2": SAML_NS})
            return found.text if found is not None else None

        if text("saml2:Issuer") != client_id:
            raise AssertionRejected("the issuer is not the API key")
        api_keys = root.findall(
            "saml2:AttributeStatement/saml2:Attribute[@Name='api_key']/saml2:AttributeValue",
            {"saml2": SAML_NS},
        )
        if [value.text for value in api_keys] != [client_id]:
            raise AssertionRejected("the api_key attribute is not the API key")
        user = text("saml2:Subject/saml2:NameID")
        if user not in company.users:
            raise AssertionRejected("unknown user")
        if text("saml2:Conditions/saml2:AudienceRestriction/saml2:Audience") != AUDIENCE:
            raise AssertionRejected(f"the audience must be {AUDIENCE}")
        confirmation = root.find(
            "saml2:Subject/saml2:SubjectConfirmation[@Method='" + BEARER + "']",
            {"saml2": SAML_NS},
        )
        data = (
            confirmation.find("saml2:SubjectConfirmationData", {"saml2": SAML_NS})
            if (confirmation is not None)
            else None
        )
        if data is None or data.get("Recipient") != self.token_url:
            raise AssertionRejected("the bearer confirmation's Recipient is not this token URL")
        conditions = root.find("saml2:Conditions", {"saml2": SAML_NS})
        if conditions is None:
            raise AssertionRejected("the assertion has no Conditions")
        now = time.time()
        if now + SKEW_SECONDS < _instant(conditions.get("NotBefore")):
            raise AssertionRejected("the assertion is not valid yet")
        for expiry in (conditions.get("NotOnOrAfter"), data.get("NotOnOrAfter")):
            if now - SKEW_SECONDS >= _instant(expiry):
                raise AssertionRejected("the assertion has expired")
        with self._seen_lock:
            if root.get("ID") in self.seen_ids:
                raise AssertionRejected("the assertion was used before")
            self.seen_ids.add(str(root.get("ID")))
        return str(user)
