"""Issue 9 item 7: an endpoint that echoes the client secret in every spelling, at every
position around the 200-character cut of error_description. Nothing of the secret (no
spelling, no fragment of 8 or more characters) may reach the TokenError's text or fields."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

import pytest

from fixtures.token_servers import Credentials, request_for
from tokensync.oauth2 import JSON, TokenError, fetch_token

SPELLINGS = {
    "raw": lambda s: s,
    "upper": str.upper,
    "lower": str.lower,
    "reversed": lambda s: s[::-1],
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "quote": lambda s: quote(s, safe=""),
    "quote_plus": quote_plus,
}


def fragments(
    secret: str, spellings: Iterable[Callable[[str], str]] = (), size: int = 8
) -> set[str]:
    """Every `size`-character piece of every spelling (all of SPELLINGS by default)."""
    found = set()
    for spell in spellings or SPELLINGS.values():
        text = spell(secret)
        found |= {text[i : i + size] for i in range(len(text) - size + 1)}
    return found


def published(error: TokenError) -> str:
    return "\n".join(
        str(part)
        for part in (
            str(error),
            repr(error),
            error.message,
            error.oauth_error,
            error.oauth_error_description,
            error.hint,
        )
        if part
    )


@pytest.fixture
def echo_credentials() -> Credentials:
    # 41 characters: the length that leaked 23 of its characters before.
    return Credentials(f"client-{secrets.token_hex(4)}", secrets.token_urlsafe(30) + "Z")


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize("auth", ["header", "body"])
def test_no_fragment_of_the_secret_at_any_cut(start_server, echo_credentials, spelling, auth):
    server = start_server(clients={echo_credentials.client_id: echo_credentials.client_secret})
    secret = echo_credentials.client_secret
    spelled = SPELLINGS[spelling](secret)
    leaks = fragments(secret) | fragments(spelled, [lambda s: s])
    for pad in range(200 - len(spelled) - 2, 203):
        server.fail("echo_spelling", spell=SPELLINGS[spelling], pad=max(pad, 0))
        request = request_for(server, echo_credentials, client_authentication=auth)
        with pytest.raises(TokenError) as caught:
            fetch_token(request)
        text = published(caught.value)
        leaked = sorted(f for f in leaks if f in text)
        assert not leaked, (spelling, pad, leaked[:3], text)


def test_json_request_echo(start_server, echo_credentials):
    server = start_server(clients={echo_credentials.client_id: echo_credentials.client_secret})
    server.fail("echo_spelling", spell=SPELLINGS["raw"], pad=150)
    request = request_for(server, echo_credentials, client_authentication="body", content_type=JSON)
    with pytest.raises(TokenError) as caught:
        fetch_token(request)
    text = published(caught.value)
    assert not [f for f in fragments(echo_credentials.client_secret) if f in text], text
