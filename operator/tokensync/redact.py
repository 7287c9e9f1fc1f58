"""Remove client secrets and tokens from text that leaves the process (errors, status, output).

A secret can come back from a server or library in many spellings: raw, base64 (inside a
Basic header), URL-encoded (inside a form body or URL), or escaped inside JSON. Every
spelling we can predict is replaced, longest first, so no fragment of one survives.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"

# Shorter strings are too likely to occur in ordinary text; replacing them would shred it.
MIN_SECRET_LENGTH = 4


def _b64_forms(data: bytes) -> set[str]:
    forms = set()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = encoded.decode("ascii")
        forms.update({text, text.rstrip("=")})
    return forms


def _spellings(value: str) -> set[str]:
    """The ways one string may be written back to us."""
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    forms |= _b64_forms(value.encode("utf-8"))
    return forms


def secret_variants(*secrets: str | None, client_id: str | None = None) -> set[str]:
    """Every predictable spelling of `secrets`, plus Basic credentials built with `client_id`."""
    variants: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        for value in {secret, secret.strip()}:
            if len(value) < MIN_SECRET_LENGTH:
                continue
            variants |= _spellings(value)
            if client_id is not None:
                # HTTP Basic credentials, both as RFC 6749 says and as most clients send them.
                for pair in (
                    f"{quote_plus(client_id)}:{quote_plus(value)}",
                    f"{client_id}:{value}",
                ):
                    variants |= _b64_forms(pair.encode("utf-8"))
    return {v for v in variants if len(v) >= MIN_SECRET_LENGTH}


def redact(text: str, secrets: Iterable[str | None], client_id: str | None = None) -> str:
    """Replace every variant of every secret in `text` with [REDACTED]."""
    variants = secret_variants(*secrets, client_id=client_id)
    if not variants or not text:
        return text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))
    return pattern.sub(REDACTED, text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def truncate(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters, for error text from a remote server."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    if len(line) <= limit:
        return line
    return line[: limit - 1].rstrip() + "…"
