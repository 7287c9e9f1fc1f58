"""`tokensync doctor`: is the installation healthy, and if not, what is wrong?

Checks, with the user's kubeconfig: the CRD (installed, established, serving v1alpha1, and
the same schema as this tokensync's), the operator's Deployment (found by its labels,
ready, and why not), its Lease when it runs with --peering, its ServiceAccount's RBAC
(asked of the API server's authorizer with SubjectAccessReviews) and the admission policy
that limits its Secret writes. Each check is a pure function of the objects read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from tokensync import __version__, crd, statuscmd

OK, WARN, FAIL = "ok", "warn", "FAIL"
OPERATOR_SELECTOR = "app.kubernetes.io/name=tokensync,app.kubernetes.io/component=operator"
INSTALL = "helm upgrade --install tokensync charts/tokensync, or kubectl apply -k deploy/"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    what: str
    detail: str
    fix: str | None = None


# --- the checks (pure) -------------------------------------------------------------------


def check_crd(installed: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> Finding:
    what = f"CRD {crd.CRD_NAME}"
    apply = "helm upgrade (crds.enabled=true), or kubectl apply -f crds/oauth2credential.yaml"
    if installed is None:
        return Finding(FAIL, what, "not installed", f"install it: {INSTALL}")
    version = crd.version_of(installed)
    if version is None or not version.get("served"):
        served = [v["name"] for v in installed["spec"].get("versions", []) if v.get("served")]
        return Finding(
            FAIL,
            what,
            f"does not serve {crd.VERSION} (serves {', '.join(served) or 'nothing'}); "
            f"tokensync {__version__} needs {crd.VERSION}",
            f"upgrade it: {apply}",
        )
    established = statuscmd.condition(installed.get("status") or {}, "Established")
    if established.get("status") != "True":
        return Finding(FAIL, what, f"not established: {established.get('message', 'pending')}")
    mine = crd.version_of(ours) or {}
    differs = [
        part
        for part in ("schema", "additionalPrinterColumns", "subresources")
        if version.get(part) != mine.get(part)
    ]
    if differs:
        return Finding(
            WARN,
            what,
            f"{crd.VERSION} is served, but its {' and '.join(differs)} differ from tokensync "
            f"{__version__}'s (an older or newer CRD)",
            f"install the CRD of the operator you run: {apply}",
        )
    return Finding(OK, what, f"{crd.VERSION} served, same schema as tokensync {__version__}")


@dataclass(frozen=True)
class Operator:
    """What doctor needs of the operator's Deployment."""

    namespace: str
    name: str
    service_account: str
    all_namespaces: bool
    namespaces: tuple[str, ...]
    lease: str | None
    lease_namespace: str
    selector: Mapping[str, str]
    shards: int | None = None  # --shards: `lease` is the prefix of the shard Leases


def operator_of(deployment: Mapping[str, Any]) -> Operator:
    metadata, spec = deployment["metadata"], deployment.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or [{}]
    args = list(containers[0].get("args") or [])
    values = _flag_values(args)
    return Operator(
        namespace=metadata["namespace"],
        name=metadata["name"],
        service_account=pod.get("serviceAccountName") or "default",
        all_namespaces="--all-namespaces" in args or "-A" in args,
        namespaces=tuple(values.get("--namespace", [])),
        lease=(values.get("--peering") or [None])[-1],
        lease_namespace=(values.get("--leader-election-namespace") or [metadata["namespace"]])[-1],
        selector=(spec.get("selector") or {}).get("matchLabels") or {},
        shards=_int((values.get("--shards") or [None])[-1]),
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _flag_values(args: Sequence[str]) -> dict[str, list[str]]:
    """--flag=value and --flag value pairs of a container's args."""
    values: dict[str, list[str]] = {}
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            flag, value = arg.split("=", 1)
        elif index + 1 < len(args) and not args[index + 1].startswith("-"):
            flag, value = arg, args[index + 1]
        else:
            continue
        values.setdefault(flag, []).append(value)
    return values


def check_deployment(
    deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], where: str
) -> Finding:
    if not deployments:
        return Finding(
            FAIL,
            "operator Deployment",
            f"none found {where} (labels {OPERATOR_SELECTOR})",
            f"install the operator: {INSTALL}; or pass -n with its namespace",
        )
    if len(deployments) > 1:
        names = ", ".join(
            f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in deployments
        )
        extra = f" ({len(deployments)} found: {names}; checking the first)"
    else:
        extra = ""
    deployment = deployments[0]
    meta = deployment["metadata"]
    what = f"operator Deployment {meta['namespace']}/{meta['name']}"
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    image = (
        (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {})
        .get("containers", [{}])[0]
        .get("image", "?")
    )
    if wanted == 0:
        return Finding(FAIL, what, f"scaled to 0 replicas{extra}", "kubectl scale --replicas=1")
    if ready < 1:
        reasons = pod_problems(pods)
        detail = f"0/{wanted} replicas ready{extra}" + (f": {reasons}" if reasons else "")
        ns = deployment["metadata"]["namespace"]
        return Finding(
            FAIL,
            what,
            detail,
            f"kubectl -n {ns} describe pods -l {OPERATOR_SELECTOR}; "
            f"kubectl -n {ns} logs deployment/{deployment['metadata']['name']}",
        )
    return Finding(OK, what, f"{ready}/{wanted} replicas ready, image {image}{extra}")


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> str:
    """Why the operator's pods are not ready, in kubectl's words (CrashLoopBackOff, ...)."""
    found = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason"):
                found.append(f"pod {name}: {waiting['reason']}")
        if not status.get("containerStatuses"):
            scheduled = statuscmd.condition(status, "PodScheduled")
            if scheduled.get("status") == "False":
                found.append(f"pod {name}: not scheduled ({scheduled.get('reason', '')})")
            else:
                found.append(f"pod {name}: {status.get('phase', 'Pending')}")
    if not pods:
        return "no pods (see the ReplicaSet's events)"
    return "; ".join(found)


def check_lease(
    operator: Operator, lease: Mapping[str, Any] | None, now: datetime
) -> Finding | None:
    if operator.lease is None:
        return None
    what = f"Lease {operator.lease_namespace}/{operator.lease}"
    if lease is None:
        return Finding(
            FAIL, what, "missing: no replica has taken the lead", "check the operator's logs"
        )
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    renewed = statuscmd.parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 15
    if not holder:
        return Finding(FAIL, what, "held by nobody (released, no replica took over)")
    if renewed is None or renewed + timedelta(seconds=duration) < now:
        age = "never" if renewed is None else statuscmd.relative(renewed, now)
        return Finding(
            FAIL,
            what,
            f"held by {holder} but not renewed (last {age}): the leader is gone or stuck",
            "check the operator's pods and logs",
        )
    return Finding(OK, what, f"held by {holder}, renewed {statuscmd.relative(renewed, now)}")


def check_shards(
    operator: Operator, leases: Sequence[Mapping[str, Any]] | None, now: datetime
) -> Finding | None:
    """With --shards: every shard Lease held and renewed within its duration."""
    if operator.lease is None or operator.shards is None:
        return None
    what = (
        f"shard Leases {operator.lease_namespace}/{operator.lease}-shard-0..{operator.shards - 1}"
    )
    by_name = {(lease.get("metadata") or {}).get("name"): lease for lease in leases or []}
    holders: dict[str, int] = {}
    unserved = []
    for shard in range(operator.shards):
        spec = (by_name.get(f"{operator.lease}-shard-{shard}") or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = statuscmd.parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or 15
        if not holder or renewed is None or renewed + timedelta(seconds=duration) < now:
            unserved.append(str(shard))
            continue
        holders[holder] = holders.get(holder, 0) + 1
    if unserved:
        return Finding(
            FAIL,
            what,
            f"{len(unserved)} of {operator.shards} not held or not renewed (shards "
            f"{', '.join(unserved[:10])}{', ...' if len(unserved) > 10 else ''}): their "
            "credentials are not served",
            "check the operator's pods and logs",
        )
    share = ", ".join(f"{holder}: {count}" for holder, count in sorted(holders.items()))
    return Finding(OK, what, f"all held by {len(holders)} replicas ({share})")


# (verb, group, resource, subresource) the operator needs in each watched namespace.
NEEDED: tuple[tuple[str, str, str, str], ...] = (
    ("list", "tokensync.dev", "oauth2credentials", ""),
    ("watch", "tokensync.dev", "oauth2credentials", ""),
    ("patch", "tokensync.dev", "oauth2credentials", "status"),
    ("get", "", "secrets", ""),
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("create", "", "secrets", ""),
    ("patch", "", "secrets", ""),
    ("list", "", "configmaps", ""),
    ("watch", "", "configmaps", ""),
    ("create", "", "events", ""),
)


def access_reviews(operator: Operator) -> list[dict[str, Any]]:
    """The SubjectAccessReviews that ask whether the operator may do its job."""
    user = f"system:serviceaccount:{operator.namespace}:{operator.service_account}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{operator.namespace}"]
    scopes = [""] if operator.all_namespaces else list(operator.namespaces)
    reviews = []
    for namespace in scopes:
        for verb, group, resource, sub in NEEDED:
            attributes = {"verb": verb, "group": group, "resource": resource}
            if sub:
                attributes["subresource"] = sub
            if namespace:
                attributes["namespace"] = namespace
            reviews.append(_review(user, groups, attributes))
    if operator.lease and operator.shards is not None:
        for verb in ("get", "list", "create", "update"):
            attributes = {
                "verb": verb,
                "group": "coordination.k8s.io",
                "resource": "leases",
                "namespace": operator.lease_namespace,
            }
            reviews.append(_review(user, groups, attributes))
    elif operator.lease:
        for verb in ("get", "update"):
            attributes = {
                "verb": verb,
                "group": "coordination.k8s.io",
                "resource": "leases",
                "name": operator.lease,
                "namespace": operator.lease_namespace,
            }
            reviews.append(_review(user, groups, attributes))
    return reviews


def _review(user: str, groups: list[str], attributes: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
    }


def _allowed(cluster: _Cluster, review: dict[str, Any]) -> bool:
    answer = cluster.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool((answer.get("status") or {}).get("allowed"))


def check_rbac(
    operator: Operator, reviews: Sequence[Mapping[str, Any]], allowed: Sequence[bool]
) -> Finding:
    what = f"RBAC of ServiceAccount {operator.namespace}/{operator.service_account}"
    missing = []
    for review, ok in zip(reviews, allowed, strict=True):
        if ok:
            continue
        a = review["spec"]["resourceAttributes"]
        resource = a["resource"] + (f"/{a['subresource']}" if a.get("subresource") else "")
        group = f".{a['group']}" if a["group"] else ""
        where = f" in {a['namespace']}" if a.get("namespace") else " cluster-wide"
        missing.append(f"{a['verb']} {resource}{group}{where}")
    scope = "all namespaces" if operator.all_namespaces else ", ".join(operator.namespaces)
    if not operator.all_namespaces and not operator.namespaces:
        return Finding(WARN, what, "the operator's args name no --namespace or --all-namespaces")
    if missing:
        shown = "; ".join(missing[:6]) + (
            f"; and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        return Finding(
            FAIL,
            what,
            f"may not: {shown}",
            "grant the operator's rules (helm: rbac.create=true; kustomize: deploy/ or "
            "deploy/namespaced)",
        )
    return Finding(OK, what, f"may do its job in {scope} ({len(reviews)} permissions checked)")


# The policies of deploy/ and the chart match whoever holds this marker permission (a verb
# on a resource that does not exist), granted by the ClusterRoleBinding
# tokensync-admission-subject, and not whoever also holds `exempt` (a wildcard role).
MARKER = {"group": "tokensync.dev", "resource": "admissionpolicies", "name": "operator"}


def marker_reviews(operator: Operator) -> list[dict[str, Any]]:
    """SubjectAccessReviews of the operator for the marker's `subject` and `exempt`."""
    user = f"system:serviceaccount:{operator.namespace}:{operator.service_account}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{operator.namespace}"]
    return [_review(user, groups, {**MARKER, "verb": verb}) for verb in ("subject", "exempt")]


def _matches_operator(expression: str, user: str, marked: bool) -> bool:
    """Whether a policy's match condition selects the operator: by its literal username,
    or by the marker permission it holds (and no wildcard that exempts it)."""
    return user in expression or (
        marked and "'admissionpolicies'" in expression and "'subject'" in expression
    )


def check_admission_policy(
    operator: Operator,
    policies: Sequence[Mapping[str, Any]] | None,
    bindings: Sequence[Mapping[str, Any]] | None,
    marker: tuple[bool, bool] = (False, False),
) -> Finding:
    """`marker`: whether the operator may `subject` and `exempt` on the marker resource."""
    what = "admission policy"
    if policies is None or bindings is None:
        return Finding(
            WARN,
            what,
            "ValidatingAdmissionPolicy is not served (Kubernetes >= 1.30 serves it): nothing "
            "limits the operator's Secret writes to its own Secrets",
        )
    user = f"system:serviceaccount:{operator.namespace}:{operator.service_account}"
    subject, exempt = marker
    matching = [
        p["metadata"]["name"]
        for p in policies
        if any(
            _matches_operator(c.get("expression") or "", user, subject and not exempt)
            for c in (p.get("spec") or {}).get("matchConditions") or []
        )
    ]
    if not matching:
        why = (
            "it holds a wildcard role, which exempts it from the policies"
            if exempt
            else "it is not a subject of the ClusterRoleBinding tokensync-admission-subject"
        )
        return Finding(
            WARN,
            what,
            f"no ValidatingAdmissionPolicy applies to {user} ({why}): its Secret writes are "
            "not limited to the Opaque Secrets it manages",
            "helm: admissionPolicy.enabled=true; kustomize: deploy/base/admission-policy.yaml "
            "(both bind the marker to the operator's ServiceAccount)",
        )
    bound = {(b.get("spec") or {}).get("policyName") for b in bindings}
    unbound = [name for name in matching if name not in bound]
    if unbound:
        return Finding(
            FAIL,
            what,
            f"ValidatingAdmissionPolicy {unbound[0]} has no binding, so it is not enforced",
            "apply its ValidatingAdmissionPolicyBinding (it comes with the chart and deploy/)",
        )
    return Finding(OK, what, f"ValidatingAdmissionPolicy {matching[0]} is bound and applies")


def render(findings: Sequence[Finding], out: TextIO) -> None:
    for finding in findings:
        out.write(f"[{finding.level:<4}] {finding.what}: {finding.detail}\n")
        if finding.fix and finding.level != OK:
            out.write(f"       fix: {finding.fix}\n")
    failed = sum(f.level == FAIL for f in findings)
    warned = sum(f.level == WARN for f in findings)
    if failed:
        out.write(f"{failed} problem(s), {warned} warning(s).\n")
    elif warned:
        out.write(f"No problems; {warned} warning(s).\n")
    else:
        out.write("Everything looks right.\n")


# --- reading the cluster -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="the operator's namespace (default: wherever a Deployment labelled "
        f"{OPERATOR_SELECTOR} is, else {statuscmd.OPERATOR_NAMESPACE})",
    )
    statuscmd.add_connection_arguments(parser)


class _Cluster:
    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from tokensync.kube import Kube, KubeError

        configuration, _ = statuscmd.load_kubeconfig(kubeconfig, context)
        self._kube = Kube(configuration)
        self._error = KubeError

    def get(self, path: str) -> dict[str, Any] | None:
        return self._kube._call("GET", path, missing_ok=True)

    def list(self, path: str) -> list[dict[str, Any]] | None:
        found = self.get(path)
        return None if found is None else list(found.get("items") or [])

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._kube._call("POST", path, body) or {}


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    return statuscmd.guarded("doctor", lambda: _run(args, out, lambda: datetime.now(UTC)), err)


def _run(args: argparse.Namespace, out: TextIO, clock: Callable[[], datetime]) -> int:
    cluster = _Cluster(args.kubeconfig, args.context)
    findings = [
        check_crd(
            cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}"),
            crd.packaged(),
        )
    ]
    selector = OPERATOR_SELECTOR.replace("/", "%2F").replace(",", "%2C")
    deployments = None
    if not args.namespace:
        try:
            deployments = cluster.list(f"/apis/apps/v1/deployments?labelSelector={selector}")
        except cluster._error:  # no cluster-wide list: look where it usually is
            deployments = None
    namespace = args.namespace or statuscmd.OPERATOR_NAMESPACE
    if deployments is None:
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments?labelSelector={selector}"
        deployments = cluster.list(path) or []
    where = "in any namespace" if not args.namespace and deployments else f"in {namespace}"
    pods: list[dict[str, Any]] = []
    if deployments:
        operator = operator_of(deployments[0])
        labels = ",".join(f"{k}={v}" for k, v in operator.selector.items())
        labels = labels.replace("/", "%2F").replace(",", "%2C")
        pods = (
            cluster.list(f"/api/v1/namespaces/{operator.namespace}/pods?labelSelector={labels}")
            or []
        )
    findings.append(check_deployment(deployments, pods, where))
    if deployments:
        lease = None
        leases_path = f"/apis/coordination.k8s.io/v1/namespaces/{operator.lease_namespace}/leases"
        if operator.lease and operator.shards is not None:
            selector = f"tokensync.dev%2Flease-set%3D{operator.lease}"
            shard_leases = cluster.list(f"{leases_path}?labelSelector={selector}")
            lease_finding = check_shards(operator, shard_leases, clock())
        else:
            if operator.lease:
                lease = cluster.get(f"{leases_path}/{operator.lease}")
            lease_finding = check_lease(operator, lease, clock())
        if lease_finding:
            findings.append(lease_finding)
        reviews = access_reviews(operator)
        allowed = [_allowed(cluster, r) for r in reviews]
        findings.append(check_rbac(operator, reviews, allowed))
        subject, exempt = (_allowed(cluster, r) for r in marker_reviews(operator))
        base = "/apis/admissionregistration.k8s.io/v1"
        findings.append(
            check_admission_policy(
                operator,
                cluster.list(f"{base}/validatingadmissionpolicies"),
                cluster.list(f"{base}/validatingadmissionpolicybindings"),
                (subject, exempt),
            )
        )
    render(findings, out)
    return 1 if any(f.level == FAIL for f in findings) else 0
