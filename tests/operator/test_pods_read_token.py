"""What every promise ends in: a pod on a real kubelet reading the managed Secret from a
volume, once a second, never sees an expired token while the operator renews it."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from operator_helpers import wait_for

from fixtures.node import BUSYBOX_IMAGE, KUBELET_SYNC, RESTRICTED, TOLERATION, Node

pytestmark = pytest.mark.envtest

# Once a second: the read time (whole seconds) and an MD5 of the token file, never the
# token itself.
READER = """
while true; do
  h=$(md5sum < /token/access_token); echo "read $(date +%s) ${h%% *}"; sleep 1
done
"""


@dataclass(frozen=True)
class Read:
    at: int  # whole seconds, so the read happened before at + 1
    digest: str


def md5(token: str) -> str:
    return hashlib.md5(token.encode()).hexdigest()


def reads(log: str) -> list[Read]:
    out = []
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "read":
            out.append(Read(int(parts[1]), parts[2]))
    return out


def expired_reads(seen: list[Read], expires_at: dict[str, float]) -> list[Read]:
    """Reads of a token at or after its expiry (a read stamped t happened before t + 1;
    an unknown token counts as expired)."""
    return [r for r in seen if r.at + 1 >= expires_at.get(r.digest, 0.0)]


def api_to_pod(seen: list[Read], issued: dict[str, Any]) -> list[float]:
    """API -> pod latency of each renewal: from the token's issue (the Secret is written
    right after) to the pod's first read of it (the first token is read at pod start)."""
    first_read: dict[str, int] = {}
    for r in seen:
        first_read.setdefault(r.digest, r.at)
    return sorted(first_read[d] - issued[d].issued_at for d in list(first_read)[1:])


def start_reader(cluster, name: str, secret: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": cluster.ns},
        "spec": {
            "automountServiceAccountToken": False,
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "reader",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", READER],
                    "securityContext": RESTRICTED,
                    "volumeMounts": [{"name": "token", "mountPath": "/token"}],
                }
            ],
            "volumes": [{"name": "token", "secret": {"secretName": secret}}],
        },
    }
    cluster.cp.wait_default_service_account(cluster.ns)
    cluster.cp.kubectl("apply", "-f", "-", input=json.dumps(pod))


def test_reader_pod_sees_renewals_and_never_an_expired_token(
    cluster, operator, token_endpoint, node: Node
):
    assert KUBELET_SYNC == "10s"
    client = token_endpoint.add_client(lifetime=60)  # renewed with 30 s left
    cluster.create_credential("pod-token", client)
    cluster.wait_ready("pod-token", reason="TokenIssued")
    start_reader(cluster, "reader", "pod-token")

    def renewals_seen() -> list[Read] | None:
        seen = reads(node.pod_log(cluster.ns, "reader"))
        return seen if len({r.digest for r in seen}) >= 4 else None

    seen = wait_for(renewals_seen, timeout=200, what="three renewals read by the pod")
    issued = {md5(i.token): i for i in client.issued}
    assert not expired_reads(seen, {d: i.expires_at for d, i in issued.items()})
    # Read once a second throughout (the check above covers the whole span).
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert max(gaps) <= 3, gaps
    latencies = api_to_pod(seen, issued)
    print(f"Secret write -> pod read, kubelet syncFrequency {KUBELET_SYNC}: {latencies}")
    assert all(latency < 30 for latency in latencies)  # inside the 30 s renew margin


def test_reader_check_catches_an_expired_token(cluster, node: Node):
    """Negative control: the same reader and check over a Secret that nobody renews."""
    token = "tok-negative-control"
    expires_at = time.time() + 4
    cluster.cp.kubectl(
        "create", "secret", "generic", "stale", "-n", cluster.ns,
        f"--from-literal=access_token={token}",
    )  # fmt: skip
    start_reader(cluster, "stale-reader", "stale")

    def late_reads() -> list[Read] | None:
        seen = reads(node.pod_log(cluster.ns, "stale-reader"))
        return seen if any(r.at > expires_at + 2 for r in seen) else None

    seen = wait_for(late_reads, timeout=60, what="reads after the token expired")
    assert expired_reads(seen, {md5(token): expires_at})
    assert not expired_reads(seen, {md5(token): seen[-1].at + 10})


@pytest.mark.timeout(900)
def test_five_minute_tokens_at_the_default_kubelet_sync(
    cluster, operator, token_endpoint, node: Node
):
    """README's recommended 5-minute lifetime with the kubelet at its default sync period
    (1 m, plus its Secret cache): the default refresh point, 120 s before expiry, leaves
    room for the Secret to reach the pod, and the pod never reads an expired token."""
    with node.kubelet_sync(None):
        client = token_endpoint.add_client(lifetime=300)  # renewed 120-135 s before expiry
        cluster.create_credential("pod-token-5m", client)
        cluster.wait_ready("pod-token-5m", reason="TokenIssued")
        start_reader(cluster, "reader-5m", "pod-token-5m")

        def renewals_seen() -> list[Read] | None:
            seen = reads(node.pod_log(cluster.ns, "reader-5m"))
            # One renewal is the claim (the first token, then its successor in time); a
            # second one would cost another 3 minutes and prove the same thing.
            return seen if len({r.digest for r in seen}) >= 2 else None

        seen = wait_for(renewals_seen, timeout=480, what="a renewal read by the pod")
    issued = {md5(i.token): i for i in client.issued}
    assert not expired_reads(seen, {d: i.expires_at for d, i in issued.items()})
    latencies = api_to_pod(seen, issued)
    print(f"Secret write -> pod read, kubelet default syncFrequency: {latencies}")
    assert all(latency < 120 for latency in latencies)  # inside the default margin
