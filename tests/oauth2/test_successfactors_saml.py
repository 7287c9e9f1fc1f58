"""The SAML 2.0 bearer grant (RFC 7522) against a SuccessFactors-like endpoint that checks
the assertion the way SAP documents it and verifies its signature with xmlsec1, an
independent verifier (tests/servers/successfactors.py): `tokensync check` gets a token,
and the endpoint itself is shown to refuse what it should (so a token proves the
assertion right)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml

from fixtures.token_servers import run_tokensync
from servers.quirky import ServerTLS
from servers.successfactors import (
    SAML2_BEARER,
    AssertionRejected,
    Company,
    SuccessFactorsServer,
    verify_signature,
)
from tokensync import saml
from tokensync.assertion import private_key_signer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
API_KEY = "NjM5ZGE3YTItZmY0YS00"
COMPANY = "ACME01"
USER = "sfadmin"


@pytest.fixture(scope="module")
def client_cert() -> trustme.LeafCert:
    """The OAuth client's X.509 certificate and key, as SuccessFactors generates them."""
    return trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "oauth-client.sf.example", key_type=trustme.KeyType.RSA
    )


@pytest.fixture
def successfactors(start_server, token_ca, client_cert) -> SuccessFactorsServer:
    company = Company(users={USER}, clients={API_KEY: client_cert.cert_chain_pems[0].bytes()})
    return start_server(
        SuccessFactorsServer, companies={COMPANY: company}, tls=ServerTLS.for_ca(token_ca)
    )


def credential(token_url: str, **grant: Any) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": "sf-api", "namespace": "hr"},
            "spec": {
                "tokenURL": token_url,
                "clientID": API_KEY,
                "clientAuthentication": "none",
                "grantType": "saml2_bearer",
                "saml2Bearer": {
                    "keyRef": {"name": "sf-oauth-client", "key": "tls.key"},
                    "certificateRef": {"name": "sf-oauth-client", "key": "tls.crt"},
                    "subject": USER,
                    "companyID": COMPANY,
                    **grant,
                },
            },
        }
    ]


def run_check(
    documents: list[dict[str, Any]], key_pem: bytes, cert_pem: bytes, tmp_path: Path, ca_pem: bytes
):
    manifest = tmp_path / "credential.yaml"
    manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    files = {"tls.key": key_pem, "tls.crt": cert_pem, "ca.pem": ca_pem}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return run_tokensync(
        "check",
        "-f",
        str(manifest),
        "--ref",
        f"sf-oauth-client/tls.key={tmp_path / 'tls.key'}",
        "--ref",
        f"sf-oauth-client/tls.crt={tmp_path / 'tls.crt'}",
        env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")},
    )


def test_check_gets_a_token_with_a_signed_assertion(
    successfactors, client_cert, token_ca, tmp_path
):
    key_pem = client_cert.private_key_pem.bytes()
    result = run_check(
        credential(successfactors.token_url),
        key_pem,
        client_cert.cert_chain_pems[0].bytes(),
        tmp_path,
        token_ca.cert_pem.bytes(),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "result: token issued" in out
    assert "saml2_bearer (assertion signed with Secret 'sf-oauth-client' key 'tls.key'" in out
    assert "none (a public client" in out
    assert len(successfactors.issued) == 1 and successfactors.issued[0].client_id == API_KEY
    (received,) = successfactors.received
    sent = dict(
        pair.split("=", 1) for pair in received.body.decode().split("&")
    )  # the assertion is base64url: nothing in it is form-escaped
    assert sent["grant_type"] == requests.utils.quote(SAML2_BEARER, safe="")
    # Neither the token, the assertion (a bearer credential for its lifetime) nor the key
    # is printed.
    assert successfactors.tokens[-1] not in out
    assert sent["assertion"] not in out and sent["assertion"][:40] not in out
    assert "PRIVATE KEY" not in out and key_pem.decode().splitlines()[1] not in out


def test_a_key_the_client_did_not_register_gets_invalid_grant_and_a_hint(
    successfactors, token_ca, tmp_path
):
    stranger = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "x.example", key_type=trustme.KeyType.RSA
    )
    result = run_check(
        credential(successfactors.token_url),
        stranger.private_key_pem.bytes(),
        stranger.cert_chain_pems[0].bytes(),
        tmp_path,
        token_ca.cert_pem.bytes(),
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid_grant" in out and "does not verify" in out
    assert not successfactors.issued
    assert "PRIVATE KEY" not in out


def test_an_unknown_user_and_company_are_refused(successfactors, client_cert, token_ca, tmp_path):
    key_pem = client_cert.private_key_pem.bytes()
    cert_pem = client_cert.cert_chain_pems[0].bytes()
    ca_pem = token_ca.cert_pem.bytes()
    result = run_check(
        credential(successfactors.token_url, subject="nobody"), key_pem, cert_pem, tmp_path, ca_pem
    )
    assert result.returncode != 0 and "unknown user" in result.stdout + result.stderr
    result = run_check(
        credential(successfactors.token_url, companyID="OTHER"), key_pem, cert_pem, tmp_path, ca_pem
    )
    assert result.returncode != 0 and "invalid_client" in result.stdout + result.stderr
    assert not successfactors.issued


# ---- the endpoint refuses what SAP's does: a token above proves the assertion right


def _assertion(client_cert, *, issued_at: float | None = None, **claims: Any) -> bytes:
    signer = private_key_signer(client_cert.private_key_pem.bytes())
    settings = {
        "issuer": API_KEY,
        "subject": USER,
        "audience": saml.SUCCESSFACTORS_AUDIENCE,
        "lifetime_seconds": 300,
        "attributes": {"api_key": API_KEY},
        **claims,
    }
    return saml.sign_assertion(
        saml.SAMLClaims(**settings),
        signer,
        cert_pem=None,
        issued_at=time.time() if issued_at is None else issued_at,
        assertion_id=saml.new_assertion_id(),
    )


def _post(server: SuccessFactorsServer, xml: bytes, ca_path: Path) -> requests.Response:
    return requests.post(
        server.token_url,
        data={
            "company_id": COMPANY,
            "client_id": API_KEY,
            "grant_type": SAML2_BEARER,
            "assertion": saml.encode(xml),
        },
        verify=str(ca_path),
        timeout=30,
    )


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({}, None),
        ({"audience": "https://other.example"}, "audience"),
        ({"recipient": "https://other.example/oauth/token"}, "Recipient"),
        ({"issuer": "someone-else"}, "issuer"),
        ({"attributes": {}}, "api_key"),
        ({"issued_at": time.time() - 3600}, "expired"),
        ({"issued_at": time.time() + 3600}, "not valid yet"),
    ],
)
def test_the_endpoint_checks_each_claim(
    successfactors, client_cert, token_ca, tmp_path, claims, refusal
):
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(token_ca.cert_pem.bytes())
    claims = {"recipient": successfactors.token_url, **claims}
    answer = _post(successfactors, _assertion(client_cert, **claims), ca_path)
    if refusal is None:
        assert answer.status_code == 200, answer.text
        assert answer.json()["user"] == USER
    else:
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
        assert refusal in answer.json()["error_description"]


def test_the_endpoint_refuses_a_replayed_or_altered_assertion(
    successfactors, client_cert, token_ca, tmp_path
):
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(token_ca.cert_pem.bytes())
    xml = _assertion(client_cert, recipient=successfactors.token_url)
    assert _post(successfactors, xml, ca_path).status_code == 200
    replayed = _post(successfactors, xml, ca_path)
    assert replayed.status_code == 400 and "used before" in replayed.json()["error_description"]
    altered = _assertion(client_cert, recipient=successfactors.token_url).replace(
        USER.encode(), b"sfadmix", 1
    )
    with pytest.raises(AssertionRejected, match="does not verify"):
        verify_signature(altered, client_cert.cert_chain_pems[0].bytes())
    answer = _post(successfactors, altered, ca_path)
    assert answer.status_code == 400 and "does not verify" in answer.json()["error_description"]


def test_the_example_against_the_endpoint(successfactors, client_cert, token_ca, tmp_path):
    documents = list(
        yaml.safe_load_all((EXAMPLES / "sap-successfactors-saml2-bearer.yaml").read_text())
    )
    (example,) = [d for d in documents if d["kind"] == "OAuth2Credential"]
    key_name = example["spec"]["saml2Bearer"]["keyRef"]["name"]
    successfactors.companies[example["spec"]["saml2Bearer"]["companyID"]] = Company(
        users={example["spec"]["saml2Bearer"]["subject"]},
        clients={example["spec"]["clientID"]: client_cert.cert_chain_pems[0].bytes()},
    )
    example["spec"]["tokenURL"] = successfactors.token_url
    manifest = tmp_path / "example.yaml"
    manifest.write_text(yaml.safe_dump(example))
    files = {
        "tls.key": client_cert.private_key_pem.bytes(),
        "tls.crt": client_cert.cert_chain_pems[0].bytes(),
        "ca.pem": token_ca.cert_pem.bytes(),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    result = run_tokensync(
        "check",
        "-f",
        str(manifest),
        "--ref",
        f"{key_name}/tls.key={tmp_path / 'tls.key'}",
        "--ref",
        f"{key_name}/tls.crt={tmp_path / 'tls.crt'}",
        env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: token issued" in result.stdout
    assert len(successfactors.issued) == 1


@pytest.mark.parametrize("encoding", ["base64url", "base64"])
def test_a_server_that_decodes_one_encoding_only(
    start_server, client_cert, token_ca, tmp_path, encoding
):
    """saml2Bearer.encoding is what makes the difference: a server with a strict decoder of
    one alphabet refuses the other (exit 4, invalid_grant) and takes its own."""
    company = Company(users={USER}, clients={API_KEY: client_cert.cert_chain_pems[0].bytes()})
    server = start_server(
        SuccessFactorsServer,
        companies={COMPANY: company},
        encodings=(encoding,),
        tls=ServerTLS.for_ca(token_ca),
    )
    key_pem = client_cert.private_key_pem.bytes()
    cert_pem = client_cert.cert_chain_pems[0].bytes()
    ca_pem = token_ca.cert_pem.bytes()
    results = {
        sent: run_check(
            credential(server.token_url, encoding=sent), key_pem, cert_pem, tmp_path, ca_pem
        )
        for sent in ("base64url", "base64")
    }
    for sent, result in results.items():
        out = result.stdout + result.stderr
        if sent == encoding:
            assert result.returncode == 0, out
        else:
            assert result.returncode == 4 and "is not " + encoding in out, out
    assert len(server.issued) == 1
