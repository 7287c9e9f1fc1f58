"""`tokensync check --probe` against the Cognito- and SAP-Learning-style endpoints: it
finds the combination that works, in at most 6 requests to the same URL, and prints the
spec lines; the secret is never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fixtures.token_servers import Credentials
from servers.quirky import TokenServer
from tokensync import cli
from tokensync.check import probe_combinations
from tokensync.oauth2 import TokenRequest

SAP_SCOPE = {
    "userId": "admin1",
    "companyId": "acme",
    "userType": "admin",
    "resourceType": "learning_public_api",
}


def manifest(tmp_path: Path, server: TokenServer, credentials: Credentials, **spec: Any) -> Path:
    credential = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "demo"},
        "spec": {
            "tokenURL": server.token_url,
            "allowInsecureHTTP": True,
            "clientID": credentials.client_id,
            "clientSecretRef": {"name": "client", "key": "secret"},
            **spec,
        },
    }
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump(credential))
    (tmp_path / "secret").write_text(credentials.client_secret)
    return path


def probe(capsys, path: Path, *extra: str) -> tuple[int, str]:
    secret = str(path.parent / "secret")
    code = cli.main(["check", "-f", str(path), "--client-secret-file", secret, "--probe", *extra])
    return code, capsys.readouterr().out


def test_cognito_json_body_is_probed_to_form_and_header(
    capsys, tmp_path, cognito_server, credentials
):
    path = manifest(
        tmp_path,
        cognito_server,
        credentials,
        clientAuthentication="body",
        contentType="application/json",
        scope="api/read",
    )
    code, out = probe(capsys, path)
    assert code == 0, out
    assert "1  body + JSON (scope string)" in out
    assert "header + form (scope string)" in out and "token issued" in out
    assert "clientAuthentication: header\n" in out
    assert "contentType: application/x-www-form-urlencoded\n" in out
    assert 'scope: "api/read"' in out
    assert credentials.client_secret not in out
    posts = [r for r in cognito_server.received if r.method == "POST"]
    assert len(posts) == 2  # as written, then the standard header + form
    assert {r.path for r in cognito_server.received} == {cognito_server.path}


def test_sap_learning_scope_object_needs_json_and_header(capsys, tmp_path, sap_server, credentials):
    path = manifest(
        tmp_path,
        sap_server,
        credentials,
        clientAuthentication="body",
        contentType="application/json",
        scopeObject=SAP_SCOPE,
    )
    code, out = probe(capsys, path, "-o", "json")
    report = json.loads(out)
    assert code == 0, report
    attempts = report["probe"]["attempts"]
    assert attempts[-1] == {
        "combination": "header + JSON (scope object)",
        "outcome": "token issued",
    }
    assert len(attempts) <= 6
    lines = report["probe"]["specLines"]
    assert lines[:3] == [
        "clientAuthentication: header",
        "contentType: application/json",
        "scopeObject:",
    ]
    assert "  userId: admin1" in lines
    assert credentials.client_secret not in out


def test_wrong_secret_stops_after_six_requests(capsys, tmp_path, sap_server, credentials):
    wrong = Credentials(credentials.client_id, "wrong-" + credentials.client_secret)
    path = manifest(
        tmp_path, sap_server, wrong, contentType="application/json", scopeObject=SAP_SCOPE
    )
    code, out = probe(capsys, path)
    assert code == 4
    assert "no combination worked" in out
    assert len([r for r in sap_server.received if r.method == "POST"]) == 6
    assert wrong.client_secret not in out and credentials.client_secret not in out


def test_combinations_are_at_most_six_and_start_with_the_spec():
    base = TokenRequest(token_url="https://x/token", client_id="c", client_secret="s")
    plain = probe_combinations(base)
    assert [c.label for c in plain] == [
        "header + form (scope none)",
        "body + form (scope none)",
        "header + JSON (scope none)",
        "body + JSON (scope none)",
    ]
    with_object = probe_combinations(
        TokenRequest(
            token_url="https://x/token",
            client_id="c",
            client_secret="s",
            client_authentication="body",
            content_type="application/json",
            scope_object={"a": "b"},
        )
    )
    assert len(with_object) == 6
    assert with_object[0].label == "body + JSON (scope object)"
    assert len(set(with_object)) == 6
