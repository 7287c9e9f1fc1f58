"""One credential never hurts another, and the operator never loops: short lifetimes,
slow endpoints, refused writes, other tools' metadata, deletions in progress.
Each test reproduces what issue 8 found against 0.1 on the real control plane."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_helpers import decode, wait_for
from operator_process import OPERATOR_USER
from token_endpoint import TokenEndpoint

from tokensync.kube import Kube, KubeError

pytestmark = pytest.mark.envtest


def _status_patches(installed: Any, namespace: str, name: str, since: float) -> int:
    return sum(
        1
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if e["verb"] == "patch"
        and (e.get("objectRef") or {}).get("subresource") == "status"
        and e["objectRef"].get("namespace") == namespace
        and e["objectRef"].get("name") == name
    )


def _requests_since(client: Any, since: float) -> int:
    return sum(1 for t in client.requests if t >= since)


def test_sub_second_lifetimes_obey_the_ten_second_floor(
    cluster, operator, token_endpoint, installed
):
    # 0.1: `expires_in: 0.001` made 356 token requests in 40 s and hundreds of status
    # patches (the second-precision timestamps turned the lifetime into zero).
    client = token_endpoint.add_client(expires_in=0.001)
    since = time.time()
    cluster.create_credential("blink", client)
    wait_for(lambda: client.issued, 20, "first token")
    first = client.requests[0]
    time.sleep(25)
    made = _requests_since(client, first)
    assert made <= 4, f"{made} token requests in 25 s"  # first, +10 s, +20 s (and slack)
    patches = _status_patches(installed, cluster.ns, "blink", since)
    assert patches <= 4 * made + 2, f"{patches} status patches for {made} requests"
    warnings = (cluster.credential("blink").get("status") or {}).get("warnings") or []
    assert any("30 s" in w for w in warnings), warnings


def test_a_slow_endpoint_does_not_delay_other_namespaces(
    cluster, operator, token_endpoint, ca, installed, control_plane
):
    # 0.1: 70 credentials whose endpoint answers after 100 s delayed an unrelated
    # namespace's first token by 91 s (one shared 64-thread pool).
    slow = TokenEndpoint(ca, host="localhost")
    other_ns = control_plane.create_namespace("unrelated")
    try:
        sources = {"name": "slow-client", "allowed": slow.url.split("/oauth2")[0] + "/"}
        for i in range(70):
            client = slow.add_client(delay=100)
            cluster.source_secret(
                f"slow-client-{i}",
                {"client_secret": client.secret},
                allowed_urls=sources["allowed"],
            )
            cluster.create_credential_object(
                f"slow-{i}",
                {
                    **cluster.credential_spec(client, f"slow-client-{i}"),
                    "tokenURL": slow.url,
                    "timeoutSeconds": 120,
                },
            )
        wait_for(lambda: len(slow.all_requests()) >= 8, 30, "slow requests in flight")
        time.sleep(2)  # let every slow credential reach its request
        assert len(slow.all_requests()) <= 8  # --max-requests-per-host (default 8)

        other = cluster.for_namespace(other_ns)
        client = token_endpoint.add_client(lifetime=3600)
        started = time.monotonic()
        other.create_credential("unrelated", client)
        other.wait_ready("unrelated", reason="TokenIssued", timeout=10)
        assert time.monotonic() - started < 10
    finally:
        control_plane.delete_namespace(other_ns)
        slow.close()


def _deny_secret_writes(installed: Any, name: str, credential: str, operations: list[str]) -> None:
    """A real ValidatingAdmissionPolicy that refuses writes of one managed Secret."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": operations,
                        "resources": ["secrets"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.metadata.labels) || object.metadata.labels"
                    f"[?'tokensync.dev/credential'].orValue('') != '{credential}'",
                    "message": "writes of this Secret are frozen by policy",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    installed.kubectl("apply", "-f", "-", input=_yaml([policy, binding]))


def _yaml(objects: list[dict[str, Any]]) -> str:
    import json

    return "\n---\n".join(json.dumps(o) for o in objects)


def test_a_refused_secret_write_keeps_the_token_and_retries_only_the_write(
    cluster, operator, token_endpoint, installed
):
    # 0.1: a write denied by admission made the worker request a new token every 10 s,
    # with Ready stuck at Pending.
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("frozen", client)
    cluster.wait_ready("frozen", reason="TokenIssued")
    first_token = decode(cluster.secret("frozen"))["access_token"]
    policy = f"deny-{cluster.ns}"
    _deny_secret_writes(installed, policy, "frozen", ["UPDATE"])
    try:
        time.sleep(2)  # policies take effect asynchronously
        requested = len(client.requests)
        cluster.patch_credential(
            "frozen",
            {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "now-1"}}},
        )

        def refreshing_failed() -> dict[str, Any] | None:
            c = cluster.condition("frozen", "Refreshing")
            return c if c and c["reason"] == "SecretWriteFailed" else None

        condition = wait_for(refreshing_failed, 30, "Refreshing=False SecretWriteFailed")
        assert "frozen by policy" in condition["message"]
        ready = cluster.condition("frozen")
        assert ready["status"] == "True"  # the Secret still holds a valid token
        assert decode(cluster.secret("frozen"))["access_token"] == first_token
        events = [e["reason"] for e in cluster.events("frozen")]
        assert "SecretWriteFailed" in events
        time.sleep(15)
        assert len(client.requests) == requested + 1  # one token, only the write retried
    finally:
        installed.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy
        )
    fetched = client.issued[-1].token
    wait_for(
        lambda: decode(cluster.secret("frozen"))["access_token"] == fetched, 90, "write retried"
    )
    assert len(client.requests) == requested + 1
    cluster.wait_ready("frozen", reason="TokenIssued")
    assert cluster.condition("frozen", "Refreshing") is None


def test_a_quota_that_refuses_the_secret_is_reported_without_a_request_loop(
    cluster, operator, token_endpoint, installed
):
    used = len(cluster.core.list_namespaced_secret(cluster.ns).items)
    cluster.core.create_namespaced_resource_quota(
        cluster.ns,
        {"metadata": {"name": "secrets"}, "spec": {"hard": {"secrets": str(used + 1)}}},
    )
    wait_for(
        lambda: cluster.core.read_namespaced_resource_quota("secrets", cluster.ns).status.hard,
        30,
        "quota status",
    )
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("over-quota", client)  # its client Secret takes the last slot
    ready = cluster.wait_ready("over-quota", "False", "SecretWriteFailed", timeout=30)
    assert "quota" in ready["message"]
    requested = len(client.requests)
    time.sleep(12)
    assert len(client.requests) == requested == 1


def test_an_over_long_refresh_request_is_ignored_not_looped(
    cluster, operator, token_endpoint, installed
):
    # 0.1: a refresh-requested-at value the status schema refuses made every status
    # patch fail, and the worker requested a token every 10 s.
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("long-request", client)
    cluster.wait_ready("long-request", reason="TokenIssued")
    since = time.time()
    cluster.patch_credential(
        "long-request",
        {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "x" * 300}}},
    )
    time.sleep(12)
    assert len(client.requests) == 1
    assert _status_patches(installed, cluster.ns, "long-request", since) <= 1


def test_renewals_keep_what_other_tools_add_to_the_managed_secret(
    cluster, operator, token_endpoint
):
    client = token_endpoint.add_client(lifetime=20)  # renewed every ~10 s
    cluster.create_credential("shared", client, secret={"labels": {"app": "shop"}})
    cluster.wait_ready("shared", reason="TokenIssued")
    cluster.core.patch_namespaced_secret(
        "shared",
        cluster.ns,
        {
            "metadata": {
                "labels": {"reloader.example/watch": "true"},
                "annotations": {"argocd.argoproj.io/compare-options": "IgnoreExtraneous"},
                "finalizers": ["backup.example/keep"],
            }
        },
    )
    try:
        issued = len(client.issued)
        wait_for(lambda: len(client.issued) >= issued + 3, 60, "three renewals")
        wait_for(
            lambda: decode(cluster.secret("shared"))["access_token"] == client.issued[-1].token,
            15,
            "the last renewal written",
        )
        meta = cluster.secret("shared")["metadata"]
        assert meta["labels"]["reloader.example/watch"] == "true"
        assert meta["labels"]["app"] == "shop"
        assert meta["annotations"]["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
        assert meta["finalizers"] == ["backup.example/keep"]
        # A label removed from the spec is removed from the Secret; others' stay.
        cluster.patch_credential("shared", {"spec": {"secret": {"labels": None}}})
        wait_for(
            lambda: "app" not in (cluster.secret("shared")["metadata"].get("labels") or {}),
            30,
            "spec label removed",
        )
        assert cluster.secret("shared")["metadata"]["labels"]["reloader.example/watch"] == "true"
    finally:
        cluster.core.patch_namespaced_secret(
            "shared", cluster.ns, {"metadata": {"finalizers": None}}
        )


def test_a_credential_being_deleted_gets_no_new_secret(cluster, operator, token_endpoint):
    # 0.1: with a deletionTimestamp (foreground deletion, a GitOps prune waiting on a
    # finalizer) the worker re-created the collected Secret.
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("leaving", client)
    cluster.wait_ready("leaving", reason="TokenIssued")
    cluster.patch_credential("leaving", {"metadata": {"finalizers": ["test.example/hold"]}})
    cluster.delete_credential("leaving")
    wait_for(
        lambda: cluster.credential("leaving")["metadata"].get("deletionTimestamp"), 10, "deleting"
    )
    cluster.core.delete_namespaced_secret("leaving", cluster.ns)
    time.sleep(12)
    try:
        assert cluster.secret("leaving") is None
        assert len(client.requests) == 1
    finally:
        cluster.patch_credential("leaving", {"metadata": {"finalizers": None}})


def test_renaming_the_secret_reports_the_new_one_before_deleting_the_old(
    cluster, operator, token_endpoint, installed
):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("renamed", client)
    cluster.wait_ready("renamed", reason="TokenIssued")
    since = time.time()
    cluster.patch_credential("renamed", {"spec": {"secret": {"name": "renamed-v2"}}})
    wait_for(lambda: cluster.secret("renamed") is None, 30, "old Secret deleted")
    assert cluster.credential("renamed")["status"]["secretName"] == "renamed-v2"
    calls = [
        (e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name"))
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if (e.get("objectRef") or {}).get("namespace") == cluster.ns
        and e["verb"] in ("create", "patch", "delete")
        and e.get("stage") == "ResponseComplete"
        and (e.get("responseStatus") or {}).get("code", 500) < 300
    ]
    create = next(i for i, c in enumerate(calls) if c[:2] == ("create", "secrets"))
    delete = calls.index(("delete", "secrets", "renamed"))
    # status names the new Secret (a patch after its create) before the old one goes
    assert ("patch", "oauth2credentials", "renamed") in calls[create:delete], calls


def test_a_routine_renewal_costs_two_writes_and_no_reads(
    cluster, operator, token_endpoint, installed
):
    client = token_endpoint.add_client(lifetime=20)
    cluster.create_credential("frugal", client)
    cluster.wait_ready("frugal", reason="TokenIssued")
    time.sleep(1)
    since = time.time()
    issued = len(client.issued)
    wait_for(lambda: len(client.issued) >= issued + 2, 40, "two renewals")
    time.sleep(2)
    calls = [
        e
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if (e.get("objectRef") or {}).get("namespace") == cluster.ns
        and e["verb"] not in ("watch", "list")
        and e.get("stage") == "ResponseComplete"
    ]
    writes = [e for e in calls if e["verb"] in ("patch", "create", "update")]
    reads = [e for e in calls if e["verb"] == "get"]
    renewals = len(client.issued) - issued
    assert reads == [], [e["requestURI"] for e in reads]
    assert len(writes) <= 2 * renewals + 1, [(e["verb"], e["requestURI"]) for e in writes]


def test_a_creation_costs_one_secret_create_and_two_status_writes(
    cluster, operator, token_endpoint, installed
):
    # bench/refresh_at_scale.py counts a credential's first two status writes (Pending,
    # then the first TokenIssued) and its Secret's create as its creation's writes.
    client = token_endpoint.add_client(lifetime=3600)
    since = time.time() - 1
    cluster.create_credential("newborn", client)
    cluster.wait_ready("newborn", reason="TokenIssued")
    time.sleep(2)
    writes = [
        (e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("subresource"))
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if (e.get("objectRef") or {}).get("namespace") == cluster.ns
        and (e.get("objectRef") or {}).get("name") == "newborn"
        and e["verb"] in ("create", "patch", "update")
        and e.get("stage") == "ResponseComplete"
    ]
    assert sorted(writes) == [
        ("create", "secrets", None),
        ("patch", "oauth2credentials", "status"),
        ("patch", "oauth2credentials", "status"),
    ], writes
    assert len(client.issued) == 1


def test_no_secret_write_reaches_a_re_created_credential_of_the_same_name(
    cluster, operator, token_endpoint
):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("phoenix", client)
    cluster.wait_ready("phoenix", reason="TokenIssued")
    old_uid = cluster.credential("phoenix")["metadata"]["uid"]
    cluster.delete_credential("phoenix")
    wait_for(lambda: _gone(cluster, "phoenix"), 20, "deleted")
    wait_for(lambda: cluster.secret("phoenix") is None, 90, "old Secret collected")
    cluster.create_credential("phoenix", client, source=False)
    cluster.wait_ready("phoenix", reason="TokenIssued")
    credential = cluster.credential("phoenix")
    assert credential["metadata"]["uid"] != old_uid
    owner = cluster.secret("phoenix")["metadata"]["ownerReferences"][0]["uid"]
    assert owner == credential["metadata"]["uid"]
    # What an orphan worker of the old object would send: refused by the UID precondition.
    kube = Kube(cluster.core.api_client.configuration)
    with pytest.raises(KubeError) as refused:
        kube.patch_credential_status(cluster.ns, "phoenix", old_uid, {"secretName": "x"})
    assert refused.value.status == 422, refused.value
    assert cluster.credential("phoenix")["status"]["secretName"] == "phoenix"


def _gone(cluster: Any, name: str) -> bool:
    try:
        cluster.credential(name)
    except ApiException as error:
        return error.status == 404
    return False


def test_a_credential_deleted_during_a_watch_gap_stops_its_worker(
    cluster, own_operator, token_endpoint, installed
):
    # 0.1: kopf reports no DELETED for a credential deleted while its watch was down; the
    # orphan worker kept requesting tokens and re-creating the collected Secret every 10 s.
    operator = own_operator("--no-deny-private-networks")
    client = token_endpoint.add_client(lifetime=20)  # renewals every ~10 s
    cluster.create_credential("ghost", client)
    cluster.wait_ready("ghost", reason="TokenIssued")

    def delete_behind_the_watch() -> None:
        assert installed.etcd_delete("tokensync.dev/oauth2credentials", cluster.ns, "ghost")
        installed.compact()  # the watch's resourceVersion is gone too: 410, re-list

    installed.restart_apiserver(while_down=delete_behind_the_watch)
    # The garbage collector removes the orphaned Secret; nothing may bring it back.
    wait_for(lambda: cluster.secret("ghost") is None, 90, "the Secret collected")
    requests = len(client.requests)
    time.sleep(25)
    assert cluster.secret("ghost") is None
    assert len(client.requests) == requests, "the orphan worker kept requesting tokens"
    assert operator.process.poll() is None
    assert "Traceback" not in operator.log()


class _PlainTokenEndpoint(ThreadingHTTPServer):
    """A plain-http token endpoint that keeps every request it got (headers and body)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                scheme, _, basic = (self.headers.get("Authorization") or "").partition(" ")
                decoded = base64.b64decode(basic) if scheme.lower() == "basic" else b""
                outer.received.append(bytes(self.headers) + body + decoded)
                answer = json.dumps(
                    {
                        "access_token": secrets.token_urlsafe(16),
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"


def test_an_http_endpoint_one_tenant_allowed_is_not_used_for_another(
    cluster, own_operator, token_endpoint
):
    """Tenant A sets allowInsecureHTTP on an issuer whose document names an http://
    token endpoint; the operator caches that document. Tenant B names the same issuer
    without the opt-in: its client secret must not go to the http endpoint in clear text
    (before the fix it did, from A's cache entry), and B says why."""
    plain = _PlainTokenEndpoint()
    try:
        own_operator("--allow-insecure", "--no-deny-private-networks")
        issuer = f"{token_endpoint.issuer}/shared"
        token_endpoint.documents["/shared/.well-known/openid-configuration"] = json.dumps(
            {"issuer": issuer, "token_endpoint": plain.url}
        ).encode()
        tenants = {}
        for name, insecure in (("tenant-a", True), ("tenant-b", False)):
            client = token_endpoint.add_client(lifetime=3600)
            tenants[name] = client
            # Both sources allow the http endpoint: only B's missing opt-in protects it.
            cluster.source_secret(
                f"{name}-client", {"client_secret": client.secret}, allowed_urls=plain.url
            )
            spec = cluster.credential_spec(client, f"{name}-client", issuerURL=issuer)
            del spec["tokenURL"]
            if insecure:
                spec["allowInsecureHTTP"] = True
            cluster.create_credential_object(name, spec)
            if insecure:
                cluster.wait_ready(name, reason="TokenIssued")
        condition = cluster.wait_ready("tenant-b", "False", reason="DiscoveryFailed")
        assert "allowInsecureHTTP" in condition["message"], condition
        seen = b"".join(plain.received)
        assert tenants["tenant-a"].client_id.encode() in seen  # A's own choice
        assert tenants["tenant-b"].client_id.encode() not in seen
        assert tenants["tenant-b"].secret.encode() not in seen
    finally:
        plain.shutdown()
        plain.server_close()
