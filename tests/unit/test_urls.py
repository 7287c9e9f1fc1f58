"""The one URL parser (API.md "URLs"): what it refuses, how it normalises, how prefixes and
host patterns match, and that it agrees with what urllib3 connects to."""

from __future__ import annotations

import dataclasses

import pytest
from urllib3.util import parse_url as urllib3_parse_url

from tokensync.gates import OperatorConfig, gate_problem
from tokensync.secret import url_allowed
from tokensync.spec import parse_spec, token_url_problem
from tokensync.urls import (
    URLProblem,
    host_allowed,
    parse_prefix,
    parse_url,
    prefix_admits,
    prefixes_admit,
)

# --- the attacks of issue 9 ------------------------------------------------------------

BACKSLASH_ATTACK = "https://localhost\\.okta.com/evil"
DOT_SEGMENT_ATTACKS = [
    "https://idp.example/legit/../evil/a3",
    "https://idp.example/legit/%2e%2e/evil/a3",
    "https://idp.example/legit/%2E%2E/evil/a3",
    "https://idp.example/legit/.%2e/evil/a3",
    "https://idp.example/legit/%2e./evil/a3",
    "https://idp.example/legit/..",
    "https://idp.example/legit/..;x/evil",
    "https://idp.example/legit/./../evil",
    "https://idp.example/legit/..%2fevil",
    "https://idp.example/legit/..%5Cevil",
]


def test_backslash_host_does_not_pass_allowed_token_hosts():
    config = OperatorConfig(allowed_token_hosts=("*.okta.com", "127.0.0.1"))
    problem = gate_problem(_spec(BACKSLASH_ATTACK), config)
    assert problem is not None
    assert problem.reason == "InvalidSpec"
    assert "backslash" in problem.message


def test_backslash_url_is_an_invalid_spec():
    assert "backslash" in token_url_problem(BACKSLASH_ATTACK, allow_insecure_http=False)


@pytest.mark.parametrize("url", DOT_SEGMENT_ATTACKS)
def test_dot_segments_do_not_escape_the_prefix(url):
    assert url_allowed(url, "https://idp.example/legit/") is False
    with pytest.raises(URLProblem):
        parse_url(url)


@pytest.mark.parametrize("url", DOT_SEGMENT_ATTACKS)
def test_dot_segment_url_is_an_invalid_spec(url):
    assert token_url_problem(url, allow_insecure_http=False) is not None


def test_the_legit_url_still_passes():
    assert url_allowed("https://idp.example/legit/a3", "https://idp.example/legit/")
    config = OperatorConfig(allowed_token_hosts=("*.okta.com", "127.0.0.1"))
    assert gate_problem(_spec("https://acme.okta.com/oauth2/v1/token"), config) is None
    assert gate_problem(_spec("https://127.0.0.1:8443/token"), config) is None


def _spec(url: str):
    """A spec with `url` as its token URL, past spec.py's own check (the gate must hold
    on its own: it is what the operator consults before every request)."""
    spec = parse_spec(
        {
            "tokenURL": "https://x.example/t",
            "clientID": "c",
            "clientSecretRef": {"name": "s", "key": "k"},
        },
        name="c",
    )
    return dataclasses.replace(spec, token_url=url)


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://h.example\\evil/x", "backslash"),
        ("https://h.example/a\\b", "backslash"),
        ("https://h.example/a?x=\\", "backslash"),
        ("https://h.example/%2f/x", "percent-encoded"),
        ("https://h.example/a%2Fb", "percent-encoded"),
        ("https://h.example/a%5cb", "percent-encoded"),
        ("https://h.example/a%2eb", "percent-encoded"),
        ("https://h.example/./x", "dot segment"),
        ("https://h.example/x/.", "dot segment"),
        ("https://h.example/x/..", "dot segment"),
        ("https://h.example/../x", "dot segment"),
        ("https://u:p@h.example/x", "user information"),
        ("https://u@h.example/x", "user information"),
        ("https://@h.example/x", "user information"),
        ("https://h.example/x#f", "fragment"),
        ("https://h.example/x#", "fragment"),
        ("https://h.example/x y", "whitespace"),
        ("https://h.example/x\t", "whitespace"),
        ("https://h.exa\u3000mple/x", "whitespace"),
        ("https://h.example/\x00", "control"),
        ("https://h.example/\x7f", "control"),
        ("ftp://h.example/x", "https://"),
        ("//h.example/x", "https://"),
        ("h.example/x", "https://"),
        ("https:///x", "https://"),
        ("https://h.example:0/x", "port"),
        ("https://h.example:65536/x", "port"),
        ("https://h.example:8o/x", "port"),
        ("https://[::1/x", "URL"),
        ("https://[127.0.0.1]/x", "URL"),
        ("https://h.example%2e/x", "percent-encoded"),
        ("https://h%41.example/x", "'%'"),
        ("https://[fe80::1%25eth0]/x", "'%'"),
        ("https://2130706433/x", "canonical IPv4"),
        ("https://0x7f.1/x", "canonical IPv4"),
        ("https://127.1/x", "canonical IPv4"),
        ("https://017.0.0.1/x", "canonical IPv4"),
        ("https://h!.example/x", "host name"),
        ("https://a..b/x", "host name"),
        ("https://h.example\u3002evil/x", "URL"),
        ("https://h.example/legit/\uff0e\uff0e/evil", "read as"),
        ("https://h.example/legit/\uff0e\uff0e\uff0fevil", "read as"),
        ("https://h.example/legit/%EF%BC%8E%EF%BC%8E/evil", "read as"),
        ("https://h.example/legit\uff3cevil", "read as"),
        ("https://h.example/legit/\u2025/evil", "read as"),
    ],
)
def test_refused(url, words):
    with pytest.raises(URLProblem) as caught:
        parse_url(url)
    assert words in str(caught.value)


def test_problem_text_never_repeats_userinfo():
    with pytest.raises(URLProblem) as caught:
        parse_url("https://user:hunter2-secret@h.example/x")
    assert "hunter2" not in str(caught.value)


# --- normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "connect_host"),
    [
        ("https://Login.EXAMPLE/t", "login.example", 443, "login.example"),
        ("https://login.example./t", "login.example", 443, "login.example."),
        ("HTTPS://login.example:443/t", "login.example", 443, "login.example"),
        ("http://login.example/t", "login.example", 80, "login.example"),
        ("https://bücher.example/t", "xn--bcher-kva.example", 443, "xn--bcher-kva.example"),
        ("https://BÜCHER.example/t", "xn--bcher-kva.example", 443, "xn--bcher-kva.example"),
        ("https://[2001:DB8:0::1]:8443/t", "2001:db8::1", 8443, "2001:db8::1"),
        ("https://10.0.0.1/t", "10.0.0.1", 443, "10.0.0.1"),
    ],
)
def test_normalised(url, host, port, connect_host):
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.connect_host) == (host, port, connect_host)


def test_request_target_and_str():
    parsed = parse_url("https://Login.example:8443/a/b?x=1&y=%20")
    assert parsed.request_target == "/a/b?x=1&y=%20"
    assert str(parsed) == "https://login.example:8443/a/b?x=1&y=%20"
    assert parse_url("https://login.example").request_target == "/"
    assert parse_url("https://[::1]:443/t").origin == "https://[::1]"


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example/oauth2/v2.0/token?api-version=2",
        "https://login.example:8443/realms/a/protocol/openid-connect/token",
        "https://[2001:db8::1]/t",
        "https://bücher.example/t",
        "https://login.example./t",
        "https://login.example/a/...",
        "https://login.example/a%20b",
    ],
)
def test_agrees_with_what_urllib3_connects_to(url):
    # The transport connects to (connect_host, port) and sends request_target; urllib3,
    # given the original text, would connect to and send the same.
    parsed = parse_url(url)
    theirs = urllib3_parse_url(url)
    assert theirs.host.strip("[]").lower() in (parsed.connect_host, f"{parsed.connect_host}")
    assert (theirs.port or {"https": 443, "http": 80}[theirs.scheme]) == parsed.port
    assert theirs.request_uri == parsed.request_target


# --- prefixes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "url", "admitted"),
    [
        ("https://idp.example/a/", "https://idp.example/a/token", True),
        ("https://idp.example/a", "https://idp.example/a/token", True),
        ("https://idp.example/a", "https://idp.example/a", True),
        ("https://idp.example/a", "https://idp.example/ab", False),
        ("https://idp.example/a/", "https://idp.example/ab/token", False),
        ("https://idp.example/a/", "https://idp.example/a", False),
        ("https://idp.example/a/", "https://idp.example/A/token", False),
        ("https://idp.example", "https://idp.example/anything?x", True),
        ("https://idp.example/", "https://idp.example", True),
        ("https://IDP.example.", "https://idp.EXAMPLE/t", True),
        ("https://idp.example:443/", "https://idp.example/t", True),
        ("https://idp.example/", "https://idp.example:443/t", True),
        ("http://idp.example:80/", "http://idp.example/t", True),
        ("https://idp.example/", "https://idp.example:8443/t", False),
        ("https://idp.example:8443/", "https://idp.example/t", False),
        ("https://idp.example/", "http://idp.example/t", False),
        ("http://idp.example:443/", "https://idp.example/t", False),
        ("https://idp.example", "https://idp.example.attacker.net/t", False),
        ("https://bücher.example/", "https://xn--bcher-kva.example/t", True),
        ("https://[2001:db8::1]/", "https://[2001:db8:0:0::1]:443/t", True),
        ("https://127.0.0.1:", "https://127.0.0.1:9/t", False),
    ],
)
def test_prefix(prefix, url, admitted):
    assert prefix_admits(parse_prefix(prefix), parse_url(url)) is admitted


@pytest.mark.parametrize(
    "prefix",
    [
        "https://idp.example/legit/../",
        "https://idp.example\\evil/",
        "https://idp.example/?x=1",
        "https://idp.example/?",
        "idp.example",
        "https://u@idp.example/",
    ],
)
def test_invalid_prefixes_admit_nothing(prefix):
    with pytest.raises(URLProblem):
        parse_prefix(prefix)
    assert prefixes_admit("https://idp.example/token", prefix) is False


def test_prefix_list():
    assert prefixes_admit("https://b.example/t", " https://a.example/ , https://b.example/")
    assert not prefixes_admit("https://c.example/t", "https://a.example/,,https://b.example/")
    assert not prefixes_admit("https://a.example/../t", "https://a.example/")


# --- host patterns ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "patterns", "allowed"),
    [
        ("https://acme.okta.com/t", ("*.okta.com",), True),
        ("https://ACME.Okta.com./t", ("*.OKTA.com.",), True),
        ("https://okta.com.attacker.net/t", ("*.okta.com",), False),
        ("https://127.0.0.1:8443/t", ("*.okta.com", "127.0.0.1"), True),
        ("https://localhost/t", ("*.okta.com", "127.0.0.1"), False),
        ("https://[::1]/t", ("[::1]",), True),
        ("https://[::1]/t", ("0:0::1",), True),
        ("https://bücher.example/t", ("BÜCHER.example",), True),
        ("https://bücher.example/t", ("xn--bcher-kva.example",), True),
        ("https://any.example/t", (), True),
    ],
)
def test_host_patterns(url, patterns, allowed):
    assert host_allowed(parse_url(url), patterns) is allowed
