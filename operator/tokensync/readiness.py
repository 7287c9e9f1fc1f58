"""Is the credential ready? The Ready condition as a pure function of what a pass found
(the held token in the Secret, why a new one is wanted, the status as written, the
clock), in the manner of cert-manager's readiness policies. The worker only writes what
these functions say.

The expiry watchdog: `Ready=True` never outlives the token it describes. Each worker
arms a timer (CredentialWorker.arm_expiry) at the expiresAt of every Ready=True status
it writes or starts from; when it fires, `expired_report` says what to write. It runs on
the event loop, outside the pass, so a pass stuck behind a slow endpoint, a backoff or a
bug cannot keep a stale Ready=True. What it guards is the token the pods read: a status
that names an older token than the managed Secret holds is left to the pass, and the
timer moves to the Secret's token.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tokensync.schedule import HeldToken, Trigger, parse_time
from tokensync.secret import format_time
from tokensync.status import READY, REFRESHING, Condition, Report, condition_of

EXPIRED = "TokenExpired"


def serves_current(trigger: Trigger, held: HeldToken | None, now: datetime) -> bool:
    """The held token was issued for the current spec and data, and is unexpired: only
    its age or a refresh request is asking for a new one."""
    return (
        held is not None
        and held.expires_at is not None
        and now < held.expires_at
        and trigger.reason in ("RenewWindow", "RefreshRequested")
    )


def issued_message(secret_name: str, expires_at: datetime) -> str:
    return f"Secret {secret_name!r} holds a token valid until {format_time(expires_at)}"


def refreshing_report(
    status: Mapping[str, Any],
    held: HeldToken | None,
    trigger: Trigger,
    now: datetime,
    secret_name: str,
    refreshing: Condition,
) -> Report:
    """The status to show while a refresh is in flight. When Ready stays True, expiresAt
    names the held token: a status that lagged behind the Secret (a restart over a
    saturated operator's queued writes) must not say Ready=True over a past expiresAt
    while a slow renewal runs."""
    ready = while_refreshing(status, held, trigger, now, secret_name)
    fields: dict[str, Any] = {}
    if ready.status == "True" and held is not None and held.expires_at is not None:
        fields["expiresAt"] = format_time(held.expires_at)
    return Report(ready=ready, refreshing=refreshing, fields=fields)


def while_refreshing(
    status: Mapping[str, Any],
    held: HeldToken | None,
    trigger: Trigger,
    now: datetime,
    secret_name: str,
) -> Condition:
    """Ready while a refresh is in flight: True while the held token still serves the
    current spec (as written when status names that very token, otherwise issued: e.g.
    after an expiry report from, or a restart over, a status that lagged behind the
    Secret), TokenExpired if it has expired, otherwise Pending."""
    if serves_current(trigger, held, now):
        assert held is not None and held.expires_at is not None
        ready = condition_of(status, READY)
        names_held = parse_time(status.get("expiresAt")) == held.expires_at
        if ready and ready.get("status") == "True" and names_held:
            return Condition("True", ready["reason"], ready.get("message", ""))
        return Condition("True", "TokenIssued", issued_message(secret_name, held.expires_at))
    if held is None:
        return Condition("False", "Pending", "the first token has not been issued yet")
    if held.expires_at and now >= held.expires_at:
        # Say what the pods read: an expired token (a pause, a long outage), not Pending.
        why = "" if trigger.reason == EXPIRED else f" ({trigger.message})"
        return Condition("False", EXPIRED, f"the token expired; a new one is being requested{why}")
    return Condition("False", "Pending", f"a new token is needed: {trigger.message}")


def while_failing(
    held: HeldToken | None, trigger: Trigger, now: datetime, reason: str, message: str
) -> Condition:
    """A failed refresh never takes Ready away from a token that still serves."""
    if held and held.expires_at and serves_current(trigger, held, now):
        return Condition(
            "True",
            "TokenIssued",
            f"token valid until {format_time(held.expires_at)}; refreshing is failing",
        )
    if held and held.expires_at and now >= held.expires_at:
        return Condition("False", EXPIRED, f"the token expired and {message}")
    return Condition("False", reason, message)


def ready_until(status: Mapping[str, Any]) -> datetime | None:
    """When a status that says Ready=True stops being true (its expiresAt), or None when
    it does not say Ready=True or names no expiry."""
    ready = condition_of(status, READY)
    if not ready or ready.get("status") != "True":
        return None
    return parse_time(status.get("expiresAt"))


def expired_report(
    status: Mapping[str, Any], now: datetime, secret_valid_until: datetime | None = None
) -> Report | None:
    """The report that takes Ready away from a token that expired (Refreshing kept as it
    is), or None when the status does not claim an expired token, or when the Secret it
    names holds a token valid until `secret_valid_until`, later than now: then status
    lags behind the Secret (its write still queued on a saturated operator, or lost in a
    restart) and the pods read a valid token; the next pass says so."""
    until = ready_until(status)
    if until is None or now < until:
        return None
    if secret_valid_until is not None and now < secret_valid_until:
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
