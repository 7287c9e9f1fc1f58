"""`tokensync check` against Keycloak (both pinned versions), ORY Hydra and oidc-provider:
every client authentication method each server supports gets a token that the server's
own introspection calls active and issued to that client, through check, through
`--probe` from a wrong content type (which finds the one change that works), and through
issuerURL discovery; the Secret's `authorization` value uses the canonical `Bearer`
whatever case the server answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from idp.idpcases import (
    CA_NAME,
    CERT_NAME,
    DISCOVERY,
    HYDRA_CASES,
    KEY_NAME,
    SERVER_CASES,
    Case,
    Setup,
    active_for,
)
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
    if setup.client_cert is not None and setup.ca_pem is not None:
        files = {
            f"{CERT_NAME}/tls.crt": setup.client_cert[0],
            f"{CERT_NAME}/tls.key": setup.client_cert[1],
            f"{CA_NAME}/ca.crt": setup.ca_pem,
        }
        for ref, data in files.items():
            (tmp_path / ref.replace("/", "-")).write_bytes(data)
            args += ["--ref", f"{ref}={tmp_path / ref.replace('/', '-')}"]
    code = cli.main(args)
    out = capsys.readouterr().out
    report = json.loads(out)
    if setup.secret:
        assert setup.secret not in out.replace(report["result"].get("accessToken", ""), "")
    report["exitCode"] = code
    return report


MATRIX = [
    pytest.param(server, case, id=f"{server}-{case.label}")
    for server, cases in SERVER_CASES.items()
    for case in cases
]


def issued_to_the_client(server: Any, setup: Setup, report: dict) -> bool:
    assert report["exitCode"] == 0, report
    return active_for(server.introspect, report["result"]["accessToken"], setup.client.client_id)


@pytest.mark.parametrize(("server_name", "case"), MATRIX)
def test_check_gets_a_token(capsys, tmp_path, request, server_name: str, case: Case):
    server = request.getfixturevalue(server_name)
    setup = case.setup(server)
    assert issued_to_the_client(server, setup, run_check(capsys, tmp_path, setup))


@pytest.mark.parametrize(("server_name", "case"), MATRIX)
def test_probe_changes_only_the_content_type(
    capsys, tmp_path, request, server_name: str, case: Case
):
    """issue 21: each method with a JSON body, where the server reads only form bodies,
    is probed to the same method with a form body (one change), not to the standard
    `header` + form."""
    server = request.getfixturevalue(server_name)
    setup = case.setup(server)
    report = run_check(capsys, tmp_path, setup, "--probe", contentType="application/json")
    assert issued_to_the_client(server, setup, report)
    assert [a["combination"].split(" (")[0] for a in report["probe"]["attempts"]] == [
        f"{case.method} + JSON",
        f"{case.method} + form",
    ]
    assert report["probe"]["specLines"][:2] == [
        f"clientAuthentication: {case.method}",
        "contentType: application/x-www-form-urlencoded",
    ]


def test_the_keycloaks_are_the_pinned_versions(keycloak: Keycloak, keycloak_newer: Keycloak):
    assert (keycloak.version, keycloak_newer.version) == (
        pinned_keycloak("keycloak"),
        pinned_keycloak("keycloak_newer"),
    )


@pytest.mark.parametrize("server_name", list(SERVER_CASES))
def test_discovery_chooses_the_method(capsys, tmp_path, request, server_name: str):
    """issuerURL: each server's discovery document lists client_secret_basic, so check
    sends `header` without clientAuthentication."""
    server = request.getfixturevalue(server_name)
    setup = DISCOVERY.setup(server)
    report = run_check(capsys, tmp_path, setup)
    assert issued_to_the_client(server, setup, report)
    assert report["request"]["discoveredFrom"] == server.issuer
    assert report["request"]["endpoint"] == setup.client.token_url
    assert report["request"]["clientAuthentication"] == "header"


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
