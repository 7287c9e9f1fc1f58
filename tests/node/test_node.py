"""The test node itself: a pod from a local image, scheduled by kube-scheduler, on the
bridge network, in a Pod Security `restricted` namespace, reads a Secret volume."""

from __future__ import annotations

import json
import time

import pytest

from fixtures.node import BUSYBOX_IMAGE, RESTRICTED, TOLERATION, Node

pytestmark = pytest.mark.envtest


def wait_for_log(node: Node, namespace: str, pod: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = node.pod_log(namespace, pod)
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {pod}'s log within {timeout}s:\n{text}")
        time.sleep(0.5)


def test_restricted_pod_reads_a_secret_volume(node: Node, control_plane, namespace):
    cp = control_plane
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cp.kubectl("create", "secret", "generic", "data", "-n", namespace, "--from-literal=v=hello")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader", "namespace": namespace},
        "spec": {
            "automountServiceAccountToken": False,
            "tolerations": [TOLERATION],
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "cat /data/v; echo; ip -4 addr; sleep 3600"],
                    "securityContext": RESTRICTED,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "secret": {"secretName": "data"}}],
        },
    }
    cp.wait_default_service_account(namespace)
    cp.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cp.kubectl("wait", "-n", namespace, "pod/reader", "--for=condition=Ready", "--timeout=60s")
    got = json.loads(cp.kubectl("get", "pod", "reader", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["nodeName"] == node.name  # placed by kube-scheduler
    assert got["status"]["podIP"].startswith("10.213.0.")  # the bridge network
    assert not got["spec"].get("hostNetwork")
    log = wait_for_log(node, namespace, "reader", "hello", timeout=10)
    assert got["status"]["podIP"] in log
