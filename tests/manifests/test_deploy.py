"""deploy/, checked without a cluster: the Deployment's hardening, the operator's RBAC
rules (exactly the documented set, the same in the ClusterRole and in the namespaced
Roles), the aggregated user roles, and the overlays' arguments.

Rendering with kustomize and the API server's acceptance: test_manifests_server.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from manifestlib import DEPLOY, load_docs

# What the operator does with the API, one rule per line. A change here is a change of the
# operator's privileges: review it together with deploy/base/rbac-operator.yaml.
OPERATOR_RULES = [
    ("tokensync.dev", "oauth2credentials", ["list", "watch"]),
    ("tokensync.dev", "oauth2credentials/status", ["patch"]),
    ("tokensync.dev", "oauth2credentials/finalizers", ["update"]),
    ("", "secrets", ["get", "list", "watch", "create", "patch", "delete"]),
    ("", "configmaps", ["get", "list", "watch"]),
    ("", "events", ["create"]),
]


def flat_rules(rules: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    return [
        (group, resource, rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]


def by_kind(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = load_docs(DEPLOY / path)
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return by_kind("base/deployment.yaml")[("Deployment", "tokensync")]


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_one_replica_recreated_never_two(deployment: dict[str, Any]) -> None:
    assert deployment["metadata"]["namespace"] == "tokensync-system"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_pod_runs_restricted(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tokensync"
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert isinstance(pod_security["runAsUser"], int) and pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/tokensync/tokensync:0.1.0"


def test_memory_backed_tmp(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/tmp"]]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOKENSYNC_TMPDIR"] == "/tmp"


def test_resources_probes_and_ports(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    args = container["args"]
    assert args[:2] == ["run", "--all-namespaces"]
    assert "--health-port=8080" in args and "--metrics-port=9090" in args


def test_metrics_service_targets_the_operator(deployment: dict[str, Any]) -> None:
    service = by_kind("base/service.yaml")[("Service", "tokensync-metrics")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (9090, "metrics")


def test_operator_cluster_role_grants_exactly_what_the_operator_uses() -> None:
    objects = by_kind("base/rbac-operator.yaml")
    role = objects[("ClusterRole", "tokensync-operator")]
    assert flat_rules(role["rules"]) == OPERATOR_RULES
    binding = objects[("ClusterRoleBinding", "tokensync-operator")]
    assert binding["roleRef"]["name"] == "tokensync-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]


def test_every_operator_rule_is_explained() -> None:
    """One comment per rule, saying why (a reviewer reads the file, not this test)."""
    text = (DEPLOY / "base" / "rbac-operator.yaml").read_text()
    rules = text.split("rules:", 1)[1].split("---", 1)[0]
    comments_before = re.findall(r"((?:\n  #[^\n]*)+)\n  - apiGroups:", rules)
    assert len(comments_before) == len(OPERATOR_RULES)


def test_aggregated_user_roles() -> None:
    objects = by_kind("base/rbac-aggregated.yaml")
    view = objects[("ClusterRole", "tokensync-view")]
    edit = objects[("ClusterRole", "tokensync-edit")]
    view_labels = view["metadata"]["labels"]
    for role in ("view", "edit", "admin"):
        assert view_labels[f"rbac.authorization.k8s.io/aggregate-to-{role}"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    for role in (view, edit):
        for _group, resource, _verbs in flat_rules(role["rules"]):
            assert resource.startswith("oauth2credentials"), "user roles never include Secrets"
    assert sorted(flat_rules(view["rules"])[0][2]) == ["get", "list", "watch"]
    assert sorted(flat_rules(edit["rules"])[0][2]) == sorted(
        ["create", "update", "patch", "delete", "deletecollection"]
    )


def test_namespaced_overlay_has_the_same_rules_per_watched_namespace() -> None:
    docs = load_docs(DEPLOY / "namespaced" / "rbac-namespaced.yaml")
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    (patch,) = load_docs(DEPLOY / "namespaced" / "deployment-args.yaml")
    args = patch[0]["value"] if isinstance(patch, list) else patch["value"]
    watched = [a.removeprefix("--namespace=") for a in args if a.startswith("--namespace=")]
    assert "--all-namespaces" not in args
    assert watched == ["team-a", "team-b"]
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    for namespace in watched:
        assert flat_rules(roles[namespace]["rules"]) == OPERATOR_RULES
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "tokensync-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
        ]


# Leader election for the peering overlay: the one Lease, in the operator's namespace.
LEADER_ELECTION_RULES = [
    ("coordination.k8s.io", "leases", ["get", "update"], ["tokensync"]),
    ("coordination.k8s.io", "leases", ["create"], None),
]


def test_peering_overlay_runs_replicas_with_leader_election() -> None:
    (patch,) = load_docs(DEPLOY / "peering" / "deployment-peering.yaml")
    assert patch["spec"]["replicas"] >= 2
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert "--peering=tokensync" in container["args"]
    assert not any(a.startswith("--leader-election-namespace") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_peering_overlay_grants_only_its_lease() -> None:
    """A Role in tokensync-system for the one Lease: get/update by name, create (which
    resourceNames cannot restrict); nothing cluster-wide, no list/watch/patch/delete."""
    objects = by_kind("peering/rbac-peering.yaml")
    assert set(objects) == {
        ("Role", "tokensync-leader-election"),
        ("RoleBinding", "tokensync-leader-election"),
    }
    role = objects[("Role", "tokensync-leader-election")]
    assert role["metadata"]["namespace"] == "tokensync-system"
    rules = [
        (group, resource, rule["verbs"], rule.get("resourceNames"))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]
    assert rules == LEADER_ELECTION_RULES
    binding = objects[("RoleBinding", "tokensync-leader-election")]
    assert binding["metadata"]["namespace"] == "tokensync-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "tokensync-leader-election",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]


def test_peering_overlay_needs_no_kopf_peering() -> None:
    """kopf runs standalone in every replica: no kopf.dev CRDs or peering objects."""
    for path in (DEPLOY / "peering").glob("*.yaml"):
        assert "kopf" not in json.dumps(load_docs(path)), path.name  # comments may say
    config = load_docs(DEPLOY / "peering" / "kustomization.yaml")[0]
    assert config["resources"] == ["../base", "rbac-peering.yaml", "poddisruptionbudget.yaml"]


def test_sharding_overlay_runs_every_replica_with_shards() -> None:
    (patch,) = load_docs(DEPLOY / "sharding" / "deployment-sharding.yaml")
    assert patch["spec"]["replicas"] >= 3
    assert patch["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert "--peering=tokensync" in container["args"] and "--shards=32" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (budget,) = load_docs(DEPLOY / "sharding" / "poddisruptionbudget.yaml")
    assert budget["spec"]["maxUnavailable"] == 1


def test_sharding_overlay_grants_leases_in_its_namespace_only() -> None:
    """The Lease names are not known in advance, so no resourceNames; Leases only, in
    tokensync-system only, no watch or patch. The admission policy narrows the names."""
    objects = by_kind("sharding/rbac-sharding.yaml")
    role = objects[("Role", "tokensync-sharding")]
    assert role["metadata"]["namespace"] == "tokensync-system"
    assert flat_rules(role["rules"]) == [
        ("coordination.k8s.io", "leases", ["get", "list", "create", "update", "delete"])
    ]
    assert not any("resourceNames" in rule for rule in role["rules"])
    binding = objects[("RoleBinding", "tokensync-sharding")]
    assert binding["roleRef"]["name"] == "tokensync-sharding"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]
    policies = by_kind("sharding/admission-policy-leases.yaml")
    policy = policies[("ValidatingAdmissionPolicy", "tokensync-operator-leases")]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["leases"]
    binding = policies[("ValidatingAdmissionPolicyBinding", "tokensync-operator-leases")]
    assert "Deny" in binding["spec"]["validationActions"]


def test_every_deploy_file_is_part_of_a_kustomization() -> None:
    """Every manifest under deploy/ is installed by some kustomization (and so rendered and
    server-validated by test_manifests_server.py), except the optional deploy/examples/."""
    used = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        config = load_docs(kustomization)[0]
        for entry in config.get("resources", []):
            used.add((kustomization.parent / entry).resolve())
        for patch in config.get("patches", []):
            if "path" in patch:
                used.add((kustomization.parent / patch["path"]).resolve())
    for path in DEPLOY.rglob("*.yaml"):
        if path.name == "kustomization.yaml" or path.parent.name == "examples":
            continue
        assert path.resolve() in used, f"{path.relative_to(DEPLOY)} is not in any kustomization"


# --- the admission policy (issue 9 item 5; enforced for real in
# tests/operator/test_admission_policy.py) ---------------------------------------------------


def operator_username() -> str:
    (account,) = load_docs(DEPLOY / "base" / "serviceaccount.yaml")
    return f"system:serviceaccount:{account['metadata']['namespace']}:{account['metadata']['name']}"


def test_admission_policy_matches_the_operators_secret_writes() -> None:
    objects = by_kind("base/admission-policy.yaml")
    policy = objects[("ValidatingAdmissionPolicy", "tokensync-operator-secrets")]
    binding = objects[("ValidatingAdmissionPolicyBinding", "tokensync-operator-secrets")]
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"]
    assert sorted(rule["operations"]) == ["CREATE", "DELETE", "UPDATE"]
    # The policy applies to the subjects of the marker binding (issue 18: so that it
    # follows an overlay's namespace), which is the ServiceAccount deploy/ runs as.
    (condition,) = spec["matchConditions"]
    expression = " ".join(condition["expression"].split())
    assert "check('subject').allowed()" in expression
    assert "!authorizer" in expression and "check('exempt').allowed()" in expression
    marker = objects[("ClusterRoleBinding", "tokensync-admission-subject")]
    (subject,) = marker["subjects"]
    assert f"system:serviceaccount:{subject['namespace']}:{subject['name']}" == (
        operator_username()
    )
    role = objects[("ClusterRole", "tokensync-admission-subject")]
    assert role["rules"] == [
        {
            "apiGroups": ["tokensync.dev"],
            "resources": ["admissionpolicies"],
            "resourceNames": ["operator"],
            "verbs": ["subject"],
        }
    ]
    text = json.dumps(spec)
    for needed in ("'Opaque'", "'tokensync.dev/credential' in", "object", "oldObject"):
        assert needed in text
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "Deny" in binding["spec"]["validationActions"]
    assert "paramRef" not in binding["spec"] and "matchResources" not in binding["spec"]


def test_base_and_overlays_keep_the_policy_and_metrics_auth() -> None:
    base = load_docs(DEPLOY / "base" / "kustomization.yaml")[0]["resources"]
    assert "admission-policy.yaml" in base and "rbac-metrics.yaml" in base
    for overlay in ("namespaced", "peering", "sharding"):
        for path in (DEPLOY / overlay).glob("*.yaml"):
            for doc in load_docs(path):
                if isinstance(doc, dict) and doc.get("$patch") == "delete":
                    assert doc["metadata"]["name"] == "tokensync-operator", path


# --- metrics access (issue 9 item 8) ---------------------------------------------------------

METRICS_AUTH_RULES = [
    ("authentication.k8s.io", "tokenreviews", ["create"]),
    ("authorization.k8s.io", "subjectaccessreviews", ["create"]),
]


def test_metrics_rbac() -> None:
    objects = by_kind("base/rbac-metrics.yaml")
    auth = objects[("ClusterRole", "tokensync-metrics-auth")]
    assert flat_rules(auth["rules"]) == METRICS_AUTH_RULES
    binding = objects[("ClusterRoleBinding", "tokensync-metrics-auth")]
    assert binding["roleRef"]["name"] == "tokensync-metrics-auth"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tokensync", "namespace": "tokensync-system"}
    ]
    reader = objects[("ClusterRole", "tokensync-metrics-reader")]
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


def test_metrics_are_served_securely_by_default(container: dict[str, Any]) -> None:
    for path in (
        "base/deployment.yaml",
        "peering/deployment-peering.yaml",
        "sharding/deployment-sharding.yaml",
    ):
        assert "--metrics-insecure" not in json.dumps(load_docs(DEPLOY / path))
    assert "--metrics-insecure" not in json.dumps(
        load_docs(DEPLOY / "namespaced" / "deployment-args.yaml")
    )


def test_one_servicemonitor_ships() -> None:
    monitors = [
        path.relative_to(DEPLOY)
        for path in DEPLOY.rglob("*.yaml")
        if any(isinstance(d, dict) and d.get("kind") == "ServiceMonitor" for d in load_docs(path))
    ]
    assert monitors == [Path("monitoring/servicemonitor.yaml")]


def test_servicemonitor_scrapes_https_with_a_token() -> None:
    objects = {
        **by_kind("monitoring/servicemonitor.yaml"),
        **by_kind("examples/prometheus-metrics-reader.yaml"),
    }
    monitor = objects[("ServiceMonitor", "tokensync")]
    service = by_kind("base/service.yaml")[("Service", "tokensync-metrics")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    assert endpoint.get("bearerTokenFile") or endpoint.get("authorization")
    assert endpoint["tlsConfig"].get("insecureSkipVerify") or endpoint["tlsConfig"].get("ca")
    binding = objects[("ClusterRoleBinding", "prometheus-tokensync-metrics")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "tokensync-metrics-reader",
    }
