"""Hostile and absurd token responses (issue 8 items 2 and 3): every one is a
ProtocolError with a clear message and backoff, never an unhandled exception; absurd
lifetimes are bounded and say so in Token.warnings."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from datetime import timedelta

import pytest

from fixtures.token_servers import request_for
from servers.quirky import make_jwt
from tokensync.oauth2 import (
    MAX_ACCESS_TOKEN_BYTES,
    MAX_JSON_DEPTH,
    MAX_LIFETIME_SECONDS,
    ProtocolError,
    fetch_token,
)


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def token_body(**fields: object) -> bytes:
    return json.dumps({"access_token": secrets.token_urlsafe(16), **fields}).encode()


def expect_protocol_error(server, credentials, body: bytes, status: int = 200) -> ProtocolError:
    server.fail("raw", body=body, status=status)
    with pytest.raises(ProtocolError) as caught:
        fetch_token(request_for(server, credentials))
    error = caught.value
    assert error.kind == "protocol"
    assert str(error) and "\n" not in str(error)
    return error


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1500, 100_000])
def test_deeply_nested_json_body(token_server, credentials, depth):
    body = b'{"access_token": "t", "x": ' + nested(depth).encode() + b"}"
    error = expect_protocol_error(token_server, credentials, body)
    assert error.reason == "NestedTooDeeply"
    assert f"{MAX_JSON_DEPTH} levels" in str(error)


def test_nesting_inside_strings_does_not_count(token_server, credentials):
    token_server.fail("raw", body=token_body(expires_in=60, note="[" * 5000 + '\\"{{'))
    assert fetch_token(request_for(token_server, credentials)).lifetime_seconds == 60


def test_allowed_nesting_depth_is_accepted(token_server, credentials):
    body = token_body(expires_in=60, x=json.loads(nested(MAX_JSON_DEPTH - 1)))
    token_server.fail("raw", body=body)
    assert fetch_token(request_for(token_server, credentials)).lifetime_seconds == 60


@pytest.mark.parametrize("status", [400, 401, 500])
def test_deeply_nested_error_body(token_server, credentials, status):
    token_server.fail("raw", body=nested(5000, '{"error": "x"}').encode(), status=status)
    with pytest.raises(Exception) as caught:
        fetch_token(request_for(token_server, credentials))
    assert caught.value.http_status == status  # a classified TokenError, no RecursionError
    assert caught.value.oauth_error is None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000])
def test_deeply_nested_jwt_payload(token_server, credentials, depth):
    payload = base64.urlsafe_b64encode(nested(depth, '{"exp": 1}').encode()).rstrip(b"=")
    token = f"eyJhbGciOiJub25lIn0.{payload.decode()}.c2ln"
    token_server.fail("raw", body=json.dumps({"access_token": token}).encode())
    # Not a usable JWT: its lifetime is the default, as for an opaque token.
    result = fetch_token(request_for(token_server, credentials, default_lifetime_seconds=600))
    assert (result.lifetime_source, result.lifetime_seconds) == ("default", 600)


@pytest.mark.parametrize("expires_in", ["1e15", "1e308", "10" + "0" * 400, '"' + "9" * 400 + '"'])
def test_absurd_expires_in_is_capped_at_one_year(token_server, credentials, expires_in):
    body = b'{"access_token": "tok-abcdefgh", "expires_in": ' + expires_in.encode() + b"}"
    token_server.fail("raw", body=body)
    token = fetch_token(request_for(token_server, credentials))
    assert token.lifetime_seconds == MAX_LIFETIME_SECONDS
    assert token.expires_at - token.issued_at == timedelta(days=365)
    assert any("capped at one year" in w for w in token.warnings)


def test_jwt_exp_far_in_the_future_is_capped(token_server, credentials):
    token = make_jwt({"exp": 10**15})
    token_server.fail("raw", body=json.dumps({"access_token": token}).encode())
    result = fetch_token(request_for(token_server, credentials))
    assert result.lifetime_seconds == MAX_LIFETIME_SECONDS
    assert any("capped at one year" in w for w in result.warnings)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(token_server, credentials, value):
    body = b'{"access_token": "tok-abcdefgh", "expires_in": ' + value.encode() + b"}"
    error = expect_protocol_error(token_server, credentials, body)
    assert error.reason == "NotJSON"


def test_an_integer_with_too_many_digits_is_refused(token_server, credentials):
    body = b'{"access_token": "tok-abcdefgh", "n": ' + b"1" * 5000 + b"}"
    expect_protocol_error(token_server, credentials, body)


@pytest.mark.parametrize(("expires_in", "lifetime"), [(0.001, 1.0), (0.5, 1.0), (1.5, 1.5)])
def test_sub_second_lifetime_is_at_least_one_second(
    token_server, credentials, expires_in, lifetime
):
    token_server.fail("raw", body=token_body(expires_in=expires_in))
    token = fetch_token(request_for(token_server, credentials))
    assert token.lifetime_seconds == lifetime
    assert any("under 30 s" in w for w in token.warnings)


def test_ordinary_lifetime_has_no_warnings(token_server, credentials):
    token = fetch_token(request_for(token_server, credentials))
    assert token.warnings == ()


def test_access_token_over_64_kib_is_refused(token_server, credentials):
    big = "a" * (MAX_ACCESS_TOKEN_BYTES + 1)
    error = expect_protocol_error(token_server, credentials, token_body(access_token=big))
    assert error.reason == "AccessTokenTooLarge"
    assert "64 KiB" in str(error)
    assert "aaaaaaaa" not in str(error)


def test_access_token_of_64_kib_is_accepted(token_server, credentials):
    token_server.fail("raw", body=token_body(access_token="a" * MAX_ACCESS_TOKEN_BYTES))
    assert len(fetch_token(request_for(token_server, credentials)).access_token) == 65536


@pytest.mark.parametrize(
    "fields",
    [
        {"access_token": ["not", "a", "string"]},
        {"access_token": "tok-abcdefgh", "token_type": {"a": 1}},
        {"access_token": "tok-abcdefgh", "scope": {"a": [1]}},
        {"access_token": "tok-abcdefgh", "expires_in": {"a": 1}},
        {"access_token": "tok-abcdefgh", "expires_in": [60]},
    ],
)
def test_odd_types_never_escape_as_other_exceptions(token_server, credentials, fields):
    token_server.fail("raw", body=json.dumps(fields).encode())
    with contextlib.suppress(ProtocolError):
        fetch_token(request_for(token_server, credentials))


def test_response_key_names_are_not_echoed(token_server, credentials):
    key = f"key-{secrets.token_hex(8)}"
    error = expect_protocol_error(token_server, credentials, json.dumps({key: 1}).encode())
    assert error.reason == "MissingAccessToken"
    assert key not in str(error)


@pytest.mark.parametrize("field", ["access_token", "token_type", "scope"])
def test_lone_surrogates_are_refused_not_written(token_server, credentials, field):
    """JSON can escape a lone surrogate, which no Secret can hold as UTF-8."""
    fields = {"access_token": "tok-abcdefgh", "expires_in": 60, field: "ab\\ud800cdefghij"}
    body = json.dumps(fields).replace("\\\\ud800", "\\ud800").encode()
    error = expect_protocol_error(token_server, credentials, body)
    assert error.reason == "InvalidTokenText"


def test_a_lone_surrogate_in_an_error_is_redacted_without_failing(token_server, credentials):
    body = b'{"access_token": "tok-\\ud800-abcdefghijkl", "expires_in": "soon"}'
    error = expect_protocol_error(token_server, credentials, body)
    assert error.reason in ("InvalidTokenText", "InvalidExpiresIn")


def test_long_token_type_is_refused(token_server, credentials):
    error = expect_protocol_error(token_server, credentials, token_body(token_type="B" * 129))
    assert error.reason == "InvalidTokenType"
