"""charts/tokensync on the real API server (tests/fixtures/controlplane.py): every object
each mode renders is accepted by a server-side dry run (schema, RBAC escalation checks, CEL
compilation of the admission policy), and a real `helm install` works, grants the operator
what it needs, enforces the admission policy, and `helm uninstall` removes it again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import CHART, INSTANCE, MODES, REPO, helm, key_of, render
from monitoring.promlib import install_monitoring_crds

from fixtures.controlplane import ControlPlane, KubectlError
from fixtures.polling import wait_for

pytestmark = pytest.mark.envtest

CRD_NAME = "oauth2credentials.tokensync.dev"
# Not tokensync-system: the operator tests' `installed` fixture applies deploy/ there, whose
# Deployment has another (immutable) selector, so a dry run there would depend on order.
DRY_RUN_NAMESPACE = "helm-dry-run"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, monitoring_crds: Path) -> ControlPlane:
    """The CRD installed (as helm does, before everything else), the Prometheus Operator's
    ServiceMonitor CRD (for metrics.serviceMonitor.enabled) and the release namespace."""
    install_monitoring_crds(control_plane, monitoring_crds)
    control_plane.kubectl("apply", "-f", str(REPO / "crds" / "oauth2credential.yaml"))
    control_plane.wait_established(CRD_NAME)
    # The release namespace, and the namespaceOverride of MODES["overrides"].
    for name in (DRY_RUN_NAMESPACE, "ops"):
        found = control_plane.kubectl("get", "namespace", name, check=False)
        if found.returncode != 0:
            control_plane.kubectl("create", "namespace", name)
    return control_plane


@pytest.fixture(scope="module")
def watched(cluster: ControlPlane) -> Iterator[list[str]]:
    """Two namespaces for namespaced mode (RoleBindings need them to exist)."""
    names = [cluster.create_namespace("helm-watched") for _ in range(2)]
    yield names
    for name in names:
        cluster.delete_namespace(name)


def with_namespaces(values: list[str], namespaces: list[str]) -> list[str]:
    """The mode's values, with its namespaced-mode namespaces replaced by real ones."""
    return [
        f"--set=namespaces={{{','.join(namespaces)}}}" if v.startswith("--set=namespaces=") else v
        for v in values
    ]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_rendered_object_is_accepted(
    cluster: ControlPlane, helm_bin: Path, watched: list[str], mode: str
) -> None:
    objects = render(helm_bin, *with_namespaces(MODES[mode], watched), namespace=DRY_RUN_NAMESPACE)
    others = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    with_crd = "--set=crds.enabled=false" not in MODES[mode]
    assert [c["metadata"]["name"] for c in crds] == ([CRD_NAME] if with_crd else [])
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=listed)
    lines = result.stdout.splitlines()
    assert len(lines) == len(objects), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout
    kinds = {o["kind"] for o in others}
    assert "Deployment" in kinds
    # Its own ServiceAccount unless the user brings one.
    assert ("ServiceAccount" in kinds) is ("--set=serviceAccount.create=false" not in MODES[mode])


# -- a real helm install --------------------------------------------------------------


def can_i(cp: ControlPlane, user: str, *args: str) -> bool:
    result = cp.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    return result.stdout.strip() == "yes"


def secret(name: str, *, type_: str = "Opaque", labels: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "type": type_,
        "stringData": {"k": "v"},
    }
    if type_ == "kubernetes.io/service-account-token":
        body["metadata"]["annotations"] = {"kubernetes.io/service-account.name": "default"}
        del body["stringData"]
    return json.dumps(body)


def test_helm_install_and_uninstall(
    cluster: ControlPlane, helm_bin: Path, tmp_path: Path, watched: list[str]
) -> None:
    """Release `helmtest` in its own namespace, so its names never meet deploy/'s."""
    namespace = cluster.create_namespace("helm-release")
    kube = [f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}"]
    user = f"system:serviceaccount:{namespace}:helmtest-tokensync"
    try:
        # The CRD is there already (kubectl apply of crds/, as the 0.1 chart's crds/ left
        # it): --take-ownership hands it to this release, as for an upgrade from 0.1.
        helm(
            helm_bin,
            "install",
            "helmtest",
            str(REPO / "charts" / "tokensync"),
            *kube,
            "--take-ownership",
        )
        status = json.loads(helm(helm_bin, "status", "helmtest", "-o", "json", *kube).stdout)
        assert status["info"]["status"] == "deployed"
        manifest = helm(helm_bin, "get", "manifest", "helmtest", *kube).stdout
        assert "kind: Deployment" in manifest
        cluster.kubectl("get", "deployment/helmtest-tokensync", "-n", namespace)

        # The operator's permissions, asked of the API server's own authorizer.
        assert wait_for(lambda: can_i(cluster, user, "list", "oauth2credentials", "-A"), 10)
        assert can_i(cluster, user, "patch", "oauth2credentials", "--subresource=status", "-A")
        assert can_i(cluster, user, "create", "secrets", "-n", watched[0])
        # Managed Secrets are merge-patched, never replaced.
        assert can_i(cluster, user, "patch", "secrets", "-n", watched[0])
        assert not can_i(cluster, user, "update", "secrets", "-n", watched[0])
        # Secure metrics: the operator reviews scrapers' tokens.
        assert can_i(cluster, user, "create", "tokenreviews.authentication.k8s.io")
        assert can_i(cluster, user, "create", "subjectaccessreviews.authorization.k8s.io")
        assert not can_i(cluster, user, "create", "serviceaccounts/token", "-n", watched[0])
        assert not can_i(cluster, user, "create", "leases", "-n", namespace)

        # The admission policy, enforced for the chart's ServiceAccount only.
        credential = {"tokensync.dev/credential": "c"}

        def as_operator(*args: str, body: str | None = None) -> None:
            cluster.kubectl(*args, "-n", watched[0], f"--as={user}", "--dry-run=server", input=body)

        def denied(*args: str, body: str | None = None) -> bool:
            try:
                as_operator(*args, body=body)
            except KubectlError as e:
                return "ServiceAccount may only" in e.stderr
            return False

        # Policies take effect asynchronously (compiled by the API server): wait for it.
        assert wait_for(
            lambda: denied("create", "-f", "-", body=secret("plain")),
            20,
            "the admission policy to apply",
        )
        sa_token = secret("token", type_="kubernetes.io/service-account-token")
        labelled_token = secret(
            "labelled-token", type_="kubernetes.io/service-account-token", labels=credential
        )
        assert denied("create", "-f", "-", body=labelled_token)
        assert denied("create", "-f", "-", body=sa_token)
        as_operator("create", "-f", "-", body=secret("managed", labels=credential))

        # Updates and deletes: judged on the Secret as it is, not only as it would be.
        cluster.kubectl("create", "-n", watched[0], "-f", "-", input=secret("app-config"))
        cluster.kubectl(
            "create", "-n", watched[0], "-f", "-", input=secret("issued", labels=credential)
        )

        def merge_patch(patch: dict[str, Any]) -> list[str]:
            return ["--type=merge", "-p", json.dumps(patch)]

        label = merge_patch({"metadata": {"labels": credential}})
        unlabel = merge_patch({"metadata": {"labels": {"tokensync.dev/credential": None}}})
        assert denied("patch", "secret/app-config", *label)
        assert denied("delete", "secret/app-config")
        as_operator("patch", "secret/issued", *merge_patch({"data": {"token": "eA=="}}))
        as_operator("delete", "secret/issued")
        assert denied("patch", "secret/issued", *unlabel)  # may not drop the label

        # Other users are not matched: the admin may still create any Secret.
        cluster.kubectl("create", "-n", watched[0], "--dry-run=server", "-f", "-", input=sa_token)
    finally:
        helm(helm_bin, "uninstall", "helmtest", "--wait", *kube)
    for gone in (
        "clusterrole/helmtest-tokensync-operator",
        "clusterrolebinding/helmtest-tokensync-operator",
        "clusterrole/helmtest-tokensync-metrics-auth",
        "clusterrolebinding/helmtest-tokensync-metrics-auth",
        "clusterrole/helmtest-tokensync-metrics-reader",
        "validatingadmissionpolicy/helmtest-tokensync-operator-secrets",
    ):
        assert not cluster.kubectl("get", gone, "--ignore-not-found", "-o", "name").stdout
    # crds.keep: the CRD stays, and with it every OAuth2Credential.
    kept = json.loads(cluster.kubectl("get", f"crd/{CRD_NAME}", "-o", "json").stdout)
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    cluster.delete_namespace(namespace)


def test_helm_install_server_dry_run_in_namespaced_mode(
    cluster: ControlPlane, helm_bin: Path, watched: list[str]
) -> None:
    """`helm install --dry-run=server` (the chart's kubeVersion checked against the real
    server) in namespaced mode with every toggle on."""
    values = with_namespaces(MODES["namespaced-peering-workload-identity"], watched)
    result = helm(
        helm_bin,
        "install",
        "tokensync",
        str(REPO / "charts" / "tokensync"),
        "--dry-run=server",
        f"--kubeconfig={cluster.kubeconfig}",
        "--namespace=tokensync-system",
        # The CRD is the cluster's already (the fixture's, or another release's).
        "--take-ownership",
        *values,
    )
    assert "STATUS: pending-install" in result.stdout
    assert f"It watches OAuth2Credentials in: {', '.join(watched)}." in result.stdout
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert f"Documentation: {chart['annotations']['tokensync.dev/docs']}" in result.stdout
    assert "`tokensync doctor -n tokensync-system` checks" in result.stdout
    rendered = [key_of(o) for o in render(helm_bin, *values)]
    for ns in watched:
        assert ("Role", ns, "tokensync-workload-identity") in rendered


def test_helm_upgrade_between_one_and_several_replicas(
    cluster: ControlPlane, helm_bin: Path
) -> None:
    """Scaling through `helm upgrade` switches Recreate <-> RollingUpdate and adds or
    removes the Lease Role and PodDisruptionBudget, in both directions."""
    namespace = cluster.create_namespace("helm-upgrade")
    kube = [f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}"]
    chart = str(REPO / "charts" / "tokensync")

    def deployment() -> dict[str, Any]:
        out = cluster.kubectl("get", "deployment/upgrade-tokensync", "-n", namespace, "-o", "json")
        return json.loads(out.stdout)

    def exists(what: str) -> bool:
        out = cluster.kubectl("get", what, "-n", namespace, "--ignore-not-found", "-o", "name")
        return bool(out.stdout.strip())

    try:
        helm(helm_bin, "install", "upgrade", chart, *kube, "--set=crds.enabled=false")
        assert deployment()["spec"]["strategy"] == {"type": "Recreate"}
        helm(helm_bin, "upgrade", "upgrade", chart, *kube, "--reuse-values", "--set=replicas=2")
        spec = deployment()["spec"]
        assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
        args = spec["template"]["spec"]["containers"][0]["args"]
        assert "--peering=upgrade-tokensync" in args
        assert exists("role/upgrade-tokensync-leader-election")
        assert exists("poddisruptionbudget/upgrade-tokensync")
        helm(helm_bin, "upgrade", "upgrade", chart, *kube, "--reuse-values", "--set=replicas=1")
        spec = deployment()["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        assert not exists("role/upgrade-tokensync-leader-election")
        assert not exists("poddisruptionbudget/upgrade-tokensync")
    finally:
        helm(helm_bin, "uninstall", "upgrade", "--wait", *kube)
        cluster.delete_namespace(namespace)


def credential_body(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": name},
            "spec": {
                "tokenURL": "https://idp.example/oauth2/token",
                "clientID": "client",
                "clientSecretRef": {"name": "client", "key": "secret"},
            },
        }
    )


def printer_columns(cluster: ControlPlane) -> list[str]:
    stored = json.loads(cluster.kubectl("get", f"crd/{CRD_NAME}", "-o", "json").stdout)
    (version,) = stored["spec"]["versions"]
    return [c["name"] for c in version["additionalPrinterColumns"]]


def test_helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it(
    cluster: ControlPlane, helm_bin: Path, tmp_path: Path
) -> None:
    """The CRD is a template: `helm upgrade` brings a release's CRD to the chart's (here
    from one without the Message column), and `helm uninstall` leaves it and the
    credentials in place (crds.keep)."""
    old_chart = tmp_path / "tokensync"
    shutil.copytree(CHART, old_chart)
    crd_file = old_chart / "files" / "oauth2credential.yaml"
    old_crd = yaml.safe_load(crd_file.read_text())
    (version,) = old_crd["spec"]["versions"]
    version["additionalPrinterColumns"] = [
        c for c in version["additionalPrinterColumns"] if c["name"] != "Message"
    ]
    crd_file.write_text(yaml.safe_dump(old_crd, sort_keys=False))
    namespace = cluster.create_namespace("helm-crd")
    kube = [f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}"]
    try:
        helm(helm_bin, "install", "crd", str(old_chart), *kube, "--take-ownership")
        assert "Message" not in printer_columns(cluster)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=credential_body("survivor"))
        helm(helm_bin, "upgrade", "crd", str(CHART), *kube)
        assert printer_columns(cluster)[-1] == "Message"
        stored = json.loads(cluster.kubectl("get", f"crd/{CRD_NAME}", "-o", "json").stdout)
        assert stored["metadata"]["labels"]["helm.sh/chart"].startswith("tokensync-")
        helm(helm_bin, "uninstall", "crd", "--wait", *kube)
        assert printer_columns(cluster)[-1] == "Message"  # kept
        cluster.kubectl("get", "oauth2credential/survivor", "-n", namespace)
    finally:
        # Whatever happened, the cluster's CRD is crds/'s again for the other tests.
        cluster.kubectl("apply", "-f", str(REPO / "crds" / "oauth2credential.yaml"))
        cluster.delete_namespace(namespace)


def test_two_releases_in_one_namespace(cluster: ControlPlane, helm_bin: Path) -> None:
    """Two releases side by side (e.g. one per team, namespaced): neither adopts the
    other's objects, each Deployment selects only its own pods, and uninstalling one
    leaves the other whole. The CRD belongs to neither (crds.enabled=false)."""
    namespace = cluster.create_namespace("helm-two")
    kube = [f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}"]
    chart = str(CHART)
    releases = ("first", "second")
    try:
        for release in releases:
            helm(helm_bin, "install", release, chart, *kube, "--set=crds.enabled=false")
        selectors = {}
        for release in releases:
            status = json.loads(helm(helm_bin, "status", release, "-o", "json", *kube).stdout)
            assert status["info"]["status"] == "deployed"
            out = cluster.kubectl(
                "get", f"deployment/{release}-tokensync", "-n", namespace, "-o", "json"
            )
            deployment = json.loads(out.stdout)
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert selector[INSTANCE] == release
            selectors[release] = selector
            listed = cluster.kubectl(
                "get",
                "deployments",
                "-n",
                namespace,
                "-l",
                ",".join(f"{k}={v}" for k, v in selector.items()),
                "-o",
                "name",
            )
            assert listed.stdout.split() == [f"deployment.apps/{release}-tokensync"]
        assert selectors["first"] != selectors["second"]
        helm(helm_bin, "uninstall", "first", "--wait", *kube)
        cluster.kubectl("get", "deployment/second-tokensync", "-n", namespace)
        cluster.kubectl("get", "clusterrole/second-tokensync-operator")
        gone = cluster.kubectl(
            "get", "clusterrole/first-tokensync-operator", "--ignore-not-found", "-o", "name"
        )
        assert gone.stdout == ""
    finally:
        for release in releases:
            helm(helm_bin, "uninstall", release, "--ignore-not-found", "--wait", *kube)
        cluster.delete_namespace(namespace)
