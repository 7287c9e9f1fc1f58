"""No client secret or token ever appears in logs, exceptions or `tokensync check` output:
raw, base64, URL-encoded, or as base64 of id:secret (HTTP Basic credentials)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

from fixtures.token_servers import Credentials, run_tokensync
from servers.quirky import ServerTLS, free_port
from tokensync.oauth2 import FORM, JSON, TokenError, TokenRequest, fetch_token


def unique_credentials() -> Credentials:
    return Credentials(
        client_id=f"id-{secrets.token_hex(4)}+/é",
        client_secret=f"{secrets.token_urlsafe(24)}+/:=% é{secrets.token_hex(4)}",
    )


def _b64(text: str) -> list[str]:
    raw = text.encode()
    encoded = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
    return encoded + [e.rstrip("=") for e in encoded]


def leak_forms(value: str, client_id: str | None = None) -> set[str]:
    """Every spelling of `value` that would count as a leak (computed independently of
    tokensync.redact)."""
    forms = {
        value,
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
        json.dumps(value)[1:-1],
        *_b64(value),
    }
    if client_id is not None:
        forms |= set(_b64(f"{client_id}:{value}"))
        forms |= set(_b64(f"{quote_plus(client_id)}:{quote_plus(value)}"))
    return forms


def assert_no_leak(text: str, credentials: Credentials, tokens: list[str]) -> None:
    for form in leak_forms(credentials.client_secret, credentials.client_id):
        assert form not in text, f"client secret leaked as {form!r}"
    for token in tokens:
        for form in leak_forms(token):
            assert form not in text, "token leaked"


def everything_about(error: TokenError) -> str:
    return "\n".join(
        [
            str(error),
            repr(error),
            *(str(v) for v in vars(error).values()),
            *traceback.format_exception(error),
        ]
    )


SCENARIOS = {
    "success": (None, {}),
    "wrong secret": ("wrong-secret", {}),
    "echo secret": ("echo_secret", {}),
    "redirect": ("redirect", {"location": "http://localhost:1/elsewhere"}),
    "html": ("html", {}),
    "huge": ("huge", {}),
    "no access token": ("no_access_token", {}),
    "expires_in zero": ("expires_in_zero", {}),
    "500": ("500", {}),
    "429": ("429", {"retry_after": 2}),
    "drip timeout": ("drip", {"interval": 0.05}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize(
    ("auth", "content_type"),
    [("header", FORM), ("body", FORM), ("header", JSON), ("body", JSON)],
)
def test_no_secret_or_token_leaks(scenario, auth, content_type, start_server, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = unique_credentials()
    known = {credentials.client_id: credentials.client_secret}
    if scenario == "wrong secret":
        known = {credentials.client_id: "something else entirely"}
    server = start_server(clients=known)
    fault, params = SCENARIOS[scenario]
    if fault and fault != "wrong-secret":
        server.fail(fault, **params)
    request = TokenRequest(
        token_url=server.token_url,
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        client_authentication=auth,
        content_type=content_type,
        timeout_seconds=0.5 if scenario == "drip timeout" else 5,
    )
    text = ""
    try:
        token = fetch_token(request)
        text += repr(token) + repr(request)
    except TokenError as error:
        text += everything_about(error)
    if scenario == "echo secret":
        assert "[REDACTED]" in text  # the endpoint did echo it
    assert_no_leak(text + caplog.text, credentials, server.tokens)


def test_no_leak_on_transport_failures(start_server, token_ca, other_ca, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = unique_credentials()
    tls_server = start_server(
        clients={credentials.client_id: credentials.client_secret},
        tls=ServerTLS.for_ca(token_ca),
    )
    plain = start_server(clients={credentials.client_id: credentials.client_secret})
    urls = [
        (tls_server.token_url, {}),  # untrusted certificate
        (f"http://127.0.0.1:{free_port()}/token", {}),  # connection refused
        (plain.token_url, {"deny_private_networks": True}),
        (plain.token_url.replace("http://", "https://"), {}),  # not TLS
    ]
    text = ""
    for url, options in urls:
        request = TokenRequest(
            token_url=url,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            timeout_seconds=5,
        )
        with pytest.raises(TokenError) as caught:
            fetch_token(request, **options)
        text += everything_about(caught.value)
    assert_no_leak(text + caplog.text, credentials, [])


def _manifest(tmp_path: Path, url: str, credentials: Credentials, content_type: str) -> Path:
    document = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "leak-test"},
        "spec": {
            "tokenURL": url,
            "allowInsecureHTTP": True,
            "clientID": credentials.client_id,
            "clientSecretRef": {"name": "client", "key": "secret"},
            "contentType": content_type,
        },
    }
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("fault", [None, "echo_secret", "expires_in_zero", "no_access_token"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_check_output_never_leaks(fault, output, start_server, tmp_path):
    credentials = unique_credentials()
    server = start_server(clients={credentials.client_id: credentials.client_secret})
    if fault:
        server.fail(fault)
    secret_file = tmp_path / "secret"
    secret_file.write_text(credentials.client_secret)
    path = _manifest(tmp_path, server.token_url, credentials, JSON if fault else FORM)
    result = run_tokensync(
        "check", "-f", str(path), "--client-secret-file", str(secret_file), "-o", output
    )
    assert result.returncode == (0 if fault is None else 4 if fault == "echo_secret" else 6)
    assert server.tokens or fault == "echo_secret"
    assert_no_leak(result.stdout + result.stderr, credentials, server.tokens)
