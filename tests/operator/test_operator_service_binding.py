"""SAP BTP service-binding Secrets as sources, through the operator: a Secret shaped like
the one the SAP BTP service operator writes for an XSUAA binding (top-level keys; the
label and annotation added with the ServiceBinding's secretTemplate metadata), read with
plain key references: `clientid`/`clientsecret` (credential-type binding-secret) against
a standard token endpoint, and `clientid` plus `certificate`/`key` of the Opaque Secret
(credential-type x509) through `tls.clientCertificateRef.certificateKey/privateKeyKey`
for tls_client_auth against oidc-provider over mutual TLS."""

from __future__ import annotations

import secrets

import pytest
from operator_helpers import SOURCE_LABEL, decode
from test_identity import create_credential

from servers.quirky import TokenServer
from tokensync.redact import secret_variants

pytestmark = pytest.mark.envtest


class XSUAA(TokenServer):
    """XSUAA's token path."""

    name = "xsuaa"
    path = "/oauth/token"


def binding_secret(cluster, name: str, data: dict[str, str], token_url_prefix: str) -> None:
    cluster.core.create_namespaced_secret(
        cluster.ns,
        {
            "metadata": {
                "name": name,
                "labels": dict(SOURCE_LABEL),
                "annotations": {"tokensync.dev/allowed-token-urls": token_url_prefix},
            },
            "type": "Opaque",
            "stringData": {
                "instance_guid": "6f1c-guid",
                "instance_name": "orders-xsuaa",
                "plan": "application",
                "type": "xsuaa",
                "uaadomain": "authentication.eu10.hana.ondemand.com",
                **data,
            },
        },
    )


def test_client_secret_binding(cluster, own_operator):
    client_id = f"sb-orders-{secrets.token_hex(3)}!t4711"
    client_secret = f"{secrets.token_urlsafe(18)}$A{secrets.token_hex(4)}="
    with XSUAA({client_id: client_secret}) as xsuaa:
        operator = own_operator("--allow-insecure", "--no-deny-private-networks")
        binding_secret(
            cluster,
            "orders-binding",
            {
                "clientid": client_id,
                "clientsecret": client_secret,
                "url": xsuaa.base_url,
                "credential-type": "binding-secret",
            },
            xsuaa.base_url + "/oauth/",
        )
        create_credential(
            cluster,
            "orders",
            {
                "tokenURL": xsuaa.base_url + "/oauth/token",  # the binding's url + /oauth/token
                "allowInsecureHTTP": True,
                "clientIDRef": {"name": "orders-binding", "key": "clientid"},
                "clientSecretRef": {"name": "orders-binding", "key": "clientsecret"},
            },
        )
        cluster.wait_ready("orders", reason="TokenIssued")
        (issued,) = xsuaa.issued
        assert issued.client_id == client_id
        assert decode(cluster.secret("orders"))["access_token"] in xsuaa.tokens
        leaks = secret_variants(client_secret, client_id=client_id)
        leaks |= {v for t in xsuaa.tokens for v in secret_variants(t)}
        assert not [v for v in leaks if v in operator.log()]


def test_x509_binding(cluster, own_operator, tmp_path, client_ca, client_cert):
    from servers.oidc import OIDCProvider
    from servers.quirky import ServerTLS

    own_operator("--no-deny-private-networks", "--namespace", cluster.ns)
    tls = ServerTLS.for_ca(cluster.ca, client_ca=client_ca)
    material = (tls.cert_chain_pem, tls.private_key_pem, client_ca.cert_pem.bytes())
    with OIDCProvider.start(tmp_path, mtls=material) as provider:
        client = provider.add_client(
            "tls_client_auth",
            metadata={"tls_client_auth_san_email": "tokensync-client@tokensync.test"},
        )
        base = client.token_url.rsplit("/", 1)[0]
        binding_secret(
            cluster,
            "orders-x509-binding",
            {
                "clientid": client.client_id,
                "certificate": client_cert.cert_pem.decode(),
                "key": client_cert.key_pem.decode(),
                "certurl": base,
                "credential-type": "x509",
            },
            client.token_url,
        )
        create_credential(
            cluster,
            "orders-x509",
            {
                "tokenURL": client.token_url,
                "allowInsecureHTTP": False,
                "clientIDRef": {"name": "orders-x509-binding", "key": "clientid"},
                "clientAuthentication": "tls_client_auth",
                "tls": {
                    "caRef": cluster.ca_configmap(),
                    "clientCertificateRef": {
                        "name": "orders-x509-binding",
                        "certificateKey": "certificate",
                        "privateKeyKey": "key",
                    },
                },
            },
        )
        cluster.wait_ready("orders-x509", reason="TokenIssued")
        assert [i for i in provider.issued() if i["client_id"] == client.client_id]

        # Without the named keys the Opaque binding is refused before any request.
        before = len(provider.issued())
        create_credential(
            cluster,
            "orders-x509-unnamed",
            {
                "tokenURL": client.token_url,
                "clientIDRef": {"name": "orders-x509-binding", "key": "clientid"},
                "clientAuthentication": "tls_client_auth",
                "tls": {
                    "caRef": cluster.ca_configmap(),
                    "clientCertificateRef": {"name": "orders-x509-binding"},
                },
            },
        )
        ready = cluster.wait_ready("orders-x509-unnamed", "False")
        assert ready["reason"] in ("ReferenceInvalid", "ReferenceKeyMissing"), ready
        assert len(provider.issued()) == before
