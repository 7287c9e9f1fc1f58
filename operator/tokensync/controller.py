"""One credential's control loop: decide, fetch, write, report.

A `CredentialWorker` is the only thing that requests tokens for its credential. Each
pass asks schedule.why_fetch_now(), fetches when it says so, writes the managed Secret,
reports status, and returns when it wants to run again; between passes it sleeps until
then or until woken (spec change, source change, refresh request). Kubernetes calls run
in the operator's Kubernetes threads, token-side calls (discovery, assertion minting, the
token request) on their endpoint's own threads (limits.RequestLimits). Beside the pass,
an expiry timer takes Ready away from an expired token (readiness.expired_report).
Decisions live in the pure modules; this file only sequences them and talks to the
outside world.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tokensync import discovery, identity, metrics, oauth2, readiness, rollout, schedule
from tokensync.attempt import Attempts
from tokensync.gates import OperatorConfig, gate_problem, insecure_warnings
from tokensync.kube import Kube, KubeError
from tokensync.limits import Coalescer, PassGate, RequestLimits
from tokensync.managed import ManagedSecret, managed_state, needs_replacing, update_patch
from tokensync.redact import redact
from tokensync.secret import (
    ANNOTATION_REFRESH_REQUESTED,
    Owner,
    SecretTooLarge,
    config_hash,
    format_time,
    managed_secret,
    owned_by,
    url_allowed,
)
from tokensync.shards import NotHolding
from tokensync.sources import (
    ReferenceProblem,
    SourceLookup,
    Unresolved,
    ValueNotKept,
    key_checked,
    resolve_references,
    unresolved_problem,
)
from tokensync.spec import CredentialSpec, ResolvedValues, SpecError, parse_spec
from tokensync.status import READY, Condition, Report, apply_patch, condition_of, status_patch
from tokensync.status import served_generation as _served_generation

log = logging.getLogger("tokensync.controller")
T = TypeVar("T")

RESYNC = timedelta(minutes=30)  # re-check even when nothing woke us; requests nothing by itself
# A foreign Secret is not watched (it has no label): look again this often, so its
# deletion is noticed within a minute; a refresh request looks at once.
CONFLICT_RECHECK = timedelta(seconds=30)
UNEXPECTED_ERROR_RETRY = timedelta(seconds=30)
SOURCE_PENDING_RECHECK = timedelta(seconds=2)
HELD_BACK_SECONDS = 1.0  # a pass whose request may not start (hand-back, stop) looks again
# How long an expiry report waits, at start, for the managed Secrets to be listed (a
# few seconds at 10,000) before it judges from status alone.
MANAGED_LIST_WAIT_SECONDS = 30.0
WRITE_ATTEMPTS = 3
# A routine renewal that answers within this long after it was sent writes no
# Refreshing=True first. The time queued for an endpoint's slot does not count (bursts of
# renewals to one endpoint queue for seconds), unless it grows past the second bound.
REFRESHING_REPORT_DELAY_SECONDS = 2.0
QUEUED_REPORT_DELAY_SECONDS = 30.0


class _UnreachableLog:
    """One warning for everyone while the API server is unreachable, at most every 30 s,
    with the number of passes that failed since the last: a 200-credential outage is a
    few lines, not one per credential and retry."""

    INTERVAL_SECONDS = 30.0

    def __init__(self) -> None:
        self.logged_at: float | None = None
        self.failures = 0

    def failed(self, error: KubeError) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.logged_at is None or now - self.logged_at >= self.INTERVAL_SECONDS:
            log.warning(
                "%s: %d credential pass(es) failed since the last report; each retries with "
                "backoff (1 s doubling to 60 s, jittered)",
                error,
                self.failures,
            )
            self.logged_at, self.failures = now, 0


UNREACHABLE_LOG = _UnreachableLog()


class NotLeading(Exception):
    """Leadership was lost while a pass waited (for a token request, say): write nothing."""


class CredentialGone(Exception):
    """The credential was deleted, is being deleted, or was replaced by a new object of
    the same name: its worker stops and writes nothing more."""


@dataclass
class OperatorContext:
    """Operator-wide collaborators, shared by all workers."""

    config: OperatorConfig
    kube: Kube
    kube_executor: Executor  # Kubernetes API calls: never queued behind token requests
    sources: Callable[[str], SourceLookup]  # namespace -> lookup of labelled sources
    post_event: Callable[[Mapping[str, Any], str, str, str], None]  # body, type, reason, msg
    # (namespace, Secret name) -> what the managed-Secret watch and our writes know of it
    managed_secrets: dict[tuple[str, str], ManagedSecret] = field(default_factory=dict)
    # Token-side calls: per-endpoint slots and threads, at most `limits` in flight.
    limits: RequestLimits = field(default_factory=RequestLimits)
    discoveries: Coalescer = field(default_factory=Coalescer)  # one fetch per issuer
    pass_gate: PassGate | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic  # the floor and backoffs
    # With leader election (--peering): returns once this replica leads. None: standalone.
    leadership: Callable[[], Awaitable[None]] | None = None
    # Whether this replica leads right now (checked before writes that follow a wait).
    is_leading: Callable[[], bool] = lambda: True
    # With --shards (shardkeeper.py): whether this replica holds the Lease of the shard
    # of the credential with this UID, current; returns once it does; and the fence
    # every write of a worker goes through (entered on the thread that sends the write,
    # raises NotHolding when the shard is not held). Without: always, at once, no fence.
    holds: Callable[[str], bool] = lambda uid: True
    held: Callable[[str], Awaitable[None]] | None = None
    writing: Callable[[str], AbstractContextManager[Any]] = lambda uid: contextlib.nullcontext()
    # Whether a token request may start, or leave its endpoint's queue: not while its
    # shard is being handed back (the hand-back waits for the requests already sent to be
    # written, not for new ones).
    may_request: Callable[[str], bool] = lambda uid: True
    # Returns once the labelled sources and managed Secrets are listed: before that, a
    # missing object may just not have arrived yet.
    sources_synced: Callable[[], Awaitable[Any]] | None = None
    # Returns once the managed Secrets alone are listed (their watch starts first): the
    # expiry timer looks at the Secret before it calls a token expired.
    managed_secrets_listed: Callable[[], Awaitable[Any]] | None = None
    # Keeps the referenced values of a source read with kube.read_source (SourceCache.fill).
    fill_source: Callable[[str, Mapping[str, Any]], bool] = lambda kind, body: False
    # Token requests in flight (credential uid -> resolved once answered and written): a
    # clean stop and a shard's hand-back wait for them (bounded) instead of throwing away
    # issued tokens. Kept here, not on the worker: a field per parked worker costs memory
    # at 10,000.
    requests_in_flight: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # The same requests' `sent` events, set once a request left its endpoint's queue: a
    # hand-back waits only for those (a queued one is never sent once it starts).
    requests_sent: dict[str, asyncio.Event] = field(default_factory=dict)
    # Set by a clean stop (Supervisor.stop), the same rule as a hand-back: no token
    # request starts or leaves its queue after it. One not sent costs nothing; one sent
    # and then cancelled is a token thrown away.
    stopping: bool = False

    def sent_uids(self) -> list[str]:
        """The credentials whose token request has left its endpoint's queue and is not
        written yet: what a hand-back or a clean stop waits for."""
        return [uid for uid, sent in self.requests_sent.items() if sent.is_set()]

    def may_send(self, uid: str) -> bool:
        """A token request for `uid` may start, or leave its endpoint's queue, now."""
        return not self.stopping and self.may_request(uid)


@dataclass(frozen=True)
class Served:
    """What the managed Secret was last written for, known even when the status patch
    that records it failed (so a failing status write never causes a token request)."""

    generation: int
    refresh_request: str | None


@dataclass(frozen=True)
class Unwritten:
    """A token fetched for (generation, fingerprint) whose Secret write failed: only the
    write is retried while the token is valid, never the token request."""

    token: oauth2.Token
    generation: int
    fingerprint: str
    refresh_request: str | None
    trigger: schedule.Trigger


@dataclass(frozen=True)
class Pass:
    """One pass's snapshot of the credential: every decision of the pass uses these
    values, read once, so an edit arriving mid-pass is seen by the next pass."""

    generation: int
    refresh_request: str | None
    spec: CredentialSpec
    resolved: ResolvedValues
    fingerprint: str
    secret: ManagedSecret | None
    held: schedule.HeldToken | None
    warnings: list[str]


@dataclass
class CredentialWorker:
    ctx: OperatorContext
    body: dict[str, Any]
    # Woken since the pass began: the next sleep returns at once. A bare future and a
    # timer, not an asyncio.Event and asyncio.timeout: a parked worker is most of what
    # 10,000 credentials cost, and those two add ~1.4 KB each (a deque, a coroutine).
    woken: bool = False
    waiter: asyncio.Future[None] | None = None  # the sleep in progress
    status: dict[str, Any] = field(default_factory=dict)  # as last written (or read)
    attempts: Attempts = field(default_factory=Attempts)  # floor, backoffs, failure counts
    expires_at: datetime | None = None  # of the held token, for metrics
    last_event: tuple[str, str] | None = None
    warned_generation: int | None = None  # insecure-setting warnings are posted once per spec
    served: Served | None = None
    unwritten: Unwritten | None = None
    secret_version: str | None = None  # resourceVersion of our last Secret write
    status_version: str | None = None  # resourceVersion of our last status patch
    # The status being written: its echo can arrive before the write returns with its
    # resourceVersion, and is recognised by its content meanwhile.
    status_in_flight: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    gate_passed: bool = False  # the current pass went through the pass gate already
    passed: bool = False  # a pass has started: self.status is what this worker wrote
    # Status writes (the pass's and the expiry timer's) one at a time.
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expiry_timer: asyncio.TimerHandle | None = None
    expiry_task: asyncio.Task[None] | None = None

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

    @property
    def ready_status(self) -> str | None:
        ready = condition_of(self.status, READY)
        return ready.get("status") if ready else None

    # --- lifecycle ------------------------------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A new version of the credential arrived; wake only for what can matter:
        a spec change (generation), a refresh request, or its deletion starting."""
        old_meta = self.metadata
        self.body = dict(body)
        new_meta = self.metadata
        if (
            old_meta.get("generation") != new_meta.get("generation")
            or _refresh_request(old_meta) != _refresh_request(new_meta)
            or new_meta.get("deletionTimestamp")
        ):
            self.wake()

    def wake(self) -> None:
        self.woken = True
        _resolve(self.waiter)

    async def run(self) -> None:
        """Passes until cancelled or the credential is gone. Every pass, the only place
        that requests tokens and writes anything, runs only while this replica leads."""
        # Armed before the sources are listed (tens of seconds at start on a large
        # cluster): a token that expires meanwhile loses Ready at once, not after the list.
        self.arm_expiry()
        if self.ctx.sources_synced is not None:
            await self.ctx.sources_synced()
        if self.ctx.leadership is not None or self.ctx.held is not None:
            await self._until_serving()
            # A standby never writes status, so what it holds is the status of the body
            # it was created with; the leader has written since. Start from the latest
            # body, as a restarted operator would (a stale observedGeneration or
            # lastHandledRefreshRequest would cost a needless token request).
            self.status = dict(self.body.get("status") or {})
        self.arm_expiry()  # a Ready=True it starts from may be stale already
        while True:
            await self._until_serving()
            self.woken = False
            try:
                wake_at = await self.reconcile()
                self.attempts = self.attempts.kube_ok()
            except asyncio.CancelledError:
                raise
            except CredentialGone as gone:
                log.info("%s/%s: stopping: %s", self.owner.namespace, self.owner.name, gone)
                return
            except NotLeading:
                continue  # waits for leadership at the top of the loop
            except NotHolding as why:
                log.info(
                    "%s/%s: nothing written: %s",
                    self.owner.namespace,
                    self.owner.name,
                    why or "its shard is no longer held here",
                )
                continue  # waits for the shard at the top of the loop (or is stopped)
            except KubeError as error:  # its text is the API's Status message only
                wake_at = self._kube_failed(error)
            except Exception as error:  # keep the loop alive; never log data
                log.error(
                    "%s/%s: unexpected %s at %s; retrying in %ss",
                    self.owner.namespace,
                    self.owner.name,
                    type(error).__name__,
                    where(error),
                    UNEXPECTED_ERROR_RETRY.seconds,
                )
                wake_at = self.ctx.now() + UNEXPECTED_ERROR_RETRY
            # At DEBUG, every pass says when the next is due: a token that expired
            # unrenewed shows whether its worker ran, and what it decided.
            log.debug(
                "%s/%s: pass done; next at %s",
                self.owner.namespace,
                self.owner.name,
                "the next event" if wake_at is None else wake_at.isoformat(timespec="seconds"),
            )
            await self._sleep_until(wake_at)

    async def _until_serving(self) -> None:
        if self.ctx.leadership is not None:
            await self.ctx.leadership()
        if self.ctx.held is not None:
            await self.ctx.held(self.owner.uid)

    def _serving(self) -> bool:
        """This replica leads (or runs alone) and holds the credential's shard."""
        return self.ctx.is_leading() and self.ctx.holds(self.owner.uid)

    def _kube_failed(self, error: KubeError) -> datetime:
        """Back off, per worker and with jitter. An unreachable API server is logged for
        all workers together (one line per half minute); another error of this
        credential's first, then at each doubling."""
        self.attempts = self.attempts.kube_failed()
        failures = self.attempts.kube_failures
        delay = schedule.kube_backoff_seconds(failures, random.random())
        if error.unreachable:
            UNREACHABLE_LOG.failed(error)
        elif failures & (failures - 1) == 0:
            log.warning(
                "%s/%s: %s; retrying in %.0fs (failure %d)",
                self.owner.namespace,
                self.owner.name,
                error,
                delay,
                failures,
            )
        return self.ctx.now() + timedelta(seconds=delay)

    async def _sleep_until(self, wake_at: datetime | None) -> None:
        now = self.ctx.now()
        deadline = now + RESYNC if wake_at is None else min(wake_at, now + RESYNC)
        timeout = max((deadline - now).total_seconds(), 0.0)
        if self.woken:
            return
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    async def _through_gate(self) -> None:
        """Before a pass's first call out (API or token side): the pass gate paces what
        passes send, not what they look at. A restarted operator with 10,000 valid tokens
        looks at every Secret in a few seconds (no call: nothing is due, status is
        current); at 500 passes a second it took 20 s, and due renewals waited for their
        turn to be looked at."""
        if not self.gate_passed and self.ctx.pass_gate is not None:
            await self.ctx.pass_gate.acquire()
        self.gate_passed = True

    async def _kube(self, fn: Callable[..., T], *args: Any) -> T:
        await self._through_gate()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.kube_executor, lambda: fn(*args))

    async def _kube_write(self, fn: Callable[..., T], *args: Any, gate: bool = True) -> T:
        """A write: checked against leadership and the shard's Lease on the very thread
        that sends it, right before it is sent (a task cancelled when its shard was lost
        may still have its call queued), and counted in flight while it runs, so that a
        shard is handed back only once its writes have returned."""
        if gate:
            await self._through_gate()
        uid = self.owner.uid

        def fenced() -> T:
            with self.ctx.writing(uid):
                if not self.ctx.is_leading():
                    raise NotLeading()
                return fn(*args)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.kube_executor, fenced)

    async def _on_endpoint(self, url: str, fn: Callable[[], T]) -> T:
        """Discovery and assertion minting: blocking calls for the token side, in the
        endpoint's slot and on its threads, like the token request."""
        await self._through_gate()
        return await self.ctx.limits.run(url, fn)

    # --- the expiry watchdog ----------------------------------------------------------

    def arm_expiry(self, not_before: datetime | None = None) -> None:
        """(Re)arm the timer that takes Ready away when the token that status calls
        ready expires (or at `not_before`, if later: the expiry of a newer token the
        Secret holds); nothing to arm when status does not say Ready=True."""
        self.disarm_expiry()
        until = readiness.ready_until(self.status)
        if until is None:
            return
        if not_before is not None:
            until = max(until, not_before)
        delay = max((until - self.ctx.now()).total_seconds(), 0.0)
        self.expiry_timer = asyncio.get_running_loop().call_later(delay, self._expiry_due)

    def disarm_expiry(self) -> None:
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None

    def stop_expiry_reports(self) -> asyncio.Task[None] | None:
        """The worker is going: no timer, and an expiry report under way is cancelled
        (returned, to wait for)."""
        self.disarm_expiry()
        if self.expiry_task is not None:
            self.expiry_task.cancel()
        return self.expiry_task

    def _expiry_due(self) -> None:
        self.expiry_timer = None
        if self.expiry_task is None or self.expiry_task.done():
            self.expiry_task = asyncio.create_task(
                self._report_expired(), name=f"expiry:{self.owner.uid}"
            )

    async def _report_expired(self) -> None:
        """Ready=False TokenExpired, whatever the pass is doing (waiting for an endpoint,
        backing off), unless the Secret holds a newer valid token than status names.
        Only the leader writes; a failed write is retried shortly."""
        try:
            await self._until_managed_secrets_listed()
            async with self.status_lock:
                if not self._serving():
                    return
                if not self.passed:  # nothing written yet: the latest status observed
                    self.status = dict(self.body.get("status") or {})
                secret_valid_until = self._secret_valid_until()
                report = readiness.expired_report(self.status, self.ctx.now(), secret_valid_until)
                if report is None:
                    # A renewal was written meanwhile, or status lags behind the Secret:
                    # the pass writes the newer token's status; until then, guard that.
                    self.arm_expiry(not_before=secret_valid_until)
                    return
                await self._write_status(report, None)
        except (CredentialGone, NotLeading, NotHolding, asyncio.CancelledError):
            return
        except Exception as error:  # its text is safe for KubeError only; log the class
            log.warning(
                "%s/%s: reporting the expired token failed (%s); retrying in 5s",
                self.owner.namespace,
                self.owner.name,
                type(error).__name__,
            )
            loop = asyncio.get_running_loop()
            self.expiry_timer = loop.call_later(5.0, self._expiry_due)

    async def _until_managed_secrets_listed(self) -> None:
        """At start, a timer armed from status may fire before the managed Secrets are
        listed, and status may name a token older than the Secret's (a status write that
        was still queued when the last operator stopped): wait for the list, which takes
        seconds, before calling that token expired. Bounded: if the list fails, report
        from status alone."""
        listed = self.ctx.managed_secrets_listed
        if listed is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MANAGED_LIST_WAIT_SECONDS):
                await listed()

    def _secret_valid_until(self) -> datetime | None:
        """The expiry of the token that the Secret status names holds, by the operator's
        view of it, if that Secret is this credential's."""
        name = self.status.get("secretName")
        view = self.ctx.managed_secrets.get((self.owner.namespace, name)) if name else None
        if view is None or not view.owned_by(self.owner):
            return None
        return view.held_token().expires_at

    # --- one pass -------------------------------------------------------------------

    async def reconcile(self) -> datetime | None:
        """One pass of the loop; returns when to run again (None: only when woken)."""
        self.gate_passed = False
        self.passed = True
        owner = self.owner
        metadata = self.metadata
        if metadata.get("deletionTimestamp"):
            raise CredentialGone("the credential is being deleted")
        generation = int(metadata.get("generation") or 0)
        refresh_request = schedule.valid_refresh_request(_refresh_request(metadata))
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
        secret = self.ctx.managed_secrets.get((owner.namespace, spec.secret.name))
        if secret is not None and not secret.owned_by(owner):
            await self._report_problem(_conflict(spec))
            return self.ctx.now() + CONFLICT_RECHECK
        if isinstance(resolved, ReferenceProblem):
            await self._report_problem(resolved)
            return None
        if spec.suspend:
            await self._report_suspended(secret)
            return None
        if secret is None:
            # No view of the target name (first issue, a rename, a foreign Secret seen
            # before): an unlabelled Secret is invisible to the watch, so look, once,
            # before any token request.
            secret = await self._read_target(spec.secret.name)
            if secret is not None and not secret.owned_by(owner):
                await self._report_problem(_conflict(spec))
                return self.ctx.now() + CONFLICT_RECHECK
        held = secret.held_token() if secret else None
        self.expires_at = held.expires_at if held else None
        current = Pass(
            generation=generation,
            refresh_request=refresh_request,
            spec=spec,
            resolved=resolved,
            fingerprint=config_hash(spec, resolved),
            secret=secret,
            held=held,
            warnings=insecure_warnings(spec, self.ctx.config),
        )
        if self._unwritten_for(current) is not None:
            return await self._retry_write(current)
        return await self._refresh_if_due(current)

    async def _resolve(self, spec: CredentialSpec) -> ResolvedValues | ReferenceProblem | None:
        """The referenced data, a problem to report, or None: a labelled source exists
        that the watch has not delivered yet (it will, and wake us; look again soon)."""
        lookup = self.ctx.sources(self.owner.namespace)
        result = resolve_references(spec, lookup, url_allowed, check_key=False)
        for _ in spec.references:  # at most one read per referenced object
            if not isinstance(result, ValueNotKept):
                break
            # Listed before this credential referenced it: read that one object.
            ref = result.ref
            body = await self._kube(
                self.ctx.kube.read_source, ref.kind, self.owner.namespace, ref.name
            )
            if body is not None:
                self.ctx.fill_source(ref.kind, body)
            result = resolve_references(spec, lookup, url_allowed, check_key=False)
        if isinstance(result, ValueNotKept):
            return None  # it changed meanwhile: its watch event keeps the value
        if isinstance(result, Unresolved):
            ref = result.ref
            metadata = await self._kube(
                self.ctx.kube.object_metadata, ref.kind, self.owner.namespace, ref.name
            )
            return unresolved_problem(ref, metadata and metadata.get("metadata"))
        return await key_checked(spec, result)  # the key is parsed in a thread

    def _trigger(self, p: Pass, now: datetime) -> schedule.Trigger | None:
        served_generation = _served_generation(self.status)
        last_handled = self.status.get("lastHandledRefreshRequest")
        if self.served is not None:  # what we wrote, even if status could not say so
            served_generation = self.served.generation
            last_handled = self.served.refresh_request or last_handled
        return schedule.why_fetch_now(
            schedule.TriggerInput(
                now=now,
                held=p.held,
                generation=p.generation,
                served_generation=served_generation,
                config_hash=p.fingerprint,
                refresh_requested=p.refresh_request,
                last_handled_refresh_request=last_handled,
                refresh=p.spec.refresh,
                jitter=self._jitter(p.held),
            )
        )

    async def _refresh_if_due(self, p: Pass) -> datetime | None:
        now = self.ctx.now()
        trigger = self._trigger(p, now)
        if trigger is None:
            assert p.held is not None and p.held.issued_at and p.held.expires_at
            point = self._refresh_point(p.spec, p.held)
            await self._report_valid(p, p.held.expires_at, point)
            return point.at

        # A spec or data change starts over; a retry of the same request waits its turn.
        attempt_key = (p.generation, p.fingerprint, p.refresh_request)
        mono = self.ctx.monotonic()
        wait = self.attempts.wait_seconds(attempt_key, mono)
        if wait > 0:
            return now + timedelta(seconds=wait)

        log.debug("%s/%s: token request: %s", self.owner.namespace, self.owner.name, trigger.reason)
        routine = readiness.serves_current(trigger, p.held, now)
        refreshing = Condition("True", trigger.reason, trigger.message)
        if not routine:
            await self._report(
                readiness.refreshing_report(
                    self.status, p.held, trigger, now, p.spec.secret.name, refreshing
                )
            )
        if p.secret is None:
            # A worker left over from a watch gap (its credential deleted while the watch
            # was down, its Secret collected since) must neither request nor re-create.
            await self._check_still_exists()
        # Discovery first, once per issuer for all who wait for it, in the issuer's slot.
        discovered = await self._discover(p)
        if isinstance(discovered, oauth2.TokenError):
            return await self._report_failure(p, trigger, discovered, attempt_key)
        # Discovery, workload identity and client assertions (identity.py).
        endpoint = p.spec.issuer_url or p.spec.token_url or ""
        request = await identity.prepare_request(
            p.spec,
            p.resolved,
            self.ctx.kube,
            self.ctx.config,
            namespace=self.owner.namespace,
            lookup=self.ctx.sources(self.owner.namespace),
            blocking=lambda fn: self._on_endpoint(endpoint, fn),
        )
        if isinstance(request, ReferenceProblem):
            await self._report_problem(request)
            return self.ctx.now() + timedelta(seconds=identity.RECHECK_SECONDS)
        if not self.ctx.may_send(self.owner.uid):
            # Its shard is being handed back (the next holder requests), or the operator
            # is stopping. No await between this and the in-flight record the hand-back
            # waits for; a look again later, not at once, as this holds for seconds.
            return self.ctx.now() + timedelta(seconds=HELD_BACK_SECONDS)
        self.attempts = self.attempts.sent(mono)
        sent = asyncio.Event()
        with self._request_in_flight(sent):
            fetch = asyncio.ensure_future(self._fetch(request, sent))
            try:
                # A renewal that answers quickly costs no Refreshing=True write.
                if routine and await _is_slow(fetch, sent):
                    # Judged now, not at the pass's start: the held token may have
                    # expired while the request queued or ran.
                    await self._report(
                        readiness.refreshing_report(
                            self.status,
                            p.held,
                            trigger,
                            self.ctx.now(),
                            p.spec.secret.name,
                            refreshing,
                        )
                    )
                token = await fetch
            except oauth2.TokenError as error:
                identity.request_failed(p.spec, error)  # re-discover after 404/connect
                return await self._report_failure(p, trigger, error, attempt_key)
            finally:
                fetch.cancel()  # no-op once done; a failed report must not orphan it
            self.attempts = self.attempts.answered()
            self.unwritten = Unwritten(
                token, p.generation, p.fingerprint, p.refresh_request, trigger
            )
            # The request may have taken minutes: only a leader writes what it brought.
            if not self.ctx.is_leading():
                raise NotLeading()
            if not self.ctx.holds(self.owner.uid):
                raise NotHolding()
            return await self._retry_write(p)

    @contextlib.contextmanager
    def _request_in_flight(self, sent: asyncio.Event) -> Iterator[None]:
        uid, in_flight, sent_ones = (
            self.owner.uid,
            self.ctx.requests_in_flight,
            self.ctx.requests_sent,
        )
        done = in_flight[uid] = asyncio.get_running_loop().create_future()
        sent_ones[uid] = sent
        try:
            yield
        finally:
            _resolve(done)
            if in_flight.get(uid) is done:
                del in_flight[uid]
            if sent_ones.get(uid) is sent:
                del sent_ones[uid]

    async def _discover(self, p: Pass) -> oauth2.TokenError | None:
        """Read the issuer's metadata into the discovery cache (a cache hit costs no
        request): one fetch per issuer and trust for every credential waiting for it, in
        the issuer's slot. A transient failure is returned, to go through the transient
        backoff; a lasting one is left to prepare_request, which reports it."""
        issuer = p.spec.issuer_url
        if issuer is None:
            return None
        spec, resolved, config = p.spec, p.resolved, self.ctx.config
        key = (issuer, resolved.ca_pem, spec.tls.insecure_skip_verify)  # the cache's key

        async def fetch() -> None:
            await self.ctx.limits.run(issuer, lambda: identity.discover(spec, resolved, config))

        try:
            await self._through_gate()
            await self.ctx.discoveries.run(key, fetch)
        except discovery.DiscoveryFailed as failed:
            if failed.transient:
                return oauth2.TransientError(str(failed), reason="DiscoveryFailed")
        return None

    def _unwritten_for(self, p: Pass) -> Unwritten | None:
        """The fetched-but-unwritten token, if it still serves this spec and is valid."""
        pending = self.unwritten
        if pending is None:
            return None
        if (pending.generation, pending.fingerprint) != (p.generation, p.fingerprint) or (
            self.ctx.now() >= pending.token.expires_at
        ):
            self.unwritten = None
            return None
        return pending

    async def _retry_write(self, p: Pass) -> datetime | None:
        """Write the fetched token to the Secret and report; on failure keep the token
        and retry only the write, with backoff."""
        pending = self.unwritten
        assert pending is not None
        old_secret_name = self.status.get("secretName")
        try:
            written = await self._write_secret(p, pending.token)
        except SecretTooLarge as error:  # this token times the template's placeholders
            self.unwritten = None
            await self._report_problem(ReferenceProblem("InvalidSpec", str(error)))
            return None
        except KubeError as error:
            if error.status in (404, 409) or error.unreachable:
                raise  # the object changed under us, or the API is down: a normal retry
            return await self._report_write_failure(p, pending, error)
        if written is None:
            await self._report_problem(_conflict(p.spec))
            return self.ctx.now() + CONFLICT_RECHECK
        self.unwritten = None
        self.attempts = self.attempts.written()
        self.served = Served(pending.generation, pending.refresh_request)
        # From the Secret as written (second precision), exactly as later passes and a
        # restarted operator will compute it, so status does not flap by a second.
        held_now = written.held_token()
        self.expires_at = held_now.expires_at
        assert held_now.issued_at and held_now.expires_at
        point = self._refresh_point(p.spec, held_now)
        await self._report_issued(p, pending.token, held_now, point, pending.trigger)
        await self._restart_workloads(p.spec, held_now.issued_at)
        # Status names the new Secret before the old one goes (docs/reference/api.md).
        await self._cleanup_old_secret(p.spec, old_secret_name)
        return point.at

    async def _restart_workloads(self, spec: CredentialSpec, issued_at: datetime) -> None:
        """spec.rolloutRestart, once per new token: one patch per workload; a refusal is a
        Warning event and never touches Ready (the token itself is fine)."""
        namespace = self.owner.namespace
        outcomes = []
        for workload in rollout.targets(spec, self.ctx.config.enable_rollout_restart):
            status = None
            try:
                await self._kube(
                    self.ctx.kube.restart_workload,
                    namespace,
                    workload.kind,
                    workload.name,
                    format_time(issued_at),
                )
            except KubeError as error:
                status = error.status
            outcomes.append(rollout.Outcome(workload, status))
        for outcome in outcomes:
            if outcome.status is not None:
                message = rollout.failure_message(namespace, outcome)
                self.ctx.post_event(self.body, "Warning", "RolloutRestartFailed", message)
        done = rollout.summary(outcomes)
        if done:
            self.ctx.post_event(self.body, "Normal", "RolloutRestarted", done)

    def _refresh_point(
        self, spec: CredentialSpec, held: schedule.HeldToken
    ) -> schedule.RefreshPoint:
        assert held.issued_at and held.expires_at
        point = schedule.refresh_point(
            held.issued_at, held.expires_at, spec.refresh, self._jitter(held)
        )
        return point

    def _jitter(self, held: schedule.HeldToken | None) -> float:
        issued = format_time(held.issued_at) if held and held.issued_at else ""
        return schedule.stable_jitter(self.owner.uid, issued)

    async def _fetch(self, request: oauth2.TokenRequest, sent: asyncio.Event) -> oauth2.Token:
        """One token request, inside the per-endpoint and global limits, on the
        endpoint's own threads (never the ones Kubernetes calls use). `sent` is set when
        it leaves the queue."""
        deny, cidrs = self.ctx.config.deny_private_networks, self.ctx.config.deny_cidrs
        await self._through_gate()
        started: list[float] = []
        uid, ctx = self.owner.uid, self.ctx

        def send() -> oauth2.Token:
            # Its shard may have started to be handed back, or the operator to stop,
            # while it queued: a request not sent costs nothing; one sent and not
            # written is a token thrown away.
            if not ctx.may_send(uid):
                raise NotHolding(
                    "the operator is stopping" if ctx.stopping else "its shard is being handed back"
                )
            started.append(time.monotonic())
            return oauth2.fetch_token(request, deny_private_networks=deny, deny_cidrs=cidrs)

        try:
            token = await self.ctx.limits.run(request.token_url, send, sent)
        except oauth2.TokenError as error:
            metrics.TOKEN_REQUESTS.labels(error.kind).inc()
            raise
        finally:
            if started:
                metrics.TOKEN_REQUEST_DURATION.observe(time.monotonic() - started[0])
        metrics.TOKEN_REQUESTS.labels("success").inc()
        return token

    async def _write_secret(self, p: Pass, token: oauth2.Token) -> ManagedSecret | None:
        """Create or patch the managed Secret; None if a foreign Secret holds the name.
        A 409 is inspected, never forced: re-read, re-check ownership, try again."""
        owner, kube, name = self.owner, self.ctx.kube, p.spec.secret.name
        current = p.secret
        checked = current is None  # checked before the token request
        for _ in range(WRITE_ATTEMPTS):
            try:
                if current is not None and needs_replacing(p.spec, current):
                    body = managed_secret(owner, p.spec, token, p.fingerprint)
                    await self._delete_for_new_type(body, current)
                    current, checked = None, True
                if current is None:
                    if not checked:
                        await self._check_still_exists()
                        checked = True
                    body = managed_secret(owner, p.spec, token, p.fingerprint)
                    result = await self._kube_write(kube.create_secret, owner.namespace, body)
                else:
                    patch = update_patch(owner, p.spec, token, p.fingerprint, current)
                    result = await self._kube_write(kube.patch_secret, owner.namespace, name, patch)
                return self._remember_secret(managed_state(result))
            except KubeError as error:
                # 422 from a Secret whose type only a read tells: read it, then replace.
                type_unknown = current is not None and current.secret_type is None
                if error.status not in (404, 409) and not (error.status == 422 and type_unknown):
                    raise
            current = await self._read_target(name)
            if current is not None and not current.owned_by(owner):
                return None
        raise KubeError(409, f"Secret {name!r} kept changing while being written")

    async def _delete_for_new_type(self, body: Mapping[str, Any], current: ManagedSecret) -> None:
        """spec.secret.type changed: delete exactly the Secret checked to be ours (its
        uid and resourceVersion as preconditions), so the caller creates it anew. First a
        dry-run create of the new Secret: admission and validation run before the name
        clash (409), so a new Secret that would be refused never costs the held token."""
        kube = self.ctx.kube
        try:
            dry_run = functools.partial(kube.create_secret, dry_run=True)
            await self._kube_write(dry_run, current.namespace, body)
        except KubeError as error:
            if error.status != 409:
                raise
        await self._kube_write(
            self.ctx.kube.delete_secret,
            current.namespace,
            current.name,
            current.uid,
            current.resource_version,
        )
        self.ctx.managed_secrets.pop((current.namespace, current.name), None)
        self._event(
            "Normal",
            "SecretRecreated",
            f"Secret {current.name!r} is of type {current.secret_type} and "
            f"spec.secret.type is {body['type']}: a Secret's type cannot change, so it "
            "was deleted and is created again with the new token",
        )

    async def _read_target(self, name: str) -> ManagedSecret | None:
        """GET the Secret of that name. Ours is kept as the view later passes use; a
        foreign one is not kept: nothing would tell us of its deletion (it has none of
        our labels), so each pass that finds no view looks again."""
        fresh = await self._kube(self.ctx.kube.read_secret, self.owner.namespace, name)
        if fresh is None:
            return None
        secret = managed_state(fresh)
        return self._remember_secret(secret) if secret.owned_by(self.owner) else secret

    def _remember_secret(self, secret: ManagedSecret) -> ManagedSecret:
        self.secret_version = secret.resource_version
        self.ctx.managed_secrets[secret.namespace, secret.name] = secret
        return secret

    async def _check_still_exists(self) -> None:
        """Before creating a Secret: the credential still exists, is this very object
        and is not being deleted. A worker left over from a watch gap (its credential
        deleted while the watch was down) must not re-create a collected Secret."""
        owner = self.owner
        current = await self._kube(self.ctx.kube.credential_metadata, owner.namespace, owner.name)
        if current is None or current.get("uid") != owner.uid:
            raise CredentialGone("the credential no longer exists")
        if current.get("deletionTimestamp"):
            raise CredentialGone("the credential is being deleted")

    async def _cleanup_old_secret(self, spec: CredentialSpec, old_name: str | None) -> None:
        """After secret.name changed: delete the previous Secret, only if still ours."""
        if not old_name or old_name == spec.secret.name:
            return
        owner, kube = self.owner, self.ctx.kube
        old = await self._kube(kube.read_secret, owner.namespace, old_name)
        if old is not None and owned_by(old, owner):
            meta = old["metadata"]
            await self._kube_write(
                kube.delete_secret, owner.namespace, old_name, meta["uid"], meta["resourceVersion"]
            )

    # --- reporting ------------------------------------------------------------------

    def _warnings(self, p: Pass, point: schedule.RefreshPoint | None = None) -> list[str] | None:
        warnings = [*p.warnings, *schedule.lifetime_warnings(p.held)]
        ignored = rollout.disabled_warning(p.spec, self.ctx.config.enable_rollout_restart)
        if ignored:
            warnings.append(ignored)
        if point is not None and point.clamped:
            warnings.append("refresh point clamped to 10% of the token lifetime after issue")
        return warnings or None

    async def _report_valid(
        self, p: Pass, expires_at: datetime, point: schedule.RefreshPoint
    ) -> None:
        fields: dict[str, Any] = {
            "expiresAt": format_time(expires_at),
            "nextRefreshTime": format_time(point.at),
            "secretName": p.spec.secret.name,
            "warnings": self._warnings(p, point),
        }
        if self.served is not None:  # in case the patch after the write failed
            fields["observedGeneration"] = self.served.generation
            if self.served.refresh_request:
                fields["lastHandledRefreshRequest"] = self.served.refresh_request
        await self._report(
            Report(
                ready=Condition(
                    "True", "TokenIssued", readiness.issued_message(p.spec.secret.name, expires_at)
                ),
                fields=fields,
            )
        )

    async def _report_issued(
        self,
        p: Pass,
        token: oauth2.Token,
        held: schedule.HeldToken,
        point: schedule.RefreshPoint,
        trigger: schedule.Trigger,
    ) -> None:
        assert held.expires_at and held.issued_at
        written = dataclasses.replace(p, held=held)
        fields: dict[str, Any] = {
            "observedGeneration": p.generation,
            "secretName": p.spec.secret.name,
            "expiresAt": format_time(held.expires_at),
            "lastRefreshTime": format_time(held.issued_at),
            "nextRefreshTime": format_time(point.at),
            "consecutiveFailures": 0,
            "lastFailure": None,
            "warnings": self._warnings(written, point),
            "tokenURL": identity.token_url_in_use(p.spec),  # discovered or spec's
        }
        if p.refresh_request:
            fields["lastHandledRefreshRequest"] = p.refresh_request
        message = readiness.issued_message(p.spec.secret.name, held.expires_at)
        # Routine renewals are visible in status and metrics; events mark the rest.
        event = None
        if trigger.reason != "RenewWindow":
            event = ("Normal", "TokenIssued", f"{message} (requested because {trigger.message})")
        await self._report(
            Report(ready=Condition("True", "TokenIssued", message), fields=fields),
            event=event,
            generation=p.generation,
        )
        if p.warnings and self.warned_generation != p.generation:
            self.warned_generation = p.generation
            for warning in p.warnings:
                self.ctx.post_event(self.body, "Warning", "InsecureSetting", warning)

    async def _report_failure(
        self, p: Pass, trigger: schedule.Trigger, error: oauth2.TokenError, key: Any
    ) -> datetime:
        now = self.ctx.now()
        failures = int(self.status.get("consecutiveFailures") or 0) + 1
        # Each error class backs off on its own count: a 401 after five timeouts is a
        # first configuration failure (1 min), not a sixth failure (16 min).
        self.attempts = self.attempts.request_failed(key, error.kind)
        of_kind = self.attempts.failures_of(error.kind)
        delay = schedule.backoff_seconds(error.kind, of_kind, random.random(), error.retry_after)
        held = p.held
        valid_until = (
            held.expires_at if held and held.expires_at and now < held.expires_at else None
        )
        retry_at = schedule.next_attempt_at(now, delay, valid_until)
        self.attempts = self.attempts.retry_after(self._monotonic_at(retry_at, now))
        message = self._sanitize(str(error), p.resolved)
        metrics.REFRESH_FAILURES.labels(self.owner.namespace, self.owner.name, error.kind).inc()
        reason = (
            "TokenURLNotAllowed" if error.reason == "PrivateNetworkDenied" else "TokenRequestFailed"
        )
        retry_message = f"{message} (attempt {failures}; next at {format_time(retry_at)})"
        await self._report(
            Report(
                ready=readiness.while_failing(p.held, trigger, now, reason, message),
                refreshing=Condition("False", "TokenRequestFailed", retry_message),
                fields={
                    "consecutiveFailures": failures,
                    "lastFailure": self._failure_details(error, p.resolved, now),
                    "warnings": self._warnings(p),
                },
            ),
            event=("Warning", "TokenRequestFailed", message),
        )
        return retry_at

    async def _report_write_failure(
        self, p: Pass, pending: Unwritten, error: KubeError
    ) -> datetime:
        """The token is good but the Secret write was refused (admission, quota, 422,
        5xx): keep the token, retry only the write, with backoff, never past the expiry
        of the token the Secret still holds nor of the one we keep."""
        now = self.ctx.now()
        self.attempts = self.attempts.write_failed()
        write_failures = self.attempts.write_failures
        delay = schedule.backoff_seconds("transient", write_failures, random.random())
        held = p.held
        expiries = [pending.token.expires_at]
        if held and held.expires_at and now < held.expires_at:
            expiries.append(held.expires_at)
        retry_at = schedule.next_attempt_at(now, delay, min(expiries))
        self.attempts = self.attempts.retry_after(self._monotonic_at(retry_at, now))
        message = self._sanitize(
            f"writing Secret {p.spec.secret.name!r} failed: {error}",
            p.resolved,
            pending.token.access_token,
        )
        retry_message = (
            f"{message} (attempt {write_failures}; the new token is kept and only the "
            f"write is retried, next at {format_time(retry_at)})"
        )
        await self._report(
            Report(
                ready=readiness.while_failing(
                    p.held, pending.trigger, now, "SecretWriteFailed", message
                ),
                refreshing=Condition("False", "SecretWriteFailed", retry_message),
                fields={"warnings": self._warnings(p)},
            ),
            event=("Warning", "SecretWriteFailed", message),
        )
        return retry_at

    def _monotonic_at(self, moment: datetime, now: datetime) -> float:
        """`moment` (a wall-clock time, `now` read just before) on the monotonic clock."""
        return self.ctx.monotonic() + (moment - now).total_seconds()

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
    def _sanitize(text: str, resolved: ResolvedValues, *tokens: str) -> str:
        """Defence in depth: oauth2 already strips echoes; strip again before publishing
        (redact first, then truncate, so no prefix of a secret survives the cut)."""
        secrets = [resolved.client_secret, resolved.subject_token, *tokens]
        return redact(text, secrets, client_id=resolved.client_id)[:512]

    async def _report_suspended(self, secret: ManagedSecret | None) -> None:
        held = secret.held_token() if secret else None
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

    async def _report(
        self,
        report: Report,
        event: tuple[str, str, str] | None = None,
        generation: int | None = None,
    ) -> None:
        """Patch status (only what changed; only this very credential, by UID). The pass
        gate is passed before the status lock is taken: the expiry report, which takes
        that lock too, must never wait behind the gate (a mass wake-up)."""
        await self._through_gate()
        async with self.status_lock:
            await self._write_status(report, generation)
        if event:
            self._event(*event)

    async def _write_status(self, report: Report, generation: int | None) -> None:
        """With status_lock held; never through the pass gate (a pass went through it
        before taking the lock; the expiry timer's writes pace nothing and must not wait
        behind a mass wake-up)."""
        owner = self.owner
        if generation is None:
            generation = int(self.metadata.get("generation") or 0)
        patch = status_patch(self.status, report, generation, self.ctx.now())
        if patch is None:
            return
        status = apply_patch(self.status, patch)
        args = (owner.namespace, owner.name, owner.uid, status)
        self.status_in_flight = status
        try:
            result = await self._kube_write(
                self.ctx.kube.patch_credential_status, *args, gate=False
            )
        except KubeError as error:
            if error.status == 404:
                raise CredentialGone("the credential no longer exists") from None
            if error.status == 422:  # the UID test failed, or our status is invalid
                await self._check_still_exists()
            raise
        finally:
            self.status_in_flight = None
        self.status = status
        self.status_version = (result.get("metadata") or {}).get("resourceVersion")
        self.arm_expiry()

    def _event(self, type_: str, reason: str, message: str) -> None:
        """Post an event when it says something new, not on every identical pass."""
        key = (reason, message)
        if key == self.last_event or not self._serving():
            return
        self.last_event = key
        self.ctx.post_event(self.body, type_, reason, message[:1024])
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        log.log(level, "%s/%s: %s: %s", self.owner.namespace, self.owner.name, reason, message)


def where(error: BaseException) -> str:
    """file:line (function) where an exception was raised: enough to find the bug, and,
    unlike the exception's text, it cannot carry data."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown location"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name})"


def _refresh_request(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)


async def _is_slow(fetch: asyncio.Future[oauth2.Token], sent: asyncio.Event) -> bool:
    """Whether a routine renewal is worth a Refreshing=True write: still unanswered
    REFRESHING_REPORT_DELAY_SECONDS after it was sent, or still queued for its endpoint's
    slot after QUEUED_REPORT_DELAY_SECONDS."""
    leaving_queue = asyncio.ensure_future(sent.wait())
    try:
        await asyncio.wait(
            {fetch, leaving_queue},
            timeout=QUEUED_REPORT_DELAY_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        leaving_queue.cancel()
    if fetch.done():
        return False
    if not sent.is_set():
        return True
    done, _ = await asyncio.wait({fetch}, timeout=REFRESHING_REPORT_DELAY_SECONDS)
    return not done


def _conflict(spec: CredentialSpec) -> ReferenceProblem:
    return ReferenceProblem(
        "SecretConflict",
        f"Secret {spec.secret.name!r} exists and does not belong to this credential; "
        "tokensync never modifies it (delete it, or set spec.secret.name)",
    )


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    """End a worker's sleep (its timer ran out, or it was woken)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
