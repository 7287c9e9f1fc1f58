"""`grantType: saml2_bearer` through the operator, as a SuccessFactors team runs it: the
OAuth client's key and certificate in a kubernetes.io/tls Secret, `clientAuthentication:
none`, the endpoint over HTTPS trusted through tls.caRef. The SuccessFactors-like endpoint
(tests/servers/successfactors.py) verifies every assertion with xmlsec1 against the
certificate registered for the client, so a token in the Secret proves the assertion; a
renewal signs a new one (the endpoint refuses a replayed ID); the key never reaches a log."""

from __future__ import annotations

import base64

import pytest
import trustme
from operator_helpers import SOURCE_LABEL, decode
from test_identity import create_credential

from servers.quirky import ServerTLS
from servers.successfactors import Company, SuccessFactorsServer
from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest

API_KEY = "ZmY0YS00NjM5ZGE3YTIt"


def test_a_successfactors_token_from_a_signed_assertion(cluster, own_operator):
    client_cert = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "oauth-client.sf.example", key_type=trustme.KeyType.RSA
    )
    key_pem = client_cert.private_key_pem.bytes()
    cert_pem = client_cert.cert_chain_pems[0].bytes()
    company = Company(users={"sfadmin"}, clients={API_KEY: cert_pem})
    with SuccessFactorsServer(
        {"ACME01": company}, lifetime=40, tls=ServerTLS.for_ca(cluster.ca)
    ) as successfactors:
        operator = own_operator("--no-deny-private-networks")
        cluster.core.create_namespaced_secret(
            cluster.ns,
            {
                "metadata": {
                    "name": "sf-oauth-client",
                    "labels": dict(SOURCE_LABEL),
                    "annotations": {
                        "tokensync.dev/allowed-token-urls": successfactors.base_url + "/oauth/"
                    },
                },
                "type": "kubernetes.io/tls",
                "data": {
                    "tls.key": base64.b64encode(key_pem).decode(),
                    "tls.crt": base64.b64encode(cert_pem).decode(),
                },
            },
        )
        create_credential(
            cluster,
            "sf-api",
            {
                "tokenURL": successfactors.token_url,
                "allowInsecureHTTP": False,
                "clientID": API_KEY,
                "clientAuthentication": "none",
                "grantType": "saml2_bearer",
                "saml2Bearer": {
                    "keyRef": {"name": "sf-oauth-client", "key": "tls.key"},
                    "certificateRef": {"name": "sf-oauth-client", "key": "tls.crt"},
                    "subject": "sfadmin",
                    "companyID": "ACME01",
                },
                "tls": {"caRef": cluster.ca_configmap()},
                "refresh": {"renewBefore": "30s"},
            },
        )
        cluster.wait_ready("sf-api", reason="TokenIssued")
        assert decode(cluster.secret("sf-api"))["access_token"] == successfactors.tokens[0]
        # 40 s tokens renewed 30 s before expiry: a second token needs a new assertion.
        successfactors.wait_issued(2, timeout=60)
        assert len(successfactors.seen_ids) == 2
        assert len(successfactors.assertions) == 2  # nothing was refused
        log = operator.log()
        leaks = {v for t in successfactors.tokens for v in secret_variants(t)}
        assert not [v for v in leaks if v in log]
        assert "PRIVATE KEY" not in log and key_pem.decode().splitlines()[1] not in log
        encoded = [
            value
            for r in successfactors.received
            for value in [r.body.decode().split("assertion=")[-1].split("&")[0]]
        ]
        assert not [a for a in encoded if a[:64] in log]


def test_a_certificate_that_does_not_match_the_key_is_reported(cluster, own_operator):
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    mine, other = (ca.issue_cert(n, key_type=trustme.KeyType.RSA) for n in ("a.ex", "b.ex"))
    own_operator("--allow-insecure", "--no-deny-private-networks")
    cluster.source_secret(
        "sf-key",
        {
            "key.pem": mine.private_key_pem.bytes().decode(),
            "cert.pem": other.cert_chain_pems[0].bytes().decode(),
        },
        allowed_urls="http://127.0.0.1:1/",
    )
    create_credential(
        cluster,
        "sf-mismatch",
        {
            "tokenURL": "http://127.0.0.1:1/oauth/token",
            "allowInsecureHTTP": True,
            "clientID": API_KEY,
            "clientAuthentication": "none",
            "grantType": "saml2_bearer",
            "saml2Bearer": {
                "keyRef": {"name": "sf-key", "key": "key.pem"},
                "certificateRef": {"name": "sf-key", "key": "cert.pem"},
                "subject": "sfadmin",
            },
        },
    )
    ready = cluster.wait_ready("sf-mismatch", "False", "ReferenceInvalid")
    assert "saml2Bearer.keyRef" in ready["message"] and "does not match" in ready["message"]
    assert "PRIVATE KEY" not in ready["message"]
