"""Every replica serves (`--peering NAME --shards N`): credentials split into shards on
Leases, with the Role and RoleBinding of deploy/sharding exactly as shipped. Shards are
balanced as replicas come and go, taken over when a replica dies or is cut off, and a
replica writes nothing for a shard whose Lease it does not hold: proven from the API
server's audit log, where each replica's requests carry its identity in the user agent."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import kubernetes
import pytest
import yaml
from operator_helpers import decode, wait_for
from operator_process import REPO, Operator

from fixtures import fencing
from tokensync.leader import LEASE_DURATION
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED
from tokensync.shards import LABEL_SET, fair_share, shard_of

pytestmark = pytest.mark.envtest

PREFIX, LEASE_NAMESPACE = "tokensync", "tokensync-system"  # as deploy/sharding grants
SHARDS = 8
SHARDING = (
    f"--peering={PREFIX}",
    f"--shards={SHARDS}",
    f"--leader-election-namespace={LEASE_NAMESPACE}",
    "--no-deny-private-networks",
)
OVERLAY_KINDS = ("Role", "RoleBinding", "ValidatingAdmissionPolicy")
OVERLAY_KINDS += ("ValidatingAdmissionPolicyBinding",)
OVERLAY_NAMES = ("tokensync-sharding", "tokensync-operator-leases")


@pytest.fixture
def leases(installed, admin_api) -> Iterator[kubernetes.client.CoordinationV1Api]:
    """deploy/sharding's Role, RoleBinding and Lease admission policy (removed afterwards
    if this test created them), and no Lease of the set before or after. Request it
    before own_operator, so that the operators stop before the RBAC goes."""
    rendered = installed.kubectl("kustomize", str(REPO / "deploy" / "sharding")).stdout
    rbac = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] in OVERLAY_KINDS and d["metadata"]["name"] in OVERLAY_NAMES
    ]
    assert len(rbac) == 4
    names = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rbac]
    ns = ("-n", LEASE_NAMESPACE)
    created = [n for n in names if not installed.kubectl("get", n, *ns, check=False).stdout]
    listing = {"apiVersion": "v1", "kind": "List", "items": rbac}
    installed.kubectl("apply", "-f", "-", input=json.dumps(listing))
    api = kubernetes.client.CoordinationV1Api(admin_api)
    api.delete_collection_namespaced_lease(LEASE_NAMESPACE, label_selector=f"{LABEL_SET}={PREFIX}")
    yield api
    api.delete_collection_namespaced_lease(LEASE_NAMESPACE, label_selector=f"{LABEL_SET}={PREFIX}")
    for name in created:
        installed.kubectl("delete", name, *ns, "--ignore-not-found")
    time.sleep(1.5)  # the last releases; see the peering tests' fixture


def table(api: kubernetes.client.CoordinationV1Api) -> dict[int, str]:
    """shard -> holder ("" when free), as the Leases say."""
    return fencing.lease_holders(api, LEASE_NAMESPACE, PREFIX)


def balanced(api: kubernetes.client.CoordinationV1Api, live: set[str]) -> dict[int, str] | None:
    """The table once every shard is held by a live replica, none holds more than its
    fair share plus one, and no two differ by more than one; else None."""
    held = table(api)
    if len(held) != SHARDS or not set(held.values()) <= live:
        return None
    counts = Counter(held.values())
    per = [counts[r] for r in live]
    if max(per) > fair_share(SHARDS, len(live)) + 1 or max(per) - min(per) > 1:
        return None
    return held


def wait_balanced(api, live: set[str], timeout: float = 60) -> dict[int, str]:
    return wait_for(lambda: balanced(api, live), timeout, f"shards balanced over {sorted(live)}")


def held_by_metrics(operator: Operator) -> set[int]:
    return {
        int(m[1])
        for m in re.finditer(
            r'^tokensync_shard_held\{shard="(\d+)"\} 1\.0$', operator.metrics(), re.M
        )
    }


def start(own_operator, monkeypatch, *names: str) -> dict[str, Operator]:
    replicas = {}
    for name in names:
        monkeypatch.setenv("POD_NAME", name)
        replicas[name] = own_operator(*SHARDING)
    monkeypatch.delenv("POD_NAME")
    return replicas


def report(what: str, seconds: float) -> None:
    print(f"\n{what}: {seconds:.1f}s", file=sys.stderr)


def credentials(cluster, token_endpoint, count: int, lifetime: int) -> dict[str, object]:
    clients = {}
    for i in range(count):
        client = token_endpoint.add_client(lifetime=lifetime)
        cluster.create_credential(f"cred-{i}", client, secret_name=f"client-{i}")
        clients[f"cred-{i}"] = client
    for name in clients:
        cluster.wait_ready(name, reason="TokenIssued", timeout=60)
    return clients


def served_by(cluster, token_endpoint, clients, held, replica: str, lifetime: int) -> str:
    """A credential whose shard `replica` holds: one of `clients`, or one more created
    until one hashes there (UIDs are random)."""
    for name, uid in uids(cluster, clients).items():
        if held[shard_of(uid, SHARDS)] == replica:
            return name
    while True:
        assert len(clients) < 40, f"UIDs that all hash to the shards of others than {replica}?"
        name = f"cred-{len(clients)}"
        clients[name] = token_endpoint.add_client(lifetime=lifetime)
        created = cluster.create_credential(name, clients[name], secret_name=f"client-{name}")
        cluster.wait_ready(name, reason="TokenIssued", timeout=30)
        if held[shard_of(created["metadata"]["uid"], SHARDS)] == replica:
            return name


def request_refresh(cluster, clients, name: str) -> int:
    """Ask for a new token of `name` now; the number of its requests before."""
    sent = len(clients[name].requests)
    cluster.patch_credential(
        name, {"metadata": {"annotations": {ANNOTATION_REFRESH_REQUESTED: str(time.time())}}}
    )
    wait_for(lambda: len(clients[name].requests) > sent, 10, f"{name}'s token request")
    return sent


def uids(cluster, names) -> dict[str, str]:
    return {name: cluster.credential(name)["metadata"]["uid"] for name in names}


def fencing_violations(installed, namespace: str, uid_of: dict[str, str], since: float):
    """Every write of a replica to a credential's Secret or status, checked against the
    audit log's successful writes of that credential's shard Lease (fixtures/fencing.py).
    Returns the violations, as text, and the writes checked."""
    unfenced, writes = fencing.check(
        installed.audit_events(since=since),
        namespace=namespace,
        uid_of=uid_of,
        shards=SHARDS,
        prefix=PREFIX,
    )
    return [str(u) for u in unfenced], writes


def assert_all_valid(cluster, names) -> None:
    now = datetime.now(UTC)
    for name in names:
        status = cluster.credential(name)["status"]
        expires = datetime.fromisoformat(status["expiresAt"].replace("Z", "+00:00"))
        assert expires > now, f"{name}: token expired at {expires}"
        assert cluster.secret(name) is not None


def test_shards_balance_over_one_then_three_then_two_replicas(
    leases, cluster, own_operator, token_endpoint, monkeypatch, installed
):
    since = time.time()
    replicas = start(own_operator, monkeypatch, "replica-a")
    wait_balanced(leases, {"replica-a"})
    assert held_by_metrics(replicas["replica-a"]) == set(range(SHARDS))
    clients = credentials(cluster, token_endpoint, 6, lifetime=3600)

    joined = time.monotonic()
    replicas |= start(own_operator, monkeypatch, "replica-b", "replica-c")
    held = wait_balanced(leases, set(replicas))
    report("1 -> 3 replicas, start to balanced", time.monotonic() - joined)
    assert sorted(Counter(held.values()).values()) == [2, 3, 3]
    for name, operator in replicas.items():
        mine = {s for s, h in held.items() if h == name}
        wait_for(lambda o=operator, m=mine: held_by_metrics(o) == m, 10, f"{name}'s metrics")

    stopping = time.monotonic()
    replicas["replica-c"].stop()  # SIGTERM: hands its shards back on the way out
    assert "handed back" in replicas["replica-c"].log()
    wait_balanced(leases, {"replica-a", "replica-b"}, timeout=20)
    took = time.monotonic() - stopping
    report("3 -> 2 replicas (clean stop), stop to balanced", took)
    assert took < LEASE_DURATION, "the shards waited for expiry instead of the hand-back"

    # New credentials until each remaining replica serves one (UIDs are random).
    held = table(leases)
    later: dict[str, object] = {}
    served_by: set[str] = set()
    while served_by != {"replica-a", "replica-b"}:
        assert len(later) < 30, "UIDs that all hash to one replica's shards?"
        name = f"later-{len(later)}"
        later[name] = token_endpoint.add_client(lifetime=3600)
        uid = cluster.create_credential(name, later[name], secret_name=f"client-{name}")
        served_by.add(held[shard_of(uid["metadata"]["uid"], SHARDS)])
    for name in later:
        cluster.wait_ready(name, reason="TokenIssued", timeout=20)
    time.sleep(2)
    # Valid tokens survive every move between replicas: one request per credential.
    every = clients | later
    assert [len(c.requests) for c in every.values()] == [1] * len(every)
    assert_all_valid(cluster, every)
    violations, writes = fencing_violations(installed, cluster.ns, uids(cluster, every), since)
    assert writes and not violations, violations
    # Each replica wrote for the credentials of its own shards.
    assert {w[1] for w in writes if w[2] in later} == {"replica-a", "replica-b"}


def test_a_replica_still_listing_takes_no_shard_from_one_that_serves(
    leases, cluster, own_operator, token_endpoint, monkeypatch
):
    """A replica joins (and the others give it its share) only once it has listed its
    sources and managed Secrets. Before, a new replica took its share within seconds,
    before it could serve it (in one 3 x 3,000 bench run, 131 tokens expired in shards a
    replica took 10 s after it started; bench/README.md). Here the new replica's first
    list is held back 25 s: the serving replica keeps every shard meanwhile and renews
    every token that comes due."""
    start(own_operator, monkeypatch, "replica-a")
    wait_balanced(leases, {"replica-a"})
    clients = credentials(cluster, token_endpoint, 6, lifetime=30)
    for name in clients:
        cluster.wait_ready(name, reason="TokenIssued", timeout=20)
    issued = {name: len(c.requests) for name, c in clients.items()}

    tables: list[dict[int, str]] = []
    watching = threading.Event()

    def watch_leases() -> None:
        while not watching.is_set():
            tables.append(table(leases))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_leases, daemon=True)
    watcher.start()
    began = time.monotonic()
    monkeypatch.setenv("POD_NAME", "replica-b")
    try:  # returns once replica-b is ready: listed
        late = own_operator(*SHARDING, env={"TOKENSYNC_TEST_SOURCE_LIST_DELAY": "25"})
    finally:
        watching.set()
        watcher.join()
    monkeypatch.delenv("POD_NAME")
    assert time.monotonic() - began >= 25
    assert len(tables) > 20
    assert all(set(t.values()) == {"replica-a"} for t in tables), "a shard moved too soon"
    # Due 20 s after issue (a third of 30 s left): renewed by the serving replica.
    assert all(len(c.requests) > issued[name] for name, c in clients.items())
    wait_balanced(leases, {"replica-a", "replica-b"}, timeout=30)
    assert "joining the replicas" in late.log()
    assert_all_valid(cluster, clients)


def test_a_replica_still_listing_gives_back_what_it_took_alone(
    leases, cluster, own_operator, token_endpoint
):
    """A replica that starts alone takes every shard at once (a cold start: nobody could
    serve them sooner). If another replica lists and joins while the first still lists,
    the first gives every shard back: the tokens come from the replica that can serve
    them, not after the slow list. Before, it held them until its own list was done."""
    clients = {f"cred-{i}": token_endpoint.add_client(lifetime=3600) for i in range(4)}
    for name, client in clients.items():
        cluster.create_credential(name, client, secret_name=f"client-{name}")
    slow_env = {"POD_NAME": "replica-a", "TOKENSYNC_TEST_SOURCE_LIST_DELAY": "40"}
    started: dict[str, Operator] = {}
    slow = threading.Thread(
        target=lambda: started.update(a=own_operator(*SHARDING, env=slow_env)), daemon=True
    )
    slow.start()
    try:
        wait_for(
            lambda: set(table(leases).values()) == {"replica-a"} and len(table(leases)) == SHARDS,
            30,
            "replica-a, alone and still listing, holding every shard",
        )
        fast = own_operator(*SHARDING, env={"POD_NAME": "replica-b"})
        for name in clients:
            cluster.wait_ready(name, reason="TokenIssued", timeout=20)
        assert slow.is_alive(), "replica-a listed before replica-b served: nothing proven"
        assert set(table(leases).values()) == {"replica-b"}
        assert "joining the replicas" in fast.log()
    finally:
        slow.join(timeout=70)
    wait_balanced(leases, {"replica-a", "replica-b"}, timeout=30)
    assert "given back while this replica still lists its sources" in started["a"].log()
    assert "joining the replicas" in started["a"].log()
    time.sleep(2)
    assert [len(c.requests) for c in clients.values()] == [1] * len(clients)
    assert_all_valid(cluster, clients)


def test_a_killed_replica_s_shards_are_taken_over_once_their_leases_expire(
    leases, cluster, own_operator, token_endpoint, monkeypatch, installed
):
    since = time.time()
    replicas = start(own_operator, monkeypatch, "replica-a", "replica-b", "replica-c")
    wait_balanced(leases, set(replicas))
    clients = credentials(cluster, token_endpoint, 8, lifetime=40)
    lost = {s for s, h in table(leases).items() if h == "replica-c"}

    replicas["replica-c"].process.kill()  # kill -9: no hand-back, the Leases must expire
    replicas["replica-c"].process.wait()
    killed = time.monotonic()
    held = wait_balanced(leases, {"replica-a", "replica-b"}, timeout=40)
    took = time.monotonic() - killed
    report(f"kill -9 of 1 of 3 replicas ({len(lost)} shards), kill to taken over", took)
    # Renewed at most 5 s (one interval) plus a cycle before the kill; 15 s Leases.
    assert took >= LEASE_DURATION - 5 - 2.5, "took over a Lease that had not expired"
    assert not set(held.values()) & {"replica-c"}

    # Every token keeps being renewed before it expires (the autouse check samples
    # Ready against expiresAt every second): wait for a renewal of each after the kill.
    counts = {name: len(c.requests) for name, c in clients.items()}
    wait_for(
        lambda: all(len(c.requests) > counts[n] for n, c in clients.items()),
        60,
        "every credential renewed after the failover",
    )
    assert_all_valid(cluster, clients)
    violations, writes = fencing_violations(installed, cluster.ns, uids(cluster, clients), since)
    assert writes and not violations, violations


def test_a_replica_cut_off_loses_its_shards_and_writes_nothing_for_them_when_resumed(
    leases, cluster, own_operator, token_endpoint, monkeypatch, installed
):
    """SIGSTOP: the replica neither renews nor writes, as when cut off from the API
    server; its shards expire and are taken over. Resumed, it finds every deadline
    passed: it must write nothing for those shards, and rejoins with a fair share."""
    since = time.time()
    replicas = start(own_operator, monkeypatch, "replica-a", "replica-b", "replica-c")
    wait_balanced(leases, set(replicas))
    # Short tokens: renewals of the cut-off replica's credentials fall due while it
    # is stopped, and are due in its own schedule when it resumes.
    clients = credentials(cluster, token_endpoint, 8, lifetime=30)
    victim = replicas["replica-c"]
    held = table(leases)
    lost_to = "replica-c"
    lost = {s for s, h in held.items() if h == lost_to}
    # One of its credentials has a token request in flight when it is cut off: the
    # answer is waiting when it resumes, and must not be written.
    slow = served_by(cluster, token_endpoint, clients, held, lost_to, lifetime=30)
    clients[slow].delay = 6.0
    request_refresh(cluster, clients, slow)
    os.kill(victim.process.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        wait_balanced(leases, {"replica-a", "replica-b"}, timeout=40)
        report(
            f"cut off 1 of 3 replicas ({len(lost)} shards), to taken over",
            time.monotonic() - stopped,
        )
        time.sleep(12)  # renewals of its credentials fall due meanwhile (30 s tokens)
    finally:
        os.kill(victim.process.pid, signal.SIGCONT)
    resumed = time.time()
    wait_for(lambda: "lost shard" in victim.log(), 15, "the resumed replica to drop its shards")
    wait_balanced(leases, set(replicas), timeout=40)  # and to rejoin
    time.sleep(3)

    violations, writes = fencing_violations(installed, cluster.ns, uids(cluster, clients), since)
    assert not violations, violations
    after = [w for w in writes if w[1] == "replica-c" and w[0] >= resumed]
    report(f"writes of the resumed replica (each under a Lease it re-took): {len(after)}", 0)
    assert_all_valid(cluster, clients)


def test_a_clean_stop_writes_the_token_of_a_request_in_flight_before_handing_back(
    leases, cluster, own_operator, token_endpoint, monkeypatch, installed
):
    """A rolling update's SIGTERM while one of the stopping replica's credentials has a
    token request in flight: the replica waits for the answer and writes it before it
    hands its shards back, so the next holder finds the new token and asks for none (it
    used to cancel the request, and the next holder asked again, ahead of the window)."""
    since = time.time()
    replicas = start(own_operator, monkeypatch, "replica-a", "replica-b")
    wait_balanced(leases, set(replicas))
    clients = credentials(cluster, token_endpoint, 4, lifetime=3600)
    slow = served_by(cluster, token_endpoint, clients, table(leases), "replica-b", 3600)
    clients[slow].delay = 4.0
    sent = request_refresh(cluster, clients, slow)
    replicas["replica-b"].stop()  # SIGTERM, with the request still unanswered
    wait_balanced(leases, {"replica-a"}, timeout=20)
    time.sleep(3)  # time for a second request, if the next holder made one
    assert len(clients[slow].requests) == sent + 1
    assert "waiting up to 10s for 1 token requests" in replicas["replica-b"].log()
    written = decode(cluster.secret(slow))["access_token"]
    assert written == clients[slow].issued[-1].token
    violations, writes = fencing_violations(installed, cluster.ns, uids(cluster, clients), since)
    assert writes and not violations, violations


def test_a_replica_with_another_number_of_shards_takes_nothing(leases, own_operator, monkeypatch):
    """A rolling update that changes --shards would hash one credential to two shards
    held by two replicas: the newcomer takes no shard while the other runs."""
    replicas = start(own_operator, monkeypatch, "replica-a")
    wait_balanced(leases, {"replica-a"})
    monkeypatch.setenv("POD_NAME", "replica-b")
    other = own_operator(*SHARDING[:1], "--shards=4", *SHARDING[2:])
    monkeypatch.delenv("POD_NAME")
    wait_for(lambda: "another number of shards" in other.log(), 20, "the newcomer's error")
    time.sleep(5)  # a few cycles
    assert set(table(leases).values()) == {"replica-a"}
    assert held_by_metrics(other) == set()
    replicas["replica-a"].stop()  # hands back; the newcomer may serve now, with its 4
    wait_for(
        lambda: Counter(table(leases).values()) == Counter({"replica-b": 4, "": 4}),
        30,
        "the newcomer to take its 4 shards (the other 4 Leases stay free)",
    )


def _lease(name: str, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": labels},
        "spec": {"holderIdentity": "x", "leaseDurationSeconds": 15},
    }


def test_the_operator_may_write_only_its_own_leases(leases, installed, operator_kubeconfig):
    """RBAC grants every Lease of the namespace (the names are not known in advance);
    the admission policy of deploy/sharding narrows that to the set's own Leases."""
    api = kubernetes.client.CoordinationV1Api(installed.api_client(operator_kubeconfig))
    ours = {LABEL_SET: PREFIX}

    def refused(name: str, labels: dict[str, str]) -> bool:
        try:
            api.create_namespaced_lease(LEASE_NAMESPACE, _lease(name, labels), dry_run="All")
        except kubernetes.client.ApiException as error:
            assert error.status == 403, error.body
            return "tokensync-operator-leases" in (error.body or "")
        return False

    # Policies reach the admission plugin through an informer: wait until it applies.
    wait_for(lambda: refused("kube-scheduler", {}), 20, "the Lease policy to deny")
    assert refused("kube-scheduler", ours)  # labelled, but not one of the set's names
    assert refused(f"{PREFIX}-shard-1", {})  # the right name, unlabelled
    assert refused(f"{PREFIX}-shard-1", {LABEL_SET: "other"})
    assert not refused(f"{PREFIX}-shard-1", ours)
    assert not refused(f"{PREFIX}-member-0123abcd", ours)
    # Someone else's Lease can be neither changed nor deleted.
    admin = leases
    admin.create_namespaced_lease(LEASE_NAMESPACE, _lease("someone-else", {}))
    try:
        theirs = api.read_namespaced_lease("someone-else", LEASE_NAMESPACE)
        theirs.spec.holder_identity = "tokensync"
        with pytest.raises(kubernetes.client.ApiException) as caught:
            api.replace_namespaced_lease("someone-else", LEASE_NAMESPACE, theirs)
        assert caught.value.status == 403
        with pytest.raises(kubernetes.client.ApiException) as caught:
            api.delete_namespaced_lease("someone-else", LEASE_NAMESPACE)
        assert caught.value.status == 403
    finally:
        admin.delete_namespaced_lease("someone-else", LEASE_NAMESPACE)
