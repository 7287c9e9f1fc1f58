"""The core loop never drops a credential silently (issue 17), end to end: the real
operator against the real control plane and real HTTPS token endpoints. Each test
reproduces one of the issue's numbered findings on 316f0c8."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from operator_helpers import wait_for
from operator_process import OPERATOR_USER
from token_endpoint import TokenEndpoint

pytestmark = pytest.mark.envtest


def _ready(cluster: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    status = cluster.credential(name).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return status, ready


def _late(status: dict[str, Any]) -> float:
    """Seconds since status.expiresAt (negative: still valid)."""
    expires = datetime.fromisoformat(status["expiresAt"].replace("Z", "+00:00"))
    return (datetime.now(UTC) - expires).total_seconds()


# --- 1: Ready=True never outlives the token ------------------------------------------------


def test_ready_is_taken_away_when_the_renewal_hangs_past_expiry(cluster, operator, token_endpoint):
    """316f0c8: a renewal stuck behind a slow answer kept Ready=True "holds a token valid
    until <a time already past>" for as long as the request took."""
    client = token_endpoint.add_client(lifetime=20)
    cluster.create_credential("hangs", client, timeoutSeconds=120)
    cluster.wait_ready("hangs", reason="TokenIssued")
    client.delay = 90  # the renewal is sent, and answered long after the token expired
    seen_expired = False
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        status, ready = _ready(cluster, "hangs")
        if ready.get("status") == "True":
            assert _late(status) <= 5, f"Ready=True {_late(status):.0f}s after expiry: {ready}"
        elif ready.get("reason") == "TokenExpired":
            seen_expired = True
            break
        time.sleep(0.5)
    assert seen_expired, f"no TokenExpired within 40 s: {_ready(cluster, 'hangs')[1]}"
    assert len(client.requests) == 2  # the first token and the hanging renewal only
    client.delay = 0
    cluster.delete_credential("hangs")


def test_ready_is_taken_away_while_a_restarted_operator_still_lists(
    cluster, own_operator, token_endpoint
):
    """A token that expires while a restarted operator still lists its sources and
    managed Secrets (tens of seconds on a large cluster) loses Ready within 5 s, not
    after the list: each worker arms its expiry timer before it waits for the list.
    Before, Ready=True stayed over the expired token until the list was done."""
    client = token_endpoint.add_client(lifetime=15)
    first = own_operator("--no-deny-private-networks")
    cluster.create_credential("restarted", client)
    cluster.wait_ready("restarted", reason="TokenIssued")
    first.stop()  # before the renewal, due 10 s after issue
    slow_list = {"TOKENSYNC_TEST_SOURCE_LIST_DELAY": "40"}
    started: dict[str, Any] = {}
    slow = threading.Thread(
        target=lambda: started.update(op=own_operator("--no-deny-private-networks", env=slow_list)),
        daemon=True,
    )
    slow.start()
    try:
        deadline = time.monotonic() + 30
        while (ready := _ready(cluster, "restarted"))[1].get("reason") != "TokenExpired":
            status, condition = ready
            assert condition.get("status") == "True", condition
            assert _late(status) <= 5, f"Ready=True {_late(status):.0f}s after expiry"
            assert time.monotonic() < deadline, "no TokenExpired within 30 s"
            time.sleep(0.5)
        assert slow.is_alive(), "the list was done before the token expired: nothing proven"
        assert len(client.requests) == 1
    finally:
        slow.join(timeout=70)
    assert "listed in 40" in started["op"].log()
    cluster.wait_ready("restarted", reason="TokenIssued", timeout=30)  # once listed
    cluster.delete_credential("restarted")


def _status_names_an_older_token(cluster: Any, name: str, expires_at: str) -> None:
    """What a stopped operator leaves when a Secret's write went out and its status's did
    not: status's expiresAt is the previous token's."""
    cluster.custom.patch_namespaced_custom_object_status(
        "tokensync.dev",
        "v1alpha1",
        cluster.ns,
        "oauth2credentials",
        name,
        {"status": {"expiresAt": expires_at}},
    )


def test_a_restarted_operator_does_not_call_a_status_that_lagged_its_secret_expired(
    cluster, own_operator, token_endpoint
):
    """A saturated operator writes a token's Secret a minute before its status; stopped
    in between, it leaves a status whose expiresAt names the previous token. Its
    successor's expiry timers fire at once for those, and used to write Ready=False
    TokenExpired over the valid token the pods read (7,755 of 10,000 credentials in the
    saturated run of 2026-12-07), then Ready=True again: two writes and a false alarm
    each. Now the timer looks at the Secret first (the managed Secrets are listed before
    the sources, here 10 s later) and the first pass writes the Secret's expiry."""
    client = token_endpoint.add_client(lifetime=300)
    first = own_operator("--no-deny-private-networks")
    cluster.create_credential("lagged", client)
    cluster.wait_ready("lagged", reason="TokenIssued")
    first.stop()
    in_secret = cluster.secret("lagged")["metadata"]["annotations"]["tokensync.dev/expires-at"]
    # The status of the token before this one, as the stopped operator left it.
    previous = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30))
    _status_names_an_older_token(cluster, "lagged", previous)
    assert _ready(cluster, "lagged")[1]["status"] == "True"
    slow_list = {"TOKENSYNC_TEST_SOURCE_LIST_DELAY": "10"}
    starting = threading.Thread(
        target=lambda: own_operator("--no-deny-private-networks", env=slow_list), daemon=True
    )
    starting.start()
    polls = 0
    deadline = time.monotonic() + 40
    try:
        while (status := _ready(cluster, "lagged"))[0]["expiresAt"] != in_secret:
            assert status[1]["status"] == "True", (
                f"{status[1]} over a token valid until {in_secret}"
            )
            assert time.monotonic() < deadline, f"status not caught up in 40 s: {status[0]}"
            polls += 1
            time.sleep(0.2)
    finally:
        starting.join(timeout=60)
    assert polls > 25, "caught up before the operator was looked at: nothing proven"
    assert _ready(cluster, "lagged")[1]["reason"] == "TokenIssued"
    assert len(client.requests) == 1  # the token in the Secret serves on
    cluster.delete_credential("lagged")


def test_a_slow_renewal_after_a_restart_over_a_lagging_status_names_the_held_token(
    cluster, own_operator, token_endpoint
):
    """As above, and a renewal is due at the restart on an endpoint that answers after
    20 s: the Refreshing=True report kept Ready=True over the past expiresAt the stopped
    operator left, until the new token was written (878f4b8). It now names the token in
    the Secret, which the pods read."""
    client = token_endpoint.add_client(lifetime=300)
    first = own_operator("--no-deny-private-networks")
    cluster.create_credential("lagged-slow", client)
    cluster.wait_ready("lagged-slow", reason="TokenIssued")
    first.stop()
    annotations = cluster.secret("lagged-slow")["metadata"]["annotations"]
    in_secret = annotations["tokensync.dev/expires-at"]
    previous = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30))
    _status_names_an_older_token(cluster, "lagged-slow", previous)
    client.delay = 20
    cluster.patch_credential(
        "lagged-slow",
        {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "restart"}}},
    )
    own_operator("--no-deny-private-networks")

    def refreshing() -> dict[str, Any] | None:
        status = cluster.credential("lagged-slow").get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        if conditions.get("Refreshing", {}).get("status") == "True":
            return status
        return None

    status = wait_for(refreshing, 15, "the slow renewal's Refreshing=True report")
    assert len(client.issued) == 1, "the renewal was answered: nothing proven"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], status["expiresAt"]) == ("True", in_secret), (
        f"{ready} with expiresAt {status['expiresAt']} over a token valid until {in_secret}"
    )
    assert ready["message"].endswith(f"valid until {in_secret}")
    client.delay = 0
    wait_for(lambda: len(client.issued) == 2, 40, "the renewal")
    cluster.delete_credential("lagged-slow")


def test_a_slow_host_does_not_delay_another_tenants_renewals(
    cluster, operator, token_endpoint, ca, control_plane
):
    """316f0c8: a credential with 20 s tokens renewed once in 50 s while 70 credentials
    of another namespace waited on a host that answers after 60 s: its discovery
    (`issuerURL`) ran on the shared token threads without a slot, so 64 waiting
    discoveries held every thread, renewals included."""
    slow = TokenEndpoint(ca, host="localhost")
    slow.discovery_delay = 60
    busy = cluster.for_namespace(control_plane.create_namespace("busy"))
    try:
        allowed = slow.url.split("/oauth2")[0] + "/"
        for i in range(70):
            client = slow.add_client(delay=60)
            busy.source_secret(
                f"slow-client-{i}", {"client_secret": client.secret}, allowed_urls=allowed
            )
            spec = busy.credential_spec(client, f"slow-client-{i}", timeoutSeconds=120)
            del spec["tokenURL"]
            busy.create_credential_object(f"slow-{i}", {**spec, "issuerURL": slow.issuer})
        wait_for(lambda: len(slow.discovery_requests) >= 1, 30, "slow discovery in flight")
        healthy = token_endpoint.add_client(lifetime=20)
        cluster.create_credential("renews", healthy)
        cluster.wait_ready("renews", reason="TokenIssued")
        started = time.monotonic()
        while time.monotonic() - started < 50:
            status, ready = _ready(cluster, "renews")
            if ready.get("status") == "True":
                assert _late(status) <= 5, f"Ready=True {_late(status):.0f}s after expiry"
            time.sleep(1)
        # 20 s tokens renewed at about two thirds of their life: three or four in 50 s.
        assert len(healthy.issued) >= 3, f"{len(healthy.issued)} tokens in 50 s"
        # One discovery for all 70 (coalesced), inside the host's slots.
        assert len(slow.discovery_requests) <= 2, len(slow.discovery_requests)
    finally:
        control_plane.delete_namespace(busy.ns)
        slow.close()


# --- 2: a periodic list never stops a live worker ------------------------------------------


def test_credentials_created_while_the_sweep_lists_keep_their_workers(
    cluster, own_operator, token_endpoint
):
    """316f0c8: the sweep stopped every worker missing from a list that was older than
    the events applied meanwhile; nothing restarted them and their tokens expired.
    Here the sweep runs every second and its list takes 3 s (fault injection), as the
    list of a large cluster during a bulk apply does."""
    operator = own_operator(
        "--no-deny-private-networks",
        env={"TOKENSYNC_TEST_CREDENTIAL_LIST_DELAY": "3", "TOKENSYNC_TEST_SWEEP_INTERVAL": "1"},
    )
    clients = {}
    for i in range(6):
        clients[f"bulk-{i}"] = client = token_endpoint.add_client(lifetime=20)
        cluster.create_credential(f"bulk-{i}", client, secret_name=f"client-{i}")
        time.sleep(1)

    def all_renewed() -> bool:
        return all(len(c.issued) >= 2 for c in clients.values())

    try:
        wait_for(all_renewed, 45, "every credential renewed")
    except AssertionError:
        counts = {name: len(c.issued) for name, c in clients.items()}
        raise AssertionError(f"tokens issued per credential: {counts}") from None
    assert "worker stopped" not in operator.log()


# --- 4: a conflict is found before any token request, and clears ---------------------------


def _foreign_secret(cluster: Any, name: str) -> None:
    cluster.core.create_namespaced_secret(
        cluster.ns, {"metadata": {"name": name}, "stringData": {"app": "not ours"}}
    )


def test_a_foreign_secret_is_reported_before_any_token_request_and_clears(
    cluster, operator, token_endpoint
):
    """316f0c8: the unlabelled Secret was invisible; the credential sent a token request,
    and when that failed reported TokenRequestFailed instead of SecretConflict. Once
    reported, the conflict never cleared after the user deleted the Secret."""
    client = token_endpoint.add_client()
    token_endpoint.fail(client, 500)
    _foreign_secret(cluster, "taken")
    cluster.create_credential("wants-taken", client, secret={"name": "taken"})
    ready = cluster.wait_ready("wants-taken", "False", reason="SecretConflict", timeout=20)
    assert "taken" in ready["message"]
    time.sleep(2)
    assert client.requests == [], "a token request was sent despite the conflict"
    assert cluster.secret("taken")["data"] == {"app": "bm90IG91cnM="}  # untouched

    token_endpoint.heal(client)
    deleted = time.monotonic()
    cluster.core.delete_namespaced_secret("taken", cluster.ns)
    cluster.wait_ready("wants-taken", reason="TokenIssued", timeout=65)
    assert time.monotonic() - deleted <= 62
    owners = cluster.secret("taken")["metadata"]["ownerReferences"]
    assert owners[0]["name"] == "wants-taken"


def test_a_refresh_request_rechecks_a_conflict_at_once(cluster, operator, token_endpoint):
    client = token_endpoint.add_client()
    _foreign_secret(cluster, "held")
    cluster.create_credential("wants-held", client, secret={"name": "held"})
    cluster.wait_ready("wants-held", "False", reason="SecretConflict", timeout=20)
    cluster.core.delete_namespaced_secret("held", cluster.ns)
    requested = time.monotonic()
    cluster.patch_credential(
        "wants-held",
        {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "now"}}},
    )
    cluster.wait_ready("wants-held", reason="TokenIssued", timeout=15)
    assert time.monotonic() - requested < 15


# --- kopf handles the credentials ---------------------------------------------------------


def _serves(operator: Any, namespace: str, name: str) -> bool:
    """Whether the operator has a worker for the credential (its gauges come from one)."""
    return any(
        line.startswith("tokensync_token_expiry_seconds")
        and f'namespace="{namespace}"' in line
        and f'name="{name}"' in line
        for line in operator.metrics().splitlines()
    )


def test_kopf_watches_the_credentials_and_tokensync_only_labelled_objects(
    cluster, own_operator, token_endpoint, installed
):
    """kopf's handler API receives the credentials (its own user agent on the watch);
    tokensync's own watches ask for label-selected Secrets and ConfigMaps only, and
    nothing of the operator writes a credential except its status."""
    since = time.time() - 1
    own_operator("--no-deny-private-networks", "--namespace", cluster.ns)
    client = token_endpoint.add_client(lifetime=300)
    cluster.create_credential("watched", client)
    cluster.wait_ready("watched", reason="TokenIssued")
    time.sleep(2)  # the status echo went through kopf too
    requests = installed.audit_events(user=OPERATOR_USER, since=since)
    watches = [e for e in requests if e["verb"] == "watch"]
    credential_watches = [e for e in watches if e["objectRef"]["resource"] == "oauth2credentials"]
    assert credential_watches, "no watch of credentials"
    assert all(e["userAgent"].startswith("kopf/") for e in credential_watches)
    for event in watches:
        if event["objectRef"]["resource"] in ("secrets", "configmaps"):
            assert "labelSelector=" in event["requestURI"], event["requestURI"]
            assert not event["userAgent"].startswith("kopf/")
    credential_writes = [
        e
        for e in requests
        if (e.get("objectRef") or {}).get("resource") == "oauth2credentials"
        and e["verb"] in ("create", "update", "patch", "delete")
    ]
    assert credential_writes, "no status written"
    assert {e["objectRef"].get("subresource") for e in credential_writes} == {"status"}


def test_a_credential_deleted_while_the_watch_was_down_loses_its_worker(
    cluster, own_operator, token_endpoint, control_plane
):
    """kopf reports no DELETED for a credential deleted while its watch was down: after
    410 Gone it lists again, and the store compares its workers with a complete list
    (asked for by kopf's re-list and by the label-selected watches', which the
    compaction sends to list again too; the kopf half alone:
    tests/unit/test_core_loop_decisions.py). The deleted credential's worker stops long
    before its next renewal (which would have found it gone by a failed write); the
    watch goes on after the re-list."""
    operator = own_operator("--no-deny-private-networks", "--namespace", cluster.ns)
    clients = {name: token_endpoint.add_client(lifetime=600) for name in ("kept", "gone", "new")}
    for name in ("kept", "gone"):
        cluster.create_credential(name, clients[name], secret_name=f"client-{name}")
        cluster.wait_ready(name, reason="TokenIssued")
    assert _serves(operator, cluster.ns, "gone")

    def delete_unseen_and_compact() -> None:
        deleted = control_plane.etcd_delete("tokensync.dev/oauth2credentials", cluster.ns, "gone")
        assert deleted == 1
        control_plane.compact()  # kopf's resourceVersion is gone: 410, it lists again
        time.sleep(3)

    control_plane.restart_apiserver(while_down=delete_unseen_and_compact)
    wait_for(lambda: not _serves(operator, cluster.ns, "gone"), 60, "the gone worker stopped")
    assert _serves(operator, cluster.ns, "kept")
    assert len(clients["gone"].issued) == 1  # its renewal was minutes away
    cluster.create_credential("new", clients["new"], secret_name="client-new")
    cluster.wait_ready("new", reason="TokenIssued")
    assert cluster.credential("kept")["status"]["conditions"]
