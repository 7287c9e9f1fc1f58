"""Is the credential ready? Decisions about the Ready condition that hold whatever the
worker is doing (pure: status and clock in, report out).

The expiry watchdog: `Ready=True` never outlives the token it describes. Each worker
arms a timer (CredentialWorker.arm_expiry) at the expiresAt of every Ready=True status
it writes or starts from; when it fires, `expired_report` says what to write. It runs on
the event loop, outside the pass, so a pass stuck behind a slow endpoint, a backoff or a
bug cannot keep a stale Ready=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tokensync.schedule import parse_time
from tokensync.secret import format_time
from tokensync.status import READY, REFRESHING, Condition, Report, condition_of

EXPIRED = "TokenExpired"


def ready_until(status: Mapping[str, Any]) -> datetime | None:
    """When a status that says Ready=True stops being true (its expiresAt), or None when
    it does not say Ready=True or names no expiry."""
    ready = condition_of(status, READY)
    if not ready or ready.get("status") != "True":
        return None
    return parse_time(status.get("expiresAt"))


def expired_report(status: Mapping[str, Any], now: datetime) -> Report | None:
    """The report that takes Ready away from a token that expired (Refreshing kept as it
    is), or None when the status does not claim an expired token."""
    until = ready_until(status)
    if until is None or now < until:
        return None
    refreshing = condition_of(status, REFRESHING)
    secret = status.get("secretName")
    where = f"in Secret {secret!r} " if secret else ""
    message = (
        f"the token {where}expired at {format_time(until)} and no new token has been written yet"
    )
    if refreshing and refreshing.get("status") == "True":
        message += f" (a refresh is in progress: {refreshing.get('message', '')})"
    elif refreshing:
        message += f" (refreshing: {refreshing.get('message', '')})"
    return Report(
        ready=Condition("False", EXPIRED, message),
        refreshing=_condition(refreshing),
    )


def _condition(raw: Mapping[str, Any] | None) -> Condition | None:
    if raw is None:
        return None
    return Condition(raw.get("status", "Unknown"), raw.get("reason", ""), raw.get("message", ""))
