"""deploy/ as users install it, on a real node: `kubectl apply -k` of an overlay that
changes only what the test needs (tests/node/deploy/kustomization.yaml), the image built
from the Dockerfile, the pod under deploy/'s own securityContext and probes, serving a
credential against a token endpoint the pod reaches over the pod network; a deleted pod
comes back with no token request outside the renew window. Then the same overlay under an
arbitrary UID with GID 0, as OpenShift's restricted SCC runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm.chartlib import CHART, helm
from operator_helpers import Cluster, decode, wait_for
from operator_process import find_secrets
from token_endpoint import Client, TokenEndpoint

from fixtures.controlplane import POD_GATEWAY
from fixtures.gotools import GoTool
from fixtures.node import API_SERVER_FOR_PODS, BUSYBOX_IMAGE, TOLERATION, Node

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "tests/node/deploy"
OVERLAY_ANY_UID = REPO / "tests/node/deploy-any-uid"
NS = "tokensync-system"
SELECTOR = "app.kubernetes.io/name=tokensync"
ARBITRARY_UID = 1000650000


@pytest.fixture
def pod_endpoint(ca, node: Node) -> Iterator[TokenEndpoint]:
    """A token endpoint pods reach: its URL names the node's bridge address, relayed to
    127.0.0.1, and its certificate names that address."""
    endpoint = TokenEndpoint(ca, host=POD_GATEWAY)
    node.relay_for_pods(int(endpoint.url.split(":")[2].split("/")[0]))
    yield endpoint
    endpoint.close()


@pytest.fixture
def pod_cluster(cluster: Cluster, pod_endpoint: TokenEndpoint) -> Cluster:
    return Cluster(cluster.cp, cluster.core.api_client, cluster.ns, cluster.ca, pod_endpoint)


@pytest.fixture
def deployed(installed, operators, operator_image: str, node: Node) -> Iterator[Any]:
    """Apply an overlay (the test calls it); afterwards put deploy/ back as the session
    installed it (its Deployment Pending: no toleration for the test node)."""
    operators.stop_shared()  # two operators must never serve the same namespaces
    cp = installed

    def apply(overlay: Path) -> dict[str, Any]:
        cp.kubectl("apply", "-k", str(overlay))
        cp.kubectl("rollout", "status", "-n", NS, "deployment/tokensync", "--timeout=180s")
        return running_pod(cp)

    try:
        yield apply
    finally:
        cp.kubectl("delete", "deployment", "tokensync", "-n", NS, "--wait=true", check=False)
        cp.kubectl(
            "wait", "--for=delete", "pod", "-n", NS, "-l", SELECTOR, "--timeout=60s", check=False
        )
        cp.kubectl("apply", "-k", str(REPO / "deploy"))
        operators.changed_at = time.monotonic()


def running_pod(cp: Any) -> dict[str, Any]:
    pods = json.loads(cp.kubectl("get", "pods", "-n", NS, "-l", SELECTOR, "-o", "json").stdout)
    ready = [
        p
        for p in pods["items"]
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    assert len(ready) == 1, [p["metadata"]["name"] for p in pods["items"]]
    return ready[0]


def shipped_deployment(cp: Any) -> dict[str, Any]:
    for doc in yaml.safe_load_all(cp.kubectl("kustomize", str(REPO / "deploy")).stdout):
        if doc and doc["kind"] == "Deployment":
            return doc
    raise AssertionError("deploy/ has no Deployment")


def shipped_in(actual: Any, shipped: Any) -> bool:
    """Every field deploy/ sets has its value in the running pod (the API server adds
    defaults, e.g. a probe's scheme)."""
    if isinstance(shipped, dict):
        return isinstance(actual, dict) and all(
            k in actual and shipped_in(actual[k], v) for k, v in shipped.items()
        )
    return actual == shipped


def process_ids(node: Node, pod: dict[str, Any]) -> tuple[int, int]:
    """(uid, gid) of the operator container's process, read on the node."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    for line in node.ctr("tasks", "ls").stdout.splitlines()[1:]:
        task, pid, _status = line.split()
        if task == container_id:
            ids = {}
            for row in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = row.partition(":")
                if key in ("Uid", "Gid"):
                    ids[key] = int(value.split()[0])
            return ids["Uid"], ids["Gid"]
    raise AssertionError(f"no task for container {container_id}")


def serves(pod_cluster: Cluster, name: str, client: Client) -> None:
    pod_cluster.create_credential(name, client, secret_name=f"{name}-client")
    pod_cluster.wait_ready(name, reason="TokenIssued", timeout=90)
    secret = wait_for(lambda: pod_cluster.secret(name), what=f"{name}'s Secret")
    assert decode(secret)["access_token"] == client.issued[-1].token


def test_overlay_changes_only_test_settings():
    """The overlay is deploy/ plus the listed test settings, and its API server address is
    the one the node relays."""
    text = (OVERLAY / "kustomization.yaml").read_text()
    overlay = yaml.safe_load(text)
    assert overlay["resources"] == ["../../../deploy"]
    host, port = API_SERVER_FOR_PODS
    assert f'KUBERNETES_SERVICE_HOST, value: "{host}"' in text
    assert f'KUBERNETES_SERVICE_PORT, value: "{port}"' in text


@pytest.mark.timeout(900)  # the first use builds (or finds) and imports the image
def test_deploy_runs_on_the_node_and_survives_a_pod_deletion(
    deployed, pod_cluster: Cluster, pod_endpoint: TokenEndpoint, node: Node
):
    cp = pod_cluster.cp
    pod = deployed(OVERLAY)
    assert pod["spec"]["nodeName"] == node.name
    assert pod["status"]["podIP"].startswith(POD_GATEWAY.rsplit(".", 1)[0] + ".")
    # deploy/'s own securityContext, probes and resources: the overlay left them alone.
    shipped = shipped_deployment(cp)["spec"]["template"]["spec"]
    container, shipped_container = pod["spec"]["containers"][0], shipped["containers"][0]
    assert shipped_in(pod["spec"]["securityContext"], shipped["securityContext"])
    for key in ("securityContext", "livenessProbe", "readinessProbe", "resources", "args"):
        assert shipped_in(container[key], shipped_container[key]), key
    assert process_ids(node, pod) == (65532, 65532)
    namespace = json.loads(cp.kubectl("get", "namespace", NS, "-o", "json").stdout)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    # 300 s tokens: refreshed about 135 s after issue, long after the restart below.
    client = pod_endpoint.add_client(lifetime=300)
    serves(pod_cluster, "in-pod", client)
    assert len(client.requests) == 1

    old_log = node.pod_log(NS, pod["metadata"]["name"])  # the kubelet removes it with the pod
    cp.kubectl("delete", "pod", "-n", NS, pod["metadata"]["name"], "--wait=false")
    new_pod = wait_for(
        lambda: _replacement(cp, pod["metadata"]["name"]), timeout=180, what="a new pod Ready"
    )
    assert new_pod["spec"]["nodeName"] == node.name
    # The new pod serves (a second credential gets its token) ...
    other = pod_endpoint.add_client(lifetime=300)
    serves(pod_cluster, "after-restart", other)
    # ... and took over the first one's token: no request before its renew window.
    new_log = node.pod_log(NS, new_pod["metadata"]["name"])
    assert len(client.requests) == 1, _about("in-pod", old_log + "\n----- new pod\n" + new_log)
    assert client.issued[-1].expires_at - time.time() > 120
    log = old_log + new_log
    assert old_log, "no operator log read from the node"
    assert not find_secrets(log, pod_endpoint)


def _about(name: str, log: str) -> str:
    return "\n".join(line for line in log.splitlines() if name in line or "-----" in line)


def _replacement(cp: Any, old_name: str) -> dict[str, Any] | None:
    try:
        pod = running_pod(cp)
    except AssertionError:
        return None
    return pod if pod["metadata"]["name"] != old_name else None


@pytest.mark.timeout(900)
def test_deploy_runs_under_an_arbitrary_uid_with_gid_0(
    deployed, pod_cluster: Cluster, pod_endpoint: TokenEndpoint, node: Node
):
    """OpenShift's restricted SCC: a UID from the namespace's range, no passwd entry in
    the image, GID 0. The operator starts, passes its probes, serves and renews."""
    pod = deployed(OVERLAY_ANY_UID)
    assert process_ids(node, pod) == (ARBITRARY_UID, 0)
    client = pod_endpoint.add_client(lifetime=60)  # renewed with ~30 s left
    serves(pod_cluster, "any-uid", client)
    wait_for(lambda: len(client.issued) >= 2, timeout=90, what="a renewal")
    log = node.pod_log(NS, pod["metadata"]["name"])
    assert "getpwuid" not in log
    assert not find_secrets(log, pod_endpoint)


HELM = GoTool("helm", REPO / "tests/helm/build.sh", fixture="helm_bin")


def chart_values_for_the_node(watched_namespace: str) -> list[str]:
    """The chart's OpenShift-style values (an arbitrary UID, GID 0, as the restricted SCC
    assigns) plus what only this node needs, as in tests/node/deploy."""
    host, port = API_SERVER_FOR_PODS
    return [
        "--set=crds.enabled=false",  # the session installed the CRD
        "--set=scope=namespaced",
        f"--set=namespaces={{{watched_namespace}}}",
        f"--set=podSecurityContext.runAsUser={ARBITRARY_UID}",
        "--set=podSecurityContext.runAsGroup=0",
        "--set=image.repository=tokensync.test/operator",
        "--set=image.tag=local",
        "--set=image.pullPolicy=Never",
        f"--set=tolerations[0].key={TOLERATION['key']}",
        "--set=tolerations[0].operator=Exists",
        "--set=tolerations[0].effect=NoSchedule",
        "--set=extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        f"--set-string=extraEnv[0].value={host}",
        "--set=extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        f"--set-string=extraEnv[1].value={port}",
    ]


@pytest.mark.timeout(900)
def test_the_chart_runs_under_an_arbitrary_uid_with_gid_0(
    deployed,
    pod_cluster: Cluster,
    pod_endpoint: TokenEndpoint,
    node: Node,
    operator_image: str,
    request: pytest.FixtureRequest,
):
    """The Helm chart, installed with helm, runs on the node under an arbitrary UID and
    GID 0, passes its probes, serves and renews."""
    helm_bin = HELM.path(request.config)
    cp = pod_cluster.cp
    release_ns = cp.create_namespace("chart-on-node")
    kube = [f"--kubeconfig={cp.kubeconfig}", f"--namespace={release_ns}"]
    try:
        helm(
            helm_bin, "install", "anyuid", str(CHART), *kube,
            *chart_values_for_the_node(pod_cluster.ns), "--wait", "--timeout=5m",
        )  # fmt: skip
        pods = json.loads(
            cp.kubectl(
                "get", "pods", "-n", release_ns, "-o", "json",
                "-l", "app.kubernetes.io/instance=anyuid",
            ).stdout
        )["items"]  # fmt: skip
        (pod,) = pods
        assert pod["spec"]["nodeName"] == node.name
        assert process_ids(node, pod) == (ARBITRARY_UID, 0)
        client = pod_endpoint.add_client(lifetime=60)  # renewed with ~30 s left
        serves(pod_cluster, "chart-any-uid", client)
        wait_for(lambda: len(client.issued) >= 2, timeout=90, what="a renewal")
        log = node.pod_log(release_ns, pod["metadata"]["name"])
        assert "getpwuid" not in log
        assert not find_secrets(log, pod_endpoint)
    finally:
        helm(helm_bin, "uninstall", "anyuid", "--wait", "--ignore-not-found", *kube)
        cp.delete_namespace(release_ns)


QUICKSTART = REPO / "docs/getting-started/kind.md"
QUICKSTART_OVERLAYS = REPO / "tests/node/quickstart"
QUICKSTART_IMAGE = "docker.io/library/tokensync:dev"  # `tokensync:dev` as the node names it
TOY_PORT = 8443


def quickstart_script(markdown: str, substitutions: dict[str, str]) -> str:
    """The quickstart's shell block with each listed command replaced (each must be there,
    so a changed quickstart fails here rather than being skipped)."""
    script = markdown.split("```sh\n", 1)[1].split("\n```", 1)[0]
    for command, replacement in substitutions.items():
        assert command in script, f"the quickstart no longer has {command!r}"
        script = script.replace(command, replacement)
    return script


def consumer_on_the_node(path: Path) -> Path:
    """examples/consumer-deployment.yaml with what only this node needs: its busybox (no
    curl: the request fails, after the token is read) and the node's toleration."""
    deployment = yaml.safe_load((REPO / "examples/consumer-deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    pod["tolerations"] = [TOLERATION]
    pod["containers"][0] |= {"image": BUSYBOX_IMAGE, "imagePullPolicy": "Never"}
    path.write_text(yaml.safe_dump(deployment))
    return path


@pytest.mark.timeout(900)
def test_the_kind_quickstart_runs_as_written(
    deployed, installed, node: Node, operator_image: str, tmp_path: Path
):
    """docs/getting-started/kind.md's commands from `kubectl apply -k deploy/` on, in one
    shell, as a user pastes them; only kind, docker and the listed overlays (this node's
    taint, no registry, no kube-proxy or cluster DNS) are replaced."""
    cp = installed
    node.ctr("images", "tag", "--force", operator_image, QUICKSTART_IMAGE)

    def toy_pod_address() -> str:
        pods = json.loads(
            cp.kubectl("get", "pods", "-n", "toy-idp", "-o", "json", check=False).stdout or "{}"
        )
        return next(
            p["status"]["podIP"]
            for p in pods.get("items", [])
            if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
        )

    node.relay_service(TOY_PORT, toy_pod_address)
    script = quickstart_script(
        QUICKSTART.read_text(),
        {
            "kind create cluster": "true",
            "docker build -t tokensync:dev .": "true",
            "kind load docker-image tokensync:dev": "true",  # tagged in the node above
            "kubectl apply -k deploy/ ": f"kubectl apply -k {QUICKSTART_OVERLAYS}/operator ",
            "kubectl apply -k deploy/examples/toy-token-endpoint": (
                f"kubectl apply -k {QUICKSTART_OVERLAYS}/toy-token-endpoint"
            ),
            "apply -f examples/consumer-deployment.yaml": (
                f"apply -f {consumer_on_the_node(tmp_path / 'consumer.yaml')}"
            ),
        },
    )
    env = {
        **os.environ,
        "PATH": f"{cp.bin_dir}:{os.environ['PATH']}",
        "KUBECONFIG": str(cp.kubeconfig),
    }
    try:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        # The expires_at step's output (no newline after it).
        printed = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", run.stdout)
        assert printed, run.stdout[-3000:]
        expires_at = datetime.fromisoformat(printed.group(0).replace("Z", "+00:00"))
        assert expires_at.timestamp() - time.time() > 200  # the toy's 300 s token

        # The consumer reads the token file (its request then fails: no curl, no URL).
        def consumer_log() -> str | None:
            pods = cp.kubectl(
                "get", "pods", "-n", "integrations", "-o", "name",
                "-l", "app.kubernetes.io/name=inventory-sync",
            ).stdout.split()  # fmt: skip
            log = "".join(node.pod_log("integrations", p.split("/")[1]) for p in pods)
            return log if "request failed" in log else None

        log = wait_for(consumer_log, timeout=120, what="the consumer's first request")
        assert "No such file" not in log, log

        client_secret = decode(
            json.loads(
                cp.kubectl("get", "secret", "toy-client", "-n", "toy-idp", "-o", "json").stdout
            )
        )["client_secret"]
        token = decode(
            json.loads(
                cp.kubectl("get", "secret", "inventory", "-n", "integrations", "-o", "json").stdout
            )
        )["access_token"]
        operator_log = node.pod_log(NS, running_pod(cp)["metadata"]["name"])
        assert "inventory" in operator_log
        assert client_secret not in operator_log and token not in operator_log
    finally:
        for namespace in ("integrations", "toy-idp"):
            cp.delete_namespace(namespace)
