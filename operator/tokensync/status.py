"""status of an OAuth2Credential: conditions with metav1.Condition semantics (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokensync.secret import format_time

READY = "Ready"
REFRESHING = "Refreshing"
# kstatus (sigs.k8s.io/cli-utils), read by Flux, kpt, `kubectl wait` and our Argo CD check.
RECONCILING = "Reconciling"
STALLED = "Stalled"
# status.observedGeneration follows the Kubernetes convention (the generation this status
# was computed for), so kstatus can say Failed for a broken edit; the generation the held
# token was issued for is kept here, for the "spec changed" trigger.
TOKEN_GENERATION = "tokenGeneration"
# Ready reasons that no retry can fix: someone must change the spec, a source or a Secret.
NEEDS_A_PERSON = frozenset(
    {
        "InvalidSpec",
        "ReferenceNotFound",
        "ReferenceNotLabeled",
        "ReferenceKeyMissing",
        "ReferenceInvalid",
        "TokenURLNotAllowed",
        "DiscoveryFailed",
        "SecretConflict",
    }
)
# lastFailure.kind values retried on the slow schedule: the endpoint refused the request.
PERSISTENT_FAILURES = frozenset({"configuration", "protocol"})
MAX_MESSAGE = 1024  # conditions' message has no schema limit, but status must stay small


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False"
    reason: str
    message: str


@dataclass(frozen=True)
class Report:
    """What one pass of the control loop found; `fields` are top-level status fields to
    set (a value of None removes the field)."""

    ready: Condition
    refreshing: Condition | None = None  # None removes the Refreshing condition
    fields: Mapping[str, Any] = field(default_factory=dict)


def merged_conditions(
    current: list[Mapping[str, Any]],
    wanted: Mapping[str, Condition | None],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """Apply wanted conditions (None removes); lastTransitionTime moves only when the
    status flips, as metav1.Condition prescribes."""
    by_type = {c.get("type"): dict(c) for c in current if c.get("type")}
    for type_, condition in wanted.items():
        if condition is None:
            by_type.pop(type_, None)
            continue
        old = by_type.get(type_)
        transition = (
            old["lastTransitionTime"]
            if old and old.get("status") == condition.status and old.get("lastTransitionTime")
            else format_time(now)
        )
        by_type[type_] = {
            "type": type_,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message[:MAX_MESSAGE],
            "lastTransitionTime": transition,
            "observedGeneration": generation,
        }
    order = {READY: 0, REFRESHING: 1, RECONCILING: 2, STALLED: 3}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], 4), c["type"]))


def served_generation(status: Mapping[str, Any]) -> int | None:
    """The generation the held token was issued for (None: none issued). A status written
    before tokenGeneration existed kept it in observedGeneration, next to lastRefreshTime."""
    if TOKEN_GENERATION in status:
        return status[TOKEN_GENERATION]
    return status.get("observedGeneration") if status.get("lastRefreshTime") else None


def gitops_conditions(
    ready: Condition, status: Mapping[str, Any], generation: int
) -> dict[str, Condition | None]:
    """Reconciling and Stalled (kstatus) from Ready and the status fields to be written.

    Stalled=True, with Ready's reason, while only a person can help: a reason in
    NEEDS_A_PERSON, or a token request the endpoint refuses (configuration or protocol
    class) with no valid token left. Reconciling=True while tokensync is still working
    towards Ready: the first token or one for a changed spec is pending, or a transient
    failure is being retried. Otherwise both are removed; Suspended is neither.
    """
    failure_kind = (status.get("lastFailure") or {}).get("kind")
    stalled = ready.status == "False" and (
        ready.reason in NEEDS_A_PERSON
        or (
            ready.reason in ("TokenRequestFailed", "TokenExpired")
            and failure_kind in PERSISTENT_FAILURES
        )
    )
    if stalled:
        return {RECONCILING: None, STALLED: Condition("True", ready.reason, ready.message)}
    if ready.status == "False" and ready.reason != "Suspended":
        return {RECONCILING: Condition("True", ready.reason, ready.message), STALLED: None}
    if ready.status == "True" and served_generation(status) != generation:
        message = f"spec generation {generation} is not yet served"
        return {RECONCILING: Condition("True", "Pending", message), STALLED: None}
    return {RECONCILING: None, STALLED: None}


def status_patch(
    current: Mapping[str, Any], report: Report, generation: int, now: datetime
) -> dict[str, Any] | None:
    """A merge patch for .status that brings it to the report, or None if nothing changes.

    A report's `observedGeneration` field names the generation of the token it issued
    (the controller's view); it is stored as tokenGeneration, and status.observedGeneration
    becomes the generation this status describes, as kstatus expects."""
    fields = dict(report.fields)
    if "observedGeneration" in fields:
        fields[TOKEN_GENERATION] = fields.pop("observedGeneration")
    elif TOKEN_GENERATION not in current and served_generation(current) is not None:
        fields[TOKEN_GENERATION] = served_generation(current)  # adopt the old layout once
    fields["observedGeneration"] = generation
    after = apply_patch(current, fields)
    conditions = merged_conditions(
        list(current.get("conditions") or []),
        {
            READY: report.ready,
            REFRESHING: report.refreshing,
            **gitops_conditions(report.ready, after, generation),
        },
        generation,
        now,
    )
    patch: dict[str, Any] = {}
    if conditions != list(current.get("conditions") or []):
        patch["conditions"] = conditions
    for key, value in fields.items():
        if current.get(key) != value:
            patch[key] = value
    return patch or None


def apply_patch(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """What .status looks like after a merge patch (None deletes, as the server does)."""
    result = dict(current)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def condition_of(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return condition
    return None
