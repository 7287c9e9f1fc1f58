"""`spec.clientIDInRequest`: whether `client_id` goes next to a client assertion (issue 21).

RFC 7521 4.2 makes `client_id` optional with an assertion; Entra ID documents it as
required, while Keycloak 26.5 refuses one that differs from the assertion's `sub` (a
ServiceAccount token's `system:serviceaccount:<ns>:<sa>`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest

from tokensync.oauth2 import (
    CLIENT_ASSERTION_TYPE,
    ConfigurationError,
    TokenRequest,
    build_request_parts,
)
from tokensync.secret import config_hash
from tokensync.spec import (
    JSON,
    ResolvedValues,
    SpecError,
    parse_spec,
    to_token_request,
)

TOKEN_URL = "https://idp.example/realms/r/protocol/openid-connect/token"


def request_of(**fields: Any) -> TokenRequest:
    settings: dict[str, Any] = {
        "client_authentication": "workload_identity",
        "client_assertion": lambda: "header.claims.signature",
        **fields,
    }
    return TokenRequest(token_url=TOKEN_URL, client_id="acme", client_secret="", **settings)


def sent(request: TokenRequest) -> list[tuple[str, str]]:
    _headers, body = build_request_parts(request)
    return parse_qsl(body.decode(), keep_blank_values=True)


def workload_spec(**fields: Any) -> dict[str, Any]:
    return {
        "tokenURL": TOKEN_URL,
        "clientID": "acme",
        "clientAuthentication": "workload_identity",
        "workloadIdentity": {"serviceAccountName": "app", "audience": "https://idp.example"},
        **fields,
    }


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_jwt", "workload_identity"])
def test_client_id_is_left_out_when_asked(method):
    params = sent(request_of(client_authentication=method, client_id_in_request=False))
    assert params == [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", "header.claims.signature"),
    ]


def test_client_id_is_sent_by_default_and_in_json_bodies_alike():
    assert ("client_id", "acme") in sent(request_of())
    _headers, body = build_request_parts(request_of(content_type=JSON, client_id_in_request=False))
    assert b"client_id" not in body and b"client_assertion_type" in body


def test_spec_default_and_false_reach_the_request():
    default = parse_spec(workload_spec(), name="c")
    assert default.client_id_in_request is True
    off = parse_spec(workload_spec(clientIDInRequest=False), name="c")
    assert off.client_id_in_request is False
    request = to_token_request(off, ResolvedValues(client_id="acme"))
    assert request.client_id_in_request is False


@pytest.mark.parametrize("method", ["header", "body", "tls_client_auth"])
def test_false_is_refused_where_the_client_id_is_always_sent(method):
    spec: dict[str, Any] = {
        "tokenURL": TOKEN_URL,
        "clientID": "acme",
        "clientAuthentication": method,
        "clientIDInRequest": False,
    }
    if method == "tls_client_auth":
        spec["tls"] = {"clientCertificateRef": {"name": "cert"}}
    else:
        spec["clientSecretRef"] = {"name": "s", "key": "k"}
    with pytest.raises(SpecError) as info:
        parse_spec(spec, name="c")
    assert any(p.startswith("spec.clientIDInRequest: ") for p in info.value.problems)
    # true is the default and allowed everywhere
    spec["clientIDInRequest"] = True
    assert parse_spec(spec, name="c").client_id_in_request is True


def test_not_a_boolean_is_refused():
    with pytest.raises(SpecError) as info:
        parse_spec(workload_spec(clientIDInRequest="no"), name="c")
    assert any(p.startswith("spec.clientIDInRequest") for p in info.value.problems)


def test_config_hash_changes_with_the_field_and_not_for_the_default():
    values = ResolvedValues(client_id="acme")
    default = config_hash(parse_spec(workload_spec(), name="c"), values)
    explicit = config_hash(parse_spec(workload_spec(clientIDInRequest=True), name="c"), values)
    off = config_hash(parse_spec(workload_spec(clientIDInRequest=False), name="c"), values)
    assert default == explicit != off


def test_refusal_hint_names_the_field_only_while_the_client_id_is_sent():
    from tokensync.oauth2 import (
        _error_for_status,  # the pure status -> error mapping
        _utc_now,
    )

    body = (
        b'{"error":"invalid_client",'
        b'"error_description":"client_id parameter does not match sub claim"}'
    )
    error = _error_for_status(400, {}, body, request_of(), _utc_now())
    assert isinstance(error, ConfigurationError)
    assert "clientIDInRequest: false" in str(error)
    error = _error_for_status(400, {}, body, request_of(client_id_in_request=False), _utc_now())
    assert "clientIDInRequest" not in str(error)
