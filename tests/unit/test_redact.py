from __future__ import annotations

import base64
import json
import secrets
from urllib.parse import quote, quote_plus

import pytest

from tokensync.redact import REDACTED, redact, redact_truncate, secret_variants, truncate


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
    ids=["random", "random-special", "short"],  # stable ids: every worker collects the same
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


# ---- issue 9 item 7: more spellings, fragments at a cut, bounded cost


def test_hex_upper_lower_and_reversed_spellings_are_redacted():
    secret = secrets.token_urlsafe(30)
    for spelling in (
        secret.encode().hex(),
        secret.encode().hex().upper(),
        secret.upper(),
        secret.lower(),
        secret[::-1],
        secret[::-1].upper(),
        quote(secret, safe="").lower(),
    ):
        assert redact(f"x {spelling} y", [secret]) == f"x {REDACTED} y", spelling


@pytest.mark.parametrize("kept", range(8, 41))
def test_a_prefix_of_eight_or_more_characters_at_the_end_is_redacted(kept):
    secret = secrets.token_urlsafe(30)  # 40 characters
    text = f"description: the secret was {secret[:kept]}"
    assert secret[:8] not in redact(text, [secret])


def test_any_eight_character_fragment_of_a_secret_is_redacted():
    secret = secrets.token_urlsafe(30)
    for start in range(0, len(secret) - 8):
        text = f"got {secret[start : start + 8 + start % 5]} and more text"
        cleaned = redact(text, [secret])
        assert secret[start : start + 8] not in cleaned, start
        assert cleaned.endswith(" and more text")


def test_redact_then_truncate_never_leaves_a_prefix_at_the_cut():
    secret = secrets.token_urlsafe(30)
    for pad in range(150, 210):
        text = "p" * pad + f" {secret} tail"
        cleaned = redact_truncate(text, [secret], limit=200)
        assert len(cleaned) <= 200 + len(REDACTED)
        for i in range(len(secret) - 7):
            assert secret[i : i + 8] not in cleaned, (pad, i)


def test_ordinary_text_survives():
    secret = secrets.token_urlsafe(30)
    text = "token endpoint answered HTTP 401: invalid_client (client authentication failed)"
    assert redact(text, [secret], client_id="client-1234") == text


def test_redaction_of_a_huge_secret_is_cheap():
    """A 1 MB token once drove one regular expression to ~900 MB: redaction looks only for
    spellings that fit in the text, so its cost follows the text, not the secret."""
    import time
    import tracemalloc

    token = secrets.token_urlsafe(768 * 1024)  # 1 MiB
    short = "token endpoint answered HTTP 400 " + token[:300]
    long = f"echo {token} and {token[::-1]}"
    tracemalloc.start()
    started = time.monotonic()
    cleaned_short = redact(short, [token], client_id="client")
    _, peak_short = tracemalloc.get_traced_memory()
    cleaned_long = redact(long, [token], client_id="client")
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert token[:8] not in cleaned_short
    assert cleaned_long == f"echo {REDACTED} and {REDACTED}"
    assert peak_short < 1024 * 1024, peak_short
    assert peak < 64 * 1024 * 1024, peak
    assert elapsed < 5, elapsed


def test_lone_surrogates_do_not_break_redaction():
    secret = "abc\ud800defghijkl"
    assert redact(f"x {secret} y", [secret], client_id="id\udc00") == f"x {REDACTED} y"
