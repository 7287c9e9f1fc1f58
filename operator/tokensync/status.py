"""status of an OAuth2Credential: conditions with metav1.Condition semantics (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokensync.secret import format_time

READY = "Ready"
REFRESHING = "Refreshing"
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
    order = {READY: 0, REFRESHING: 1}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], 2), c["type"]))


def status_patch(
    current: Mapping[str, Any], report: Report, generation: int, now: datetime
) -> dict[str, Any] | None:
    """A merge patch for .status that brings it to the report, or None if nothing changes."""
    conditions = merged_conditions(
        list(current.get("conditions") or []),
        {READY: report.ready, REFRESHING: report.refreshing},
        generation,
        now,
    )
    patch: dict[str, Any] = {}
    if conditions != list(current.get("conditions") or []):
        patch["conditions"] = conditions
    for key, value in report.fields.items():
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
