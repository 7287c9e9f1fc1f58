"""`tokensync status` / `refresh`: the pure parts (relative times, rows, the table, the
annotation value, when a refresh counts as done)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokensync.cli import build_parser
from tokensync.statuscmd import (
    format_duration,
    refresh_outcome,
    relative,
    render_table,
    rfc3339_now,
    status_row,
)

NOW = datetime(2026, 11, 30, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42, "42s"), (252, "4m12s"), (300, "5m"), (11100, "3h5m"), (187200, "2d4h")],
)
def test_durations(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_relative_times() -> None:
    assert relative(datetime(2026, 11, 30, 12, 4, 12, 500000, tzinfo=UTC), NOW) == "4m12s"
    assert relative(datetime(2026, 11, 30, 11, 57, 0, 500000, tzinfo=UTC), NOW) == "3m ago"
    assert relative(None, NOW) == "-"


def credential(status: dict) -> dict:
    return {"metadata": {"namespace": "a", "name": "lms"}, "spec": {}, "status": status}


def test_row_and_table() -> None:
    row = status_row(
        credential(
            {
                "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued"}],
                "secretName": "lms-token",
                "expiresAt": "2026-11-30T12:10:00Z",
                "nextRefreshTime": "2026-11-30T12:06:40Z",
            }
        ),
        NOW,
    )
    assert row == {
        "NAMESPACE": "a",
        "NAME": "lms",
        "READY": "True",
        "REASON": "TokenIssued",
        "SECRET": "lms-token",
        "EXPIRES IN": "9m59s",
        "NEXT REFRESH": "6m39s",
    }
    pending = status_row(credential({}), NOW)
    assert (pending["READY"], pending["SECRET"], pending["EXPIRES IN"]) == ("Unknown", "lms", "-")
    table = render_table([row], ["NAME", "READY", "EXPIRES IN"]).splitlines()
    assert table == ["NAME   READY   EXPIRES IN", "lms    True    9m59s"]


def test_annotation_value_is_rfc3339_and_always_new() -> None:
    assert rfc3339_now(NOW, None) == "2026-11-30T12:00:00Z"
    assert rfc3339_now(NOW, "2026-11-30T12:00:00Z") == "2026-11-30T12:00:00.500000Z"


def test_refresh_is_done_when_served_ready_and_the_secret_has_a_new_token() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "TokenIssued"}
    served = credential({"conditions": [ready], "lastHandledRefreshRequest": "r1"})
    assert refresh_outcome(served, "r1", "t0", "t1") == (True, None)
    assert refresh_outcome(served, "r1", "t0", "t0") == (False, None)  # Secret not yet new
    assert refresh_outcome(served, "r2", "t0", "t1") == (False, None)  # not this request
    failed = credential(
        {
            "conditions": [
                ready,
                {"type": "Refreshing", "status": "False", "message": "HTTP 401 (attempt 1)"},
            ],
            "lastFailure": {"time": "2026-11-30T12:00:01Z", "message": "HTTP 401"},
        }
    )
    assert refresh_outcome(failed, "2026-11-30T12:00:00Z", "t0", "t0") == (
        False,
        "HTTP 401 (attempt 1)",
    )
    assert refresh_outcome(failed, "2026-11-30T12:00:05Z", "t0", "t0") == (False, None)


def test_the_commands_are_registered() -> None:
    args = build_parser().parse_args(["refresh", "lms", "-n", "a", "--wait", "--timeout", "2m"])
    assert (args.command, args.names, args.namespace, args.wait, args.timeout) == (
        "refresh",
        ["lms"],
        "a",
        True,
        120.0,
    )
    assert build_parser().parse_args(["status", "-A"]).all_namespaces
