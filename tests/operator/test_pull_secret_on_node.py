"""A pull Secret (secret.type: kubernetes.io/dockerconfigjson) used the way it is meant to
be: the real kubelet hands it to containerd, which pulls an image from a registry that
accepts only the newest unexpired access token of the credential's client as password."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_helpers import wait_for

from fixtures.node import BUSYBOX_IMAGE, RESTRICTED, TOLERATION, Node
from fixtures.ociarchive import Entry, write_archive
from fixtures.registry import TokenRegistry

pytestmark = pytest.mark.envtest

USERNAME = "oauth2accesstoken"


@pytest.fixture
def registry_for(tmp_path: Path) -> Iterator:
    started: list[TokenRegistry] = []

    def start(client) -> TokenRegistry:
        archive = write_archive(
            tmp_path / "pulled.tar",
            BUSYBOX_IMAGE,
            [Entry("bin/busybox", source=Path("/bin/busybox"))],
            ["/bin/busybox"],
        )

        accepted: list[int] = []  # which issued token each accepted request carried

        def newest_valid_token(username: str, password: str) -> bool:
            if username != USERNAME or not client.issued:
                return False
            newest = client.issued[-1]
            if password == newest.token and time.time() < newest.expires_at:
                accepted.append(len(client.issued))
                return True
            return False

        registry = TokenRegistry(archive, "team/app", "1", newest_valid_token).start()
        registry.accepted = accepted  # type: ignore[attr-defined]
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()


def start_pod(cluster, name: str, image: str, pull_secret: str | None) -> None:
    spec = {
        "automountServiceAccountToken": False,
        "tolerations": [TOLERATION],
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "app",
                "image": image,
                "imagePullPolicy": "Always",
                "command": ["/bin/busybox", "sleep", "3600"],
                "securityContext": RESTRICTED,
            }
        ],
    }
    if pull_secret:
        spec["imagePullSecrets"] = [{"name": pull_secret}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    cluster.cp.wait_default_service_account(cluster.ns)
    cluster.cp.kubectl("apply", "-n", cluster.ns, "-f", "-", input=json.dumps(pod))


def container_state(cluster, name: str) -> dict:
    pod = cluster.core.read_namespaced_pod(name, cluster.ns)
    statuses = pod.status.container_statuses or []
    return cluster.core.api_client.sanitize_for_serialization(statuses[0].state) if statuses else {}


def running(cluster, name: str) -> bool:
    return "running" in container_state(cluster, name)


def pull_refused(cluster, name: str) -> bool:
    waiting = container_state(cluster, name).get("waiting") or {}
    return waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff")


def test_pods_pull_with_the_current_token_across_a_renewal(
    cluster, operator, token_endpoint, node: Node, registry_for
):
    client = token_endpoint.add_client(lifetime=40)  # renewed with about 20 s left
    registry = registry_for(client)
    docker = {"registries": [registry.host], "username": USERNAME}
    secret = {"type": "kubernetes.io/dockerconfigjson", "dockerConfig": docker}
    cluster.create_credential("pull", client, secret=secret)
    cluster.wait_ready("pull", reason="TokenIssued")

    start_pod(cluster, "pulls-first", registry.image, "pull")
    wait_for(
        lambda: running(cluster, "pulls-first"), timeout=90, what="a pod pulled with the token"
    )
    first_pulls = len(registry.pulls())
    assert first_pulls >= 1

    # Negative control: the same image without the pull Secret is refused.
    start_pod(cluster, "no-secret", registry.image, None)
    wait_for(lambda: pull_refused(cluster, "no-secret"), timeout=90, what="a refused pull")
    assert registry.refusals()

    # After a renewal the registry takes only the new token: a new pod pulls only if the
    # Secret the kubelet reads already holds it.
    tokens = len(client.issued)
    wait_for(lambda: len(client.issued) > tokens, timeout=60, what="a renewal")
    start_pod(cluster, "pulls-after-renewal", registry.image, "pull")
    wait_for(
        lambda: running(cluster, "pulls-after-renewal"),
        timeout=90,
        what="a pod pulled with the renewed token",
    )
    assert len(registry.pulls()) > first_pulls
    assert registry.accepted[-1] > tokens >= registry.accepted[0]  # the renewed token
    for pod in ("pulls-first", "no-secret", "pulls-after-renewal"):
        cluster.core.delete_namespaced_pod(pod, cluster.ns, grace_period_seconds=0)
