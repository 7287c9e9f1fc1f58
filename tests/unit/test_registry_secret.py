"""secret.type: kubernetes.io/dockerconfigjson, without a cluster: parsing the spec,
rendering `.dockerconfigjson` as the kubelet reads it, its size counted before anything is
rendered, and the managed Secret's type."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokensync.managed import managed_state, needs_replacing, update_patch
from tokensync.oauth2 import Token
from tokensync.secret import (
    MAX_SECRET_DATA_BYTES,
    Owner,
    SecretTooLarge,
    docker_config_json,
    docker_config_size,
    managed_secret,
    rendered_size,
    secret_data,
    template_values,
)
from tokensync.spec import DockerConfigSpec, SpecError, parse_spec

DOCKER = "kubernetes.io/dockerconfigjson"
OWNER = Owner(name="pull", namespace="ns", uid="uid-1")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def spec_with(secret: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokenURL": "https://login.example/token",
        "clientID": "acme",
        "clientSecretRef": {"name": "client", "key": "client_secret"},
        "secret": secret,
    }


def problems(secret: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(secret), name="pull")
    return info.value.problems


def token(access_token: str) -> Token:
    return Token(
        access_token=access_token,
        token_type="Bearer",
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        scope=None,
        lifetime_source="expires_in",
        http_status=200,
    )


def test_the_default_is_an_opaque_secret_without_docker_config():
    secret = parse_spec(spec_with({}), name="pull").secret
    assert (secret.type, secret.docker_config) == ("Opaque", None)


def test_a_pull_secret_spec_with_the_default_user_name():
    secret = parse_spec(
        spec_with({"type": DOCKER, "dockerConfig": {"registries": ["europe-docker.pkg.dev"]}}),
        name="pull",
    ).secret
    assert secret.type == DOCKER
    assert secret.docker_config == DockerConfigSpec(("europe-docker.pkg.dev",), "oauth2accesstoken")


@pytest.mark.parametrize(
    ("secret", "path", "fragment"),
    [
        ({"type": DOCKER}, "spec.secret.dockerConfig", "is required"),
        ({"dockerConfig": {"registries": ["r.io"]}}, "spec.secret.dockerConfig", "only allowed"),
        ({"type": "kubernetes.io/tls"}, "spec.secret.type", "must be one of"),
        ({"type": DOCKER, "dockerConfig": {}}, "spec.secret.dockerConfig.registries", "1 to 16"),
        (
            {"type": DOCKER, "dockerConfig": {"registries": [f"r{i}.io" for i in range(17)]}},
            "spec.secret.dockerConfig.registries",
            "1 to 16",
        ),
        (
            {"type": DOCKER, "dockerConfig": {"registries": ["https://r.io"]}},
            "spec.secret.dockerConfig.registries[0]",
            "no scheme",
        ),
        (
            {"type": DOCKER, "dockerConfig": {"registries": ["r.io", "r.io"]}},
            "spec.secret.dockerConfig.registries",
            "twice",
        ),
        (  # unhashable entries (a file given to `check -f`) are reported, not raised
            {"type": DOCKER, "dockerConfig": {"registries": [["r.io"], ["r.io"]]}},
            "spec.secret.dockerConfig.registries[0]",
            "no scheme",
        ),
        (
            {"type": DOCKER, "dockerConfig": {"registries": ["r.io"], "username": "a:b"}},
            "spec.secret.dockerConfig.username",
            "without ':'",
        ),
        (
            {
                "type": DOCKER,
                "dockerConfig": {"registries": ["r.io"]},
                "template": {".dockerconfigjson": "{}"},
            },
            "spec.secret.template..dockerconfigjson",
            "dockerConfig",
        ),
    ],
)
def test_wrong_pull_secret_specs_name_the_field(secret, path, fragment):
    found = problems(secret)
    assert any(p.startswith(path + ": ") and fragment in p for p in found), found


@pytest.mark.parametrize(
    "registry",
    [
        "europe-docker.pkg.dev",
        "registry.example.com:5000",
        "*.gcr.io",
        "r.io/team/app",
        "localhost",
    ],
)
def test_registries_as_image_references_name_them(registry):
    parse_spec(spec_with({"type": DOCKER, "dockerConfig": {"registries": [registry]}}), name="p")


@pytest.mark.parametrize(
    "access_token",
    ["eyJhbGciOi.J9.sig", 'quote"and\\backslash', "é" * 9, "x" * 5000, "\u2028"],
)
def test_dockerconfigjson_is_valid_json_the_kubelet_reads(access_token):
    docker = DockerConfigSpec(("a.io", "b.io:5000/x"), "robot")
    rendered = docker_config_json(docker, access_token)
    assert len(rendered.encode()) == docker_config_size(docker, access_token)
    for registry, entry in json.loads(rendered)["auths"].items():
        assert registry in docker.registries
        assert entry["password"] == access_token
        assert base64.b64decode(entry["auth"]).decode() == f"robot:{access_token}"


def test_the_size_check_counts_the_token_once_per_registry_before_rendering():
    registries = tuple(f"r{i}.example" for i in range(16))
    docker = DockerConfigSpec(registries)
    big = "t" * 8000  # 16 registries x (password + base64 auth) pass 256 KiB
    values = template_values(token(big))
    assert rendered_size(values, {}, docker) > MAX_SECRET_DATA_BYTES
    with pytest.raises(SecretTooLarge) as refused:
        secret_data(token(big), {}, docker)
    assert "16 registries" in str(refused.value)
    assert big not in str(refused.value)
    fits = secret_data(token("t" * 1000), {}, docker)
    assert sum(len(k) + len(v) for k, v in fits.items()) == rendered_size(
        template_values(token("t" * 1000)), {}, docker
    )


def test_the_managed_secret_carries_the_type_and_every_key():
    parsed = parse_spec(
        spec_with({"type": DOCKER, "dockerConfig": {"registries": ["r.io"]}}), name="pull"
    )
    access_token = "tok-" + secrets.token_urlsafe(12)
    body = managed_secret(OWNER, parsed, token(access_token), "sha256:x")
    assert body["type"] == DOCKER
    data = {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
    assert set(data) == {
        "access_token",
        "token_type",
        "authorization",
        "expires_at",
        ".dockerconfigjson",
    }
    assert json.loads(data[".dockerconfigjson"])["auths"]["r.io"]["password"] == access_token


def test_a_patch_always_names_the_type_and_a_known_other_type_is_replaced():
    opaque = parse_spec(spec_with({}), name="pull")
    pull = parse_spec(
        spec_with({"type": DOCKER, "dockerConfig": {"registries": ["r.io"]}}), name="pull"
    )
    written = managed_secret(OWNER, opaque, token("a"), "sha256:x")
    written["metadata"].update(uid="s-1", resourceVersion="7")
    state = managed_state(written)  # a write's answer: the type is known
    assert state.secret_type == "Opaque"
    assert not needs_replacing(opaque, state)
    assert needs_replacing(pull, state)
    assert update_patch(OWNER, pull, token("b"), "sha256:y", state)["type"] == DOCKER
    del written["type"]  # the metadata-only watch: unknown, so patched (and refused)
    assert not needs_replacing(pull, managed_state(written))
