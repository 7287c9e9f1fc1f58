"""`grantType: token_exchange` (RFC 8693) against Keycloak's standard token exchange,
through `tokensync check`: the subject token (from a file, as from a Secret) is an access
token Keycloak issued to another client of the realm for a user; Keycloak issues a token
for that user to the requesting client, which its own introspection confirms.

Why a Keycloak-issued subject token and not a ServiceAccount token: Keycloak's standard
token exchange (supported, on by default since 26.2) exchanges only tokens of its own
realm (internal to internal); an external token needs the legacy exchange, a preview
feature with fine-grained admin permissions v1. The ServiceAccount subject token is
proven through the operator in tests/operator/test_operator_token_exchange.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from idp.idpcases import KEYCLOAKS
from idp.idplib import Keycloak

from tokensync import cli

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def exchange_manifest(keycloak: Keycloak, client_id: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "exchange"},
        "spec": {
            "tokenURL": keycloak.token_url,
            "allowInsecureHTTP": True,
            "clientID": client_id,
            "clientSecretRef": {"name": "client", "key": "secret"},
            "grantType": "token_exchange",
            "tokenExchange": {"subjectTokenRef": {"name": "subject", "key": "token"}},
            **spec,
        },
    }


def run_check(tmp_path: Path, manifest: dict[str, Any], secret: str, subject: str) -> int:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(manifest))
    (tmp_path / "secret").write_text(secret)
    (tmp_path / "subject").write_text(subject + "\n")  # as `echo` writes it
    return cli.main(
        [
            "check",
            "-f",
            str(tmp_path / "c.yaml"),
            "--client-secret-file",
            str(tmp_path / "secret"),
            "--ref",
            f"subject/token={tmp_path / 'subject'}",
            "-o",
            "json",
            "--show-token",
        ]
    )


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_token_exchange_through_check(capsys, tmp_path, request, server):
    keycloak = request.getfixturevalue(server)
    initial, requester = keycloak.add_exchange_clients()
    username, password = keycloak.add_user()
    subject = keycloak.password_token(initial, username, password)
    manifest = exchange_manifest(
        keycloak,
        requester.client_id,
        tokenExchange={
            "subjectTokenRef": {"name": "subject", "key": "token"},
            "requestedTokenType": ACCESS_TOKEN,
        },
    )
    code = run_check(tmp_path, manifest, requester.client_secret, subject)
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 0, report["result"]
    assert report["request"]["grant"].startswith(
        "token_exchange (subject token: Secret 'subject' key 'token', type "
        "urn:ietf:params:oauth:token-type:access_token"
    )
    token = report["result"]["accessToken"]
    assert token != subject
    verdict = keycloak.introspect(token)
    assert verdict["active"] is True, verdict
    assert (verdict["username"], verdict["client_id"]) == (username, requester.client_id)
    assert subject not in out and requester.client_secret not in out


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_audience_selects_the_target_client(capsys, tmp_path, request, server):
    """`spec.audience` is sent as RFC 8693 `audience`: the new token is for that client,
    and Keycloak refuses an audience that is no client of the realm."""
    keycloak = request.getfixturevalue(server)
    initial, requester = keycloak.add_exchange_clients()
    target = keycloak.add_client("header")
    keycloak.add_audience_mapper(requester.client_id, target.client_id)
    username, password = keycloak.add_user()
    subject = keycloak.password_token(initial, username, password)
    manifest = exchange_manifest(keycloak, requester.client_id, audience=target.client_id)
    code = run_check(tmp_path, manifest, requester.client_secret, subject)
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["result"]
    verdict = keycloak.introspect(report["result"]["accessToken"], as_client=target)
    assert verdict["active"] is True, verdict
    audience = verdict["aud"] if isinstance(verdict["aud"], list) else [verdict["aud"]]
    assert target.client_id in audience, verdict

    manifest = exchange_manifest(keycloak, requester.client_id, audience="no-such-client")
    code = run_check(tmp_path, manifest, requester.client_secret, subject)
    report = json.loads(capsys.readouterr().out)
    assert code != 0
    assert report["result"]["httpStatus"] == 400, report["result"]


@pytest.mark.parametrize("server", KEYCLOAKS)
def test_a_subject_token_meant_for_another_client_is_refused(capsys, tmp_path, request, server):
    """Without the requesting client in the subject token's audience Keycloak refuses the
    exchange; check reports the endpoint's error and never the subject token."""
    keycloak = request.getfixturevalue(server)
    _initial, requester = keycloak.add_exchange_clients()
    stranger = keycloak.add_client("header")
    keycloak.update_client(stranger.client_id, {"directAccessGrantsEnabled": True})
    username, password = keycloak.add_user()
    subject = keycloak.password_token(stranger, username, password)
    manifest = exchange_manifest(keycloak, requester.client_id)
    code = run_check(tmp_path, manifest, requester.client_secret, subject)
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code != 0
    assert (report["result"]["httpStatus"], report["result"]["error"]) == (403, "access_denied")
    assert "not within the token audience" in report["result"]["errorDescription"]
    assert subject not in out and requester.client_secret not in out
