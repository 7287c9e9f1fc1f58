from __future__ import annotations

import base64
import json
import secrets
from urllib.parse import quote, quote_plus

import pytest

from tokensync.redact import REDACTED, redact, secret_variants, truncate


def b64_all(data: str) -> list[str]:
    raw = data.encode()
    forms = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
    return forms + [f.rstrip("=") for f in forms]


def spellings(secret: str, client_id: str) -> list[str]:
    """Written independently of the module: every way a secret leaks."""
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        *b64_all(secret),
        *b64_all(f"{client_id}:{secret}"),
        *b64_all(f"{quote_plus(client_id)}:{quote_plus(secret)}"),
    ]


@pytest.mark.parametrize(
    "secret",
    [
        secrets.token_urlsafe(24),
        secrets.token_urlsafe(24) + '+/=%: é"\\',
        "ab?c",  # short but over the minimum
    ],
)
def test_every_spelling_is_redacted(secret):
    client_id = f"client {secrets.token_hex(3)}/é"
    for spelling in spellings(secret, client_id):
        text = f"before {spelling} after"
        assert redact(text, [secret], client_id=client_id) == f"before {REDACTED} after", spelling


def test_variants_cover_the_listed_forms():
    variants = secret_variants("s3cr+t/=", client_id="id")
    assert {"s3cr+t/=", "s3cr%2Bt%2F%3D", base64.b64encode(b"id:s3cr%2Bt%2F%3D").decode()} <= (
        variants
    )


def test_several_secrets_and_no_remnants():
    token, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    # the secret is a substring of a longer variant: the longer one must win whole
    text = f"{token} {base64.b64encode(f'id:{secret}'.encode()).decode()} {secret}"
    assert redact(text, [token, secret], client_id="id") == f"{REDACTED} {REDACTED} {REDACTED}"


def test_trailing_newline_secret_is_redacted_without_it():
    assert redact("got abcdef here", ["abcdef\n"]) == f"got {REDACTED} here"


@pytest.mark.parametrize("secret", [None, "", "abc"])
def test_short_or_missing_secrets_leave_text_alone(secret):
    assert redact("abc abc", [secret]) == "abc abc"
    assert secret_variants(secret) == set()


def test_truncate():
    assert truncate("short") == "short"
    assert truncate("a\nb\r\n\tc") == "a b c"
    long = truncate("x" * 500, 50)
    assert len(long) == 50
    assert long.endswith("…")
