"""`grantType: token_exchange` (RFC 8693): the spec rules, the request it makes, the
subject token's resolution from a Secret, the config hash, and that no endpoint echo of
the subject token survives into an error."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest

from tokensync.oauth2 import (
    TOKEN_EXCHANGE_GRANT,
    ConfigurationError,
    TokenError,
    build_request_parts,
    fetch_token,
)
from tokensync.secret import config_hash
from tokensync.sources import ReferenceProblem, Source, resolve_references
from tokensync.spec import (
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    ResolvedValues,
    SpecError,
    parse_spec,
    to_token_request,
)

TOKEN_URL = "https://idp.example/realms/r/protocol/openid-connect/token"
SA = {"serviceAccountName": "app", "audience": "https://idp.example/realms/r"}


def exchange(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tokenURL": TOKEN_URL,
        "clientID": "requester",
        "clientSecretRef": {"name": "client", "key": "secret"},
        "grantType": "token_exchange",
        "tokenExchange": {"subjectTokenRef": {"name": "subject", "key": "token"}},
    }
    spec.update(fields)
    return {k: v for k, v in spec.items() if v is not None}


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec, name="c")
    return list(info.value.problems)


def sent(spec: dict[str, Any], values: ResolvedValues) -> dict[str, str]:
    request = to_token_request(parse_spec(spec, name="c"), values)
    _headers, body = build_request_parts(request)
    return dict(parse_qsl(body.decode()))


def values(subject: str | None = "subject.token.value") -> ResolvedValues:
    return ResolvedValues(client_id="requester", client_secret="s3cret", subject_token=subject)


def test_the_subject_token_from_a_secret_is_exchanged():
    body = sent(
        exchange(audience="target", resource="https://api.example/", scope="read write"),
        values(),
    )
    assert body == {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": "subject.token.value",
        "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,  # the default with subjectTokenRef
        "scope": "read write",
        "audience": "target",
        "resource": "https://api.example/",
    }


def test_token_types_as_set_and_a_json_body():
    spec = exchange(
        contentType="application/json",
        tokenExchange={
            "subjectTokenRef": {"name": "subject", "key": "token"},
            "subjectTokenType": TOKEN_TYPE_JWT,
            "requestedTokenType": "urn:ietf:params:oauth:token-type:id_token",
        },
    )
    request = to_token_request(parse_spec(spec, name="c"), values())
    body = json.loads(build_request_parts(request)[1])
    assert body["subject_token_type"] == TOKEN_TYPE_JWT
    assert body["requested_token_type"] == "urn:ietf:params:oauth:token-type:id_token"


def test_a_serviceaccount_subject_token_is_a_jwt_minted_later():
    spec = parse_spec(exchange(tokenExchange={"workloadIdentity": SA}), name="c")
    assert spec.token_exchange is not None
    assert spec.token_exchange.subject_token_type == TOKEN_TYPE_JWT
    assert spec.token_exchange.workload_identity is not None
    assert spec.token_exchange.workload_identity.expiration_seconds == 600
    assert spec.references == (spec.client_secret_ref,)
    # tokensync.identity attaches the minted token; before that nothing can be sent.
    request = to_token_request(spec, values(None))
    assert request.subject_token is None
    with pytest.raises(ConfigurationError):
        build_request_parts(request)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (exchange(tokenExchange=None), "spec.tokenExchange"),
        (exchange(grantType="client_credentials"), "spec.tokenExchange"),
        (
            exchange(
                tokenExchange={
                    "subjectTokenRef": {"name": "subject", "key": "token"},
                    "workloadIdentity": SA,
                }
            ),
            "spec.tokenExchange",
        ),
        (exchange(tokenExchange={"workloadIdentity": {"audience": "x"}}), "spec.tokenExchange"),
        (
            exchange(
                tokenExchange={
                    "subjectTokenRef": {"name": "subject", "key": "token"},
                    "subjectTokenType": "access_token",
                }
            ),
            "spec.tokenExchange.subjectTokenType",
        ),
        (
            exchange(
                tokenExchange={
                    "subjectTokenRef": {"name": "subject", "key": "token"},
                    "requestedTokenType": "urn:x y",
                }
            ),
            "spec.tokenExchange.requestedTokenType",
        ),
        (
            exchange(
                clientSecretRef=None,
                clientAuthentication="workload_identity",
                workloadIdentity=SA,
                tokenExchange={"workloadIdentity": SA},
            ),
            "spec.tokenExchange.workloadIdentity",
        ),
        (exchange(extraParameters={"Actor_Token": "x"}), "spec.extraParameters.Actor_Token"),
        (
            exchange(extraParameters={"subject_token_type": "x"}),
            "spec.extraParameters.subject_token_type",
        ),
    ],
)
def test_spec_rules(spec, path):
    found = problems(spec)
    assert any(p.startswith(path + ":") or p.startswith(path + ".") for p in found), found


def test_reserved_names_are_free_with_other_grants():
    spec = exchange(grantType=None, tokenExchange=None, extraParameters={"actor_token": "x"})
    assert parse_spec(spec, name="c").extra_parameters == {"actor_token": "x"}


def _source(data: dict[str, bytes], allowed: str | None = None) -> Source:
    return Source(kind="Secret", name="x", data=data, type="Opaque", allowed_token_urls=allowed)


def _resolve(spec: dict[str, Any], subject: bytes, allowed: str | None = None) -> Any:
    sources = {
        "client": _source({"secret": b"s3cret"}),
        "subject": _source({"token": subject}, allowed),
    }

    def url_allowed(url: str, annotation: str | None) -> bool:
        return annotation is None or url.startswith(annotation)

    return resolve_references(
        parse_spec(spec, name="c"), lambda kind, name: sources.get(name), url_allowed
    )


def test_the_subject_token_is_read_from_its_secret_without_the_newline():
    resolved = _resolve(exchange(), b"eyJhbGciOi.payload.sig\n")
    assert isinstance(resolved, ResolvedValues)
    assert resolved.subject_token == "eyJhbGciOi.payload.sig"
    assert "eyJ" not in repr(resolved)


@pytest.mark.parametrize("data", [b"   \n", b"two words", b"\xff\xfe"])
def test_a_secret_without_a_token_is_reference_invalid(data):
    problem = _resolve(exchange(), data)
    assert isinstance(problem, ReferenceProblem)
    assert problem.reason == "ReferenceInvalid"
    assert "subject" in problem.message


def test_the_subject_token_secret_is_bound_to_its_token_urls():
    problem = _resolve(exchange(), b"tok", allowed="https://elsewhere.example/")
    assert isinstance(problem, ReferenceProblem)
    assert problem.reason == "TokenURLNotAllowed"
    assert isinstance(_resolve(exchange(), b"tok", allowed="https://idp.example/"), ResolvedValues)


def test_config_hash_follows_the_subject_token_and_the_types():
    spec = parse_spec(exchange(), name="c")
    base = config_hash(spec, values("one"))
    assert base == config_hash(spec, values("one"))
    assert base != config_hash(spec, values("two"))  # a new subject token: exchange again
    typed = exchange(
        tokenExchange={
            "subjectTokenRef": {"name": "subject", "key": "token"},
            "requestedTokenType": TOKEN_TYPE_ACCESS_TOKEN,
        }
    )
    assert base != config_hash(parse_spec(typed, name="c"), values("one"))
    assert "one" not in base


@pytest.fixture
def echoing_endpoint() -> Iterator[str]:
    """Answers every token request with 400 and its whole body as error_description."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            data = json.dumps({"error": "invalid_grant", "error_description": body}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_an_echoed_subject_token_never_reaches_the_error(echoing_endpoint):
    subject = f"eyJ{secrets.token_urlsafe(24)}.{secrets.token_urlsafe(24)}"
    spec = exchange(tokenURL=echoing_endpoint, allowInsecureHTTP=True)
    request = to_token_request(parse_spec(spec, name="c"), values(subject))
    with pytest.raises(TokenError) as info:
        fetch_token(request)
    error = info.value
    text = " ".join(str(part) for part in (error, error.oauth_error, error.oauth_error_description))
    assert "subject_token" in text  # the echo arrived, without its value
    assert subject not in text and subject[:20] not in text
