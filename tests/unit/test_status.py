"""status.py: Ready/Refreshing plus the kstatus conditions Reconciling and Stalled, and
observedGeneration as kstatus reads it (the generation the status describes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokensync.status import (
    Condition,
    Report,
    apply_patch,
    condition_of,
    served_generation,
    status_patch,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ISSUED = Condition("True", "TokenIssued", "Secret 'c' holds a token valid until ...")
PENDING = Condition("False", "Pending", "the first token has not been issued yet")


def written(
    report: Report, generation: int = 1, current: dict[str, Any] | None = None
) -> dict[str, Any]:
    current = current or {}
    return apply_patch(current, status_patch(current, report, generation, NOW) or {})


def types(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def issued(generation: int = 1) -> Report:
    return Report(ready=ISSUED, fields={"observedGeneration": generation, "lastRefreshTime": "t"})


def test_ready_credential_has_neither_reconciling_nor_stalled() -> None:
    status = written(issued())
    assert types(status) == {"Ready": ("True", "TokenIssued")}
    assert status["observedGeneration"] == 1
    assert status["tokenGeneration"] == 1


def test_first_token_pending_is_reconciling() -> None:
    status = written(Report(ready=PENDING, refreshing=Condition("True", "SecretMissing", "m")))
    assert types(status)["Reconciling"] == ("True", "Pending")
    assert "Stalled" not in types(status)
    assert status["observedGeneration"] == 1
    assert served_generation(status) is None


@pytest.mark.parametrize(
    "reason",
    [
        "InvalidSpec",
        "ReferenceNotFound",
        "ReferenceNotLabeled",
        "ReferenceKeyMissing",
        "ReferenceInvalid",
        "TokenURLNotAllowed",
        "DiscoveryFailed",
        "SecretConflict",
    ],
)
def test_problems_that_need_a_person_are_stalled_with_the_ready_reason(reason: str) -> None:
    status = written(Report(ready=Condition("False", reason, "what to fix")))
    assert types(status) == {"Ready": ("False", reason), "Stalled": ("True", reason)}
    stalled = condition_of(status, "Stalled")
    assert stalled is not None and stalled["message"] == "what to fix"


@pytest.mark.parametrize(
    ("kind", "stalled"), [("configuration", True), ("protocol", True), ("transient", False)]
)
@pytest.mark.parametrize("reason", ["TokenRequestFailed", "TokenExpired"])
def test_refused_token_requests_stall_transient_ones_keep_reconciling(
    reason: str, kind: str, stalled: bool
) -> None:
    report = Report(
        ready=Condition("False", reason, "token endpoint answered HTTP 401"),
        refreshing=Condition("False", "TokenRequestFailed", "retry later"),
        fields={"lastFailure": {"kind": kind, "reason": "HTTPStatus"}},
    )
    got = types(written(report))
    if stalled:
        assert got["Stalled"] == ("True", reason) and "Reconciling" not in got
    else:
        assert got["Reconciling"] == ("True", reason) and "Stalled" not in got


def test_a_failing_refresh_of_a_valid_token_is_neither() -> None:
    """Ready=True: the Secret serves; the failure shows in Refreshing and lastFailure."""
    report = Report(
        ready=ISSUED,
        refreshing=Condition("False", "TokenRequestFailed", "m"),
        fields={"lastFailure": {"kind": "configuration"}},
    )
    got = types(written(report, current=written(issued())))
    assert "Stalled" not in got and "Reconciling" not in got


def test_suspended_is_neither() -> None:
    got = types(written(Report(ready=Condition("False", "Suspended", "spec.suspend is true"))))
    assert got == {"Ready": ("False", "Suspended")}


def test_a_spec_change_is_observed_at_once_and_served_when_issued() -> None:
    """observedGeneration moves on the first status write for generation 2, even when
    that generation cannot be served (kstatus then sees Stalled, not 'not observed');
    tokenGeneration stays at 1 until a token for generation 2 is issued."""
    first = written(issued(1))
    broken = written(Report(ready=Condition("False", "InvalidSpec", "bad")), 2, first)
    assert broken["observedGeneration"] == 2
    assert served_generation(broken) == 1
    assert types(broken)["Stalled"] == ("True", "InvalidSpec")
    assert all(c["observedGeneration"] == 2 for c in broken["conditions"])

    pending = written(Report(ready=Condition("False", "Pending", "new spec")), 3, broken)
    assert types(pending) == {"Ready": ("False", "Pending"), "Reconciling": ("True", "Pending")}
    assert served_generation(pending) == 1

    fixed = written(issued(3), 3, pending)
    assert types(fixed) == {"Ready": ("True", "TokenIssued")}
    assert (fixed["observedGeneration"], served_generation(fixed)) == (3, 3)


def test_ready_true_for_an_unserved_generation_is_still_reconciling() -> None:
    status = written(Report(ready=ISSUED), 2, written(issued(1)))
    assert types(status)["Reconciling"] == ("True", "Pending")


def test_a_status_written_before_token_generation_existed_is_adopted() -> None:
    """Then observedGeneration meant the served generation; it is carried over once, so
    an upgrade neither loses a pending spec change nor requests tokens needlessly."""
    old = {"observedGeneration": 4, "lastRefreshTime": "t", "conditions": []}
    assert served_generation(old) == 4
    status = written(Report(ready=Condition("False", "Pending", "p")), 5, old)
    assert (status["observedGeneration"], status["tokenGeneration"]) == (5, 4)


def test_unchanged_status_needs_no_write_and_transitions_keep_their_time() -> None:
    status = written(issued())
    assert status_patch(status, issued(), 1, NOW + timedelta(minutes=1)) is None
    later = NOW + timedelta(minutes=5)
    pending = apply_patch(status, status_patch(status, Report(ready=PENDING), 1, later) or {})
    ready = condition_of(pending, "Ready")
    reconciling = condition_of(pending, "Reconciling")
    assert ready is not None and reconciling is not None
    assert (
        ready["lastTransitionTime"] == reconciling["lastTransitionTime"] == "2026-11-30T12:05:00Z"
    )


def test_conditions_are_ordered_ready_refreshing_reconciling_stalled() -> None:
    report = Report(ready=PENDING, refreshing=Condition("True", "SecretMissing", "m"))
    assert [c["type"] for c in written(report)["conditions"]] == [
        "Ready",
        "Refreshing",
        "Reconciling",
    ]
