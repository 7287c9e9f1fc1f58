"""`tokensync check --probe` against the Cognito- and SAP-Learning-style endpoints: it
finds the combination that works, in at most 6 requests to the same URL, and prints the
spec lines; the secret is never shown."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fixtures.token_servers import Credentials
from servers.oidc import OIDCClient
from servers.quirky import TokenServer
from tokensync import cli
from tokensync.check import probe_combinations, spec_lines
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
    code, out = probe(capsys, path, "-o", "json")
    report = json.loads(out)
    assert code == 0, report
    # Smallest change first: each one-setting change fails on Cognito (it needs both).
    assert [a["combination"] for a in report["probe"]["attempts"]] == [
        "body + JSON (scope string)",
        "body + form (scope string)",
        "header + JSON (scope string)",
        "header + form (scope string)",
    ]
    assert report["probe"]["attempts"][-1]["outcome"] == "token issued"
    assert report["probe"]["specLines"] == [
        "clientAuthentication: header",
        "contentType: application/x-www-form-urlencoded",
        'scope: "api/read"',
    ]
    assert credentials.client_secret not in out
    posts = [r for r in cognito_server.received if r.method == "POST"]
    assert len(posts) == 4
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


def oidc_manifest(tmp_path: Path, client: OIDCClient, **spec: Any) -> Path:
    return manifest(
        tmp_path,
        client,  # type: ignore[arg-type]  # has token_url like a TokenServer
        Credentials(client.client_id, client.client_secret),
        **spec,
    )


def test_one_change_is_preferred_to_the_standard_form(capsys, tmp_path, oidc_post_client):
    """issue 21: `body` + JSON where `body` + form works (oidc-provider, a
    client_secret_post client, reads only form bodies): one change, not header + form."""
    path = oidc_manifest(
        tmp_path,
        oidc_post_client,
        clientAuthentication="body",
        contentType="application/json",
        scope="api:read",
    )
    code, out = probe(capsys, path, "-o", "json")
    report = json.loads(out)
    assert code == 0, report
    attempts = report["probe"]["attempts"]
    assert [a["combination"] for a in attempts] == [
        "body + JSON (scope string)",
        "body + form (scope string)",
    ]
    assert attempts[-1]["outcome"] == "token issued"
    assert report["probe"]["specLines"][:2] == [
        "clientAuthentication: body",
        "contentType: application/x-www-form-urlencoded",
    ]
    assert report["probe"]["note"] is None
    assert oidc_post_client.client_secret not in out


def test_client_secret_jwt_is_probed_over_the_content_type(capsys, tmp_path, oidc_provider):
    """The assertion methods are probed too (content type, client_id): client_secret_jwt
    with a JSON body gets its token with a form body; the secret is never sent itself."""
    client = oidc_provider.add_client("client_secret_jwt")
    path = oidc_manifest(
        tmp_path,
        client,
        clientAuthentication="client_secret_jwt",
        contentType="application/json",
        scope="api:read",
    )
    code, out = probe(capsys, path)
    assert code == 0, out
    assert "1  client_secret_jwt + JSON (scope string)" in out
    assert "2  client_secret_jwt + form (scope string)" in out
    assert "clientAuthentication: client_secret_jwt\n" in out
    assert "contentType: application/x-www-form-urlencoded\n" in out
    assert "has no secret" not in out
    assert "note: clientAuthentication client_secret_jwt is kept" in out
    assert "never sends the secret" in out
    assert client.client_secret not in out


def test_assertion_methods_vary_the_content_type_and_the_client_id():
    request = TokenRequest(
        token_url="https://x/token",
        client_id="c",
        client_secret="",
        client_authentication="workload_identity",
        content_type="application/json",
        client_assertion=lambda: "a.b.c",
    )
    assert [c.label for c in probe_combinations(request)] == [
        "workload_identity + JSON (scope none)",
        "workload_identity + form (scope none)",
        "workload_identity + JSON (scope none, no client_id)",
        "workload_identity + form (scope none, no client_id)",
    ]
    written_without = probe_combinations(
        replace(
            request, content_type="application/x-www-form-urlencoded", client_id_in_request=False
        )
    )
    assert [c.label for c in written_without] == [
        "workload_identity + form (scope none, no client_id)",
        "workload_identity + form (scope none)",
        "workload_identity + JSON (scope none, no client_id)",
        "workload_identity + JSON (scope none)",
    ]
    assert spec_lines(request, written_without[1]) == [
        "clientAuthentication: workload_identity",
        "contentType: application/x-www-form-urlencoded",
    ]
    assert spec_lines(request, written_without[0])[-1] == "clientIDInRequest: false"


def test_tls_client_auth_varies_the_content_type_only():
    request = TokenRequest(
        token_url="https://x/token",
        client_id="c",
        client_secret="",
        client_authentication="tls_client_auth",
        scope="a",
    )
    assert [c.label for c in probe_combinations(request)] == [
        "tls_client_auth + form (scope string)",
        "tls_client_auth + JSON (scope string)",
    ]
