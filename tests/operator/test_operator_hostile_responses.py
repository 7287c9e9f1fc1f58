"""Hostile token endpoints against the real operator on the real control plane:
an endpoint that echoes the client secret in every spelling right at the 200-character
cut of error_description (issue 9 item 7), and answers no parser should choke on
(issue 8 item 3). Status, events and the operator's whole log are searched.

The endpoints are plain-http quirk servers on loopback, so this operator runs with
--allow-insecure and the private-network guard off."""

from __future__ import annotations

import base64
import json
import secrets
from urllib.parse import quote

import pytest
from operator_helpers import wait_for

from fixtures.token_servers import Credentials
from tokensync.cli import allow_deep_api_objects
from tokensync.oauth2 import MAX_JSON_DEPTH

pytestmark = pytest.mark.envtest

INSECURE_OPERATOR = ("--allow-insecure", "--no-deny-private-networks")

SPELLINGS = {
    "raw": lambda s: s,
    "upper": str.upper,
    "reversed": lambda s: s[::-1],
    "hex": lambda s: s.encode().hex(),
    "HEX": lambda s: s.encode().hex().upper(),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "quote": lambda s: quote(s, safe=""),
}


def fragments(text: str, size: int = 8) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def credential(cluster, name: str, server, creds: Credentials, **spec) -> None:
    cluster.source_secret(
        f"{name}-client", {"client_secret": creds.client_secret}, allowed_urls=server.token_url
    )
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": name},
        "spec": {
            "tokenURL": server.token_url,
            "allowInsecureHTTP": True,
            "clientID": creds.client_id,
            "clientSecretRef": {"name": f"{name}-client", "key": "client_secret"},
            **spec,
        },
    }
    cluster.custom.create_namespaced_custom_object(
        "tokensync.dev", "v1alpha1", cluster.ns, "oauth2credentials", body
    )


def test_secret_echoed_at_the_cut_never_reaches_status_events_or_logs(
    cluster, own_operator, start_server
):
    operator = own_operator(*INSECURE_OPERATOR)
    leaks: dict[str, set[str]] = {}
    for index, (spelling, spell) in enumerate(sorted(SPELLINGS.items())):
        # 41 characters, as in the report that leaked 23 of them.
        creds = Credentials(f"client-{secrets.token_hex(4)}", secrets.token_urlsafe(30) + "Q")
        server = start_server(clients={creds.client_id: creds.client_secret})
        spelled = spell(creds.client_secret)
        # The echo straddles the 200-character cut, at a different offset for each.
        pad = 200 - len(spelled) // 2 + index
        server.fail("echo_spelling", spell=spell, pad=pad)
        name = f"echo-{spelling.lower()}-{index}"
        credential(cluster, name, server, creds)
        leaks[name] = fragments(creds.client_secret) | fragments(spelled)
        for other in SPELLINGS.values():
            leaks[name] |= fragments(other(creds.client_secret))
    for name in leaks:
        cluster.wait_ready(name, "False", "TokenRequestFailed")
        wait_for(lambda n=name: cluster.credential(n)["status"].get("lastFailure"), 30, name)
    published = {
        name: json.dumps(cluster.credential(name)["status"]) + json.dumps(cluster.events(name))
        for name in leaks
    }
    for name, text in published.items():
        assert "[REDACTED]" in text, (name, text)  # the echo was there, and removed
        found = sorted(f for f in leaks[name] if f in text)
        assert not found, (name, found[:5])
    log = operator.log()
    for name, forms in leaks.items():
        found = sorted(f for f in forms if f in log)
        assert not found, (name, found[:5])


def test_hostile_answers_become_protocol_failures_and_the_operator_keeps_serving(
    cluster, own_operator, start_server, credentials
):
    operator = own_operator(*INSECURE_OPERATOR)
    nested = b'{"access_token": "t", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    hostile = {
        "nested": nested,
        "nan": b'{"access_token": "tok-abcdefgh", "expires_in": NaN}',
        "huge-token": json.dumps({"access_token": "a" * (65 * 1024)}).encode(),
    }
    for name, body in hostile.items():
        server = start_server(clients={credentials.client_id: credentials.client_secret})
        server.fail("raw", body=body)
        credential(cluster, name, server, credentials)
    # An absurd lifetime is capped at a year, not a crash.
    capped = start_server(clients={credentials.client_id: credentials.client_secret})
    capped.fail("raw", body=b'{"access_token": "tok-abcdefgh", "expires_in": 1e15}')
    credential(cluster, "year", capped, credentials)
    # And an ordinary credential beside them is served.
    plain = start_server(clients={credentials.client_id: credentials.client_secret})
    credential(cluster, "plain", plain, credentials)

    expected = {"nested": "NestedTooDeeply", "nan": "NotJSON", "huge-token": "AccessTokenTooLarge"}
    for name, reason in expected.items():
        cluster.wait_ready(name, "False", "TokenRequestFailed")
        failure = wait_for(lambda n=name: cluster.credential(n)["status"].get("lastFailure"), 30)
        assert (failure["kind"], failure["reason"]) == ("protocol", reason), failure
    assert str(MAX_JSON_DEPTH) in cluster.credential("nested")["status"]["lastFailure"]["message"]
    cluster.wait_ready("year", reason="TokenIssued")
    cluster.wait_ready("plain", reason="TokenIssued")
    status = cluster.credential("year")["status"]
    assert status["expiresAt"][:4] > status["lastRefreshTime"][:4]  # a year later, capped
    log = operator.log()
    for word in ("RecursionError", "OverflowError", "Traceback", "unexpected"):
        assert word not in log, word


def deep_managed_fields(obj: dict, depth: int) -> str:
    """`obj` as JSON with a managedFields entry whose fieldsV1 nests `depth` levels, which
    the API server stores for anyone allowed to update the object."""
    obj = {**obj, "metadata": dict(obj["metadata"])}
    obj["metadata"]["managedFields"] = [
        {
            "manager": "deep",
            "operation": "Update",
            "apiVersion": obj["apiVersion"],
            "fieldsType": "FieldsV1",
            "fieldsV1": "DEEP",
            "time": "2026-01-01T00:00:00Z",
        }
    ]
    return json.dumps(obj).replace('"DEEP"', '{"f:a":' * depth + "{}" + "}" * depth)


def test_deeply_nested_managed_fields_do_not_stop_the_operator(
    cluster, own_operator, token_endpoint, installed
):
    """Issue 8 item 1, beyond scopeObject: metadata.managedFields is the one place of any
    object where the API server keeps arbitrary nesting (up to Go's 10,000 levels)."""
    allow_deep_api_objects()  # this test's own client reads the deep credential too
    victim = token_endpoint.add_client()
    cluster.create_credential("deep", victim)
    cluster.source_secret("deep-source", {"x": "y"})
    for kind, name in (("oauth2credential", "deep"), ("secret", "deep-source")):
        current = json.loads(
            installed.kubectl("get", kind, name, "-n", cluster.ns, "-o", "json").stdout
        )
        installed.kubectl(
            "replace", "-n", cluster.ns, "-f", "-", input=deep_managed_fields(current, 9000)
        )
    operator = own_operator("--no-deny-private-networks")
    other = token_endpoint.add_client()
    cluster.create_credential("beside", other, secret_name="beside-client")
    cluster.wait_ready("beside", reason="TokenIssued")
    cluster.wait_ready("deep", reason="TokenIssued")
    assert operator.process.poll() is None, operator.log()[-3000:]
    assert "RecursionError" not in operator.log()


def test_cognito_invalid_client_to_json_names_the_form_content_type_first(
    cluster, own_operator, start_server, credentials
):
    """Issue 8 item 12: Cognito answers a JSON body with 401 {"error":"invalid_client"};
    status and the Warning event name contentType form first."""
    from servers.quirky import CognitoServer

    own_operator(*INSECURE_OPERATOR)
    server = start_server(
        CognitoServer,
        clients={credentials.client_id: credentials.client_secret},
        json_answer="invalid_client",
    )
    credential(cluster, "cognito", server, credentials, contentType="application/json")
    ready = cluster.wait_ready("cognito", "False", "TokenRequestFailed")
    first_hint = "Hint: set contentType: application/x-www-form-urlencoded"
    assert first_hint in ready["message"], ready["message"]
    failure = cluster.credential("cognito")["status"]["lastFailure"]
    assert (failure["httpStatus"], failure["error"]) == (401, "invalid_client")
    assert first_hint in failure["message"]
    events = wait_for(
        lambda: [e for e in cluster.events("cognito") if e["reason"] == "TokenRequestFailed"], 30
    )
    assert first_hint in events[0]["message"]


def test_a_deeply_nested_discovery_document_is_discovery_failed(
    cluster, own_operator, token_endpoint
):
    """A metadata document nested deeper than the operator's recursion limit once raised
    RecursionError past DiscoveryFailed (a traceback, and a retry every 30 s); now the
    depth is refused before parsing, with a clear condition."""
    operator = own_operator("--no-deny-private-networks")
    issuer = f"{token_endpoint.issuer}/deep"
    depth = 50_000  # over the 40,000 the operator allows API objects (cli.py)
    document = json.dumps({"issuer": issuer, "token_endpoint": token_endpoint.url})
    document = document[:-1] + f', "x": {"[" * depth}{"]" * depth}}}'
    token_endpoint.documents["/deep/.well-known/openid-configuration"] = document.encode()
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret(
        "nested-client", {"client_secret": client.secret}, allowed_urls=token_endpoint.url
    )
    spec = cluster.credential_spec(client, "nested-client", issuerURL=issuer)
    del spec["tokenURL"]
    cluster.create_credential_object("nested", spec)
    condition = cluster.wait_ready("nested", "False", reason="DiscoveryFailed")
    assert "nests deeper than" in condition["message"], condition
    assert not client.requests
    assert "RecursionError" not in operator.log() and "Traceback" not in operator.log()
