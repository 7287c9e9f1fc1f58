"""Rendering charts/tokensync with helm and comparing objects with deploy/'s."""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokensync"
DEPLOY = REPO / "deploy"

# (kind, namespace or "", name)
Key = tuple[str, str, str]

# Chart values that render each kustomize variant of deploy/ (release "tokensync" in
# tokensync-system). An entry for an overlay that does not exist yet is compared once it
# does.
OVERLAY_VALUES: dict[str, list[str]] = {
    "": [],
    "namespaced": ["--set=scope=namespaced", "--set=namespaces={team-a,team-b}"],
    "peering": ["--set=replicas=2"],
    "sharding": [
        "--set=replicas=3",
        "--set=sharding.shards=32",
        "--set=podDisruptionBudget.maxUnavailable=1",
    ],
    "workload-identity": ["--set=workloadIdentity.enabled=true"],
    "rollout-restart": ["--set=rolloutRestart.enabled=true"],
}

# Every mode the chart tests lint, render and dry-run.
MODES: dict[str, list[str]] = {
    "default": [],
    "namespaced": OVERLAY_VALUES["namespaced"],
    "peering": OVERLAY_VALUES["peering"],
    "sharding": OVERLAY_VALUES["sharding"],
    "workload-identity": OVERLAY_VALUES["workload-identity"],
    "rollout-restart": OVERLAY_VALUES["rollout-restart"],
    "namespaced-peering-workload-identity": [
        *OVERLAY_VALUES["namespaced"],
        "--set=replicas=3",
        "--set=workloadIdentity.enabled=true",
    ],
    "service-monitor": ["--set=metrics.serviceMonitor.enabled=true"],
    "metrics-cert-secret": [
        "--set=metrics.certSecret=tokensync-metrics-tls",
        "--set=metrics.serviceMonitor.enabled=true",
    ],
    "metrics-insecure": [
        "--set=metrics.insecure=true",
        "--set=metrics.serviceMonitor.enabled=true",
    ],
    "minimal": [
        "--set=admissionPolicy.enabled=false",
        "--set=aggregateRoles=false",
        "--set=metrics.port=0",
        "--set=crds.enabled=false",
    ],
    # The whole monitoring kit of deploy/monitoring/, job= following the release.
    "monitoring": [
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=metrics.prometheusRule.enabled=true",
        "--set=metrics.grafanaDashboard.enabled=true",
    ],
    # OpenShift's restricted SCC assigns the user: no runAsUser / runAsGroup.
    "openshift": [
        "--set=podSecurityContext.runAsUser=null",
        "--set=podSecurityContext.runAsGroup=null",
    ],
    # The user brings the ServiceAccount and its RBAC.
    "bring-your-own-serviceaccount": [
        "--set=serviceAccount.create=false",
        "--set=serviceAccount.name=tokensync-byo",
        "--set=rbac.create=false",
    ],
    "overrides": [
        "--set=nameOverride=tsync",
        "--set=namespaceOverride=ops",
        "--set=commonLabels.team=platform",
        "--set=crds.keep=false",
        "--set=extraVolumes[0].name=corporate-ca",
        "--set=extraVolumes[0].configMap.name=corporate-ca",
        "--set=extraVolumeMounts[0].name=corporate-ca",
        "--set=extraVolumeMounts[0].mountPath=/etc/corporate-ca",
        "--set=extraVolumeMounts[0].readOnly=true",
        "--set=extraEnv[0].name=REQUESTS_CA_BUNDLE",
        "--set=extraEnv[0].value=/etc/corporate-ca/ca.crt",
        "--set=extraArgs={--max-requests=8}",
    ],
}

# Kinds the chart renders that deploy/ gains on another branch (the admission policy of
# the security issue): compared with deploy/ as soon as it has them.
PENDING_IN_DEPLOY: set[str] = set()

# helm's own state (repositories, cache) in a private directory, never the user's.
_HELM_HOME = Path(tempfile.gettempdir()) / f"tokensync-helm-home-{os.getuid()}"


def helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(_HELM_HOME / "cache"),
        "HELM_CONFIG_HOME": str(_HELM_HOME / "config"),
        "HELM_DATA_HOME": str(_HELM_HOME / "data"),
    }
    return subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, check=True, timeout=120, env=env
    )


def render(
    helm_bin: Path,
    *values: str,
    release: str = "tokensync",
    namespace: str = "tokensync-system",
    include_crds: bool = True,
) -> list[dict[str, Any]]:
    """`helm template` with these --set arguments; every object, the CRD included."""
    args = ["template", release, str(CHART), f"--namespace={namespace}", *values]
    if include_crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(helm_bin, *args).stdout) if d]


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def by_key(objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    keyed = {key_of(o): o for o in objects}
    assert len(keyed) == len(objects), "two objects with the same kind, namespace and name"
    return keyed


def _flat_rules(rules: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """RBAC rules as sorted (group, resource, resourceName, verb) grants: the same
    permissions compare equal however they are grouped into rules."""
    return sorted(
        {
            (group, resource, name, verb)
            for rule in rules
            for group in rule.get("apiGroups", [""])
            for resource in rule.get("resources", [])
            for name in rule.get("resourceNames") or [""]
            for verb in rule["verbs"]
        }
    )


INSTANCE = "app.kubernetes.io/instance"


def _drop_instance(value: Any) -> Any:
    """Selectors without the release label, which only the chart adds (so that two
    releases in one namespace select only their own pods)."""
    if isinstance(value, dict):
        return {k: _drop_instance(v) for k, v in value.items() if k != INSTANCE}
    if isinstance(value, list):
        return [_drop_instance(v) for v in value]
    return value


def normalise(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what legitimately differs between helm and kustomize: labels
    (compared separately, as a subset), the release label in selectors, helm's
    resource-policy annotation, rule grouping and the order of env entries."""
    obj = copy.deepcopy(obj)
    annotations = obj["metadata"].get("annotations") or {}
    annotations.pop("helm.sh/resource-policy", None)
    if not annotations:
        obj["metadata"].pop("annotations", None)
    if "spec" in obj and obj["kind"] != "CustomResourceDefinition":
        obj["spec"] = _drop_instance(obj["spec"])
    labels = obj["metadata"].pop("labels", {}) or {}
    # Aggregation labels are behaviour, not decoration: they stay.
    kept = {k: v for k, v in labels.items() if k.startswith("rbac.authorization.k8s.io/")}
    if kept:
        obj["metadata"]["labels"] = kept
    if "rules" in obj:
        obj["rules"] = _flat_rules(obj["rules"])
    template = obj.get("spec", {}).get("template")
    if isinstance(template, dict):
        template.get("metadata", {}).pop("labels", None)
        for container in template.get("spec", {}).get("containers", []):
            container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    return obj
