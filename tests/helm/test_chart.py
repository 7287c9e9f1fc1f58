"""charts/tokensync: `helm lint`, `helm template` in every mode, values.schema.json
rejecting bad values, and the chart rendering the same operator as the kustomize
manifests of deploy/ (default chart = deploy/, namespaced = deploy/namespaced, replicas 2
= deploy/peering), compared object by object after normalising away helm's own labels.

The server-side checks (every rendered object accepted by the real API server, and a
real `helm install` / `helm uninstall`) are in test_chart_server.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import (
    CHART,
    DEPLOY,
    INSTANCE,
    MODES,
    OVERLAY_VALUES,
    PENDING_IN_DEPLOY,
    REPO,
    Key,
    by_key,
    helm,
    normalise,
    render,
)

from fixtures.controlplane import ControlPlane

# The chart's files/ are copies of the repository's (a chart cannot read outside itself).
CHART_COPIES = {
    "oauth2credential.yaml": REPO / "crds" / "oauth2credential.yaml",
    "prometheusrule.yaml": DEPLOY / "monitoring" / "prometheusrule.yaml",
    "grafana-dashboard.json": DEPLOY / "monitoring" / "grafana-dashboard.json",
}


@pytest.mark.parametrize("name", list(CHART_COPIES))
def test_chart_files_are_copies_byte_for_byte(name: str) -> None:
    source = CHART_COPIES[name]
    assert (CHART / "files" / name).read_bytes() == source.read_bytes(), (
        f"charts/tokensync/files/{name} is a copy: cp {source.relative_to(REPO)} "
        "charts/tokensync/files/"
    )
    assert sorted(p.name for p in (CHART / "files").iterdir()) == sorted(CHART_COPIES)


def test_no_crds_directory() -> None:
    """helm installs crds/ once and never upgrades it: the CRD is a template instead."""
    assert not (CHART / "crds").exists()


CRD_KEY = ("CustomResourceDefinition", "", "oauth2credentials.tokensync.dev")


def test_crd_is_a_template_upgraded_with_the_release_and_kept(helm_bin: Path) -> None:
    crd = by_key(render(helm_bin))[CRD_KEY]
    source = yaml.safe_load((REPO / "crds" / "oauth2credential.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"].items() >= source["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "tokensync"
    unkept = by_key(render(helm_bin, "--set=crds.keep=false"))[CRD_KEY]
    assert "annotations" not in unkept["metadata"]
    assert CRD_KEY not in by_key(render(helm_bin, "--set=crds.enabled=false"))


def test_every_value_is_in_the_schema() -> None:
    """values.schema.json declares every value of values.yaml (with its type), down to
    the maps and lists whose content is free (labels, securityContext, ...)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing: list[str] = []

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict):
            properties = node.get("properties")
            if properties is None:
                return  # a free-form object (labels, annotations, probes, ...)
            for key, item in value.items():
                if key in properties:
                    walk(item, properties[key], f"{path}.{key}")
                else:
                    missing.append(f"{path}.{key}".lstrip("."))

    walk(values, schema, "")
    assert missing == []
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("mode", list(MODES))
def test_helm_lint(helm_bin: Path, mode: str) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace=tokensync-system"]
    result = helm(helm_bin, *args, *MODES[mode])
    assert "0 chart(s) failed" in result.stdout, result.stdout


# -- every mode renders what it says ----------------------------------------------------


def args_of(objects: dict[Key, dict[str, Any]]) -> list[str]:
    (container,) = objects[("Deployment", "tokensync-system", "tokensync")]["spec"]["template"][
        "spec"
    ]["containers"]
    return container["args"]


def test_default_is_cluster_wide_single_replica(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin))
    assert args_of(objects)[:2] == ["run", "--all-namespaces"]
    assert ("ClusterRole", "", "tokensync-operator") in objects
    assert not [k for k in objects if k[0] in ("Role", "RoleBinding")]
    deployment = objects[("Deployment", "tokensync-system", "tokensync")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--peering") for a in args_of(objects))
    assert ("ValidatingAdmissionPolicy", "", "tokensync-operator-secrets") in objects
    assert not [k for k in objects if "workload-identity" in k[2]]
    assert "--enable-workload-identity" not in args_of(objects)


def test_namespaced_mode_has_a_role_per_namespace_and_no_cluster_role(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, "--set=scope=namespaced", "--set=namespaces={a,b,c}"))
    assert args_of(objects)[:4] == ["run", "--namespace=a", "--namespace=b", "--namespace=c"]
    assert "--all-namespaces" not in args_of(objects)
    cluster_role = by_key(render(helm_bin))[("ClusterRole", "", "tokensync-operator")]
    for ns in ("a", "b", "c"):
        role = objects[("Role", ns, "tokensync-operator")]
        binding = objects[("RoleBinding", ns, "tokensync-operator")]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "tokensync-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
        ]
        assert role["rules"] == cluster_role["rules"]
    # Cluster-wide only the binding that lets the operator review scrapers' tokens (no
    # access to any object), as in deploy/namespaced.
    bindings = [k[2] for k in objects if k[0] == "ClusterRoleBinding"]
    assert bindings == ["tokensync-admission-subject", "tokensync-metrics-auth"]
    assert ("ClusterRole", "", "tokensync-operator") not in objects


def test_replicas_turn_on_lease_election(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, "--set=replicas=3"))
    deployment = objects[("Deployment", "tokensync-system", "tokensync")]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--peering=tokensync" in args_of(objects)
    role = objects[("Role", "tokensync-system", "tokensync-leader-election")]
    assert role["rules"][0]["resourceNames"] == ["tokensync"]
    assert ("PodDisruptionBudget", "tokensync-system", "tokensync") in objects
    # The Lease name follows the value, in the flag and in the Role alike.
    renamed = by_key(render(helm_bin, "--set=replicas=2", "--set=leaderElection.leaseName=x"))
    assert "--peering=x" in args_of(renamed)
    role = renamed[("Role", "tokensync-system", "tokensync-leader-election")]
    assert role["rules"][0]["resourceNames"] == ["x"]


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_workload_identity_toggle(helm_bin: Path, scope: str) -> None:
    extra = ["--set=scope=namespaced", "--set=namespaces={a,b}"] if scope == "namespaced" else []
    objects = by_key(render(helm_bin, "--set=workloadIdentity.enabled=true", *extra))
    assert "--enable-workload-identity" in args_of(objects)
    # Issue 18: no serviceaccounts/token; each namespace grants it per ServiceAccount.
    rules = [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}]
    if scope == "cluster":
        grants = [objects[("ClusterRole", "", "tokensync-workload-identity")]]
        assert ("ClusterRoleBinding", "", "tokensync-workload-identity") in objects
    else:
        grants = [objects[("Role", ns, "tokensync-workload-identity")] for ns in ("a", "b")]
        assert not [k for k in objects if k[0].startswith("Cluster") and "workload" in k[2]]
    for grant in grants:
        assert grant["rules"] == rules


def test_admission_policy_toggle(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin))
    policy = objects[("ValidatingAdmissionPolicy", "", "tokensync-operator-secrets")]
    (condition,) = policy["spec"]["matchConditions"]
    assert "check('subject').allowed()" in condition["expression"]  # the marker (issue 18)
    marker = objects[("ClusterRoleBinding", "", "tokensync-admission-subject")]
    assert marker["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]
    binding = objects[("ValidatingAdmissionPolicyBinding", "", "tokensync-operator-secrets")]
    assert binding["spec"] == {
        "policyName": "tokensync-operator-secrets",
        "validationActions": ["Deny", "Audit"],
    }
    off = by_key(render(helm_bin, "--set=admissionPolicy.enabled=false"))
    assert not [k for k in off if k[0].startswith("ValidatingAdmissionPolicy")]
    assert not [k for k in off if "admission-subject" in k[2]]


def test_other_release_names_and_namespaces_follow(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, release="acme", namespace="ops", include_crds=False))
    assert ("Deployment", "ops", "acme-tokensync") in objects
    assert ("ClusterRole", "", "acme-tokensync-operator") in objects
    binding = objects[("ClusterRoleBinding", "", "acme-tokensync-operator")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "acme-tokensync", "namespace": "ops"}
    ]
    assert ("ValidatingAdmissionPolicy", "", "acme-tokensync-operator-secrets") in objects
    marker = objects[("ClusterRoleBinding", "", "acme-tokensync-admission-subject")]
    assert marker["subjects"] == [
        {"kind": "ServiceAccount", "name": "acme-tokensync", "namespace": "ops"}
    ]


def test_image_tag_and_digest(helm_bin: Path) -> None:
    def image(*values: str) -> str:
        objects = by_key(render(helm_bin, *values))
        deployment = objects[("Deployment", "tokensync-system", "tokensync")]
        return deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert image() == f"ghcr.io/tokensync/tokensync:{chart['appVersion']}"
    assert image("--set=image.tag=9.9.9") == "ghcr.io/tokensync/tokensync:9.9.9"
    digest = "sha256:" + "ab" * 32
    assert image(f"--set=image.digest={digest}") == f"ghcr.io/tokensync/tokensync@{digest}"


def test_service_monitor_toggle(helm_bin: Path) -> None:
    assert not [k for k in by_key(render(helm_bin)) if k[0] == "ServiceMonitor"]
    objects = by_key(render(helm_bin, "--set=metrics.serviceMonitor.enabled=true"))
    monitor = objects[("ServiceMonitor", "tokensync-system", "tokensync")]
    (deploy_monitor,) = [
        d
        for d in yaml.safe_load_all((DEPLOY / "monitoring" / "servicemonitor.yaml").read_text())
        if d
    ]
    # The same scrape, of this release's Service only.
    assert normalise(monitor)["spec"] == deploy_monitor["spec"]
    assert monitor["spec"]["selector"]["matchLabels"][INSTANCE] == "tokensync"
    plain = by_key(
        render(
            helm_bin,
            "--set=metrics.serviceMonitor.enabled=true",
            "--set=metrics.insecure=true",
        )
    )
    (endpoint,) = plain[("ServiceMonitor", "tokensync-system", "tokensync")]["spec"]["endpoints"]
    assert endpoint["scheme"] == "http"
    assert "bearerTokenFile" not in endpoint and "tlsConfig" not in endpoint
    # The operator's certificate verified against a CA instead of skipped.
    ca = {"secret": {"name": "metrics-ca", "key": "ca.crt"}}
    verified = by_key(
        render(
            helm_bin,
            "--set=metrics.serviceMonitor.enabled=true",
            "--set=metrics.serviceMonitor.tlsConfig.insecureSkipVerify=null",
            "--set=metrics.serviceMonitor.tlsConfig.ca.secret.name=metrics-ca",
            "--set=metrics.serviceMonitor.tlsConfig.ca.secret.key=ca.crt",
            "--set=metrics.serviceMonitor.tlsConfig.serverName=tokensync-metrics.x.svc",
        )
    )
    (endpoint,) = verified[("ServiceMonitor", "tokensync-system", "tokensync")]["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"ca": ca, "serverName": "tokensync-metrics.x.svc"}


METRICS_AUTH_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["subjectaccessreviews"],
        "verbs": ["create"],
    },
]


def metrics_rbac(objects: dict[Key, dict[str, Any]]) -> list[Key]:
    return sorted(k for k in objects if "-metrics-" in k[2] and k[0].startswith("Cluster"))


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_metrics_are_https_for_authorised_scrapers_by_default(helm_bin: Path, scope: str) -> None:
    extra = ["--set=scope=namespaced", "--set=namespaces={a}"] if scope == "namespaced" else []
    objects = by_key(render(helm_bin, *extra))
    args = args_of(objects)
    assert not [a for a in args if a.startswith(("--metrics-insecure", "--metrics-cert-dir"))]
    # TokenReview and SubjectAccessReview are cluster-scoped: a ClusterRole in every scope.
    auth = objects[("ClusterRole", "", "tokensync-metrics-auth")]
    assert auth["rules"] == METRICS_AUTH_RULES
    binding = objects[("ClusterRoleBinding", "", "tokensync-metrics-auth")]
    assert binding["roleRef"]["name"] == "tokensync-metrics-auth"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]
    reader = objects[("ClusterRole", "", "tokensync-metrics-reader")]
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    pod = objects[("Deployment", "tokensync-system", "tokensync")]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_metrics_insecure_and_off_need_no_review_permissions(helm_bin: Path) -> None:
    insecure = by_key(render(helm_bin, "--set=metrics.insecure=true"))
    assert "--metrics-insecure" in args_of(insecure)
    assert not metrics_rbac(insecure)
    off = by_key(render(helm_bin, "--set=metrics.port=0", "--set=metrics.insecure=true"))
    assert "--metrics-port=0" in args_of(off)
    assert "--metrics-insecure" not in args_of(off)
    assert not metrics_rbac(off)
    assert not [k for k in off if k[0] == "Service"]


def test_metrics_cert_secret_is_mounted_for_the_operator(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, "--set=metrics.certSecret=metrics-tls"))
    assert "--metrics-cert-dir=/etc/tokensync/metrics-tls" in args_of(objects)
    pod = objects[("Deployment", "tokensync-system", "tokensync")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-tls"]["secret"] == {"secretName": "metrics-tls"}
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["metrics-tls"] == {
        "name": "metrics-tls",
        "mountPath": "/etc/tokensync/metrics-tls",
        "readOnly": True,
    }
    assert metrics_rbac(objects)  # still HTTPS with token reviews


# -- bad values fail at install -----------------------------------------------------------

BAD_VALUES = {
    "namespaced-without-namespaces": (["--set=scope=namespaced"], "namespaces"),
    "namespaces-in-cluster-scope": (["--set=namespaces={a}"], "namespaces"),
    "unknown-scope": (["--set=scope=everywhere"], "scope"),
    "zero-replicas": (["--set=replicas=0"], "replicas"),
    "replicas-not-a-number": (["--set-string=replicas=two"], "replicas"),
    "bad-namespace-name": (["--set=scope=namespaced", "--set=namespaces={Team_A}"], "namespaces"),
    "log-format": (["--set=logFormat=xml"], "logFormat"),
    "misspelt-value": (["--set=replica=2"], "replica"),
    "metrics-port": (["--set=metrics.port=70000"], "port"),
    "digest": (["--set=image.digest=latest"], "digest"),
    "extra-arg-not-a-flag": (["--set=extraArgs={oops}"], "extraArgs"),
    "toggle-not-boolean": (["--set-string=admissionPolicy.enabled=yes"], "enabled"),
    # The operator refuses --metrics-cert-dir with --metrics-insecure.
    "cert-secret-with-insecure-metrics": (
        ["--set=metrics.insecure=true", "--set=metrics.certSecret=tls"],
        "certSecret",
    ),
    "cert-secret-name": (["--set=metrics.certSecret=My_TLS"], "certSecret"),
    "service-monitor-scheme": (["--set=metrics.serviceMonitor.scheme=http"], "scheme"),
    "crds-keep": (["--set-string=crds.keep=no"], "keep"),
    "service-account-create": (["--set-string=serviceAccount.create=no"], "create"),
    "rbac-create": (["--set-string=rbac.create=no"], "create"),
    "mount-without-path": (["--set=extraVolumeMounts[0].name=ca"], "mountPath"),
    "volume-without-name": (["--set=extraVolumes[0].emptyDir.medium=Memory"], "name"),
    "run-as-user-string": (["--set-string=podSecurityContext.runAsUser=root"], "runAsUser"),
    "namespace-override": (["--set=namespaceOverride=Ops_1"], "namespaceOverride"),
    "name-override": (["--set=nameOverride=Token_Sync"], "nameOverride"),
    "common-label-value": (["--set=commonLabels.team=" + "x" * 64], "commonLabels"),
    "prometheus-rule-toggle": (["--set-string=metrics.prometheusRule.enabled=yes"], "enabled"),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_fail_at_install(helm_bin: Path, name: str) -> None:
    values, field = BAD_VALUES[name]
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(helm_bin, *values)
    message = failed.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert field in message, message


# -- the same operator as kustomize -------------------------------------------------------


def kustomize(cp: ControlPlane, overlay: str) -> list[dict[str, Any]]:
    rendered = cp.kubectl("kustomize", str(DEPLOY / overlay)).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def test_every_operator_overlay_has_chart_values() -> None:
    """A new install variant in deploy/ needs its chart values here (and then is compared)."""
    overlays = {""} | {
        p.parent.name
        for p in DEPLOY.glob("*/kustomization.yaml")
        if p.parent.name not in ("base", "monitoring", "argocd")  # argocd: a Component
    }
    assert overlays <= set(OVERLAY_VALUES), overlays - set(OVERLAY_VALUES)


@pytest.mark.envtest
@pytest.mark.parametrize(
    "overlay", [o for o in OVERLAY_VALUES if (DEPLOY / o).is_dir()], ids=lambda o: o or "deploy"
)
def test_chart_renders_what_kustomize_renders(
    control_plane: ControlPlane, helm_bin: Path, overlay: str
) -> None:
    expected = by_key(kustomize(control_plane, overlay))
    actual = by_key(render(helm_bin, *OVERLAY_VALUES[overlay]))
    # The chart owns no namespace: not its release namespace (helm install
    # --create-namespace), nor the watched ones (deploy/namespaced creates its examples).
    for key in [k for k in expected if k[0] == "Namespace"]:
        expected.pop(key)
    # Kinds another branch is adding to deploy/: compared as soon as deploy/ has them.
    for key in [k for k in actual if k[0] in PENDING_IN_DEPLOY]:
        if not any(k[0] == key[0] for k in expected):
            actual.pop(key)
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = actual[key]
        # kustomize's labels are all there; helm adds instance, version, chart, ...
        for path, labels in label_sets(want):
            assert labels.items() <= dict_at(got, path).items(), (key, path)
        assert normalise(got) == normalise(want), key


def label_sets(obj: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    paths = [("metadata", "labels"), ("spec", "template", "metadata", "labels")]
    return [(p, dict_at(obj, p)) for p in paths if dict_at(obj, p)]


def dict_at(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path:
        obj = obj.get(part) or {}
    return obj


# -- conventions of cert-manager's and ESO's charts ------------------------------------------


def pod_spec(objects: dict[Key, dict[str, Any]], namespace: str = "tokensync-system") -> Any:
    deployments = [o for k, o in objects.items() if k[0] == "Deployment" and k[1] == namespace]
    (deployment,) = deployments
    return deployment["spec"]["template"]["spec"]


def test_security_contexts_are_values_and_openshift_style_renders(helm_bin: Path) -> None:
    default = pod_spec(by_key(render(helm_bin)))
    assert default["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    openshift = pod_spec(by_key(render(helm_bin, *MODES["openshift"])))
    assert openshift["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = openshift["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_bring_your_own_serviceaccount_and_rbac(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, *MODES["bring-your-own-serviceaccount"]))
    assert not [k for k in objects if k[0] == "ServiceAccount"]
    # The one binding left is the admission policy's marker, which grants nothing (a verb
    # on a resource that does not exist): it names whom the policies apply to, so it
    # follows the ServiceAccount in use.
    marker = ("ClusterRoleBinding", "", "tokensync-admission-subject")
    assert [k for k in objects if k[0] in ("Role", "RoleBinding", "ClusterRoleBinding")] == [marker]
    assert objects[marker]["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync-byo", "namespace": "tokensync-system"}
    ]
    assert pod_spec(objects)["serviceAccountName"] == "tokensync-byo"
    # The user roles aggregated into view/edit/admin are not the operator's RBAC.
    assert ("ClusterRole", "", "tokensync-view") in objects
    # With replicas and workload identity too, nothing of the operator's own RBAC.
    more = by_key(
        render(
            helm_bin,
            *MODES["bring-your-own-serviceaccount"],
            "--set=replicas=2",
            "--set=workloadIdentity.enabled=true",
        )
    )
    assert not [
        k for k in more if k[0] in ("Role", "RoleBinding", "ClusterRoleBinding") and k != marker
    ]
    default_sa = by_key(render(helm_bin, "--set=serviceAccount.create=false"))
    assert pod_spec(default_sa)["serviceAccountName"] == "default"


def test_names_namespace_labels_and_extras(helm_bin: Path) -> None:
    objects = by_key(render(helm_bin, *MODES["overrides"]))
    namespaced = [k for k in objects if k[1]]
    assert namespaced and {k[1] for k in namespaced} == {"ops"}
    assert ("Deployment", "ops", "tokensync-tsync") in objects
    for key, obj in objects.items():
        assert obj["metadata"]["labels"]["team"] == "platform", key
    deployment = objects[("Deployment", "ops", "tokensync-tsync")]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "tsync",
        "app.kubernetes.io/component": "operator",
        INSTANCE: "tokensync",
    }
    binding = objects[("ClusterRoleBinding", "", "tokensync-tsync-operator")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync-tsync", "namespace": "ops"}
    ]
    pod = pod_spec(objects, "ops")
    assert pod["volumes"][-1] == {"name": "corporate-ca", "configMap": {"name": "corporate-ca"}}
    (container,) = pod["containers"]
    assert container["volumeMounts"][-1] == {
        "name": "corporate-ca",
        "mountPath": "/etc/corporate-ca",
        "readOnly": True,
    }
    assert {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/corporate-ca/ca.crt"} in container["env"]
    assert container["args"][-1] == "--max-requests=8"
    assert "annotations" not in objects[CRD_KEY]["metadata"]  # crds.keep=false


def test_two_releases_select_only_their_own_pods(helm_bin: Path) -> None:
    first = by_key(render(helm_bin, release="one", include_crds=False))
    second = by_key(render(helm_bin, release="two", include_crds=False))
    for objects, release in ((first, "one"), (second, "two")):
        deployment = objects[("Deployment", "tokensync-system", f"{release}-tokensync")]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[INSTANCE] == release
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        service = objects[("Service", "tokensync-system", f"{release}-tokensync-metrics")]
        assert service["spec"]["selector"] == selector
    # No object of one release has the name of the other's.
    assert not set(first) & set(second) - {CRD_KEY}


def test_monitoring_follows_the_release(helm_bin: Path) -> None:
    deploy_rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    same = by_key(render(helm_bin, *MODES["monitoring"]))
    rule = same[("PrometheusRule", "tokensync-system", "tokensync")]
    assert rule["spec"] == deploy_rule["spec"]  # release tokensync: deploy/'s job
    other = by_key(render(helm_bin, *MODES["monitoring"], release="acme", namespace="ops"))
    rule = other[("PrometheusRule", "ops", "acme-tokensync")]
    assert rule["spec"] == replace_in_strings(
        deploy_rule["spec"], 'job="tokensync-metrics"', 'job="acme-tokensync-metrics"'
    )
    dashboard = other[("ConfigMap", "ops", "acme-tokensync-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["tokensync.json"])
    source = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    (job,) = [v for v in board["templating"]["list"] if v["name"] == "job"]
    assert job["current"] == {"text": "acme-tokensync-metrics", "value": "acme-tokensync-metrics"}
    job["current"] = {}
    assert board == source
    assert not [k for k in by_key(render(helm_bin)) if k[0] in ("PrometheusRule", "ConfigMap")]


def replace_in_strings(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: replace_in_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_in_strings(v, old, new) for v in value]
    return value


def test_notes_link_the_docs_and_chart_has_an_icon(helm_bin: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["icon"].endswith("/charts/tokensync/icon.svg")
    assert (CHART / "icon.svg").read_text().startswith("<svg")
    lint = helm(helm_bin, "lint", str(CHART), "--strict")
    assert "icon is recommended" not in lint.stdout
    # NOTES.txt (the docs link, `tokensync doctor`): test_chart_server.py, which installs.
