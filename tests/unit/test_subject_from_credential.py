"""Another credential's token as the subject token of a token exchange (issue 21): the
credential that owns it offers it with spec.secret.asSource; its managed Secret then
carries the source label and the token URLs it may be sent to, and only
tokenExchange.subjectTokenRef of a credential that offers nothing itself may read it."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_token_exchange import TOKEN_URL, exchange

from tokensync.check import FoundObject, operator_notes
from tokensync.managed import managed_state, update_patch
from tokensync.oauth2 import Token
from tokensync.secret import (
    ANNOTATION_ALLOWED_URLS,
    LABEL_SOURCE,
    Owner,
    managed_secret,
    url_allowed,
)
from tokensync.sources import (
    ReferenceProblem,
    SourceCache,
    resolve_references,
    source_from_body,
    unresolved_problem,
)
from tokensync.spec import ResolvedValues, SpecError, parse_spec

OFFERED_TO = ["https://idp.example/realms/r/"]
UPSTREAM_TOKEN = "upstream.jwt.token"


def upstream(**secret: Any) -> dict[str, Any]:
    return {
        "tokenURL": "https://login.example/token",
        "clientID": "upstream",
        "clientSecretRef": {"name": "upstream-client", "key": "client_secret"},
        "secret": secret,
    }


def token() -> Token:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    return Token(UPSTREAM_TOKEN, "Bearer", now, now + timedelta(hours=1), None, "expires_in", 200)


def written(spec: dict[str, Any]) -> dict[str, Any]:
    owner = Owner("ns", "upstream", "uid-1")
    return managed_secret(owner, parse_spec(spec, name="upstream"), token(), "sha256:x")


def test_an_offered_token_is_labelled_and_bound_to_its_token_urls():
    body = written(upstream(asSource={"allowedTokenURLs": OFFERED_TO}))
    assert body["metadata"]["labels"][LABEL_SOURCE] == "true"
    assert body["metadata"]["annotations"][ANNOTATION_ALLOWED_URLS] == OFFERED_TO[0]
    plain = written(upstream())
    assert LABEL_SOURCE not in plain["metadata"]["labels"]
    assert ANNOTATION_ALLOWED_URLS not in plain["metadata"]["annotations"]


def test_withdrawing_the_offer_removes_the_label_and_the_binding():
    offered = written(upstream(asSource={"allowedTokenURLs": OFFERED_TO}))
    offered["metadata"]["managedFields"] = [
        {
            "manager": "tokensync",
            "operation": "Update",
            "fieldsV1": {
                "f:metadata": {
                    "f:labels": {f"f:{k}": {} for k in offered["metadata"]["labels"]},
                    "f:annotations": {f"f:{k}": {} for k in offered["metadata"]["annotations"]},
                },
                "f:data": {f"f:{k}": {} for k in offered["data"]},
            },
        }
    ]
    current = managed_state(offered)
    owner = Owner("ns", "upstream", "uid-1")
    patch = update_patch(owner, parse_spec(upstream(), name="upstream"), token(), "h", current)
    assert patch["metadata"]["labels"][LABEL_SOURCE] is None
    assert patch["metadata"]["annotations"][ANNOTATION_ALLOWED_URLS] is None


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "must list 1 to 8"),
        (["http://idp.example/"], "must use https://"),
        (["https://a.example/,https://b.example/"], "without ','"),
        (["https://a.example/", "https://a.example/"], "lists a URL twice"),
        (["https://a.example/x?y"], "no query"),
        ([f"https://h{i}.example/" for i in range(9)], "must list 1 to 8"),
        # From a file given to `check -f`, no API server has checked the types first.
        ([{"url": "https://a.example/"}, {"url": "https://a.example/"}], "must be a URL"),
    ],
)
def test_the_offer_names_valid_https_prefixes(urls: list[Any], message: str):
    with pytest.raises(SpecError) as info:
        parse_spec(upstream(asSource={"allowedTokenURLs": urls}), name="upstream")
    assert any(message in p for p in info.value.problems), info.value.problems


def _managed_body(offered: bool) -> dict[str, Any]:
    spec = upstream(asSource={"allowedTokenURLs": OFFERED_TO}) if offered else upstream()
    body = written(spec)
    body["metadata"]["labels"][LABEL_SOURCE] = "true"  # the source watch saw it labelled
    return body


def test_a_managed_secret_is_read_only_when_offered():
    assert source_from_body("Secret", _managed_body(offered=False), ["access_token"]) is None
    source = source_from_body("Secret", _managed_body(offered=True), ["access_token"])
    assert source is not None and source.managed
    assert source.data == {"access_token": UPSTREAM_TOKEN.encode()}  # only what is wanted
    problem = unresolved_problem(
        parse_spec(exchange(), name="c").references[1], written(upstream())["metadata"]
    )
    assert problem is not None and "spec.secret.asSource" in problem.message


def _resolve(spec: dict[str, Any]) -> ResolvedValues | ReferenceProblem:
    client = source_from_body(
        "Secret",
        {
            "metadata": {"name": "client", "labels": {LABEL_SOURCE: "true"}},
            "data": {"secret": base64.b64encode(b"s3cret").decode()},
        },
    )
    offered = source_from_body("Secret", _managed_body(offered=True))
    sources = {"client": client, "upstream": offered}
    result = resolve_references(
        parse_spec(spec, name="c"), lambda _kind, name: sources.get(name), url_allowed
    )
    assert not isinstance(result, type(None))
    return result  # type: ignore[return-value]


SUBJECT = {"subjectTokenRef": {"name": "upstream", "key": "access_token"}}


def test_the_offered_token_is_the_subject_token():
    resolved = _resolve(exchange(tokenExchange=SUBJECT))
    assert isinstance(resolved, ResolvedValues)
    assert resolved.subject_token == UPSTREAM_TOKEN


def test_the_offered_token_goes_only_to_its_token_urls():
    problem = _resolve(exchange(tokenExchange=SUBJECT, tokenURL="https://other.example/token"))
    assert isinstance(problem, ReferenceProblem) and problem.reason == "TokenURLNotAllowed"
    assert TOKEN_URL.startswith(OFFERED_TO[0])


def test_the_offered_token_is_never_a_client_secret():
    spec = exchange(clientSecretRef={"name": "upstream", "key": "access_token"})
    spec["tokenExchange"] = {"subjectTokenRef": {"name": "client", "key": "secret"}}
    problem = _resolve(spec)
    assert isinstance(problem, ReferenceProblem) and problem.reason == "ReferenceInvalid"
    assert "only tokenExchange.subjectTokenRef" in problem.message


def test_exchanges_are_one_step_deep():
    # A credential fed by another's token cannot offer its own: no chains, no cycles.
    spec = exchange(tokenExchange=SUBJECT, secret={"asSource": {"allowedTokenURLs": OFFERED_TO}})
    problem = _resolve(spec)
    assert isinstance(problem, ReferenceProblem) and problem.reason == "ReferenceInvalid"
    assert "one step deep" in problem.message


def test_the_readers_of_a_managed_secret_are_known():
    # Its creation and deletion wake them (Supervisor.managed_secret_event).
    cache = SourceCache()
    cache.set_references("orders-uid", [("ns", "Secret", "portal", "access_token")])
    cache.set_references("other-uid", [("ns", "Secret", "client", "secret")])
    assert cache.readers("ns", "Secret", "portal") == {"orders-uid"}
    assert cache.readers("other", "Secret", "portal") == set()


def test_check_says_whether_the_operator_would_read_a_managed_secret():
    spec = parse_spec(exchange(tokenExchange=SUBJECT), name="c")
    not_offered = written(upstream())["metadata"]
    offered = _managed_body(offered=True)["metadata"]
    found = [
        FoundObject("Secret", "upstream", labels=m["labels"], annotations=m["annotations"])
        for m in (not_offered, offered)
    ]
    for obj in found:
        obj.metadata_known = True
    refused, accepted = (operator_notes(spec, [obj]) for obj in found)
    assert any("does not offer its token with spec.secret.asSource" in n for n in refused)
    assert not [n for n in accepted if "upstream" in n]
