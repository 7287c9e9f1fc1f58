"""One credential's control loop: decide, fetch, write, report.

A `CredentialWorker` is the only thing that requests tokens for its credential. Each
pass asks schedule.why_fetch_now(), fetches when it says so, writes the managed Secret,
reports status, and returns when it wants to run again; between passes it sleeps until
then or until woken (spec change, source change, refresh request). Blocking calls run in
the operator's executor. Decisions live in the pure modules; this file only sequences
them and talks to the outside world.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tokensync import metrics, oauth2, schedule
from tokensync.gates import OperatorConfig, effective_request, gate_problem, insecure_warnings
from tokensync.kube import Kube, KubeError
from tokensync.redact import redact
from tokensync.secret import (
    ANNOTATION_REFRESH_REQUESTED,
    Owner,
    config_hash,
    format_time,
    held_token,
    managed_secret,
    owned_by,
    url_allowed,
)
from tokensync.sources import (
    ReferenceProblem,
    SourceLookup,
    Unresolved,
    ValueNotKept,
    resolve_references,
    unresolved_problem,
)
from tokensync.spec import CredentialSpec, ResolvedValues, SpecError, parse_spec, to_token_request
from tokensync.status import READY, Condition, Report, apply_patch, condition_of, status_patch

log = logging.getLogger("tokensync.controller")
T = TypeVar("T")

RESYNC = timedelta(minutes=30)  # re-check even when nothing woke us; requests nothing by itself
CONFLICT_RECHECK = timedelta(minutes=5)  # a foreign Secret is not watched: look again later
UNEXPECTED_ERROR_RETRY = timedelta(seconds=30)
KUBE_ERROR_RETRY = timedelta(seconds=10)
SOURCE_PENDING_RECHECK = timedelta(seconds=2)
WRITE_ATTEMPTS = 3


@dataclass
class OperatorContext:
    """Operator-wide collaborators, shared by all workers."""

    config: OperatorConfig
    kube: Kube
    executor: Executor
    sources: Callable[[str], SourceLookup]  # namespace -> lookup of labelled sources
    post_event: Callable[[Mapping[str, Any], str, str, str], None]  # body, type, reason, msg
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # With leader election (--peering): returns once this replica leads. None: standalone.
    leadership: Callable[[], Awaitable[None]] | None = None
    # Returns once the labelled sources are listed: before that, a missing source may
    # just not have arrived yet.
    sources_synced: Callable[[], Awaitable[Any]] | None = None
    # Keeps the referenced values of a source read with kube.read_source (SourceCache.fill).
    fill_source: Callable[[str, Mapping[str, Any]], bool] = lambda kind, body: False


@dataclass
class CredentialWorker:
    ctx: OperatorContext
    body: dict[str, Any]
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)
    status: dict[str, Any] = field(default_factory=dict)  # as last written (or read)
    last_request_at: datetime | None = None
    retry_at: datetime | None = None
    retry_key: tuple[Any, ...] | None = None  # the generation/config a backoff applies to
    expires_at: datetime | None = None  # of the held token, for metrics
    last_event: tuple[str, str] | None = None
    warned_generation: int | None = None  # insecure-setting warnings are posted once per spec
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.status = dict(self.body.get("status") or {})

    # --- identity -------------------------------------------------------------------

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.body.get("metadata") or {}

    @property
    def owner(self) -> Owner:
        m = self.metadata
        return Owner(name=m["name"], namespace=m["namespace"], uid=m["uid"])

    @property
    def ready_reason(self) -> str | None:
        ready = condition_of(self.status, READY)
        return ready.get("reason") if ready else None

    # --- lifecycle ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A new version of the credential arrived; wake only for what can matter:
        a spec change (generation) or a refresh request."""
        old_meta = self.metadata
        self.body = dict(body)
        new_meta = self.metadata
        if old_meta.get("generation") != new_meta.get("generation") or _refresh_request(
            old_meta
        ) != _refresh_request(new_meta):
            self.wake()

    def wake(self) -> None:
        self.wake_event.set()

    async def run(self) -> None:
        """Passes until cancelled. Every pass, the only place that requests tokens and
        writes anything, runs only while this replica leads."""
        if self.ctx.sources_synced is not None:
            await self.ctx.sources_synced()
        if self.ctx.leadership is not None:
            await self.ctx.leadership()
            # A standby never writes status, so what it holds is the status of the body
            # it was created with; the leader has written since. Start from the latest
            # body, as a restarted operator would (a stale observedGeneration or
            # lastHandledRefreshRequest would cost a needless token request).
            self.status = dict(self.body.get("status") or {})
        while True:
            if self.ctx.leadership is not None:
                await self.ctx.leadership()
            self.wake_event.clear()
            try:
                wake_at = await self.reconcile()
            except asyncio.CancelledError:
                raise
            except KubeError as error:  # its text is the API's Status message only
                log.warning(
                    "%s/%s: %s; retrying in %ss",
                    self.owner.namespace,
                    self.owner.name,
                    error,
                    KUBE_ERROR_RETRY.seconds,
                )
                wake_at = self.ctx.now() + KUBE_ERROR_RETRY
            except Exception as error:  # keep the loop alive; never log data
                log.error(
                    "%s/%s: unexpected %s at %s; retrying in %ss",
                    self.owner.namespace,
                    self.owner.name,
                    type(error).__name__,
                    _where(error),
                    UNEXPECTED_ERROR_RETRY.seconds,
                )
                wake_at = self.ctx.now() + UNEXPECTED_ERROR_RETRY
            await self._sleep_until(wake_at)

    async def _sleep_until(self, wake_at: datetime | None) -> None:
        now = self.ctx.now()
        deadline = now + RESYNC if wake_at is None else min(wake_at, now + RESYNC)
        timeout = max((deadline - now).total_seconds(), 0.0)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake_event.wait()

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.executor, lambda: fn(*args, **kwargs))

    # --- one pass -------------------------------------------------------------------

    async def reconcile(self) -> datetime | None:
        """One pass of the loop; returns when to run again (None: only when woken)."""
        owner = self.owner
        try:
            spec = parse_spec(self.body.get("spec") or {}, name=owner.name)
        except SpecError as error:
            await self._report_problem(ReferenceProblem("InvalidSpec", str(error)))
            return None
        problem = gate_problem(spec, self.ctx.config)
        if problem:
            await self._report_problem(problem)
            return None

        resolved = await self._resolve(spec)
        if resolved is None:
            return self.ctx.now() + SOURCE_PENDING_RECHECK
        existing = await self._blocking(
            self.ctx.kube.read_secret, owner.namespace, spec.secret.name
        )
        self.secret_version = _version(existing)
        if existing is not None and not owned_by(existing, owner):
            await self._report_problem(_conflict(spec))
            return self.ctx.now() + CONFLICT_RECHECK
        if isinstance(resolved, ReferenceProblem):
            await self._report_problem(resolved)
            return None
        if spec.suspend:
            await self._report_suspended(existing)
            return None
        return await self._refresh_if_due(spec, resolved, existing)

    async def _resolve(self, spec: CredentialSpec) -> ResolvedValues | ReferenceProblem | None:
        """The referenced data, a problem to report, or None: a labelled source exists
        that the watch has not delivered yet (it will, and wake us; look again soon)."""
        lookup = self.ctx.sources(self.owner.namespace)
        result = resolve_references(spec, lookup, url_allowed)
        for _ in spec.references:  # at most one read per referenced object
            if not isinstance(result, ValueNotKept):
                break
            # Listed before this credential referenced it: read that one object.
            ref = result.ref
            body = await self._blocking(
                self.ctx.kube.read_source, ref.kind, self.owner.namespace, ref.name
            )
            if body is not None:
                self.ctx.fill_source(ref.kind, body)
            result = resolve_references(spec, lookup, url_allowed)
        if isinstance(result, ValueNotKept):
            return None  # it changed meanwhile: its watch event keeps the value
        if isinstance(result, Unresolved):
            ref = result.ref
            metadata = await self._blocking(
                self.ctx.kube.object_metadata, ref.kind, self.owner.namespace, ref.name
            )
            return unresolved_problem(ref, metadata and metadata.get("metadata"))
        return result

    async def _refresh_if_due(
        self, spec: CredentialSpec, resolved: ResolvedValues, existing: dict[str, Any] | None
    ) -> datetime | None:
        now = self.ctx.now()
        held = held_token(existing)
        self.expires_at = held.expires_at if held else None
        generation = int(self.metadata.get("generation") or 0)
        fingerprint = config_hash(spec, resolved)
        requested = _refresh_request(self.metadata)
        trigger = schedule.why_fetch_now(
            schedule.TriggerInput(
                now=now,
                held=held,
                generation=generation,
                served_generation=self.status.get("observedGeneration"),
                config_hash=fingerprint,
                refresh_requested=requested,
                last_handled_refresh_request=self.status.get("lastHandledRefreshRequest"),
                refresh=spec.refresh,
                jitter=self._jitter(held),
            )
        )
        warnings = insecure_warnings(spec, self.ctx.config)
        if trigger is None:
            assert held is not None and held.issued_at and held.expires_at
            point = schedule.refresh_point(
                held.issued_at, held.expires_at, spec.refresh, self._jitter(held)
            )
            await self._report_valid(spec, held.expires_at, point, warnings)
            return point.at

        # A spec or data change starts over; a retry of the same request waits its turn.
        attempt_key = (generation, fingerprint, requested)
        if self.retry_key == attempt_key and self.retry_at and now < self.retry_at:
            return self.retry_at
        not_before = schedule.earliest_request_at(self.last_request_at, trigger.reason)
        if not_before and now < not_before:
            return not_before

        await self._report(
            Report(
                ready=self._current_ready(spec, held, now, trigger),
                refreshing=Condition("True", trigger.reason, trigger.message),
            )
        )
        request = effective_request(to_token_request(spec, resolved), self.ctx.config)
        self.last_request_at = now
        try:
            token = await self._fetch(request)
        except oauth2.TokenError as error:
            self.retry_key = attempt_key
            return await self._report_failure(spec, resolved, held, trigger, error, warnings)

        written = await self._write_secret(spec, token, fingerprint, existing)
        if written is None:
            await self._report_problem(_conflict(spec))
            return self.ctx.now() + CONFLICT_RECHECK
        self.retry_key, self.retry_at = None, None
        self.expires_at = token.expires_at
        self.secret_version = _version(written)
        await self._cleanup_old_secret(spec)
        # From the Secret as written (second precision), exactly as later passes and a
        # restarted operator will compute it, so status does not flap by a second.
        held_now = held_token(written)
        assert held_now is not None and held_now.issued_at and held_now.expires_at
        point = schedule.refresh_point(
            held_now.issued_at, held_now.expires_at, spec.refresh, self._jitter(held_now)
        )
        await self._report_issued(spec, token, point, generation, requested, warnings, trigger)
        return point.at

    def _jitter(self, held: schedule.HeldToken | None) -> float:
        issued = format_time(held.issued_at) if held and held.issued_at else ""
        return schedule.stable_jitter(self.owner.uid, issued)

    async def _fetch(self, request: oauth2.TokenRequest) -> oauth2.Token:
        started = time.monotonic()
        try:
            token = await self._blocking(
                oauth2.fetch_token,
                request,
                deny_private_networks=self.ctx.config.deny_private_networks,
            )
        except oauth2.TokenError as error:
            metrics.TOKEN_REQUESTS.labels(error.kind).inc()
            raise
        finally:
            metrics.TOKEN_REQUEST_DURATION.observe(time.monotonic() - started)
        metrics.TOKEN_REQUESTS.labels("success").inc()
        return token

    async def _write_secret(
        self,
        spec: CredentialSpec,
        token: oauth2.Token,
        fingerprint: str,
        existing: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Create or update the managed Secret; None if a foreign Secret holds the name.
        A 409 is inspected, never forced: re-read, re-check ownership, try again."""
        owner, kube = self.owner, self.ctx.kube
        for _ in range(WRITE_ATTEMPTS):
            try:
                if existing is None:
                    body = managed_secret(owner, spec, token, fingerprint)
                    return await self._blocking(kube.create_secret, owner.namespace, body)
                version = existing["metadata"]["resourceVersion"]
                body = managed_secret(owner, spec, token, fingerprint, resource_version=version)
                return await self._blocking(kube.replace_secret, owner.namespace, body)
            except KubeError as error:
                if error.status not in (404, 409):
                    raise
            existing = await self._blocking(kube.read_secret, owner.namespace, spec.secret.name)
            if existing is not None and not owned_by(existing, owner):
                return None
        raise KubeError(409, f"Secret {spec.secret.name!r} kept changing while being written")

    async def _cleanup_old_secret(self, spec: CredentialSpec) -> None:
        """After secret.name changed: delete the previous Secret, only if still ours."""
        old_name = self.status.get("secretName")
        if not old_name or old_name == spec.secret.name:
            return
        owner, kube = self.owner, self.ctx.kube
        old = await self._blocking(kube.read_secret, owner.namespace, old_name)
        if old is not None and owned_by(old, owner):
            meta = old["metadata"]
            await self._blocking(
                kube.delete_secret, owner.namespace, old_name, meta["uid"], meta["resourceVersion"]
            )

    # --- reporting ------------------------------------------------------------------

    def _current_ready(
        self,
        spec: CredentialSpec,
        held: schedule.HeldToken | None,
        now: datetime,
        trigger: schedule.Trigger,
    ) -> Condition:
        """Ready while a refresh is in flight: unchanged if the held token still serves
        the current spec, otherwise Pending."""
        ready = condition_of(self.status, READY)
        if ready and ready.get("status") == "True" and _serves_current(trigger, held, now):
            return Condition("True", ready["reason"], ready.get("message", ""))
        if held is None:
            return Condition("False", "Pending", "the first token has not been issued yet")
        return Condition("False", "Pending", f"a new token is needed: {trigger.message}")

    async def _report_valid(
        self,
        spec: CredentialSpec,
        expires_at: datetime,
        point: schedule.RefreshPoint,
        warnings: list[str],
    ) -> None:
        await self._report(
            Report(
                ready=Condition("True", "TokenIssued", _issued_message(spec, expires_at)),
                fields={
                    "expiresAt": format_time(expires_at),
                    "nextRefreshTime": format_time(point.at),
                    "secretName": spec.secret.name,
                    "warnings": _warnings(warnings, point) or None,
                },
            )
        )

    async def _report_issued(
        self,
        spec: CredentialSpec,
        token: oauth2.Token,
        point: schedule.RefreshPoint,
        generation: int,
        requested: str | None,
        warnings: list[str],
        trigger: schedule.Trigger,
    ) -> None:
        fields: dict[str, Any] = {
            "observedGeneration": generation,
            "secretName": spec.secret.name,
            "expiresAt": format_time(token.expires_at),
            "lastRefreshTime": format_time(token.issued_at),
            "nextRefreshTime": format_time(point.at),
            "consecutiveFailures": 0,
            "lastFailure": None,
            "warnings": _warnings(warnings, point) or None,
        }
        if requested:
            fields["lastHandledRefreshRequest"] = requested
        message = _issued_message(spec, token.expires_at)
        # Routine renewals are visible in status and metrics; events mark the rest.
        event = None
        if trigger.reason != "RenewWindow":
            event = ("Normal", "TokenIssued", f"{message} (requested because {trigger.message})")
        await self._report(
            Report(ready=Condition("True", "TokenIssued", message), fields=fields), event=event
        )
        if warnings and self.warned_generation != generation:
            self.warned_generation = generation
            for warning in warnings:
                self.ctx.post_event(self.body, "Warning", "InsecureSetting", warning)

    async def _report_failure(
        self,
        spec: CredentialSpec,
        resolved: ResolvedValues,
        held: schedule.HeldToken | None,
        trigger: schedule.Trigger,
        error: oauth2.TokenError,
        warnings: list[str],
    ) -> datetime:
        now = self.ctx.now()
        failures = int(self.status.get("consecutiveFailures") or 0) + 1
        delay = schedule.backoff_seconds(error.kind, failures, random.random(), error.retry_after)
        valid_until = (
            held.expires_at if held and held.expires_at and now < held.expires_at else None
        )
        self.retry_at = schedule.next_attempt_at(now, delay, valid_until)
        message = self._sanitize(str(error), resolved)
        metrics.REFRESH_FAILURES.labels(self.owner.namespace, self.owner.name, error.kind).inc()

        if valid_until and _serves_current(trigger, held, now):
            ready = Condition(
                "True",
                "TokenIssued",
                f"token valid until {format_time(valid_until)}; refreshing is failing",
            )
        elif held and held.expires_at and now >= held.expires_at:
            ready = Condition("False", "TokenExpired", f"the token expired and {message}")
        elif error.reason == "PrivateNetworkDenied":
            ready = Condition("False", "TokenURLNotAllowed", message)
        else:
            ready = Condition("False", "TokenRequestFailed", message)
        retry_message = f"{message} (attempt {failures}; next at {format_time(self.retry_at)})"
        await self._report(
            Report(
                ready=ready,
                refreshing=Condition("False", "TokenRequestFailed", retry_message),
                fields={
                    "consecutiveFailures": failures,
                    "lastFailure": self._failure_details(error, resolved, now),
                    "warnings": warnings or None,
                },
            ),
            event=("Warning", "TokenRequestFailed", message),
        )
        return self.retry_at

    def _failure_details(
        self, error: oauth2.TokenError, resolved: ResolvedValues, now: datetime
    ) -> dict[str, Any]:
        details: dict[str, Any] = {
            "reason": error.reason,
            "kind": error.kind,
            "message": self._sanitize(str(error), resolved),
            "time": format_time(now),
        }
        if error.http_status is not None:
            details["httpStatus"] = error.http_status
        if error.oauth_error:
            details["error"] = self._sanitize(error.oauth_error, resolved)[:100]
        if error.oauth_error_description:
            details["errorDescription"] = self._sanitize(error.oauth_error_description, resolved)
        return details

    @staticmethod
    def _sanitize(text: str, resolved: ResolvedValues) -> str:
        """Defence in depth: oauth2 already strips echoes; strip again before publishing."""
        return redact(text, [resolved.client_secret], client_id=resolved.client_id)[:512]

    async def _report_suspended(self, existing: dict[str, Any] | None) -> None:
        held = held_token(existing)
        until = (
            f"; the current token stays until {format_time(held.expires_at)}"
            if held and held.expires_at
            else ""
        )
        await self._report(
            Report(
                ready=Condition("False", "Suspended", "spec.suspend is true" + until),
                refreshing=None,
            ),
            event=("Normal", "Suspended", "refreshing is suspended"),
        )

    async def _report_problem(self, problem: ReferenceProblem) -> None:
        """A problem that needs a change by someone: Ready=False; the held token stays."""
        await self._report(
            Report(ready=Condition("False", problem.reason, problem.message), refreshing=None),
            event=("Warning", problem.reason, problem.message),
        )

    async def _report(self, report: Report, event: tuple[str, str, str] | None = None) -> None:
        owner = self.owner
        generation = int(self.metadata.get("generation") or 0)
        patch = status_patch(self.status, report, generation, self.ctx.now())
        if patch is not None:
            await self._blocking(
                self.ctx.kube.patch_credential_status, owner.namespace, owner.name, patch
            )
            self.status = apply_patch(self.status, patch)
        if event:
            self._event(*event)

    def _event(self, type_: str, reason: str, message: str) -> None:
        """Post an event when it says something new, not on every identical pass."""
        key = (reason, message)
        if key == self.last_event:
            return
        self.last_event = key
        self.ctx.post_event(self.body, type_, reason, message[:1024])
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        log.log(level, "%s/%s: %s: %s", self.owner.namespace, self.owner.name, reason, message)


def _where(error: BaseException) -> str:
    """file:line (function) where an exception was raised: enough to find the bug, and,
    unlike the exception's text, it cannot carry data."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown location"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name})"


def _version(obj: Mapping[str, Any] | None) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion") if obj else None


def _refresh_request(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)


def _serves_current(
    trigger: schedule.Trigger, held: schedule.HeldToken | None, now: datetime
) -> bool:
    """The held token was issued for the current spec and data, and is unexpired: only
    its age or a refresh request is asking for a new one."""
    return (
        held is not None
        and held.expires_at is not None
        and now < held.expires_at
        and trigger.reason in ("RenewWindow", "RefreshRequested")
    )


def _conflict(spec: CredentialSpec) -> ReferenceProblem:
    return ReferenceProblem(
        "SecretConflict",
        f"Secret {spec.secret.name!r} exists and does not belong to this credential; "
        "tokensync never modifies it (delete it, or set spec.secret.name)",
    )


def _issued_message(spec: CredentialSpec, expires_at: datetime) -> str:
    return f"Secret {spec.secret.name!r} holds a token valid until {format_time(expires_at)}"


def _warnings(warnings: list[str], point: schedule.RefreshPoint) -> list[str]:
    if point.clamped:
        return [*warnings, "refresh point clamped to 10% of the token lifetime after issue"]
    return warnings
