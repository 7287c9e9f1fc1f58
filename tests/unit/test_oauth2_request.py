"""Building token requests and parsing responses: pure functions, exact bytes."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import stat
from datetime import UTC, datetime, timedelta

import pytest
import trustme

from tokensync import __version__
from tokensync.oauth2 import (
    FORM,
    JSON,
    MAX_BODY_BYTES,
    ConfigurationError,
    ProtocolError,
    TLSSettings,
    TokenError,
    TokenRequest,
    TransientError,
    basic_authorization,
    build_request_parts,
    display_url,
    is_denied_address,
    jwt_claims,
    parse_retry_after,
    parse_token_response,
    ssl_context_for,
)

CLIENT_ID = "my id+/:=%é"
SECRET = "s3c+/:=% ü"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def request(**overrides) -> TokenRequest:
    fields = {
        "token_url": "https://idp.test/token",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    return TokenRequest(**{**fields, **overrides})


# ---- request building


def test_basic_credentials_are_form_urlencoded_before_base64():
    # RFC 6749 2.3.1: space -> "+", and + / : = % and non-ASCII percent-encoded (UTF-8).
    header = basic_authorization(CLIENT_ID, SECRET)
    assert (
        header == "Basic bXkraWQlMkIlMkYlM0ElM0QlMjUlQzMlQTk6czNjJTJCJTJGJTNBJTNEJTI1KyVDMyVCQw=="
    )
    assert base64.b64decode(header[6:]) == b"my+id%2B%2F%3A%3D%25%C3%A9:s3c%2B%2F%3A%3D%25+%C3%BC"


def test_plain_credentials_stay_readable_in_basic():
    assert basic_authorization("client", "secret") == "Basic Y2xpZW50OnNlY3JldA=="


GRANT = "grant_type=client_credentials"
FORM_CREDS = "client_id=my+id%2B%2F%3A%3D%25%C3%A9&client_secret=s3c%2B%2F%3A%3D%25+%C3%BC"
FORM_SCOPE = "scope=read+write"
FORM_TAIL = "audience=api%3A%2F%2Faud&resource=https%3A%2F%2Fapi.example%2F&tenant=a+b%26c"
JSON_GRANT = '"grant_type":"client_credentials"'
JSON_CREDS = '"client_id":"my id+/:=%é","client_secret":"s3c+/:=% ü"'
JSON_SCOPE = '"scope":"read write"'
JSON_SCOPE_OBJECT = '"scope":{"userId":"admin1","companyId":"acme"}'
JSON_TAIL = '"audience":"api://aud","resource":"https://api.example/","tenant":"a b&c"'

SCOPE_CASES = {
    "no scope": ({}, None),
    "scope": ({"scope": "read write"}, "string"),
    "scope excluded": ({"scope": "read write", "include_scope": False}, None),
    "scope object": ({"scope_object": {"userId": "admin1", "companyId": "acme"}}, "object"),
    "scope object excluded": (
        {"scope_object": {"userId": "admin1"}, "include_scope": False},
        None,
    ),
}


def expected_body(auth: str, content_type: str, scope: str | None) -> bytes:
    if content_type == FORM:
        parts = [
            GRANT,
            FORM_CREDS if auth == "body" else "",
            FORM_SCOPE if scope else "",
            FORM_TAIL,
        ]
        return "&".join(p for p in parts if p).encode()
    scope_part = {"string": JSON_SCOPE, "object": JSON_SCOPE_OBJECT, None: ""}[scope]
    parts = [JSON_GRANT, JSON_CREDS if auth == "body" else "", scope_part, JSON_TAIL]
    return ("{" + ",".join(p for p in parts if p) + "}").encode()


# scopeObject is JSON-only (see test_scope_object_needs_json)
COMBINATIONS = [
    (auth, content_type, case)
    for auth in ("header", "body")
    for content_type in (FORM, JSON)
    for case in SCOPE_CASES
    if not (content_type == FORM and "object" in case)
]


@pytest.mark.parametrize(("auth", "content_type", "scope_case"), COMBINATIONS)
def test_exact_headers_and_body(auth, content_type, scope_case):
    settings, scope = SCOPE_CASES[scope_case]
    req = request(
        client_authentication=auth,
        content_type=content_type,
        audience="api://aud",
        resource="https://api.example/",
        extra_parameters={"tenant": "a b&c"},
        **settings,
    )
    headers, body = build_request_parts(req)
    expected_headers = {
        "Accept": "application/json",
        "Content-Type": content_type,
        "User-Agent": f"tokensync/{__version__}",
    }
    if auth == "header":
        expected_headers["Authorization"] = basic_authorization(CLIENT_ID, SECRET)
    assert headers == expected_headers
    assert body == expected_body(auth, content_type, scope)
    if content_type == JSON:
        json.loads(body)  # and it is valid JSON


def test_minimal_request():
    headers, body = build_request_parts(request(client_id="a", client_secret="b"))
    assert body == b"grant_type=client_credentials"
    assert headers["Authorization"] == "Basic YTpi"


def test_empty_scope_is_not_sent():
    _, body = build_request_parts(request(scope=""))
    assert b"scope" not in body


def test_scope_object_needs_json():
    with pytest.raises(ConfigurationError):
        build_request_parts(request(scope_object={"a": 1}))


def test_scope_sent():
    assert request(scope="a b").scope_sent == "a b"
    assert request(scope="a b", include_scope=False).scope_sent is None
    assert request(scope_object={"a": 1}, content_type=JSON).scope_sent == {"a": 1}


def test_repr_hides_secrets():
    req = request(tls=TLSSettings(client_key_pem=b"KEYKEYKEY"))
    assert SECRET not in repr(req)
    assert "KEYKEYKEY" not in repr(req)


# ---- response parsing


def parse(data, status=200, headers=None, **overrides):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_token_response(
        status, headers or {"Content-Type": JSON}, body, request(**overrides), NOW
    )


@pytest.mark.parametrize("expires_in", [300, 300.0, "300", " 300 ", "300.0"])
def test_expires_in_forms(expires_in):
    token = parse({"access_token": "tok", "expires_in": expires_in})
    assert token.expires_at == NOW + timedelta(seconds=300)
    assert token.lifetime_seconds == 300
    assert token.lifetime_source == "expires_in"
    assert token.issued_at == NOW


# Non-finite numbers (NaN, Infinity, 1e400) are refused as JSON (test_hostile_responses.py)
@pytest.mark.parametrize("expires_in", [0, -5, "0", "-1", "soon", "", True, [60], {"s": 1}])
def test_invalid_expires_in_is_a_protocol_error(expires_in):
    with pytest.raises(ProtocolError) as caught:
        parse({"access_token": "tok", "expires_in": expires_in})
    assert caught.value.reason == "InvalidExpiresIn"
    assert caught.value.kind == "protocol"


def make_jwt(claims) -> str:
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


def test_jwt_exp_when_no_expires_in():
    exp = NOW + timedelta(minutes=7)
    token = parse({"access_token": make_jwt({"exp": int(exp.timestamp())})})
    assert token.expires_at == exp
    assert token.lifetime_source == "jwt"


def test_expired_jwt_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse({"access_token": make_jwt({"exp": int(NOW.timestamp()) - 1})})


def test_expires_in_wins_over_jwt_exp():
    token = parse({"access_token": make_jwt({"exp": 1}), "expires_in": 60})
    assert token.lifetime_source == "expires_in"


@pytest.mark.parametrize("access_token", ["opaque", make_jwt({"sub": "x"}), "a.b.c", "x.!!!.y"])
def test_default_lifetime_without_expiry(access_token):
    token = parse({"access_token": access_token}, default_lifetime_seconds=1234)
    assert token.lifetime_seconds == 1234
    assert token.lifetime_source == "default"


def test_jwt_claims():
    assert jwt_claims(make_jwt({"exp": 5})) == {"exp": 5}
    assert jwt_claims("not-a-jwt") is None
    assert jwt_claims("a.W10.c") is None  # payload is a JSON list, not claims


def test_token_type_and_scope():
    token = parse({"access_token": "t", "expires_in": 1, "scope": "a b"})
    assert (token.token_type, token.scope, token.http_status) == ("Bearer", "a b", 200)
    value = secrets.token_urlsafe(16)
    token = parse(
        {"access_token": value, "expires_in": 1, "token_type": "DPoP", "scope": ["a", "b"]}
    )
    assert (token.token_type, token.scope) == ("DPoP", "a b")
    assert value not in repr(token)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"expires_in": 60}, "MissingAccessToken"),
        ({"access_token": "", "expires_in": 60}, "MissingAccessToken"),
        ({"access_token": 5, "expires_in": 60}, "MissingAccessToken"),
        (b"[1, 2]", "NotJSON"),
        (b"access_token=abc&expires_in=60", "NotJSON"),
        (b"<html><body>Sign in</body></html>", "NotJSON"),
    ],
)
def test_unusable_2xx_is_a_protocol_error(data, reason):
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.reason == reason


def test_html_gets_a_hint():
    with pytest.raises(ProtocolError) as caught:
        parse(b"<!DOCTYPE html><html></html>", headers={"Content-Type": "text/html"})
    assert "HTML" in str(caught.value)
    assert "tokenURL" in caught.value.hint


def test_oversized_body_is_a_protocol_error():
    with pytest.raises(ProtocolError) as caught:
        parse(b" " * (MAX_BODY_BYTES + 1))
    assert caught.value.reason == "ResponseTooLarge"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ConfigurationError),
        (401, ConfigurationError),
        (403, ConfigurationError),
        (404, ConfigurationError),
        (405, ConfigurationError),
        (408, TransientError),
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
    ],
)
def test_status_classification(status, cls):
    with pytest.raises(TokenError) as caught:
        parse(b"", status=status, headers={})
    assert type(caught.value) is cls
    assert caught.value.http_status == status
    assert caught.value.reason == "HTTPStatus"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_configuration_errors(status):
    with pytest.raises(ConfigurationError) as caught:
        parse(b"", status=status, headers={"Location": "https://elsewhere.test/t?client_secret=x"})
    error = caught.value
    assert error.reason == "Redirect"
    assert "https://elsewhere.test/t" in str(error)
    assert "client_secret=x" not in str(error)
    assert "not followed" in error.hint


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ("temporarily_unavailable", TransientError),
        ("server_error", TransientError),
        ("invalid_client", ConfigurationError),
        ("invalid_grant", ConfigurationError),
        ("unauthorized_client", ConfigurationError),
    ],
)
def test_oauth2_error_classification(error, cls):
    with pytest.raises(TokenError) as caught:
        parse({"error": error, "error_description": "why"}, status=400)
    assert type(caught.value) is cls
    assert caught.value.reason == "OAuth2Error"
    assert (caught.value.oauth_error, caught.value.oauth_error_description) == (error, "why")


def test_oauth2_error_with_2xx_status_is_classified_like_400():
    with pytest.raises(ConfigurationError) as caught:
        parse({"error": "invalid_client"})
    assert caught.value.http_status == 200
    assert caught.value.oauth_error == "invalid_client"


def test_long_error_description_is_truncated_to_one_line():
    with pytest.raises(ConfigurationError) as caught:
        parse({"error": "invalid_request", "error_description": "x\n" * 500}, status=400)
    description = caught.value.oauth_error_description
    assert len(description) <= 200
    assert "\n" not in description
    assert "\n" not in str(caught.value)


def test_retry_after_seconds_and_date():
    assert parse_retry_after("7", NOW) == 7
    later = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, NOW) == 90
    earlier = (NOW - timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(earlier, NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_retry_after_is_carried_on_transient_errors():
    with pytest.raises(TransientError) as caught:
        parse(b"", status=429, headers={"Retry-After": "12"})
    assert caught.value.retry_after == 12
    with pytest.raises(ConfigurationError) as caught:
        parse(b"", status=400, headers={"Retry-After": "12"})
    assert caught.value.retry_after is None


# ---- hints


def hint_for(status=401, data=b"", **overrides) -> str:
    with pytest.raises(TokenError) as caught:
        parse(data, status=status, headers={}, **overrides)
    return caught.value.hint or ""


def test_hint_json_body_refused_suggests_form():
    assert "contentType: application/x-www-form-urlencoded" in hint_for(content_type=JSON)
    assert "contentType: application/x-www-form-urlencoded" in hint_for(400, content_type=JSON)


def test_hint_basic_encoding_for_special_characters():
    assert "clientAuthentication: body" in hint_for(client_id="c", client_secret="a+b")
    assert "don't decode" in hint_for(client_id="c", client_secret="a+b")
    assert "don't decode" in hint_for(client_id="c", client_secret="päss")
    assert "don't decode" not in hint_for(client_id="c", client_secret="plain")
    assert "don't decode" not in hint_for(
        client_id="c", client_secret="a+b", client_authentication="body"
    )


def test_hint_form_body_refused_with_415_suggests_json():
    assert "contentType: application/json" in hint_for(415)


def test_hint_string_scope_refused_suggests_scope_object():
    data = {"error": "invalid_scope"}
    hint = hint_for(400, json.dumps(data).encode(), content_type=JSON, scope="a")
    assert "scopeObject" in hint
    # API.md: any 400/401 to a JSON body names the form content type first.
    assert hint.startswith("set contentType: application/x-www-form-urlencoded")


def test_hint_not_found_points_at_token_url():
    assert "tokenURL" in hint_for(404)


def test_str_is_one_line_with_hint():
    error = ConfigurationError(
        "token endpoint answered HTTP 401",
        reason="OAuth2Error",
        oauth_error="invalid_client",
        oauth_error_description="bad",
        hint="do this",
    )
    assert str(error) == "token endpoint answered HTTP 401: invalid_client (bad). Hint: do this"
    assert error.kind == "configuration"
    assert TransientError("x", reason="Timeout").kind == "transient"
    assert ProtocolError("x", reason="NotJSON").kind == "protocol"


# ---- helpers


@pytest.mark.parametrize(
    ("address", "denied"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("169.254.169.254", True),
        ("169.254.10.1", True),
        ("fe80::1%eth0", True),
        ("fd00:ec2::254", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("10.0.0.1", False),
        ("192.168.1.1", False),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
    ],
)
def test_denied_addresses(address, denied):
    assert is_denied_address(address) is denied


def test_display_url_drops_query_userinfo_and_fragment():
    assert display_url("https://u:p@idp.test:8443/t?secret=1#f") == "https://idp.test:8443/t"


# ---- TLS contexts


def test_ca_ref_replaces_the_default_trust_store():
    ca = trustme.CA()
    context = ssl_context_for(TLSSettings(ca_pem=ca.cert_pem.bytes()))
    assert len(context.get_ca_certs()) == 1
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_insecure_skip_verify():
    context = ssl_context_for(TLSSettings(insecure_skip_verify=True))
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_invalid_ca_bundle():
    with pytest.raises(ConfigurationError) as caught:
        ssl_context_for(TLSSettings(ca_pem=b"not pem", ca_description="ConfigMap/ca key ca.crt"))
    assert caught.value.reason == "InvalidCABundle"
    assert "ConfigMap/ca key ca.crt" in str(caught.value)


def test_client_certificate_file_is_private_and_removed(tmp_path, monkeypatch):
    # Where there is no memfd_create (the fallback; see tests/oauth2/test_client_key_memory.py)
    ca = trustme.CA()
    leaf = ca.issue_cert("client.test")
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setenv("TOKENSYNC_TMPDIR", str(tmp_path))
    modes = []
    load = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, *args, **kwargs):
        modes.append(stat.S_IMODE(os.stat(certfile).st_mode))
        assert os.path.dirname(certfile) == str(tmp_path)
        return load(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    ssl_context_for(
        TLSSettings(
            client_cert_pem=leaf.cert_chain_pems[0].bytes(),
            client_key_pem=leaf.private_key_pem.bytes(),
        )
    )
    assert modes == [0o600]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cert", "key"),
    [(b"junk", b"junk"), (None, b"key only"), (b"cert only", None)],
)
def test_invalid_client_certificate(cert, key, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSYNC_TMPDIR", str(tmp_path))
    with pytest.raises(ConfigurationError) as caught:
        ssl_context_for(TLSSettings(client_cert_pem=cert, client_key_pem=key))
    assert caught.value.reason == "InvalidClientCertificate"
    assert list(tmp_path.iterdir()) == []


def test_hint_json_refusal_drops_the_generic_credentials_advice():
    hint = hint_for(content_type=JSON, client_id="c", client_secret="plain")
    assert "form-urlencoded" in hint
    assert "clientAuthentication" not in hint


# ---- the nesting scan before json.loads (issue 8 item 3)


@pytest.mark.parametrize(
    "body",
    [
        b'"' + b'\\"' * 300_000,  # unterminated string of escaped quotes
        b'"' + b"\\" * 600_001,
        b"[" * 600_000,
        b'{"a":"' + b"[" * 600_000,
        b'["' * 300_000,
    ],
    ids=["escaped-quotes", "backslashes", "brackets", "open-string", "string-brackets"],
)
def test_nesting_scan_is_linear_on_hostile_bodies(body):
    import time

    from tokensync.oauth2 import json_depth_exceeds

    started = time.monotonic()
    json_depth_exceeds(body)
    assert time.monotonic() - started < 1.0


def test_nesting_scan_ignores_brackets_in_strings():
    from tokensync.oauth2 import json_depth_exceeds

    assert not json_depth_exceeds(b'{"a": "[[[[\\"[[[", "b": [[1]]}', limit=3)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', limit=3)
    assert not json_depth_exceeds(b'{"a": [[1]]}', limit=3)
