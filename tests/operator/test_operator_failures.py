"""Every input can be wrong: each failure gets a clear reason, recovers once fixed without
a restart, and never costs a still-valid token."""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest
from operator_helpers import decode, wait_for
from operator_process import OPERATOR_USER, find_secrets

pytestmark = pytest.mark.envtest


def test_unlabelled_source_is_never_read(cluster, operator, token_endpoint, installed):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret("plain", {"client_secret": client.secret}, labelled=False)
    since = time.time()
    cluster.create_credential("unlabelled", client, secret_name="plain", source=False)

    ready = cluster.wait_ready("unlabelled", "False", "ReferenceNotLabeled")
    assert "tokensync.dev/credential-source=true" in ready["message"]
    assert client.requests == []
    touching = [
        e
        for e in installed.audit_events(user=OPERATOR_USER, since=since - 1)
        if (e.get("objectRef") or {}).get("resource") == "secrets"
        and (e["objectRef"].get("name") == "plain" or not e["objectRef"].get("name"))
    ]
    for event in touching:
        uri = unquote(event["requestURI"])
        if event["objectRef"].get("name") == "plain":
            assert "(metadata-only)" in event["userAgent"], event  # never its data
        elif "labelSelector=tokensync.dev/credential-source=true" not in uri:
            # Lists and watches of Secrets see sources (labelled) or, metadata only,
            # managed Secrets.
            assert "labelSelector=tokensync.dev/credential&" in uri + "&", event
            assert "(metadata-only)" in event["userAgent"], event
    assert any(e["objectRef"].get("name") == "plain" for e in touching)

    cluster.core.patch_namespaced_secret(
        "plain",
        cluster.ns,
        {
            "metadata": {
                "labels": {"tokensync.dev/credential-source": "true"},
                "annotations": {"tokensync.dev/allowed-token-urls": token_endpoint.url},
            }
        },
    )
    cluster.wait_ready("unlabelled", reason="TokenIssued")


def test_source_bound_to_other_urls_is_not_sent(cluster, operator, token_endpoint):
    client = token_endpoint.add_client()
    cluster.source_secret(
        "bound",
        {"client_secret": client.secret},
        allowed_urls="https://login.example.com/",
    )
    cluster.create_credential("elsewhere", client, secret_name="bound", source=False)
    ready = cluster.wait_ready("elsewhere", "False", "TokenURLNotAllowed")
    assert "allowed-token-urls" in ready["message"]
    time.sleep(1)
    assert client.requests == []


def test_wrong_secret_fails_clearly_and_recovers(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    wrong = "sec-wrong-" + client.secret[::-1]
    client.all_secrets.append(wrong)  # the redaction checks look for it too
    cluster.source_secret("client", {"client_secret": wrong}, allowed_urls=token_endpoint.url)
    cluster.create_credential("wrong", client, source=False)

    ready = cluster.wait_ready("wrong", "False", "TokenRequestFailed")
    status = cluster.credential("wrong")["status"]
    assert status["lastFailure"]["httpStatus"] == 401
    assert status["lastFailure"]["error"] == "invalid_client"
    assert status["consecutiveFailures"] >= 1
    refreshing = cluster.condition("wrong", "Refreshing")
    assert refreshing["status"] == "False" and refreshing["reason"] == "TokenRequestFailed"
    assert "401" in ready["message"]
    events = wait_for(lambda: cluster.events("wrong"), what="a Warning event")
    assert any(e["type"] == "Warning" and e["reason"] == "TokenRequestFailed" for e in events)
    # The endpoint echoed the wrong secret in error_description: none of it is repeated.
    published = repr(cluster.credential("wrong")) + repr(events)
    assert find_secrets(published, token_endpoint) == []

    cluster.source_secret("client", {"client_secret": client.secret})
    cluster.wait_ready("wrong", reason="TokenIssued", timeout=30)
    assert cluster.condition("wrong", "Refreshing") is None
    assert cluster.credential("wrong")["status"]["consecutiveFailures"] == 0


def test_missing_secret_and_key_then_fixed(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("later", client, secret_name="not-yet", source=False)
    ready = cluster.wait_ready("later", "False", "ReferenceNotFound")
    assert "not-yet" in ready["message"]

    cluster.source_secret("not-yet", {"other": "x"}, allowed_urls=token_endpoint.url)
    ready = cluster.wait_ready("later", "False", "ReferenceKeyMissing")
    assert "client_secret" in ready["message"]

    cluster.source_secret("not-yet", {"client_secret": client.secret})
    cluster.wait_ready("later", reason="TokenIssued")


def test_unreachable_url_then_fixed(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("nowhere", client, tokenURL="https://127.0.0.1:9/oauth2/token")
    # The source is bound to the real endpoint, so first the binding speaks...
    cluster.wait_ready("nowhere", "False", "TokenURLNotAllowed")
    cluster.core.patch_namespaced_secret(
        "client",
        cluster.ns,
        {
            "metadata": {
                "annotations": {
                    "tokensync.dev/allowed-token-urls": f"https://127.0.0.1:9/,{token_endpoint.url}"
                }
            }
        },
    )
    ready = cluster.wait_ready("nowhere", "False", "TokenRequestFailed")
    assert "127.0.0.1:9" in ready["message"]
    cluster.patch_credential("nowhere", {"spec": {"tokenURL": token_endpoint.url}})
    cluster.wait_ready("nowhere", reason="TokenIssued", timeout=30)


def test_endpoint_outage_keeps_valid_token_then_expires(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=20)
    cluster.create_credential("outage", client, refresh={"renewBefore": "15s"})
    cluster.wait_ready("outage", reason="TokenIssued")
    held = decode(cluster.secret("outage"))["access_token"]
    token_endpoint.fail(client, 500)

    # The refresh (5 s after issue) fails: token stays, Ready stays True.
    refreshing = wait_for(
        lambda: (c := cluster.condition("outage", "Refreshing")) and c["status"] == "False" and c,
        timeout=20,
        what="Refreshing=False",
    )
    assert refreshing["reason"] == "TokenRequestFailed"
    assert cluster.condition("outage")["status"] == "True"
    assert decode(cluster.secret("outage"))["access_token"] == held

    # 429 with Retry-After: the next attempts wait at least that long.
    token_endpoint.fail(client, 429, retry_after=4)
    count = len(client.requests)
    wait_for(lambda: len(client.requests) >= count + 3, timeout=30, what="three more attempts")
    after_429 = client.requests[count + 1 : count + 3]
    assert after_429[1] - after_429[0] >= 3.5

    token_endpoint.heal(client)
    wait_for(
        lambda: decode(cluster.secret("outage"))["access_token"] != held,
        timeout=20,
        what="a new token after the outage",
    )
    cluster.wait_ready("outage", reason="TokenIssued")
    wait_for(lambda: cluster.condition("outage", "Refreshing") is None, what="Refreshing gone")

    # Down past expiry: TokenExpired, and the (expired) token is still not removed.
    token_endpoint.fail(client, 503)
    last = decode(cluster.secret("outage"))["access_token"]
    cluster.wait_ready("outage", "False", "TokenExpired", timeout=40)
    assert decode(cluster.secret("outage"))["access_token"] == last


def test_foreign_secrets_are_never_touched(cluster, operator, token_endpoint):
    cluster.core.create_namespaced_secret(
        cluster.ns, {"metadata": {"name": "taken"}, "stringData": {"mine": "data"}}
    )
    before = cluster.secret("taken")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("intruder", client, secret={"name": "taken"})
    ready = cluster.wait_ready("intruder", "False", "SecretConflict")
    assert "taken" in ready["message"]

    cluster.create_credential("owner", client, source=False, secret={"name": "owned"})
    cluster.wait_ready("owner", reason="TokenIssued")
    owned_before = cluster.secret("owned")
    cluster.create_credential("second", client, source=False, secret={"name": "owned"})
    cluster.wait_ready("second", "False", "SecretConflict")

    assert (
        cluster.secret("taken")["metadata"]["resourceVersion"]
        == (before["metadata"]["resourceVersion"])
    )
    after = cluster.secret("owned")
    assert after["data"] == owned_before["data"]
    assert after["metadata"]["ownerReferences"] == owned_before["metadata"]["ownerReferences"]


def test_suspend_stops_refreshing_and_keeps_the_token(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("paused", client)
    cluster.wait_ready("paused", reason="TokenIssued")
    cluster.patch_credential("paused", {"spec": {"suspend": True}})
    ready = cluster.wait_ready("paused", "False", "Suspended")
    assert "stays until" in ready["message"]
    assert decode(cluster.secret("paused"))["access_token"] == client.issued[-1].token
    cluster.patch_credential("paused", {"spec": {"suspend": False}})
    cluster.wait_ready("paused", reason="TokenIssued")


def test_private_network_guard_refuses_loopback(cluster, own_operator, token_endpoint):
    own_operator()  # default flags: the guard is on
    client = token_endpoint.add_client()
    cluster.create_credential("loopback", client)
    ready = cluster.wait_ready("loopback", "False", "TokenURLNotAllowed")
    assert "127.0.0.1" in ready["message"] or "loopback" in ready["message"].lower()
    assert client.requests == []  # refused after connect, before any byte of the request


def test_deny_cidrs_flag_refuses_with_the_guard_off(cluster, own_operator, token_endpoint):
    own_operator("--no-deny-private-networks", "--deny-cidrs=10.0.0.0/8,127.0.0.0/8")
    client = token_endpoint.add_client()
    cluster.create_credential("denied-cidr", client)
    ready = cluster.wait_ready("denied-cidr", "False", "TokenURLNotAllowed")
    assert "127.0.0.1" in ready["message"] and "--deny-cidrs" in ready["message"]
    assert client.requests == []


def test_allowed_token_hosts_flag(cluster, own_operator, token_endpoint):
    own_operator("--no-deny-private-networks", "--allowed-token-hosts=*.example.com")
    client = token_endpoint.add_client()
    cluster.create_credential("offlist", client)
    ready = cluster.wait_ready("offlist", "False", "TokenURLNotAllowed")
    assert "--allowed-token-hosts" in ready["message"]
    assert client.requests == []


def test_metrics_report_requests_and_expiry(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("measured", client)
    cluster.wait_ready("measured", reason="TokenIssued")
    text = operator.metrics()
    assert 'tokensync_token_requests_total{result="success"}' in text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("tokensync_token_expiry_seconds")
        and f'namespace="{cluster.ns}"' in line
        and 'name="measured"' in line
    )
    assert 3000 < float(line.rsplit(" ", 1)[1]) <= 3600
    assert 'tokensync_credentials{reason="TokenIssued"}' in text
    assert "tokensync_token_request_duration_seconds_bucket" in text


def test_kopf_leaves_no_state_on_credentials(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("clean", client)
    cluster.wait_ready("clean", reason="TokenIssued")
    credential = cluster.credential("clean")
    annotations = credential["metadata"].get("annotations") or {}
    assert not [k for k in annotations if "kopf" in k], annotations
    assert "kopf" not in credential.get("status", {})
    assert not credential["metadata"].get("finalizers")
    assert find_secrets(repr(credential), token_endpoint) == []


def test_two_hundred_credentials_at_once(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret(
        "client", {"client_secret": client.secret}, allowed_urls=token_endpoint.url
    )
    started = time.monotonic()
    for index in range(200):
        cluster.create_credential(f"bulk-{index}", client, source=False)

    def all_ready():
        items = cluster.custom.list_namespaced_custom_object(
            "tokensync.dev", "v1alpha1", cluster.ns, "oauth2credentials"
        )["items"]
        ready = [
            i
            for i in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (i.get("status") or {}).get("conditions", [])
            )
        ]
        return len(ready) == 200

    wait_for(all_ready, timeout=180, what="200 credentials Ready")
    elapsed = time.monotonic() - started
    print(f"\n200 credentials: all Ready {elapsed:.1f}s after the first create")
    assert len(client.issued) == 200
