"""Endpoints with real-world quirks: right settings work, wrong ones give the hint."""

from __future__ import annotations

import json

import pytest

from fixtures.token_servers import Credentials, request_for
from servers.quirky import SAP_SCOPE_KEYS
from tokensync.oauth2 import FORM, JSON, ConfigurationError, fetch_token

SAP_SCOPE = {
    "userId": "admin1",
    "companyId": "acme",
    "userType": "admin",
    "resourceType": "learning_public_api",
}


# ---- Amazon Cognito: form body and HTTP Basic only


def test_cognito_with_form_and_basic(cognito_server, credentials):
    token = fetch_token(request_for(cognito_server, credentials, scope="api/read"))
    assert token.scope == "api/read"
    assert cognito_server.issued[-1].client_id == credentials.client_id


def test_cognito_json_body_gets_a_bare_401_and_the_form_hint(cognito_server, credentials):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(cognito_server, credentials, content_type=JSON, scope="api/read"))
    error = caught.value
    assert (error.http_status, error.oauth_error) == (401, None)
    assert f"contentType: {FORM}" in error.hint
    assert f"contentType: {FORM}" in str(error)


def test_cognito_refuses_body_credentials(cognito_server, credentials):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(cognito_server, credentials, client_authentication="body"))
    assert caught.value.oauth_error == "invalid_client"
    assert "clientAuthentication: header" in caught.value.hint


# ---- SAP SuccessFactors Learning: JSON body, HTTP Basic, scope as an object


def test_sap_learning_with_json_and_scope_object(sap_server, credentials):
    token = fetch_token(
        request_for(sap_server, credentials, content_type=JSON, scope_object=SAP_SCOPE)
    )
    assert token.lifetime_source == "expires_in"
    sent = sap_server.received[-1]
    assert sent.header("Content-Type") == JSON
    assert set(SAP_SCOPE_KEYS) <= set(json.loads(sent.body)["scope"])


def test_sap_learning_form_body_gets_the_json_hint(sap_server, credentials):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(sap_server, credentials, scope="learning"))
    assert caught.value.http_status == 415
    assert f"contentType: {JSON}" in caught.value.hint


def test_sap_learning_scope_string_gets_the_scope_object_hint(sap_server, credentials):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(sap_server, credentials, content_type=JSON, scope="learning"))
    assert caught.value.oauth_error == "invalid_scope"
    assert "scopeObject" in caught.value.hint


def test_sap_learning_without_scope_when_include_scope_is_off(sap_server, credentials):
    # The CPI "Include Scope" checkbox unticked: the endpoint then complains about scope.
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(
            request_for(
                sap_server,
                credentials,
                content_type=JSON,
                scope_object=SAP_SCOPE,
                include_scope=False,
            )
        )
    assert caught.value.oauth_error == "invalid_scope"
    assert "scope" not in json.loads(sap_server.received[-1].body)


# ---- servers that do not form-decode HTTP Basic credentials


def test_undecoded_basic_credentials_get_the_body_hint(start_server, credentials):
    assert "+" in credentials.client_secret  # changed by RFC 6749 2.3.1 encoding
    server = start_server(
        clients={credentials.client_id: credentials.client_secret}, decode_basic=False
    )
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(server, credentials))
    assert "clientAuthentication: body" in caught.value.hint
    assert "don't decode" in str(caught.value)
    fetch_token(request_for(server, credentials, client_authentication="body"))


def test_standard_server_decodes_non_ascii_basic_credentials(start_server):
    credentials = Credentials("clïent id", "sécret +/:=% ✓")
    server = start_server(clients={credentials.client_id: credentials.client_secret})
    for auth in ("header", "body"):
        for content_type in (FORM, JSON):
            fetch_token(
                request_for(
                    server, credentials, client_authentication=auth, content_type=content_type
                )
            )
    assert len(server.issued) == 4


# ---- issue 8 item 12: Cognito answers a JSON body with 401 {"error": "invalid_client"}


def test_cognito_json_body_with_invalid_client_names_the_form_content_type_first(
    start_server, credentials
):
    from servers.quirky import CognitoServer

    server = start_server(
        CognitoServer,
        clients={credentials.client_id: credentials.client_secret},
        json_answer="invalid_client",
    )
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(server, credentials, content_type=JSON, scope="api/read"))
    error = caught.value
    assert (error.http_status, error.oauth_error) == (401, "invalid_client")
    assert error.hint.startswith(f"set contentType: {FORM}")
    assert "check clientID" not in error.hint  # the generic advice would mislead here
