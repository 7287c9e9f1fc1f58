"""Remove client secrets and tokens from text that leaves the process (errors, status, output).

A secret can come back from a server or library in many spellings: raw, base64 (inside a
Basic header), URL-encoded (inside a form body or URL), escaped inside JSON, hex, upper or
lower case, reversed. Every spelling we can predict is replaced, and so is:
- any fragment of 8 or more characters of a short secret (a client secret) in any of these
  spellings, wherever it stands: servers echo part of a secret, or cut their own text;
- a prefix of 8 or more characters of any secret's spelling at the end of the text, which
  is what a cut (ours or the server's) leaves of an echo.

Cost is linear in the text and bounded: a secret longer than the text cannot appear whole
in it, so only the part of it that fits is spelled out (a 1 MB token once made one regular
expression of every spelling and took ~900 MB). Matching uses plain `str.find` on the
case-folded text, no regular expressions built from secrets.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"

# Shorter strings are too likely to occur in ordinary text; replacing them would shred it.
MIN_SECRET_LENGTH = 4
# Fragments (and prefixes at a cut) this long are redacted: 8 characters of a random
# secret are as good as unique, and shorter ones would shred ordinary text.
MIN_FRAGMENT_LENGTH = 8
# Secrets up to this length (client secrets) are also searched for by fragments; longer
# ones (tokens, capped at 64 KiB) whole and by their prefix at the end of the text.
MAX_FRAGMENT_SECRET_LENGTH = 1024


def _b64_forms(data: bytes) -> set[str]:
    forms = set()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = encoded.decode("ascii")
        forms.update({text, text.rstrip("=")})
    return forms


def _spellings(value: str) -> set[str]:
    """The ways one string may be written back to us (case is handled by folding)."""
    # Bytes, so that text from JSON with lone surrogates ("\ud800") cannot make quote fail.
    raw = value.encode("utf-8", "surrogatepass")
    forms = {
        value,
        value[::-1],
        raw.hex(),
        quote(raw, safe=""),
        quote(raw),
        quote_plus(raw),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    forms |= _b64_forms(raw)
    return forms


def _basic_forms(client_id: str, value: str) -> set[str]:
    """HTTP Basic credentials, both as RFC 6749 says and as most clients send them."""
    forms: set[str] = set()
    id_raw, value_raw = (t.encode("utf-8", "surrogatepass") for t in (client_id, value))
    for pair in (f"{quote_plus(id_raw)}:{quote_plus(value_raw)}", f"{client_id}:{value}"):
        forms |= _b64_forms(pair.encode("utf-8", "surrogatepass"))
    return forms


def _values(secret: str) -> set[str]:
    return {v for v in {secret, secret.strip()} if len(v) >= MIN_SECRET_LENGTH}


def secret_variants(*secrets: str | None, client_id: str | None = None) -> set[str]:
    """Every predictable spelling of `secrets`, plus Basic credentials built with `client_id`
    (case variants aside: matching folds case)."""
    variants: set[str] = set()
    for secret in secrets:
        for value in _values(secret or ""):
            variants |= _spellings(value)
            if client_id is not None:
                variants |= _basic_forms(client_id, value)
    return {v for v in variants if len(v) >= MIN_SECRET_LENGTH}


def _forms_within(secret: str, client_id: str | None, room: int) -> set[str]:
    """Spellings of `secret`, or of the part of it that can fit in `room` characters:
    every spelling of a prefix is a prefix of the spelling (reversed: of its suffix)."""
    forms: set[str] = set()
    for value in _values(secret):
        if len(value) <= room:
            forms |= _spellings(value)
            if client_id is not None:
                forms |= _basic_forms(client_id, value)
        else:
            head = value[:room]
            forms |= _spellings(head) - {head[::-1]}
            forms.add(value[-room:][::-1])
            if client_id is not None:
                forms |= _basic_forms(client_id, head)
    return forms


def _fold(text: str) -> tuple[str, bool]:
    """The text to search: lower-cased when that keeps every index in place."""
    lowered = text.lower()
    return (lowered, True) if len(lowered) == len(text) else (text, False)


def _whole_matches(haystack: str, forms: Iterable[str]) -> list[tuple[int, int]]:
    spans = []
    for form in forms:
        start = haystack.find(form)
        while start != -1:
            spans.append((start, start + len(form)))
            start = haystack.find(form, start + 1)
    return spans


def _fragment_matches(haystack: str, forms: Iterable[str]) -> list[tuple[int, int]]:
    size = MIN_FRAGMENT_LENGTH
    grams = {form[i : i + size] for form in forms for i in range(len(form) - size + 1)}
    if not grams:
        return []
    return [
        (i, i + size) for i in range(len(haystack) - size + 1) if haystack[i : i + size] in grams
    ]


def _tail_match(haystack: str, forms: Iterable[str]) -> list[tuple[int, int]]:
    """The longest end of the text (>= 8 characters) that begins some form."""
    best = len(haystack)
    for form in forms:
        needle = form[:MIN_FRAGMENT_LENGTH]
        if len(needle) < MIN_FRAGMENT_LENGTH:
            continue
        start = haystack.find(needle, max(0, len(haystack) - len(form)))
        while start != -1 and start < best:
            if form.startswith(haystack[start:]):
                best = start
                break
            start = haystack.find(needle, start + 1)
    return [(best, len(haystack))] if best < len(haystack) else []


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, position = [], 0
    for start, end in merged:
        out += [text[position:start], REDACTED]
        position = end
    out.append(text[position:])
    return "".join(out)


def redact(text: str, secrets: Iterable[str | None], client_id: str | None = None) -> str:
    """Replace every spelling of every secret in `text` (and fragments of them, see the
    module docstring) with [REDACTED]."""
    if not text:
        return text
    haystack, folded = _fold(text)
    whole: set[str] = set()
    short: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        fragments = len(secret) <= MAX_FRAGMENT_SECRET_LENGTH
        # A short secret is spelled out whole: any fragment of it may stand in the text.
        forms = _forms_within(secret, client_id, len(secret) if fragments else len(text))
        if not folded:
            forms |= {f.upper() for f in forms} | {f.lower() for f in forms}
        forms = {f.lower() if folded else f for f in forms if len(f) >= MIN_SECRET_LENGTH}
        whole |= forms
        if fragments:
            short |= forms
    if not whole:
        return text
    spans = _whole_matches(haystack, whole)
    spans += _fragment_matches(haystack, short)
    spans += _tail_match(haystack, whole)
    return _replace(text, spans)


def redact_truncate(
    text: str, secrets: Iterable[str | None], limit: int = 200, client_id: str | None = None
) -> str:
    """Redact, then cut to one line of at most about `limit` characters, then redact what
    the cut may have made a prefix of a secret. Never the other way round: a cut through
    an echo leaves a piece that no longer matches the whole secret."""
    secrets = list(secrets)
    line = _one_line(redact(text, secrets, client_id=client_id))
    if len(line) <= limit:
        return line
    return redact(line[: limit - 1].rstrip(), secrets, client_id=client_id) + "…"


_CONTROL_CHARS = "".join(chr(c) for c in (*range(0x20), 0x7F))
_CONTROL_TO_SPACE = str.maketrans(_CONTROL_CHARS, " " * len(_CONTROL_CHARS))


def _one_line(text: str) -> str:
    return " ".join(text.translate(_CONTROL_TO_SPACE).split())


def truncate(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters. Text that may hold a secret goes through
    redact_truncate instead, which redacts before and after the cut."""
    line = _one_line(text)
    if len(line) <= limit:
        return line
    return line[: limit - 1].rstrip() + "…"
