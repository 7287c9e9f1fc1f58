"""Against a real OAuth2 server: oidc-provider with client_secret_basic and _post clients."""

from __future__ import annotations

import hashlib

import pytest

from servers.oidc import RESOURCE, OIDCClient, OIDCProvider
from tokensync.oauth2 import ConfigurationError, TokenRequest, fetch_token, jwt_claims


def request_for(client: OIDCClient, **overrides) -> TokenRequest:
    settings = {
        "token_url": client.token_url,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "client_authentication": client.client_authentication,
        "scope": "api:read",
        "timeout_seconds": 10,
    }
    return TokenRequest(**{**settings, **overrides})


@pytest.mark.parametrize("client_fixture", ["oidc_basic_client", "oidc_post_client"])
def test_both_auth_styles_get_tokens(client_fixture, request, oidc_provider: OIDCProvider):
    client: OIDCClient = request.getfixturevalue(client_fixture)
    token = fetch_token(request_for(client))
    assert token.token_type == "Bearer"
    assert token.scope == "api:read"
    assert token.lifetime_source == "expires_in"
    assert 0 < token.lifetime_seconds <= 60
    digest = hashlib.sha256(token.access_token.encode()).hexdigest()
    assert any(
        entry["token_sha256"] == digest and entry["client_id"] == client.client_id
        for entry in oidc_provider.issued()
    )


@pytest.mark.parametrize(
    ("client_fixture", "wrong_style"),
    [("oidc_basic_client", "body"), ("oidc_post_client", "header")],
)
def test_the_wrong_auth_style_is_a_configuration_error(client_fixture, wrong_style, request):
    client: OIDCClient = request.getfixturevalue(client_fixture)
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(client, client_authentication=wrong_style))
    error = caught.value
    assert (error.http_status, error.oauth_error) == (401, "invalid_client")
    assert "clientAuthentication" in error.hint


def test_resource_indicator_gives_a_jwt_for_that_audience(oidc_basic_client):
    token = fetch_token(
        request_for(oidc_basic_client, resource=RESOURCE, scope="api:read api:write")
    )
    claims = jwt_claims(token.access_token)
    assert claims is not None
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == oidc_basic_client.client_id
    assert token.scope == "api:read api:write"
    assert token.expires_at.timestamp() == pytest.approx(claims["exp"], abs=2)


def test_json_body_is_refused_with_the_form_hint(oidc_basic_client):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(oidc_basic_client, content_type="application/json"))
    assert "application/x-www-form-urlencoded" in caught.value.hint


def test_scope_not_allowed_is_a_configuration_error(oidc_provider: OIDCProvider):
    client = oidc_provider.add_client("client_secret_basic", scope="api:read")
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(client, scope="api:write"))
    assert caught.value.oauth_error == "invalid_scope"


def test_rotated_secret(oidc_provider: OIDCProvider):
    client = oidc_provider.add_client("client_secret_post")
    fetch_token(request_for(client))
    oidc_provider.set_secret(client.client_id, "rotated " + client.client_secret)
    with pytest.raises(ConfigurationError):
        fetch_token(request_for(client))
    token = fetch_token(request_for(client, client_secret="rotated " + client.client_secret))
    assert token.access_token


def test_ttl_and_failure_modes_switch_at_runtime(oidc_provider_isolated: OIDCProvider):
    provider = oidc_provider_isolated
    client = provider.add_client("client_secret_basic")
    provider.set_ttl(5)
    assert fetch_token(request_for(client)).lifetime_seconds == 5
    provider.set_mode("429", retry_after=3)
    with pytest.raises(Exception) as caught:
        fetch_token(request_for(client))
    assert (caught.value.kind, caught.value.retry_after) == ("transient", 3)
    provider.set_mode("500")
    with pytest.raises(Exception) as caught:
        fetch_token(request_for(client))
    assert (caught.value.kind, caught.value.http_status) == ("transient", 500)
    provider.set_mode("healthy")
    fetch_token(request_for(client))
    log = provider.issuance_log.read_text().splitlines()
    assert len(log) == 2
