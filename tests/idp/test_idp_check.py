"""`tokensync check` against Keycloak and ORY Hydra: every client authentication method
each server supports gets a token that the server's own introspection calls active and
issued to that client; `--probe` finds the one change that works; the Secret's
`authorization` value uses the canonical `Bearer` whatever case the server answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from idp.idpcases import HYDRA_CASES, KEY_NAME, KEYCLOAK_CASES, Case, Setup, active_for
from idp.idplib import Hydra, Keycloak, pinned_keycloak

from tokensync import cli
from tokensync.oauth2 import Token
from tokensync.secret import template_values


def run_check(capsys, tmp_path: Path, setup: Setup, *extra: str, **spec: Any) -> dict:
    credential = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "idp"},
        "spec": {
            "tokenURL": setup.client.token_url,
            "allowInsecureHTTP": True,
            "clientID": setup.client.client_id,
            "scope": "api:read" if setup.client.server == "hydra" else None,
            **setup.spec,
            **spec,
        },
    }
    credential["spec"] = {k: v for k, v in credential["spec"].items() if v is not None}
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump(credential))
    args = ["check", "-f", str(path), "-o", "json", "--show-token", *extra]
    if setup.secret:
        (tmp_path / "secret").write_text(setup.secret)
        args += ["--client-secret-file", str(tmp_path / "secret")]
    if setup.key_pem is not None:
        (tmp_path / "key.pem").write_bytes(setup.key_pem)
        args += ["--ref", f"{KEY_NAME}/key.pem={tmp_path / 'key.pem'}"]
    code = cli.main(args)
    out = capsys.readouterr().out
    report = json.loads(out)
    if setup.secret:
        assert setup.secret not in out.replace(report["result"].get("accessToken", ""), "")
    report["exitCode"] = code
    return report


@pytest.mark.parametrize("case", KEYCLOAK_CASES, ids=lambda c: c.label)
def test_keycloak_issues_a_token_to_check(capsys, tmp_path, keycloak: Keycloak, case: Case):
    setup = case.setup(keycloak)
    report = run_check(capsys, tmp_path, setup)
    assert report["exitCode"] == 0, report["result"]
    token = report["result"]["accessToken"]
    assert active_for(keycloak.introspect, token, setup.client.client_id)


@pytest.mark.parametrize("case", KEYCLOAK_CASES, ids=lambda c: c.label)
def test_the_newer_keycloak_issues_a_token_to_check(
    capsys, tmp_path, keycloak_newer: Keycloak, case: Case
):
    """The second pinned Keycloak version (tests/idp/keycloak/versions): every method."""
    setup = case.setup(keycloak_newer)
    report = run_check(capsys, tmp_path, setup)
    assert report["exitCode"] == 0, report["result"]
    token = report["result"]["accessToken"]
    assert active_for(keycloak_newer.introspect, token, setup.client.client_id)
    assert keycloak_newer.version == pinned_keycloak("keycloak_newer")


@pytest.mark.parametrize("case", HYDRA_CASES, ids=lambda c: c.label)
def test_hydra_issues_a_token_to_check(capsys, tmp_path, hydra: Hydra, case: Case):
    setup = case.setup(hydra)
    report = run_check(capsys, tmp_path, setup)
    assert report["exitCode"] == 0, report["result"]
    token = report["result"]["accessToken"]
    assert active_for(hydra.introspect, token, setup.client.client_id)


def test_keycloak_discovery_chooses_the_method(capsys, tmp_path, keycloak: Keycloak):
    """issuerURL: Keycloak's discovery document lists client_secret_basic first."""
    setup = KEYCLOAK_CASES[0].setup(keycloak)
    setup.spec.pop("clientAuthentication")
    report = run_check(capsys, tmp_path, setup, tokenURL=None, issuerURL=keycloak.issuer)
    assert report["exitCode"] == 0, report["result"]
    assert report["request"]["discoveredFrom"] == keycloak.issuer
    assert active_for(keycloak.introspect, report["result"]["accessToken"], setup.client.client_id)


@pytest.mark.parametrize("server_name", ["keycloak", "hydra"])
def test_probe_changes_only_the_content_type(capsys, tmp_path, request, server_name):
    """issue 21: `body` + JSON, where `body` + form works, is probed to `body` + form
    (one change), not to the standard `header` + form."""
    server = request.getfixturevalue(server_name)
    setup = Case("body", "body").setup(server)
    report = run_check(capsys, tmp_path, setup, "--probe", contentType="application/json")
    assert report["exitCode"] == 0, report
    assert [a["combination"].split(" (")[0] for a in report["probe"]["attempts"]] == [
        "body + JSON",
        "body + form",
    ]
    assert report["probe"]["specLines"][:2] == [
        "clientAuthentication: body",
        "contentType: application/x-www-form-urlencoded",
    ]
    assert active_for(server.introspect, report["result"]["accessToken"], setup.client.client_id)


def test_probe_varies_the_content_type_of_private_key_jwt(capsys, tmp_path, keycloak):
    setup = KEYCLOAK_CASES[3].setup(keycloak)
    report = run_check(capsys, tmp_path, setup, "--probe", contentType="application/json")
    assert report["exitCode"] == 0, report
    assert report["probe"]["attempts"][-1]["combination"].startswith("private_key_jwt + form")
    assert "contentType: application/x-www-form-urlencoded" in report["probe"]["specLines"]


def test_hydra_bearer_is_canonical_in_authorization(capsys, tmp_path, hydra: Hydra):
    """Hydra answers token_type `bearer`; the managed Secret's `authorization` says
    `Bearer` (token_type stays as returned)."""
    setup = HYDRA_CASES[0].setup(hydra)
    report = run_check(capsys, tmp_path, setup)
    result = report["result"]
    assert result["tokenType"] == "bearer"
    token = Token(
        access_token=result["accessToken"],
        token_type=result["tokenType"],
        issued_at=_parse(result["issuedAt"]),
        expires_at=_parse(result["expiresAt"]),
        scope=result["grantedScope"],
        lifetime_source=result["lifetimeSource"],
        http_status=200,
    )
    values = template_values(token)
    assert values["authorization"] == f"Bearer {result['accessToken']}"
    assert values["token_type"] == "bearer"


def _parse(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))
