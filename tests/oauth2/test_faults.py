"""Faulty endpoints: each failure is classified as API.md "Failure handling" says."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from fixtures.token_servers import request_for
from servers.quirky import free_port
from tokensync.oauth2 import (
    ConfigurationError,
    ProtocolError,
    TokenRequest,
    TransientError,
    fetch_token,
)


def test_deadline_covers_a_slowly_dripping_body(token_server, credentials):
    token_server.fail("drip", interval=0.05)  # a full response would take several seconds
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials, timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert caught.value.reason == "Timeout"
    assert 0.9 <= elapsed < 2.5
    assert "timeoutSeconds" in caught.value.hint


def test_connection_refused(credentials):
    url = f"http://127.0.0.1:{free_port()}/token"
    request = TokenRequest(token_url=url, client_id="a", client_secret="b", timeout_seconds=5)
    with pytest.raises(TransientError) as caught:
        fetch_token(request)
    assert caught.value.reason == "ConnectionFailed"
    assert "refused" in str(caught.value)


def test_500(token_server, credentials):
    token_server.fail("500")
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert (caught.value.http_status, caught.value.oauth_error) == (500, "server_error")


def test_503_html_page(token_server, credentials):
    token_server.fail("503")
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.http_status == 503


def test_429_with_retry_after_seconds(token_server, credentials):
    token_server.fail("429", retry_after=7)
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert (caught.value.http_status, caught.value.retry_after) == (429, 7)


def test_429_with_retry_after_date(token_server, credentials):
    now = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    when = format_datetime(now + timedelta(seconds=120), usegmt=True)
    token_server.fail("429", retry_after=when)
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials), now=lambda: now)
    assert caught.value.retry_after == 120


def test_redirect_is_not_followed_and_the_secret_not_resent(
    start_server, token_server, credentials
):
    elsewhere = start_server()
    token_server.fail("redirect", location=f"http://localhost:{elsewhere.port}/oauth2/token")
    for auth in ("header", "body"):
        with pytest.raises(ConfigurationError) as caught:
            fetch_token(request_for(token_server, credentials, client_authentication=auth))
        assert caught.value.reason == "Redirect"
        assert "tokenURL" in caught.value.hint
    assert elsewhere.received == []


def test_html_body(token_server, credentials):
    token_server.fail("html")
    with pytest.raises(ProtocolError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.reason == "NotJSON"


@pytest.mark.parametrize("content_length", [True, False])
def test_two_mebibyte_body(token_server, credentials, content_length):
    token_server.fail("huge", content_length=content_length)
    with pytest.raises(ProtocolError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.reason == "ResponseTooLarge"


def test_json_without_access_token(token_server, credentials):
    token_server.fail("no_access_token")
    with pytest.raises(ProtocolError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.reason == "MissingAccessToken"


def test_expires_in_as_a_string(token_server, credentials):
    token_server.lifetime = 321
    token_server.fail("expires_in_string")
    token = fetch_token(request_for(token_server, credentials))
    assert (token.lifetime_seconds, token.lifetime_source) == (321, "expires_in")


@pytest.mark.parametrize("fault", ["expires_in_zero", "expires_in_garbage"])
def test_unusable_expires_in(token_server, credentials, fault):
    token_server.fail(fault)
    with pytest.raises(ProtocolError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.reason == "InvalidExpiresIn"


def test_missing_expires_in_with_a_jwt(token_server, credentials):
    token_server.lifetime = 600
    token_server.fail("jwt_no_expires_in")
    token = fetch_token(request_for(token_server, credentials))
    assert token.lifetime_source == "jwt"
    issued = token_server.issued[-1]
    assert token.expires_at.timestamp() == pytest.approx(issued.expires_at, abs=1.5)


def test_oauth_error_with_status_200(token_server, credentials):
    token_server.fail("error_in_200")
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.oauth_error == "invalid_client"


def test_healthy_again_after_heal(token_server, credentials):
    token_server.fail("500")
    with pytest.raises(TransientError):
        fetch_token(request_for(token_server, credentials))
    token_server.heal()
    token_server.lifetime = 5
    assert fetch_token(request_for(token_server, credentials)).lifetime_seconds == 5


def test_private_network_guard_refuses_loopback_before_sending(token_server, credentials):
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(token_server, credentials), deny_private_networks=True)
    assert caught.value.reason == "PrivateNetworkDenied"
    assert "127.0.0.1" in str(caught.value)
    assert token_server.received == []


def test_private_network_guard_checks_the_connected_address(token_server, credentials):
    # "localhost" is not an IP literal; the guard still sees where the socket went.
    url = f"http://localhost:{token_server.port}{token_server.path}"
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(
            request_for(token_server, credentials, token_url=url), deny_private_networks=True
        )
    assert caught.value.reason == "PrivateNetworkDenied"
    assert token_server.received == []


def test_proxy_from_the_environment_is_used(start_server, token_server, credentials, monkeypatch):
    proxy = start_server()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
    with pytest.raises(ConfigurationError):  # the stand-in proxy answers 404
        fetch_token(request_for(token_server, credentials))
    assert proxy.received[0].path == token_server.token_url  # absolute-form: via the proxy
    assert token_server.received == []

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fetch_token(request_for(token_server, credentials))
    assert len(proxy.received) == 1


def test_netrc_credentials_are_never_sent(token_server, credentials, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fetch_token(request_for(token_server, credentials, client_authentication="body"))
    assert token_server.received[-1].header("Authorization") is None


def test_the_request_on_the_wire(token_server, credentials):
    fetch_token(request_for(token_server, credentials, scope="a b"))
    sent = token_server.received[-1]
    assert {k.lower() for k in sent.headers} <= {
        "host",
        "accept",
        "accept-encoding",
        "authorization",
        "content-length",
        "content-type",
        "connection",
        "user-agent",
    }
    assert sent.header("Content-Type") == "application/x-www-form-urlencoded"
    assert sent.header("Authorization").startswith("Basic ")
    assert sent.body == b"grant_type=client_credentials&scope=a+b"
