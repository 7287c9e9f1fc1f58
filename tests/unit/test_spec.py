"""Unit tests for tokensync.spec: every rule of API.md's spec table, and the defaults."""

from __future__ import annotations

import copy
import secrets
from types import MappingProxyType
from typing import Any

import pytest

from tokensync.spec import (
    FORM,
    JSON,
    CredentialSpec,
    Ref,
    ResolvedValues,
    SpecError,
    parse_duration,
    parse_spec,
    reserved_key_domain,
    to_token_request,
    token_url_problem,
)

TOKEN_URL = "https://login.example/oauth2/token"


def minimal(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tokenURL": TOKEN_URL,
        "clientID": "acme",
        "clientSecretRef": {"name": "lms-client", "key": "client_secret"},
    }
    spec.update(fields)
    return spec


def parse(spec: Any, name: str = "lms-admin") -> CredentialSpec:
    return parse_spec(spec, name=name)


def problems_of(spec: Any, name: str = "lms-admin") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec, name=name)
    problems = info.value.problems
    assert problems, "a SpecError always names at least one problem"
    # Every problem starts with the field path it is about.
    for problem in problems:
        assert problem.startswith("spec"), problem
        _path, sep, message = problem.partition(": ")
        assert sep and message, problem
    # The exception's message carries them all.
    assert str(info.value) == "; ".join(problems)
    return problems


def paths_of(spec: Any) -> list[str]:
    return [p.partition(": ")[0] for p in problems_of(spec)]


def assert_problem(spec: Any, path: str, fragment: str = "") -> None:
    problems = problems_of(spec)
    matching = [p for p in problems if p.startswith(path + ": ") and fragment in p]
    assert matching, f"expected a problem at {path} mentioning {fragment!r}, got {problems}"


# --- defaults -------------------------------------------------------------------------


def test_minimal_spec_gets_every_default():
    spec = parse(minimal(), name="lms-admin")
    assert spec.token_url == TOKEN_URL
    assert spec.client_id == "acme"
    assert spec.client_id_ref is None
    assert spec.client_secret_ref == Ref(name="lms-client", key="client_secret", kind="Secret")
    assert spec.allow_insecure_http is False
    assert spec.grant_type == "client_credentials"
    assert spec.client_authentication == "header"
    assert spec.content_type == FORM == "application/x-www-form-urlencoded"
    assert spec.scope is None
    assert spec.scope_object is None
    assert spec.include_scope is True
    assert spec.audience is None
    assert spec.resource is None
    assert dict(spec.extra_parameters) == {}
    assert spec.tls.ca_ref is None
    assert spec.tls.insecure_skip_verify is False
    assert spec.tls.client_certificate_secret is None
    assert spec.timeout_seconds == 30
    assert spec.suspend is False
    assert spec.secret.name == "lms-admin"
    assert dict(spec.secret.labels) == {}
    assert dict(spec.secret.annotations) == {}
    assert dict(spec.secret.template) == {}
    assert spec.secret.deletion_policy == "Delete"
    assert spec.refresh.renew_before_seconds is None
    assert spec.refresh.renew_before_percentage is None
    assert spec.refresh.default_lifetime_seconds == 3600.0


def test_secret_name_defaults_to_the_credential_name():
    assert parse(minimal(), name="other-cred").secret.name == "other-cred"
    assert parse(minimal(secret={}), name="other-cred").secret.name == "other-cred"
    assert parse(minimal(secret={"name": "explicit"}), name="x").secret.name == "explicit"


def test_api_md_example_parses():
    spec = parse(
        {
            "tokenURL": "https://acme.plateau.example/learning/oauth-api/rest/v1/token",
            "clientID": "acme",
            "clientSecretRef": {"name": "lms-client", "key": "client_secret"},
            "clientAuthentication": "header",
            "contentType": "application/json",
            "scopeObject": {
                "userId": "admin1",
                "companyId": "acme",
                "userType": "admin",
                "resourceType": "learning_public_api",
            },
            "secret": {"name": "lms-admin-token"},
        }
    )
    assert spec.content_type == JSON
    assert spec.scope_object["resourceType"] == "learning_public_api"
    assert spec.secret.name == "lms-admin-token"


def test_every_field_set_is_kept():
    # clientID and clientIDRef are exclusive: switch to the ref after building.
    raw = minimal(
        allowInsecureHTTP=True,
        tokenURL="http://login.example/token",
        grantType="client_credentials",
        clientAuthentication="body",
        contentType=JSON,
        scope="read write",
        includeScope=False,
        audience="api://default",
        resource="https://api.example/",
        extraParameters={"tenant": "acme", "x-custom": "1"},
        tls={
            "caRef": {"kind": "ConfigMap", "name": "ca", "key": "ca.crt"},
            "insecureSkipVerify": True,
            "clientCertificateRef": {"name": "mtls"},
        },
        timeoutSeconds=120,
        suspend=True,
        secret={
            "name": "tok",
            "labels": {"app": "x"},
            "annotations": {"example.com/a": "b"},
            "template": {"config.json": '{"token": "${access_token}"}'},
            "deletionPolicy": "Retain",
        },
        refresh={"renewBefore": "5m", "defaultLifetime": "2h"},
    )
    del raw["clientID"]
    raw["clientIDRef"] = {"name": "ids", "key": "client_id"}
    spec = parse(raw)
    assert spec.client_id is None
    assert spec.client_id_ref == Ref("ids", "client_id")
    assert spec.allow_insecure_http is True
    assert spec.token_url == "http://login.example/token"
    assert spec.client_authentication == "body"
    assert spec.content_type == JSON
    assert spec.scope == "read write"
    assert spec.include_scope is False
    assert spec.audience == "api://default"
    assert spec.resource == "https://api.example/"
    assert dict(spec.extra_parameters) == {"tenant": "acme", "x-custom": "1"}
    assert spec.tls.ca_ref == Ref("ca", "ca.crt", kind="ConfigMap")
    assert spec.tls.insecure_skip_verify is True
    assert spec.tls.client_certificate_secret == "mtls"
    assert spec.timeout_seconds == 120
    assert spec.suspend is True
    assert spec.secret.name == "tok"
    assert dict(spec.secret.labels) == {"app": "x"}
    assert dict(spec.secret.annotations) == {"example.com/a": "b"}
    assert dict(spec.secret.template) == {"config.json": '{"token": "${access_token}"}'}
    assert spec.secret.deletion_policy == "Retain"
    assert spec.refresh.renew_before_seconds == 300.0
    assert spec.refresh.renew_before_percentage is None
    assert spec.refresh.default_lifetime_seconds == 7200.0
    assert spec.references == (
        Ref("lms-client", "client_secret"),
        Ref("ids", "client_id"),
        Ref("ca", "ca.crt", kind="ConfigMap"),
        Ref("mtls", "tls.crt"),
        Ref("mtls", "tls.key"),
    )


def test_references_of_a_minimal_spec_is_only_the_client_secret():
    assert parse(minimal()).references == (Ref("lms-client", "client_secret"),)


def test_parsed_spec_is_immutable_and_detached_from_the_input():
    raw = minimal(
        extraParameters={"tenant": "acme"},
        secret={"labels": {"app": "x"}, "annotations": {"a": "b"}, "template": {"k": "v"}},
    )
    spec = parse(raw)
    with pytest.raises(AttributeError):
        spec.token_url = "https://elsewhere.example/"  # type: ignore[misc]
    for mapping in (
        spec.extra_parameters,
        spec.secret.labels,
        spec.secret.annotations,
        spec.secret.template,
    ):
        assert isinstance(mapping, MappingProxyType)
        with pytest.raises(TypeError):
            mapping["new"] = "value"  # type: ignore[index]
    raw["extraParameters"]["tenant"] = "changed"
    raw["secret"]["labels"]["app"] = "changed"
    assert spec.extra_parameters["tenant"] == "acme"
    assert spec.secret.labels["app"] == "x"


def test_parse_does_not_modify_its_input():
    raw = minimal(scope="a b", secret={"template": {"k": "${scope}"}}, refresh={})
    before = copy.deepcopy(raw)
    parse(raw)
    assert raw == before


def test_valid_specs_parse_without_problems():
    # spot checks of values at the edges of each rule that must still be accepted
    for spec in (
        minimal(timeoutSeconds=1),
        minimal(timeoutSeconds=120),
        minimal(refresh={"renewBeforePercentage": 1}),
        minimal(refresh={"renewBeforePercentage": 99}),
        minimal(tokenURL="https://login.example:8443/t?tenant=a"),
        minimal(tokenURL="HTTPS://LOGIN.EXAMPLE/token"),
        minimal(contentType=JSON, scopeObject={}),
        minimal(scope=""),
        minimal(extraParameters={"assertion_mode": "x", "my_client_assertion": "y"}),
        minimal(secret={"labels": {"app.kubernetes.io.example.com/x": "y"}}),
        minimal(secret={"labels": {"kubernetes.io": "no-slash-is-fine"}}),
    ):
        parse(spec)


# --- required fields ------------------------------------------------------------------


def test_empty_spec_reports_every_required_field_at_once():
    paths = paths_of({})
    assert "spec.tokenURL" in paths
    assert "spec.clientID" in paths
    assert "spec.clientSecretRef" in paths


def test_spec_must_be_an_object():
    assert problems_of(["not", "a", "mapping"]) == ["spec: must be an object"]
    assert problems_of("tokenURL: x") == ["spec: must be an object"]


@pytest.mark.parametrize("field", ["tokenURL", "clientSecretRef"])
def test_required_field_missing(field):
    raw = minimal()
    del raw[field]
    assert_problem(raw, f"spec.{field}", "is required")


@pytest.mark.parametrize("field", ["tokenURL", "clientSecretRef"])
def test_required_field_null_is_a_problem_not_a_crash(field):
    # YAML `tokenURL:` (null) in a manifest given to `tokensync check`.
    assert_problem(minimal(**{field: None}), f"spec.{field}", "is required")


def test_client_id_or_ref_exactly_one():
    neither = minimal()
    del neither["clientID"]
    assert_problem(neither, "spec.clientID", "exactly one of clientID and clientIDRef")
    both = minimal(clientIDRef={"name": "ids", "key": "client_id"})
    assert_problem(both, "spec.clientID", "exactly one of clientID and clientIDRef")
    ref_only = minimal(clientIDRef={"name": "ids", "key": "client_id"})
    del ref_only["clientID"]
    assert parse(ref_only).client_id_ref == Ref("ids", "client_id")


def test_client_id_null_counts_as_absent():
    null_id = minimal(clientID=None)
    assert_problem(null_id, "spec.clientID", "exactly one")
    null_id_with_ref = minimal(clientID=None, clientIDRef={"name": "ids", "key": "id"})
    assert parse(null_id_with_ref).client_id_ref == Ref("ids", "id")


@pytest.mark.parametrize("ref_field", ["clientSecretRef", "clientIDRef"])
def test_ref_needs_name_and_key(ref_field):
    def with_ref(value: Any) -> dict[str, Any]:
        raw = minimal(**{ref_field: value})
        if ref_field == "clientIDRef":
            del raw["clientID"]
        return raw

    paths = paths_of(with_ref({}))
    assert f"spec.{ref_field}.name" in paths
    assert f"spec.{ref_field}.key" in paths
    assert_problem(with_ref({"key": "k"}), f"spec.{ref_field}.name", "is required")
    assert_problem(with_ref({"name": "n"}), f"spec.{ref_field}.key", "is required")
    assert_problem(with_ref({"name": None, "key": "k"}), f"spec.{ref_field}.name", "required")
    assert_problem(with_ref({"name": "n", "key": None}), f"spec.{ref_field}.key", "required")
    assert_problem(with_ref({"name": "Not_DNS", "key": "k"}), f"spec.{ref_field}.name", "DNS")
    assert_problem(with_ref({"name": "n", "key": "a/b"}), f"spec.{ref_field}.key")
    assert_problem(with_ref({"name": "n", "key": "a b"}), f"spec.{ref_field}.key")
    assert_problem(with_ref("lms-client"), f"spec.{ref_field}", "must be an object")
    assert_problem(with_ref({"name": "n", "key": 7}), f"spec.{ref_field}.key", "string")


def test_names_with_a_trailing_newline_are_rejected():
    assert_problem(
        minimal(clientSecretRef={"name": "n\n", "key": "k"}), "spec.clientSecretRef.name"
    )
    assert_problem(minimal(clientSecretRef={"name": "n", "key": "k\n"}), "spec.clientSecretRef.key")
    assert_problem(minimal(secret={"name": "tok\n"}), "spec.secret.name")


# --- enums ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("grantType", "password"),
        ("grantType", "authorization_code"),
        ("clientAuthentication", "basic"),
        ("clientAuthentication", "Header"),
        ("clientAuthentication", "client_secret_basic"),
        ("contentType", "application/xml"),
        ("contentType", "application/json; charset=utf-8"),
        ("contentType", "text/plain"),
    ],
)
def test_enum_rejects_other_values(field, bad):
    assert_problem(minimal(**{field: bad}), f"spec.{field}", "must be one of")


@pytest.mark.parametrize(
    ("field", "good"),
    [
        ("grantType", "client_credentials"),
        ("clientAuthentication", "header"),
        ("clientAuthentication", "body"),
        ("contentType", FORM),
        ("contentType", JSON),
    ],
)
def test_enum_accepts_its_values(field, good):
    assert getattr(parse(minimal(**{field: good})), _attr(field)) == good


def _attr(field: str) -> str:
    return {
        "grantType": "grant_type",
        "clientAuthentication": "client_authentication",
        "contentType": "content_type",
    }[field]


def test_deletion_policy_enum():
    assert parse(minimal(secret={"deletionPolicy": "Retain"})).secret.deletion_policy == "Retain"
    assert parse(minimal(secret={"deletionPolicy": "Delete"})).secret.deletion_policy == "Delete"
    for bad in ("Orphan", "retain", "delete", ""):
        assert_problem(
            minimal(secret={"deletionPolicy": bad}), "spec.secret.deletionPolicy", "one of"
        )


def test_ca_ref_kind_is_required_and_an_enum():
    assert_problem(
        minimal(tls={"caRef": {"name": "ca", "key": "ca.crt"}}), "spec.tls.caRef.kind", "required"
    )
    assert_problem(
        minimal(tls={"caRef": {"kind": "Pod", "name": "ca", "key": "ca.crt"}}),
        "spec.tls.caRef.kind",
        "one of",
    )
    for kind in ("Secret", "ConfigMap"):
        spec = parse(minimal(tls={"caRef": {"kind": kind, "name": "ca", "key": "ca.crt"}}))
        assert spec.tls.ca_ref == Ref("ca", "ca.crt", kind=kind)


def test_client_certificate_ref_needs_a_name():
    assert_problem(
        minimal(tls={"clientCertificateRef": {}}), "spec.tls.clientCertificateRef.name", "required"
    )
    assert_problem(
        minimal(tls={"clientCertificateRef": {"name": None}}),
        "spec.tls.clientCertificateRef.name",
        "required",
    )
    assert_problem(
        minimal(tls={"clientCertificateRef": {"name": "UPPER"}}),
        "spec.tls.clientCertificateRef.name",
        "DNS",
    )


# --- exclusive pairs ------------------------------------------------------------------


def test_scope_and_scope_object_are_exclusive():
    assert_problem(
        minimal(contentType=JSON, scope="a", scopeObject={"userId": "x"}),
        "spec.scopeObject",
        "mutually exclusive",
    )


def test_scope_object_only_with_json():
    assert_problem(minimal(scopeObject={"userId": "x"}), "spec.scopeObject", JSON)
    assert_problem(minimal(contentType=FORM, scopeObject={"userId": "x"}), "spec.scopeObject", JSON)
    spec = parse(minimal(contentType=JSON, scopeObject={"userId": "x", "n": ["a", "b"]}))
    assert spec.scope_object == {"userId": "x", "n": ["a", "b"]}


# ---- scopeObject is flat (issue 8 item 1; API.md: at most 32 keys; string, number,
# boolean or a list of at most 32 strings)


def test_flat_scope_object_values_are_accepted():
    value = {"s": "x", "i": 3, "f": 1.5, "b": False, "l": ["a"] * 32, "e": [], "empty": ""}
    assert parse(minimal(contentType=JSON, scopeObject=value)).scope_object == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"a": {"b": "c"}}, "no nested objects"),
        ({"a": [1, 2]}, "list of strings"),
        ({"a": ["x", ["y"]]}, "list of strings"),
        ({"a": [{"b": 1}]}, "list of strings"),
        ({"a": None}, "must be a string"),
        ({"a": float("nan")}, "finite"),
        ({"a": float("inf")}, "finite"),
        ({"a": ["x"] * 33}, "at most 32"),
        ({"a": "x" * 1025}, "at most 1024"),
        ({"a": ["x" * 1025]}, "at most 1024"),
        ({"k" * 129: "x"}, "key"),
        ({"": "x"}, "key"),
        ({f"k{i}": "x" for i in range(33)}, "at most 32"),
    ],
)
def test_scope_object_must_be_flat_and_bounded(value, fragment):
    problems = problems_of(minimal(contentType=JSON, scopeObject=value))
    assert [p for p in problems if p.startswith("spec.scopeObject") and fragment in p], problems


def test_deeply_nested_scope_object_is_refused_without_recursion():
    deep: dict = {}
    inner = deep
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]
    assert_problem(minimal(contentType=JSON, scopeObject=deep), "spec.scopeObject.a", "nested")


@pytest.mark.parametrize("field", ["extraParameters", "labels", "annotations", "template"])
def test_string_maps_bound_their_keys(field):
    raw = {field: {"k" * 400: "v"}}
    spec = minimal(**raw) if field == "extraParameters" else minimal(secret=raw)
    path = f"spec.{field}" if field == "extraParameters" else f"spec.secret.{field}"
    assert any(p.startswith(path) and "key" in p for p in problems_of(spec)), problems_of(spec)


def test_scope_object_must_be_an_object():
    assert_problem(minimal(contentType=JSON, scopeObject=["a"]), "spec.scopeObject", "object")
    assert_problem(minimal(contentType=JSON, scopeObject="a b"), "spec.scopeObject", "object")


def test_scope_object_and_scope_with_form_reports_both_problems():
    problems = problems_of(minimal(scope="a", scopeObject={"x": 1}))
    scope_object_problems = [p for p in problems if p.startswith("spec.scopeObject: ")]
    assert len(scope_object_problems) == 2


def test_renew_before_and_percentage_are_exclusive():
    assert_problem(
        minimal(refresh={"renewBefore": "5m", "renewBeforePercentage": 20}),
        "spec.refresh.renewBefore",
        "exclusive",
    )
    assert parse(minimal(refresh={"renewBefore": "5m"})).refresh.renew_before_seconds == 300
    assert (
        parse(minimal(refresh={"renewBeforePercentage": 20})).refresh.renew_before_percentage == 20
    )


# --- tokenURL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example/token",
        "https://login.example",
        "https://login.example:8443/oauth2/v2.0/token?api-version=2",
        "https://10.0.0.1/token",
        "https://[2001:db8::1]:443/token",
    ],
)
def test_token_url_accepted(url):
    assert token_url_problem(url, allow_insecure_http=False) is None
    assert parse(minimal(tokenURL=url)).token_url == url


def test_http_needs_allow_insecure_http():
    url = "http://login.example/token"
    assert "https://" in token_url_problem(url, allow_insecure_http=False)
    assert token_url_problem(url, allow_insecure_http=True) is None
    assert_problem(minimal(tokenURL=url), "spec.tokenURL", "allowInsecureHTTP")
    assert_problem(minimal(tokenURL=url, allowInsecureHTTP=False), "spec.tokenURL", "https://")
    assert parse(minimal(tokenURL=url, allowInsecureHTTP=True)).allow_insecure_http is True


def test_allow_insecure_http_does_not_weaken_https_urls():
    spec = parse(minimal(allowInsecureHTTP=True))
    assert spec.token_url == TOKEN_URL


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://user:pass@login.example/token", "user information"),
        ("https://user@login.example/token", "user information"),
        ("https://:secret@login.example/token", "user information"),
        ("https://login.example/token#frag", "fragment"),
        ("https://login.example/token#", "fragment"),
        ("ftp://login.example/token", "https://"),
        ("file:///etc/passwd", "https://"),
        ("login.example/token", "https://"),
        ("//login.example/token", "https://"),
        ("https:///token", "https://"),
        ("https://", "https://"),
        ("", "https://"),
        ("https://login.example:99999/token", "port"),
        ("https://login.example:abc/token", "port"),
        ("https://[::1/token", "URL"),
    ],
)
def test_token_url_rejected(url, fragment):
    problem = token_url_problem(url, allow_insecure_http=True)
    assert problem is not None and fragment in problem
    assert_problem(minimal(tokenURL=url, allowInsecureHTTP=True), "spec.tokenURL", fragment)


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example/\ttoken",
        "https://login.example\n/token",
        "https://login.example/token\r\n",
        "https://login .example/token",
        "https://login.example/to ken",
        "https://exa\x00mple/token",
        "https://login.example/\x7f",
        " https://login.example/token",
    ],
)
def test_token_url_with_whitespace_or_control_characters_rejected(url):
    problem = token_url_problem(url, allow_insecure_http=False)
    assert problem is not None and "whitespace or control" in problem
    assert_problem(minimal(tokenURL=url), "spec.tokenURL", "whitespace or control")


def test_token_url_may_be_an_international_domain_name():
    assert token_url_problem("https://bücher.example/token", allow_insecure_http=False) is None


def test_userinfo_rejected_even_over_http_with_allow_insecure():
    problem = token_url_problem("http://u:p@login.example/", allow_insecure_http=True)
    assert problem is not None and "user information" in problem


def test_token_url_problem_never_echoes_userinfo():
    password = secrets.token_urlsafe(16)
    problems = problems_of(minimal(tokenURL=f"https://user:{password}@login.example/token"))
    assert all(password not in p for p in problems)


def test_token_url_type_and_length():
    assert_problem(minimal(tokenURL=42), "spec.tokenURL", "string")
    assert_problem(minimal(tokenURL="https://login.example/" + "a" * 3000), "spec.tokenURL", "2048")


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("2m500ms", 120.5),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "90", "5 m", "-5m", "+5m", "5min", "1d", "h", "1h30", "m5", "1.h", ".5h", "5M", "90s\n"],
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 90, 1.5, ["5m"]])
def test_parse_duration_rejects_non_strings(value):
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["renewBefore", "defaultLifetime"])
@pytest.mark.parametrize("bad", ["5", "5 minutes", "-1m", "1d", "PT5M"])
def test_bad_duration_fields(field, bad):
    assert_problem(minimal(refresh={field: bad}), f"spec.refresh.{field}", "not a duration")


@pytest.mark.parametrize("field", ["renewBefore", "defaultLifetime"])
def test_zero_duration_rejected(field):
    assert_problem(minimal(refresh={field: "0s"}), f"spec.refresh.{field}", "longer than zero")
    assert_problem(minimal(refresh={field: "0h0m"}), f"spec.refresh.{field}", "longer than zero")


@pytest.mark.parametrize("field", ["renewBefore", "defaultLifetime"])
def test_duration_must_be_a_string(field):
    assert_problem(minimal(refresh={field: 300}), f"spec.refresh.{field}", "string")


def test_duration_fields_parsed():
    spec = parse(minimal(refresh={"renewBefore": "1h30m", "defaultLifetime": "90s"}))
    assert spec.refresh.renew_before_seconds == 5400
    assert spec.refresh.default_lifetime_seconds == 90


@pytest.mark.parametrize("bad", [0, 100, -1, 50.5, "20", True])
def test_renew_before_percentage_bounds(bad):
    assert_problem(
        minimal(refresh={"renewBeforePercentage": bad}),
        "spec.refresh.renewBeforePercentage",
        "1 to 99",
    )


# --- timeoutSeconds -------------------------------------------------------------------


@pytest.mark.parametrize("good", [1, 30, 120])
def test_timeout_seconds_in_bounds(good):
    assert parse(minimal(timeoutSeconds=good)).timeout_seconds == good


@pytest.mark.parametrize("bad", [0, -1, 121, 3600, 30.5, "30", True, False])
def test_timeout_seconds_out_of_bounds(bad):
    assert_problem(minimal(timeoutSeconds=bad), "spec.timeoutSeconds", "1 to 120")


# --- booleans -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["allowInsecureHTTP", "includeScope", "suspend"])
@pytest.mark.parametrize("bad", ["true", 1, "yes"])
def test_booleans_must_be_booleans(field, bad):
    assert_problem(minimal(**{field: bad}), f"spec.{field}", "true or false")


def test_insecure_skip_verify_must_be_a_boolean():
    assert_problem(
        minimal(tls={"insecureSkipVerify": "true"}), "spec.tls.insecureSkipVerify", "true or false"
    )


# --- extraParameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "grant_type",
        "client_id",
        "client_secret",
        "scope",
        "audience",
        "resource",
        "client_assertion",
        "client_assertion_type",
        "client_assertion_anything",
    ],
)
def test_reserved_extra_parameters(name):
    assert_problem(minimal(extraParameters={name: "x"}), f"spec.extraParameters.{name}", "reserved")


def test_extra_parameters_all_reserved_names_reported_at_once():
    paths = paths_of(
        minimal(extraParameters={"client_secret": "x", "client_assertion_type": "y", "ok": "z"})
    )
    assert sorted(paths) == [
        "spec.extraParameters.client_assertion_type",
        "spec.extraParameters.client_secret",
    ]


def test_extra_parameter_values_must_be_strings():
    assert_problem(minimal(extraParameters={"n": 1}), "spec.extraParameters.n", "string")
    assert_problem(minimal(extraParameters=["a"]), "spec.extraParameters", "object")


def test_extra_parameter_value_never_echoed():
    value = secrets.token_urlsafe(16)
    problems = problems_of(minimal(extraParameters={"client_secret": value}))
    assert all(value not in p for p in problems)


def test_map_size_limits():
    many = {f"k{i}": "v" for i in range(65)}
    assert_problem(minimal(extraParameters=many), "spec.extraParameters", "at most 64")
    many_templates = {f"k{i}": "v" for i in range(33)}
    assert_problem(
        minimal(secret={"template": many_templates}), "spec.secret.template", "at most 32"
    )
    assert_problem(minimal(extraParameters={"k": "v" * 4097}), "spec.extraParameters.k", "4096")


# --- secret labels and annotations ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "domain"),
    [
        ("tokensync.dev/credential", "tokensync.dev"),
        ("tokensync.dev/anything", "tokensync.dev"),
        ("sub.tokensync.dev/x", "tokensync.dev"),
        ("kubernetes.io/managed-by", "kubernetes.io"),
        ("app.kubernetes.io/name", "kubernetes.io"),
        ("node-role.kubernetes.io/worker", "kubernetes.io"),
        ("k8s.io/x", "k8s.io"),
        ("a.b.k8s.io/x", "k8s.io"),
        ("Kubernetes.IO/x", "kubernetes.io"),
    ],
)
def test_reserved_key_domain(key, domain):
    assert reserved_key_domain(key) == domain


@pytest.mark.parametrize(
    "key",
    [
        "app",
        "tokensync.dev",  # no prefix at all: a plain name
        "example.com/x",
        "notkubernetes.io/x",
        "xk8s.io/x",
        "tokensync.dev.example.com/x",
        "kubernetes.io.example/x",
        "example.com/tokensync.dev/x",
    ],
)
def test_not_reserved_key_domain(key):
    assert reserved_key_domain(key) is None


@pytest.mark.parametrize("kind", ["labels", "annotations"])
@pytest.mark.parametrize(
    "key",
    ["tokensync.dev/x", "kubernetes.io/x", "k8s.io/x", "app.kubernetes.io/name", "x.k8s.io/y"],
)
def test_reserved_label_and_annotation_prefixes_rejected(kind, key):
    assert_problem(minimal(secret={kind: {key: "v"}}), f"spec.secret.{kind}.{key}", "reserved")


def test_labels_and_annotations_kept_when_not_reserved():
    spec = parse(
        minimal(
            secret={
                "labels": {"app": "payments", "example.com/team": "a"},
                "annotations": {"reloader.stakater.com/match": "true"},
            }
        )
    )
    assert dict(spec.secret.labels) == {"app": "payments", "example.com/team": "a"}
    assert dict(spec.secret.annotations) == {"reloader.stakater.com/match": "true"}


def test_label_values_must_be_strings():
    assert_problem(minimal(secret={"labels": {"app": 1}}), "spec.secret.labels.app", "string")
    assert_problem(minimal(secret={"labels": "app=x"}), "spec.secret.labels", "object")


# --- template -------------------------------------------------------------------------


def test_template_all_placeholders_accepted():
    text = "${access_token} ${token_type} ${authorization} ${expires_at} ${scope}"
    spec = parse(minimal(secret={"template": {"all": text}}))
    assert spec.secret.template["all"] == text


def test_template_text_without_placeholders_and_other_syntaxes_accepted():
    template = {
        "plain": "no placeholders",
        "shell": "$(access_token) $access_token",
        "mustache": "{{access_token}} {{ .access_token }}",
        "dollar": "costs $5",
        "empty": "",
    }
    assert dict(parse(minimal(secret={"template": template})).secret.template) == template


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("${foo}", "foo"),
        ("Bearer ${client_secret}", "client_secret"),
        ("${ACCESS_TOKEN}", "ACCESS_TOKEN"),
        ("${ access_token }", " access_token "),
        ("${}", ""),
        ("${access_token} and ${env}", "env"),
    ],
)
def test_template_unknown_placeholder_rejected(text, name):
    assert_problem(
        minimal(secret={"template": {"key": text}}),
        "spec.secret.template.key",
        f"unknown placeholder ${{{name}}}",
    )


def test_template_error_lists_allowed_placeholders():
    problems = problems_of(minimal(secret={"template": {"key": "${foo}"}}))
    for name in ("access_token", "token_type", "authorization", "expires_at", "scope"):
        assert f"${{{name}}}" in problems[0]


@pytest.mark.parametrize("key", ["access_token", "token_type", "authorization", "expires_at"])
def test_template_may_not_replace_fixed_keys(key):
    assert_problem(
        minimal(secret={"template": {key: "x"}}), f"spec.secret.template.{key}", "fixed key"
    )


@pytest.mark.parametrize("key", ["config.json", "TOKEN", "a-b_c.d", "scope", "x" * 253, "a..b"])
def test_template_valid_keys(key):
    assert key in parse(minimal(secret={"template": {key: "v"}})).secret.template


@pytest.mark.parametrize(
    "key", ["a/b", "a b", "ключ", "a:b", "", "x" * 254, "key\n", ".", "..", "..data"]
)
def test_template_invalid_keys(key):
    assert_problem(minimal(secret={"template": {key: "v"}}), f"spec.secret.template.{key}", "key")


def test_template_values_must_be_strings():
    assert_problem(
        minimal(secret={"template": {"k": 1}}), "spec.secret.template.k", "must be a string"
    )


# --- all violations reported at once --------------------------------------------------


def test_all_violations_reported_at_once_each_with_its_path():
    raw = {
        "tokenURL": "http://user@login.example/token#x",
        "clientID": "acme",
        "clientIDRef": {"name": "ids", "key": "id"},
        "grantType": "password",
        "clientAuthentication": "basic",
        "contentType": "text/plain",
        "scope": "a",
        "scopeObject": {"b": 1},
        "extraParameters": {"client_secret": "x", "client_assertion_type": "y"},
        "tls": {"caRef": {"name": "ca", "key": "ca.crt"}},
        "timeoutSeconds": 0,
        "secret": {
            "name": "Bad_Name",
            "labels": {"tokensync.dev/credential": "x"},
            "annotations": {"kubernetes.io/x": "y"},
            "template": {"access_token": "x", "k": "${foo}"},
            "deletionPolicy": "Orphan",
        },
        "refresh": {"renewBefore": "5x", "renewBeforePercentage": 0, "defaultLifetime": "0s"},
    }
    paths = set(paths_of(raw))
    assert paths >= {
        "spec.tokenURL",
        "spec.clientID",
        "spec.clientSecretRef",
        "spec.grantType",
        "spec.clientAuthentication",
        "spec.contentType",
        "spec.scopeObject",
        "spec.extraParameters.client_secret",
        "spec.extraParameters.client_assertion_type",
        "spec.tls.caRef.kind",
        "spec.timeoutSeconds",
        "spec.secret.name",
        "spec.secret.labels.tokensync.dev/credential",
        "spec.secret.annotations.kubernetes.io/x",
        "spec.secret.template.access_token",
        "spec.secret.template.k",
        "spec.secret.deletionPolicy",
        "spec.refresh.renewBefore",
        "spec.refresh.renewBeforePercentage",
        "spec.refresh.defaultLifetime",
    }


def test_wrong_types_for_objects():
    for field in ("tls", "secret", "refresh"):
        assert_problem(minimal(**{field: "x"}), f"spec.{field}", "must be an object")


def test_null_optional_fields_take_their_defaults():
    spec = parse(
        minimal(
            scope=None,
            scopeObject=None,
            audience=None,
            resource=None,
            extraParameters=None,
            tls=None,
            timeoutSeconds=None,
            secret=None,
            refresh=None,
        )
    )
    assert spec.timeout_seconds == 30
    assert spec.secret.name == "lms-admin"
    assert spec.refresh.default_lifetime_seconds == 3600


# --- to_token_request and secrets in reprs --------------------------------------------


def resolved(client_secret: str, **fields: Any) -> ResolvedValues:
    return ResolvedValues(
        client_id=fields.pop("client_id", "acme"), client_secret=client_secret, **fields
    )


def test_resolved_values_repr_hides_secrets():
    client_secret = secrets.token_urlsafe(24)
    key = ("-----BEGIN PRIVATE KEY-----\n" + secrets.token_urlsafe(48) + "\n").encode()
    values = resolved(client_secret, client_key_pem=key)
    assert client_secret not in repr(values)
    assert key.decode() not in repr(values)


def test_credential_spec_repr_has_no_resolved_data():
    spec = parse(minimal())
    assert "lms-client" in repr(spec)  # the reference is shown, the data never is


def test_to_token_request_carries_every_request_field():
    client_secret = secrets.token_urlsafe(24)
    raw = minimal(
        clientAuthentication="body",
        contentType=JSON,
        scopeObject={"userId": "admin1"},
        includeScope=False,
        audience="aud",
        resource="https://api.example/",
        extraParameters={"tenant": "acme"},
        tls={"insecureSkipVerify": True},
        timeoutSeconds=7,
        refresh={"defaultLifetime": "10m"},
    )
    spec = parse(raw)
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    request = to_token_request(
        spec,
        resolved(
            client_secret,
            client_id="the-id",
            ca_pem=ca,
            ca_description="ConfigMap ca key ca.crt",
        ),
    )
    assert request.token_url == TOKEN_URL
    assert request.client_id == "the-id"
    assert request.client_secret == client_secret
    assert request.client_authentication == "body"
    assert request.content_type == JSON
    assert request.scope is None
    assert request.scope_object == {"userId": "admin1"}
    assert request.include_scope is False
    assert request.audience == "aud"
    assert request.resource == "https://api.example/"
    assert dict(request.extra_parameters) == {"tenant": "acme"}
    assert request.tls.ca_pem == ca
    assert request.tls.insecure_skip_verify is True
    assert request.tls.ca_description == "ConfigMap ca key ca.crt"
    assert request.timeout_seconds == 7.0
    assert request.default_lifetime_seconds == 600.0
    assert client_secret not in repr(request)


def test_to_token_request_defaults():
    client_secret = secrets.token_urlsafe(24)
    request = to_token_request(parse(minimal(scope="read")), resolved(client_secret))
    assert request.client_authentication == "header"
    assert request.content_type == FORM
    assert request.scope == "read"
    assert request.include_scope is True
    assert request.timeout_seconds == 30.0
    assert request.default_lifetime_seconds == 3600.0
    assert request.tls.ca_pem is None
    assert request.tls.insecure_skip_verify is False
    assert client_secret not in repr(request)
