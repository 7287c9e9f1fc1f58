"""Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it.

With `tokensync run --peering NAME` every replica watches everything (so a standby's
view stays warm), but only the holder of Lease NAME reconciles: requests tokens, writes
Secrets and status, posts events. The others stand by and take over when the holder
releases the Lease (a clean shutdown: within one retry period) or stops renewing it (a
crash: about one lease duration later).

Safety rests on three rules:

* Writes are optimistic: the Lease is created with POST and updated with PUT carrying the
  resourceVersion read, so when two candidates try at once one gets a 409 and stands by.
* A standby measures a holder's lease on its own clock, from the moment it first saw the
  current record (client-go's `observedTime`), never by comparing the holder's
  `renewTime` with its own wall clock: a replica whose clock runs ahead would otherwise
  take over a live lease. "renewTime + leaseDuration has passed" means: the record has not
  changed for leaseDuration seconds as this replica watched it.
* The leader gives up (and the process exits) when it has not renewed for
  RENEW_DEADLINE, which is shorter than the LEASE_DURATION a standby waits: it has stopped
  before anyone else can start.

`decide` and the body builders are pure; `LeaderElector` runs the loop, calling the API
through `Kube` in its own small executor, so that token requests filling the operator's
thread pool never delay a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tokensync import metrics
from tokensync.kube import Kube, KubeError

log = logging.getLogger("tokensync.leader")
T = TypeVar("T")

LEASE_DURATION = 15.0  # seconds a standby waits on an unchanged record before taking over
RENEW_INTERVAL = 5.0  # how often the leader renews
RETRY_PERIOD = 2.0  # how often a standby looks, and a failing leader retries
RENEW_DEADLINE = 10.0  # the leader gives up when it has not renewed for this long
RELEASE_TIMEOUT = 5.0  # at shutdown; a lease left held simply expires

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Action(enum.Enum):
    ACQUIRE = "acquire"  # create the Lease, or take a free or expired one
    RENEW = "renew"  # we hold it
    STAND_BY = "stand by"  # someone else holds it and it has not expired


@dataclass(frozen=True)
class LeaseRecord:
    """The spec of a Lease as read; equality ignores the resourceVersion, so metadata
    edits (labels, managedFields) do not count as a renewal."""

    holder: str  # "" when free (released, or never held)
    lease_duration_seconds: float | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None = field(default=None, compare=False)

    @classmethod
    def from_object(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=float(duration) if duration else None,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
        )


@dataclass(frozen=True)
class Observation:
    """A record and when (on our monotonic clock) we first saw it unchanged."""

    record: LeaseRecord | None
    since: float


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    holder: str  # the holder as read ("" when free or absent)


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """Keep the first-seen time while the record is unchanged; restart it on any change."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(
    lease: LeaseRecord | None,
    identity: str,
    now: float,
    unchanged_since: float,
    *,
    default_duration: float = LEASE_DURATION,
) -> Decision:
    """What to do with the Lease as read.

    `now` and `unchanged_since` are readings of this replica's monotonic clock:
    `unchanged_since` is when it first saw exactly this record. The holder's timestamps
    are never compared with our clock (see the module docstring)."""
    if lease is None:
        return Decision(Action.ACQUIRE, "no lease exists yet", "")
    if not lease.holder:
        return Decision(Action.ACQUIRE, "the lease is free", "")
    if lease.holder == identity:
        return Decision(Action.RENEW, "we hold the lease", lease.holder)
    duration = lease.lease_duration_seconds or default_duration
    unchanged_for = now - unchanged_since
    if unchanged_for < duration:
        return Decision(
            Action.STAND_BY,
            f"held by {lease.holder} (unchanged for {unchanged_for:.1f}s of {duration:g}s)",
            lease.holder,
        )
    return Decision(
        Action.ACQUIRE,
        f"{lease.holder} has not renewed for {unchanged_for:.1f}s (lease {duration:g}s)",
        lease.holder,
    )


def renewed_within(
    deadline: float, renewed: float, renewed_wall: float, now: float, now_wall: float
) -> bool:
    """A hold renewed within `deadline` seconds by both clocks: the monotonic one (a wall
    clock stepped back must not extend a hold) and the wall clock (after a pause of the
    machine or its VM the monotonic one has not moved, while another replica may have
    waited out the Lease and taken it)."""
    return now < renewed + deadline and now_wall < renewed_wall + deadline


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 UTC with microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    name: str,
    namespace: str,
    identity: str,
    wall_now: datetime,
    current: dict[str, Any] | None,
    *,
    duration: float = LEASE_DURATION,
) -> dict[str, Any]:
    """The Lease to write to acquire or renew: a new object, or `current` (with its
    resourceVersion, so the PUT fails if anyone wrote in between) with our spec."""
    stamp = micro_time(wall_now)
    if current is None:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": _whole_seconds(duration),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
    previous = LeaseRecord.from_object(current)
    spec = dict(current.get("spec") or {})
    if previous.holder != identity:
        spec["acquireTime"] = stamp
        # client-go counts every change of holder, including taking a released lease.
        spec["leaseTransitions"] = previous.transitions + 1
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=_whole_seconds(duration),
        renewTime=stamp,
    )
    return {**current, "metadata": _metadata(current), "spec": spec}


def _whole_seconds(duration: float) -> int:
    """leaseDurationSeconds is an integer: round up, never promise standbys less."""
    return math.ceil(duration)


def released_body(current: dict[str, Any], wall_now: datetime) -> dict[str, Any]:
    """`current` handed back: no holder, so a standby acquires it on its next look (and
    a one-second duration for any client that reads the timestamps)."""
    spec = dict(current.get("spec") or {})
    spec.pop("holderIdentity", None)
    spec.update(leaseDurationSeconds=1, renewTime=micro_time(wall_now))
    return {**current, "metadata": _metadata(current), "spec": spec}


def _metadata(current: dict[str, Any]) -> dict[str, Any]:
    """The object's metadata for a PUT: resourceVersion kept, managedFields left to the
    server."""
    metadata = dict(current.get("metadata") or {})
    metadata.pop("managedFields", None)
    return metadata


# --- settings ---------------------------------------------------------------------------


def default_identity() -> str:
    """POD_NAME (unique among running pods, set from the downward API), else the host
    name plus a random suffix, so two processes on one host never share an identity."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{secrets.token_hex(4)}"


def default_namespace() -> str:
    """POD_NAMESPACE, else the namespace of the pod's ServiceAccount, else `default`."""
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def valid_lease_name(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


# --- the loop ---------------------------------------------------------------------------


class _Outcome(enum.Enum):
    WON = "won"  # acquired or renewed
    HELD_ELSEWHERE = "held elsewhere"  # someone else holds an unexpired lease
    CONFLICT = "conflict"  # a 409: another write came first


class LeaderElector:
    """Acquires, renews and releases one Lease; `is_leader` is set while we hold it.

    `on_lost` is called (after `is_leader` is cleared) when a leader cannot renew within
    RENEW_DEADLINE or finds another holder; the operator exits there, so that work in
    flight stops with the process and Kubernetes restarts it as a clean standby."""

    def __init__(
        self,
        kube: Kube,
        name: str,
        namespace: str,
        identity: str,
        *,
        on_lost: Callable[[str], None],
        lease_duration: float = LEASE_DURATION,
        renew_interval: float = RENEW_INTERVAL,
        retry_period: float = RETRY_PERIOD,
        renew_deadline: float = RENEW_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert renew_deadline < lease_duration, "the leader must stop before a standby starts"
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.on_lost = on_lost
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.retry_period = retry_period
        self.renew_deadline = renew_deadline
        self.clock = clock
        self.wall_clock = wall_clock
        self.is_leader = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokensync-lease")
        self._observation: Observation | None = None
        self._renewed_at = 0.0  # monotonic time the last successful write was sent
        # The wall-clock time of the same: the monotonic clock stands still while the
        # machine or its VM is paused, but a standby may wait out the Lease meanwhile.
        self._renewed_wall = 0.0
        # Set (and replaced) at each successful renewal: after a pause every worker waits
        # on it, rather than polling.
        self._renewal = asyncio.Event()
        self._holder: str | None = None  # last holder logged
        self._problem = ProblemLog(log, f"lease {self.lease}")
        self._lost = False  # once lost, never leader again in this process
        # Checked by the loop, so stop() never depends on a cancellation arriving.
        self._stopping = asyncio.Event()
        self._look_now = asyncio.Event()  # ends the loop's rest early (stop, a pause)
        self._task: asyncio.Task[None] | None = None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        metrics.LEADER.set(0)
        log.info("leader election on lease %s as %s", self.lease, self.identity)
        self._task = asyncio.create_task(self.run(), name="leader-election")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The loop only ends by losing or by stop(); anything else is a bug, and a replica
        whose election is dead can neither renew nor take over: treat it as a loss."""
        if task.cancelled() or self._lost or self._stopping.is_set():
            return
        error = task.exception()
        self._lose(f"leader election stopped ({type(error).__name__ if error else 'returned'})")

    def holds(self) -> bool:
        """We lead and renewed within the deadline by both clocks (the write fence,
        called on the thread that sends each write)."""
        return self.is_leader.is_set() and renewed_within(
            self.renew_deadline,
            self._renewed_at,
            self._renewed_wall,
            self.clock(),
            self.wall_clock().timestamp(),
        )

    async def wait(self) -> None:
        """Return once we are leader and our lease is current (the workers' hook)."""
        while True:
            await self.is_leader.wait()
            if self.holds():
                return
            if self.clock() >= self._renewed_at + self.renew_deadline:
                # The loop should have noticed; after a long pause of the process it may
                # not have run yet. Never start a pass on an overdue lease.
                self._lose(f"the lease was not renewed for over {self.renew_deadline:g}s")
            else:
                # Overdue by the wall clock only (a pause): the loop's next renewal
                # either holds the Lease again or finds the standby that took it.
                renewal = self._renewal
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_period):
                        await renewal.wait()

    # asyncio.timeout() rather than asyncio.wait_for() throughout: on Python 3.11,
    # wait_for swallows a cancellation that arrives as the awaited call completes.

    async def run(self) -> None:
        while not self._lost and not self._stopping.is_set():
            if self.is_leader.is_set():
                delay = await self._leader_cycle()
            else:
                delay = await self._candidate_cycle()
            if delay is None:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._look_now.wait()
            self._look_now.clear()

    def look_now(self) -> None:
        """Renew (or find the new holder) now rather than at the next interval: after a
        pause of the machine, the workers wait for it (wait())."""
        self._look_now.set()

    async def stop(self) -> None:
        """Stop the loop; if we lead, stop leading and hand the lease back."""
        self._stopping.set()
        self._look_now.set()
        if self._task is not None:
            self._task.cancel()  # do not wait for an API call in flight
            await asyncio.wait({self._task}, timeout=RELEASE_TIMEOUT)
        if self.is_leader.is_set():
            self.is_leader.clear()
            metrics.LEADER.set(0)
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self._release()
            except Exception as error:
                log.warning(
                    "could not release lease %s (%s); it expires in %gs",
                    self.lease,
                    describe_api_error(error),
                    self.lease_duration,
                )
            else:
                log.info("released lease %s", self.lease)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- cycles -----------------------------------------------------------------------

    async def _candidate_cycle(self) -> float:
        started, started_wall = self.clock(), self.wall_clock().timestamp()
        try:
            async with asyncio.timeout(self.renew_deadline):
                outcome = await self._try_acquire_or_renew()
        except Exception as error:  # API trouble of any kind: look again later
            self._problem(describe_api_error(error))
            return self.retry_period
        self._problem(None)
        if outcome is _Outcome.WON:
            self._renewed(started, started_wall)
            self.is_leader.set()
            metrics.LEADER.set(1)
            log.info("became leader of lease %s as %s", self.lease, self.identity)
            return self.renew_interval
        return self.retry_period

    async def _leader_cycle(self) -> float | None:
        started, started_wall = self.clock(), self.wall_clock().timestamp()
        deadline = self._renewed_at + self.renew_deadline
        outcome: _Outcome | None = None
        try:
            async with asyncio.timeout(max(deadline - started, 0.0)):
                outcome = await self._try_acquire_or_renew()
        except Exception as error:  # retried until the deadline
            self._problem(f"renewing: {describe_api_error(error)}")
        else:
            self._problem(None)
        if outcome is _Outcome.WON:
            self._renewed(started, started_wall)
            return self.renew_interval
        if outcome is _Outcome.HELD_ELSEWHERE:
            self._lose(f"the lease is held by {self._holder}")
            return None
        now = self.clock()
        if now >= deadline:
            self._lose(f"could not renew within {self.renew_deadline:g}s")
            return None
        return min(self.retry_period, deadline - now)

    async def _try_acquire_or_renew(self) -> _Outcome:
        current = await self._blocking(self.kube.read_lease, self.namespace, self.name)
        record = LeaseRecord.from_object(current) if current is not None else None
        now = self.clock()
        self._observation = observe(self._observation, record, now)
        decision = decide(
            record,
            self.identity,
            now,
            self._observation.since,
            default_duration=self.lease_duration,
        )
        self._note_holder(decision)
        if decision.action is Action.STAND_BY:
            return _Outcome.HELD_ELSEWHERE
        body = lease_body(
            self.name,
            self.namespace,
            self.identity,
            self.wall_clock(),
            current,
            duration=self.lease_duration,
        )
        try:
            if current is None:
                written = await self._blocking(self.kube.create_lease, self.namespace, body)
            else:
                written = await self._blocking(self.kube.replace_lease, self.namespace, body)
        except KubeError as error:
            if error.status == 409:  # another candidate wrote first: it won this round
                log.debug("lease %s: lost a race (%s)", self.lease, error)
                return _Outcome.CONFLICT
            raise
        self._observation = observe(
            self._observation, LeaseRecord.from_object(written), self.clock()
        )
        return _Outcome.WON

    async def _release(self) -> None:
        for _ in range(2):
            current = await self._blocking(self.kube.read_lease, self.namespace, self.name)
            if current is None or LeaseRecord.from_object(current).holder != self.identity:
                return
            try:
                await self._blocking(
                    self.kube.replace_lease,
                    self.namespace,
                    released_body(current, self.wall_clock()),
                )
                return
            except KubeError as error:
                if error.status != 409:  # 409: a renewal in flight landed first; again
                    raise

    # --- helpers ----------------------------------------------------------------------

    def _renewed(self, started: float, started_wall: float) -> None:
        self._renewed_at, self._renewed_wall = started, started_wall
        self._renewal.set()  # wakes the workers waiting after a pause
        self._renewal = asyncio.Event()

    def _lose(self, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        self.is_leader.clear()
        metrics.LEADER.set(0)
        log.error("lost leadership of lease %s: %s", self.lease, why)
        self.on_lost(why)

    def _note_holder(self, decision: Decision) -> None:
        if decision.action is Action.STAND_BY and decision.holder != self._holder:
            log.info("standing by: lease %s is %s", self.lease, decision.reason)
        self._holder = decision.holder if decision.action is Action.STAND_BY else self.identity

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def describe_api_error(error: BaseException) -> str:
    """What went wrong, without an arbitrary exception's text."""
    if isinstance(error, TimeoutError):
        return "the Kubernetes API did not answer in time"
    if isinstance(error, KubeError):
        return str(error)
    return f"{type(error).__name__} talking to the Kubernetes API"


class ProblemLog:
    """Logs a Lease loop's API trouble when it starts, changes or ends; not on every
    retry (the loops retry every couple of seconds)."""

    def __init__(self, logger: logging.Logger, subject: str) -> None:
        self.logger, self.subject = logger, subject
        self.last: str | None = None

    def __call__(self, problem: str | None) -> None:
        if problem == self.last:
            return
        if problem:
            self.logger.warning("%s: %s", self.subject, problem)
        elif self.last:
            self.logger.info("%s: the API answers again", self.subject)
        self.last = problem
