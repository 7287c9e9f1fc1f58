"""rolloutRestart: after a new token is written, restart the listed workloads that read it
at start (environment variables, subPath mounts) by setting one pod template annotation,
as `kubectl rollout restart` does with its own. Decisions here are pure; the controller
sends the patches (kube.restart_workload) and posts what this module says.

Least privilege: the operator holds no permission on workloads by default. It restarts
only with --enable-rollout-restart (the deploy/rollout-restart overlay) and only what the
namespace granted it, workload by workload, in RBAC (`patch` with a resourceName)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokensync.spec import CredentialSpec, WorkloadRef

RESOURCES = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}
# As in the minting hint of tokensync.workload: the install decides the name.
OPERATOR_SERVICE_ACCOUNT = "<operator namespace>:<operator ServiceAccount>"


@dataclass(frozen=True)
class Outcome:
    """What happened to one workload: None (restarted) or the HTTP status of the refusal."""

    workload: WorkloadRef
    status: int | None


def targets(spec: CredentialSpec, enabled: bool) -> tuple[WorkloadRef, ...]:
    """The workloads to restart after a new token: none unless the operator allows it."""
    return spec.rollout_restart if enabled else ()


def disabled_warning(spec: CredentialSpec, enabled: bool) -> str | None:
    """A status warning for a credential that lists workloads the operator will not touch."""
    if not spec.rollout_restart or enabled:
        return None
    return (
        "spec.rolloutRestart is ignored: the operator runs without --enable-rollout-restart "
        "(the deploy/rollout-restart overlay)"
    )


def grant_commands(namespace: str, workload: WorkloadRef) -> str:
    """The two commands a namespace admin runs to let the operator restart `workload`."""
    role = f"tokensync-restart-{workload.kind.lower()}-{workload.name}"
    resource = f"{RESOURCES[workload.kind]}.apps"
    return (
        f"kubectl -n {namespace} create role {role} --verb=patch "
        f"--resource={resource} --resource-name={workload.name} && "
        f"kubectl -n {namespace} create rolebinding {role} --role={role} "
        f"--serviceaccount={OPERATOR_SERVICE_ACCOUNT}"
    )


def failure_message(namespace: str, outcome: Outcome) -> str:
    """One line for a Warning event about a workload that was not restarted."""
    kind, name = outcome.workload.kind, outcome.workload.name
    if outcome.status == 403:
        return (
            f"{kind} {name!r} was not restarted: the namespace has not granted the operator "
            f"patch on it ({grant_commands(namespace, outcome.workload)})"
        )
    if outcome.status == 404:
        return f"{kind} {name!r} was not restarted: it does not exist"
    return f"{kind} {name!r} was not restarted: the API server answered {outcome.status}"


def summary(outcomes: Iterable[Outcome]) -> str | None:
    """The Normal event's message after restarts, or None when nothing was restarted."""
    done = [f"{o.workload.kind} {o.workload.name}" for o in outcomes if o.status is None]
    return f"restarted after the new token: {', '.join(done)}" if done else None
