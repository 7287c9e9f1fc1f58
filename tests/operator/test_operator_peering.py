"""Several replicas with leader election (`--peering`): two operators against one cluster,
with the Role and RoleBinding of deploy/peering exactly as shipped. Only the holder of
the Lease requests tokens; the standby takes over when the leader stops (at once: it
hands the Lease back) or dies (once the Lease expires), without re-requesting valid
tokens."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_helpers import wait_for
from operator_process import REPO, Operator

pytestmark = pytest.mark.envtest

# The Lease that deploy/peering/rbac-peering.yaml grants, where it grants it.
LEASE, LEASE_NAMESPACE = "tokensync", "tokensync-system"
PEERING = (
    f"--peering={LEASE}",
    f"--leader-election-namespace={LEASE_NAMESPACE}",
    "--no-deny-private-networks",
)


@pytest.fixture
def leases(installed, admin_api) -> Iterator[kubernetes.client.CoordinationV1Api]:
    """deploy/peering's Role and RoleBinding for the operator's ServiceAccount (removed
    afterwards if this test created them), and no Lease before or after. Request it
    before own_operator, so that the operators stop before the RBAC goes."""
    rendered = installed.kubectl("kustomize", str(REPO / "deploy" / "peering")).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("Role", "RoleBinding")]
    names = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rbac]
    ns = ("-n", LEASE_NAMESPACE)
    created = [n for n in names if not installed.kubectl("get", n, *ns, check=False).stdout]
    listing = {"apiVersion": "v1", "kind": "List", "items": rbac}
    installed.kubectl("apply", "-f", "-", input=json.dumps(listing))
    api = kubernetes.client.CoordinationV1Api(admin_api)
    _delete_lease(api)
    yield api
    _delete_lease(api)
    for name in created:
        installed.kubectl("delete", name, *ns, "--ignore-not-found")
    # The last leader's release (a GET and a PUT as the operator's ServiceAccount) came
    # just before; audit-log tests that follow count that user's requests from one second
    # before they start (test_rbac_least_privilege.py), and the base ClusterRole rightly
    # grants no Leases.
    time.sleep(1.5)


def _delete_lease(api: kubernetes.client.CoordinationV1Api) -> None:
    try:
        api.delete_namespaced_lease(LEASE, LEASE_NAMESPACE)
    except ApiException as error:
        if error.status != 404:
            raise


def holder(api: kubernetes.client.CoordinationV1Api) -> str | None:
    try:
        lease = api.read_namespaced_lease(LEASE, LEASE_NAMESPACE)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity or None


def metric(operator: Operator, line_start: str) -> float | None:
    for line in operator.metrics().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def token_requests(operator: Operator) -> float | None:
    return metric(operator, 'tokensync_token_requests_total{result="success"}')


def start_replicas(own_operator, monkeypatch) -> dict[str, Operator]:
    """Two replicas, each with its own POD_NAME as the deployment gives them."""
    replicas = {}
    for name in ("replica-a", "replica-b"):
        monkeypatch.setenv("POD_NAME", name)
        replicas[name] = own_operator(*PEERING)
    monkeypatch.delenv("POD_NAME")
    return replicas


def elect(api, replicas: dict[str, Operator]) -> tuple[str, str]:
    leader = wait_for(lambda: holder(api), 30, "a replica to acquire the Lease")
    assert leader in replicas
    (standby,) = set(replicas) - {leader}
    wait_for(lambda: metric(replicas[leader], "tokensync_leader") == 1, 10, "leader gauge 1")
    assert metric(replicas[standby], "tokensync_leader") == 0
    assert replicas[standby].ready()  # a healthy standby is ready: it serves on failover
    return leader, standby


def report(what: str, seconds: float) -> None:
    print(f"\n{what}: {seconds:.1f}s", file=sys.stderr)


def test_one_leader_requests_tokens_and_a_stopped_leader_hands_over_at_once(
    leases, cluster, own_operator, token_endpoint, monkeypatch
):
    replicas = start_replicas(own_operator, monkeypatch)
    leader, standby = elect(leases, replicas)

    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("first", client)
    cluster.wait_ready("first", reason="TokenIssued")
    assert cluster.secret("first") is not None
    time.sleep(2)  # settle: the standby has seen the credential too
    assert len(client.requests) == 1
    # (The leader's own count may include credentials of namespaces earlier tests are
    # still deleting: it serves all namespaces. The standby serves none.)
    assert token_requests(replicas[standby]) == 0
    assert 'tokensync_credentials{reason="TokenIssued"}' not in replicas[standby].metrics()

    stopping = time.monotonic()
    replicas[leader].stop()  # SIGTERM: the leader releases the Lease on its way out
    assert re.search(r"released lease tokensync-system/tokensync", replicas[leader].log())
    wait_for(lambda: holder(leases) == standby, 20, "the standby to take over")
    report("clean handover, stop to new holder", time.monotonic() - stopping)

    second = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("second", second, secret_name="client-second")
    cluster.wait_ready("second", reason="TokenIssued", timeout=20)
    report("clean handover, stop to a new credential's token", time.monotonic() - stopping)
    assert len(second.requests) == 1
    # The new leader starts from the status the old one wrote: the valid token of the
    # first credential is kept, not requested again.
    time.sleep(2)
    assert len(client.requests) == 1
    cluster.wait_ready("first", reason="TokenIssued")
    assert metric(replicas[standby], "tokensync_leader") == 1


def test_a_crashed_leader_is_replaced_once_its_lease_expires(
    leases, cluster, own_operator, token_endpoint, monkeypatch
):
    replicas = start_replicas(own_operator, monkeypatch)
    leader, standby = elect(leases, replicas)
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("before", client)
    cluster.wait_ready("before", reason="TokenIssued")

    replicas[leader].process.kill()  # no release: the standby must wait for the expiry
    replicas[leader].process.wait()
    killed = time.monotonic()
    later = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("after", later, secret_name="client-after")
    wait_for(lambda: holder(leases) == standby, 30, "the standby to take over")
    took = time.monotonic() - killed
    report("crash, kill to new holder", took)
    # The dead leader renewed at most 5 s before it died; its Lease lasts 15 s from then.
    assert took >= 8, "took over a Lease that had not expired"
    cluster.wait_ready("after", reason="TokenIssued", timeout=20)
    report("crash, kill to a new credential's token", time.monotonic() - killed)
    assert len(later.requests) == 1
    time.sleep(1)
    assert len(client.requests) == 1


def test_a_leader_that_cannot_renew_exits_before_its_lease_expires(
    leases, cluster, own_operator, token_endpoint, monkeypatch, installed
):
    """The API refuses the Lease to both replicas (RoleBinding removed): the leader must
    stop serving within its 10 s renew deadline, before a standby could take over (15 s),
    and exit non-zero; the standby keeps trying and takes over once it may."""
    replicas = start_replicas(own_operator, monkeypatch)
    leader, standby = elect(leases, replicas)
    binding = ("rolebinding/tokensync-leader-election", "-n", LEASE_NAMESPACE)
    saved = installed.kubectl("get", *binding, "-o", "json").stdout
    installed.kubectl("delete", *binding)
    revoked = time.monotonic()

    code = wait_for(lambda: replicas[leader].process.poll(), 20, "the leader to exit")
    exited = time.monotonic() - revoked
    report("renewals refused, revoke to leader exit", exited)
    assert code == 1
    assert exited < 12  # RENEW_DEADLINE (10 s) after its last renewal, at most
    log = replicas[leader].log()
    assert "lost leadership of lease tokensync-system/tokensync" in log
    assert "exiting: leadership lost" in log
    assert replicas[standby].process.poll() is None
    assert holder(leases) == leader  # nobody released it: it expires

    restored = json.loads(saved)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        restored["metadata"].pop(key, None)
    installed.kubectl("apply", "-f", "-", input=json.dumps(restored))
    wait_for(lambda: holder(leases) == standby, 30, "the standby to take over")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("served", client)
    cluster.wait_ready("served", reason="TokenIssued", timeout=20)
    assert len(client.requests) == 1
