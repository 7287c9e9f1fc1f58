"""Unit tests for tokensync.secret: the managed Secret body, config hash, template
rendering, ownership and the allowed-token-urls check."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tokensync.oauth2 import Token
from tokensync.schedule import HeldToken, TriggerInput, why_fetch_now
from tokensync.secret import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_EXPIRES,
    ANNOTATION_ISSUED,
    ANNOTATION_OWNER_UID,
    LABEL_CREDENTIAL,
    Owner,
    config_hash,
    format_time,
    held_token,
    is_managed,
    managed_secret,
    owned_by,
    render_template,
    secret_data,
    template_values,
    url_allowed,
)
from tokensync.spec import JSON, CredentialSpec, ResolvedValues, parse_spec

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OWNER = Owner(
    name="lms-admin", namespace="integrations", uid="7f7c2c1e-0000-4000-8000-000000000001"
)
OTHER = Owner(
    name="other-cred", namespace="integrations", uid="7f7c2c1e-0000-4000-8000-000000000002"
)


def spec_of(**fields: Any) -> CredentialSpec:
    raw: dict[str, Any] = {
        "tokenURL": "https://login.example/oauth2/token",
        "clientID": "acme",
        "clientSecretRef": {"name": "lms-client", "key": "client_secret"},
    }
    raw.update(fields)
    return parse_spec(raw, name=OWNER.name)


def token_of(access_token: str | None = None, **fields: Any) -> Token:
    values: dict[str, Any] = {
        "access_token": access_token or secrets.token_urlsafe(32),
        "token_type": "Bearer",
        "issued_at": T0,
        "expires_at": T0 + timedelta(hours=1),
        "scope": "read write",
        "lifetime_source": "expires_in",
        "http_status": 200,
    }
    values.update(fields)
    return Token(**values)


def values_of(client_secret: str | None = None, **fields: Any) -> ResolvedValues:
    fields.setdefault("client_id", "acme")
    return ResolvedValues(client_secret=client_secret or secrets.token_urlsafe(32), **fields)


def decoded(body: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in body["data"].items()}


# --- format_time ----------------------------------------------------------------------


def test_format_time_is_rfc3339_utc_with_seconds():
    assert format_time(T0) == "2026-01-02T03:04:05Z"
    assert format_time(T0.replace(microsecond=999_999)) == "2026-01-02T03:04:05Z"
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus_two) == "2026-01-02T03:04:05Z"


# --- body -----------------------------------------------------------------------------


def test_managed_secret_body_for_delete_policy():
    access_token = secrets.token_urlsafe(32)
    token = token_of(access_token)
    body = managed_secret(OWNER, spec_of(), token, "sha256:abc")
    assert body["apiVersion"] == "v1"
    assert body["kind"] == "Secret"
    assert body["type"] == "Opaque"
    metadata = body["metadata"]
    assert metadata["name"] == "lms-admin"
    assert metadata["namespace"] == "integrations"
    assert "resourceVersion" not in metadata
    assert metadata["labels"] == {LABEL_CREDENTIAL: "lms-admin"}
    assert metadata["annotations"] == {
        ANNOTATION_EXPIRES: "2026-01-02T04:04:05Z",
        ANNOTATION_ISSUED: "2026-01-02T03:04:05Z",
        ANNOTATION_CONFIG_HASH: "sha256:abc",
    }
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "name": "lms-admin",
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert decoded(body) == {
        "access_token": access_token,
        "token_type": "Bearer",
        "authorization": f"Bearer {access_token}",
        "expires_at": "2026-01-02T04:04:05Z",
    }
    # the data really is base64 of the UTF-8 value
    assert body["data"]["access_token"] == base64.b64encode(access_token.encode()).decode()


def test_managed_secret_body_for_retain_policy():
    body = managed_secret(OWNER, spec_of(secret={"deletionPolicy": "Retain"}), token_of(), "h")
    metadata = body["metadata"]
    assert "ownerReferences" not in metadata
    assert metadata["labels"][LABEL_CREDENTIAL] == OWNER.name
    assert metadata["annotations"][ANNOTATION_OWNER_UID] == OWNER.uid


def test_delete_policy_has_no_owner_uid_annotation():
    body = managed_secret(OWNER, spec_of(), token_of(), "h")
    assert ANNOTATION_OWNER_UID not in body["metadata"]["annotations"]


def test_update_carries_the_resource_version_read():
    body = managed_secret(OWNER, spec_of(), token_of(), "h", resource_version="4711")
    assert body["metadata"]["resourceVersion"] == "4711"


def test_secret_name_labels_and_annotations_from_the_spec():
    spec = spec_of(
        secret={
            "name": "lms-admin-token",
            "labels": {"app": "payments"},
            "annotations": {"reloader.stakater.com/match": "true"},
        }
    )
    body = managed_secret(OWNER, spec, token_of(), "h")
    metadata = body["metadata"]
    assert metadata["name"] == "lms-admin-token"
    assert metadata["labels"] == {"app": "payments", LABEL_CREDENTIAL: "lms-admin"}
    assert metadata["annotations"]["reloader.stakater.com/match"] == "true"
    assert metadata["annotations"][ANNOTATION_CONFIG_HASH] == "h"


def test_times_are_second_precision_utc():
    issued = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    token = token_of(issued_at=issued, expires_at=issued + timedelta(seconds=299.5))
    body = managed_secret(OWNER, spec_of(), token, "h")
    assert body["metadata"]["annotations"][ANNOTATION_ISSUED] == "2026-01-02T03:04:05Z"
    assert body["metadata"]["annotations"][ANNOTATION_EXPIRES] == "2026-01-02T03:09:05Z"
    assert decoded(body)["expires_at"] == "2026-01-02T03:09:05Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", decoded(body)["expires_at"])


def test_token_type_is_kept_as_returned_and_the_scheme_is_canonical():
    # Hydra answers `bearer`; resource servers often match `Bearer` exactly (issue 21).
    token = token_of("tok", token_type="bearer")
    data = decoded(managed_secret(OWNER, spec_of(), token, "h"))
    assert data["authorization"] == "Bearer tok"
    assert data["token_type"] == "bearer"
    for returned, scheme in (("BEARER", "Bearer"), ("dpop", "DPoP"), ("DPoP", "DPoP")):
        data = secret_data(token_of("tok", token_type=returned), {"t": "${token_type}"})
        assert (data["authorization"], data["token_type"], data["t"]) == (
            f"{scheme} tok",
            returned,
            returned,
        )
    # Any other type is a scheme nobody here knows the spelling of: kept as returned.
    assert secret_data(token_of("tok", token_type="N_A"), {})["authorization"] == "N_A tok"


def test_spec_is_not_modified_by_building_a_body():
    spec = spec_of(secret={"labels": {"app": "x"}, "annotations": {"a": "b"}})
    managed_secret(OWNER, spec, token_of(), "h")
    assert dict(spec.secret.labels) == {"app": "x"}
    assert dict(spec.secret.annotations) == {"a": "b"}


def test_body_never_contains_the_client_secret():
    client_secret = secrets.token_urlsafe(32)
    spec = spec_of()
    body = managed_secret(OWNER, spec, token_of(), config_hash(spec, values_of(client_secret)))
    text = json.dumps(body)
    assert client_secret not in text
    assert base64.b64encode(client_secret.encode()).decode() not in text


def test_token_repr_hides_the_access_token():
    access_token = secrets.token_urlsafe(32)
    assert access_token not in repr(token_of(access_token))


# --- template -------------------------------------------------------------------------


def test_template_substitutes_every_placeholder():
    access_token = secrets.token_urlsafe(32)
    spec = spec_of(
        secret={
            "template": {
                "all": "${access_token}|${token_type}|${authorization}|${expires_at}|${scope}",
                "config.json": '{"headers": {"Authorization": "${authorization}"}}',
                "twice": "${access_token}${access_token}",
                "plain": "no placeholders",
            }
        }
    )
    data = decoded(managed_secret(OWNER, spec, token_of(access_token), "h"))
    assert data["all"] == (
        f"{access_token}|Bearer|Bearer {access_token}|2026-01-02T04:04:05Z|read write"
    )
    assert json.loads(data["config.json"]) == {
        "headers": {"Authorization": f"Bearer {access_token}"}
    }
    assert data["twice"] == access_token * 2
    assert data["plain"] == "no placeholders"
    # the fixed keys are still there, unchanged
    assert data["access_token"] == access_token


def test_template_scope_is_empty_when_none_granted():
    assert secret_data(token_of(scope=None), {"s": "[${scope}]"})["s"] == "[]"


@pytest.mark.parametrize(
    "text",
    [
        "$(access_token)",
        "{{access_token}}",
        "{{ .access_token }}",
        "${ access_token }",
        "$access_token",
        "${ACCESS_TOKEN}",
        "${access_token",
        "$ {access_token}",
        "%(access_token)s",
        "{access_token}",
        "${env:HOME}",
        "${foo}",
        "`id`",
    ],
)
def test_nothing_else_is_evaluated(text):
    assert render_template(text, template_values(token_of())) == text


def test_substituted_values_are_not_evaluated_again():
    # A token that itself looks like a placeholder is inserted verbatim, once.
    token = token_of("${scope}${access_token}", scope="${token_type}")
    data = secret_data(token, {"t": "${access_token}", "s": "${scope}"})
    assert data["t"] == "${scope}${access_token}"
    assert data["s"] == "${token_type}"


def test_escaped_looking_dollar_is_not_special():
    assert render_template("$${access_token}", {"access_token": "x"}) == "$x"


def test_template_values():
    values = template_values(token_of("abc", token_type="Bearer", scope=None))
    assert values == {
        "access_token": "abc",
        "token_type": "Bearer",
        "authorization": "Bearer abc",
        "expires_at": "2026-01-02T04:04:05Z",
        "scope": "",
    }


# --- config hash ----------------------------------------------------------------------

BASE_FIELDS: dict[str, Any] = {
    "contentType": JSON,
    "scopeObject": {"userId": "admin1", "companyId": "acme"},
    "audience": "aud",
    "resource": "https://api.example/",
    "extraParameters": {"tenant": "acme"},
    "tls": {"caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"}},
}
CA = b"-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"


def base_hash(client_secret: str, **overrides: Any) -> str:
    fields = copy.deepcopy(BASE_FIELDS)
    fields.update(overrides)
    return config_hash(spec_of(**fields), values_of(client_secret, ca_pem=CA))


def test_config_hash_format_and_determinism():
    client_secret = secrets.token_urlsafe(32)
    first = base_hash(client_secret)
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", first)
    assert base_hash(client_secret) == first


def test_config_hash_ignores_mapping_order():
    client_secret = secrets.token_urlsafe(32)
    a = base_hash(client_secret, extraParameters={"a": "1", "b": "2"}, scopeObject={"x": 1, "y": 2})
    b = base_hash(client_secret, extraParameters={"b": "2", "a": "1"}, scopeObject={"y": 2, "x": 1})
    assert a == b


@pytest.mark.parametrize(
    "overrides",
    [
        {"tokenURL": "https://login.example/oauth2/v2/token"},
        {"tokenURL": "http://login.example/oauth2/token", "allowInsecureHTTP": True},
        {"clientAuthentication": "body"},
        {"contentType": "application/x-www-form-urlencoded", "scopeObject": None},
        {"scopeObject": None, "scope": "read"},
        {"scopeObject": {"userId": "admin2", "companyId": "acme"}},
        {"scopeObject": {"userId": "admin1", "companyId": "acme", "userType": "admin"}},
        {"scopeObject": {"userId": "admin1", "companyId": ["acme"]}},
        {"includeScope": False},
        {"audience": "other"},
        {"audience": None},
        {"resource": "https://api2.example/"},
        {"extraParameters": {"tenant": "other"}},
        {"extraParameters": {"tenant": "acme", "x": "y"}},
        {"extraParameters": {}},
        {"tls": {"caRef": {"kind": "ConfigMap", "name": "ca", "key": "ca.crt"}}},
        {"tls": {"caRef": {"kind": "Secret", "name": "ca2", "key": "ca.crt"}}},
        {
            "tls": {
                "caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"},
                "insecureSkipVerify": True,
            }
        },
        {
            "tls": {
                "caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"},
                "clientCertificateRef": {"name": "mtls"},
            }
        },
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())[:60],
)
def test_config_hash_changes_with_every_request_shaping_field(overrides):
    client_secret = secrets.token_urlsafe(32)
    assert base_hash(client_secret, **overrides) != base_hash(client_secret)


def test_config_hash_changes_with_scope():
    client_secret = secrets.token_urlsafe(32)
    values = values_of(client_secret)
    hashes = {
        config_hash(spec_of(**fields), values)
        for fields in ({}, {"scope": "read"}, {"scope": "read write"}, {"scope": ""})
    }
    assert len(hashes) == 4


@pytest.mark.parametrize(
    "overrides",
    [
        {"secret": {"labels": {"app": "x"}}},
        {"secret": {"annotations": {"example.com/a": "b"}}},
        {"secret": {"name": "elsewhere"}},
        {"secret": {"deletionPolicy": "Retain"}},
        {"secret": {"template": {"config.json": "${authorization}"}}},
        {"timeoutSeconds": 5},
        {"suspend": True},
        {"refresh": {"renewBefore": "5m"}},
        {"refresh": {"renewBeforePercentage": 50}},
    ],
    ids=lambda o: ",".join(o),
)
def test_config_hash_ignores_fields_that_do_not_shape_the_request(overrides):
    client_secret = secrets.token_urlsafe(32)
    assert base_hash(client_secret, **overrides) == base_hash(client_secret)


def test_config_hash_ignores_where_an_identical_client_id_comes_from():
    client_secret = secrets.token_urlsafe(32)
    literal = spec_of()
    raw = {
        "tokenURL": "https://login.example/oauth2/token",
        "clientIDRef": {"name": "ids", "key": "client_id"},
        "clientSecretRef": {"name": "lms-client", "key": "client_secret"},
    }
    from_ref = parse_spec(raw, name=OWNER.name)
    values = values_of(client_secret, client_id="acme")
    assert config_hash(literal, values) == config_hash(from_ref, values)


@pytest.mark.parametrize(
    "field", ["client_id", "client_secret", "ca_pem", "client_cert_pem", "client_key_pem"]
)
def test_config_hash_changes_with_every_referenced_value(field):
    spec = spec_of(**copy.deepcopy(BASE_FIELDS))
    base = {
        "client_id": "acme",
        "client_secret": secrets.token_urlsafe(32),
        "ca_pem": CA,
        "client_cert_pem": CERT,
        "client_key_pem": secrets.token_urlsafe(48).encode(),
    }
    changed = dict(base)
    original = base[field]
    changed[field] = original + ("x" if isinstance(original, str) else b"x")
    assert config_hash(spec, ResolvedValues(**base)) != config_hash(spec, ResolvedValues(**changed))


def test_config_hash_ignores_the_ca_description():
    client_secret = secrets.token_urlsafe(32)
    spec = spec_of()
    a = values_of(client_secret, ca_pem=CA, ca_description="Secret ca key ca.crt")
    b = values_of(client_secret, ca_pem=CA, ca_description="ConfigMap ca key ca.crt")
    assert config_hash(spec, a) == config_hash(spec, b)


def test_config_hash_distinguishes_client_id_from_client_secret():
    spec = spec_of()
    a, b = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    assert config_hash(spec, ResolvedValues(a, b)) != config_hash(spec, ResolvedValues(b, a))


def test_config_hash_never_contains_the_secret_or_its_plain_digest():
    client_secret = secrets.token_urlsafe(32)
    key = secrets.token_urlsafe(48).encode()
    spec = spec_of()
    values = values_of(client_secret, client_key_pem=key)
    fingerprint = config_hash(spec, values)
    assert client_secret not in fingerprint
    assert key.decode() not in fingerprint
    for secret in (client_secret.encode(), key):
        digest = hashlib.sha256(secret).hexdigest()
        assert digest[:32] not in fingerprint
        assert digest[-32:] not in fingerprint
    for text in (repr(values), repr(spec), str(values)):
        assert client_secret not in text
        assert key.decode() not in text


# --- held_token -----------------------------------------------------------------------


def test_held_token_round_trip():
    spec = spec_of(secret={"template": {"config.json": "${authorization}"}})
    body = managed_secret(OWNER, spec, token_of(), "sha256:feed")
    assert held_token(body) == HeldToken(
        keys=frozenset(
            {"access_token", "token_type", "authorization", "expires_at", "config.json"}
        ),
        issued_at=T0,
        expires_at=T0 + timedelta(hours=1),
        config_hash="sha256:feed",
    )


def test_held_token_of_no_secret():
    assert held_token(None) is None


def test_held_token_ignores_empty_values_and_unreadable_times():
    held = held_token(
        {
            "metadata": {"annotations": {ANNOTATION_ISSUED: "garbage"}},
            "data": {"access_token": "", "token_type": "QmVhcmVy"},
        }
    )
    assert held == HeldToken(
        keys=frozenset({"token_type"}), issued_at=None, expires_at=None, config_hash=None
    )


def test_held_token_of_a_bare_secret():
    assert held_token({}) == HeldToken(frozenset(), None, None, None)


def test_freshly_written_secret_needs_no_fetch():
    client_secret = secrets.token_urlsafe(32)
    spec = spec_of()
    fingerprint = config_hash(spec, values_of(client_secret))
    body = managed_secret(OWNER, spec, token_of(), fingerprint)
    decision = TriggerInput(
        now=T0 + timedelta(minutes=10),
        held=held_token(body),
        generation=1,
        served_generation=1,
        config_hash=fingerprint,
        refresh_requested=None,
        last_handled_refresh_request=None,
        refresh=spec.refresh,
        jitter=0.5,
    )
    assert why_fetch_now(decision) is None
    # ... and a rotated client secret is noticed.
    rotated = config_hash(spec, values_of(secrets.token_urlsafe(32)))
    rotated_decision = dataclasses.replace(decision, config_hash=rotated)
    assert why_fetch_now(rotated_decision).reason == "ConfigChanged"


# --- ownership ------------------------------------------------------------------------


def test_own_secret_delete_policy():
    body = managed_secret(OWNER, spec_of(), token_of(), "h")
    assert owned_by(body, OWNER) is True
    assert owned_by(body, OTHER) is False


def test_own_secret_retain_policy():
    body = managed_secret(OWNER, spec_of(secret={"deletionPolicy": "Retain"}), token_of(), "h")
    assert owned_by(body, OWNER) is True
    assert owned_by(body, OTHER) is False


def test_foreign_secrets_are_not_owned():
    assert owned_by({}, OWNER) is False
    assert owned_by({"metadata": {}}, OWNER) is False
    assert owned_by({"metadata": {"name": "lms-admin", "labels": {"app": "x"}}}, OWNER) is False
    helm = {
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "lms"},
        }
    }
    assert owned_by(helm, OWNER) is False


def test_secret_of_another_credential_with_the_same_name():
    body = managed_secret(OTHER, spec_of(secret={"name": "shared"}), token_of(), "h")
    assert owned_by(body, OWNER) is False


def test_controller_reference_to_another_uid_wins_over_matching_labels():
    metadata = {
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "uid": "x", "controller": True}
        ],
        "labels": {LABEL_CREDENTIAL: OWNER.name},
        "annotations": {ANNOTATION_OWNER_UID: OWNER.uid},
    }
    assert owned_by({"metadata": metadata}, OWNER) is False


def test_non_controller_reference_is_not_ownership():
    metadata = {"ownerReferences": [{"uid": OWNER.uid, "controller": False}]}
    assert owned_by({"metadata": metadata}, OWNER) is False
    metadata = {"ownerReferences": [{"uid": OWNER.uid}]}
    assert owned_by({"metadata": metadata}, OWNER) is False


def test_controller_reference_among_others():
    metadata = {
        "ownerReferences": [
            {"uid": "someone-else"},
            {"uid": OWNER.uid, "controller": True},
        ]
    }
    assert owned_by({"metadata": metadata}, OWNER) is True


@pytest.mark.parametrize(
    ("labels", "annotations"),
    [
        ({LABEL_CREDENTIAL: OWNER.name}, {}),
        ({}, {ANNOTATION_OWNER_UID: OWNER.uid}),
        ({LABEL_CREDENTIAL: OTHER.name}, {ANNOTATION_OWNER_UID: OWNER.uid}),
        ({LABEL_CREDENTIAL: OWNER.name}, {ANNOTATION_OWNER_UID: OTHER.uid}),
        ({LABEL_CREDENTIAL: OWNER.name}, {ANNOTATION_OWNER_UID: ""}),
    ],
)
def test_retain_ownership_needs_label_and_annotation_to_match(labels, annotations):
    secret = {"metadata": {"labels": labels, "annotations": annotations}}
    assert owned_by(secret, OWNER) is False


def test_recreated_credential_with_the_same_name_does_not_own_the_old_secret():
    old = Owner(name=OWNER.name, namespace=OWNER.namespace, uid="old-uid")
    for policy in ("Delete", "Retain"):
        body = managed_secret(old, spec_of(secret={"deletionPolicy": policy}), token_of(), "h")
        assert owned_by(body, OWNER) is False


def test_is_managed():
    assert is_managed(managed_secret(OWNER, spec_of(), token_of(), "h")["metadata"])
    assert not is_managed({"labels": {"app": "x"}})
    assert not is_managed({})
    assert not is_managed({"labels": None})


# --- allowed token URLs ---------------------------------------------------------------


def test_no_annotation_allows_any_url():
    assert url_allowed("https://anything.example/token", None) is True


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example",
        "https://login.example/",
        "https://login.example/oauth2/token",
        "https://login.example?tenant=a",
    ],
)
def test_host_only_prefix_admits_that_host(url):
    assert url_allowed(url, "https://login.example") is True


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example.attacker.net",
        "https://login.example.attacker.net/token",
        "https://login.examples.net/token",
        "https://login.example-attacker.net/token",
        "https://login.example@attacker.net/token",
        "https://login.example\\.attacker.net/token",
        "https://login.example#.attacker.net",
        "http://login.example/token",
        "https://evil.example/https://login.example/token",
        "https://attacker.net/?https://login.example",
    ],
)
def test_host_only_prefix_does_not_admit_other_hosts(url):
    assert url_allowed(url, "https://login.example") is False


def test_host_with_port_prefix():
    allowed = "https://login.example:8443"
    assert url_allowed("https://login.example:8443/token", allowed) is True
    assert url_allowed("https://login.example:84430/token", allowed) is False
    assert url_allowed("https://login.example:8443.attacker.net/token", allowed) is False


def test_prefix_with_path_is_a_plain_prefix():
    allowed = "https://acme.plateau.example/"
    assert url_allowed("https://acme.plateau.example/learning/oauth-api/rest/v1/token", allowed)
    assert not url_allowed("https://acme.plateau.example.attacker.net/token", allowed)
    tenant = "https://login.example/tenant-a/"
    assert url_allowed("https://login.example/tenant-a/oauth2/token", tenant)
    assert not url_allowed("https://login.example/tenant-b/oauth2/token", tenant)


def test_comma_separated_prefixes_with_spaces():
    allowed = " https://a.example/ , https://b.example/token,https://c.example "
    assert url_allowed("https://a.example/token", allowed)
    assert url_allowed("https://b.example/token", allowed)
    assert url_allowed("https://c.example/token", allowed)
    assert not url_allowed("https://d.example/token", allowed)
    assert not url_allowed("https://c.example.attacker.net/token", allowed)


@pytest.mark.parametrize("allowed", ["", " ", ",", " , ,"])
def test_empty_annotation_allows_nothing(allowed):
    assert url_allowed("https://login.example/token", allowed) is False


def test_prefix_without_scheme_matches_nothing():
    assert url_allowed("https://login.example/token", "login.example") is False


# --- rendered size (issue 8 item 2) -------------------------------------------------------


def test_rendered_size_is_computed_without_rendering():
    from tokensync.secret import rendered_size

    token = token_of("t" * 1000, scope="read write")
    template = {"a": "x ${access_token} ${access_token} y", "b": "${scope}${nope}", "c": ""}
    rendered = secret_data(token, template)
    expected = sum(len(k.encode()) + len(v.encode()) for k, v in rendered.items())
    assert rendered_size(template_values(token), template) == expected


def test_template_amplification_is_refused_before_rendering():
    from tokensync.secret import MAX_SECRET_DATA_BYTES, SecretTooLarge
    from tokensync.spec import SpecError

    token = token_of("t" * 65536)
    template = {f"k{i}": "${access_token}" * 270 for i in range(32)}  # would be 566 MB
    with pytest.raises(SecretTooLarge) as caught:
        managed_secret(OWNER, spec_of(secret={"template": template}), token, "sha256:x")
    error = caught.value
    assert isinstance(error, SpecError)  # reported like any spec problem: InvalidSpec
    assert "256 KiB" in str(error) and "spec.secret.template" in str(error)
    assert "tttttttt" not in str(error)
    # Right at the limit is fine.
    fixed = sum(len(k) + len(v) for k, v in secret_data(token, {}).items())
    room = MAX_SECRET_DATA_BYTES - fixed - len("pad")
    assert len(secret_data(token, {"pad": "x" * room})["pad"]) == room
    with pytest.raises(SecretTooLarge):
        secret_data(token, {"pad": "x" * (room + 1)})
