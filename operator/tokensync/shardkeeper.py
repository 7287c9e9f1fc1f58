"""The Leases of `tokensync run --peering NAME --shards N`: takes, renews and gives back
the shard Leases this replica serves, and keeps its membership Lease. The decisions are
in shards.py (which shards) and leader.py (whether a Lease has expired, and the bodies
written); this module is the loop and the fence.

Every cycle (RETRY_PERIOD) it lists the set's Leases once, judges each on this replica's
own clock (leader.observe/decide: a record unchanged for its duration has expired),
renews what is due, then applies `shards.plan`.

Safety, per shard, as the single leader's in leader.py:

* Writes of Leases are optimistic (POST to create, PUT with the resourceVersion read), so
  of two replicas taking one shard one gets a 409.
* A shard counts as held only until RENEW_DEADLINE after its last successful renewal
  was sent, measured on the monotonic clock; that is shorter than the LEASE_DURATION
  another replica waits before taking it over. `holds` is checked by the fence on the
  thread that sends each write, so a replica that was paused (SIGSTOP, a stalled node)
  or cut off writes nothing for a shard past that deadline, even before this loop runs
  again.
* A shard is given back in three steps: no new token request starts for it, while the
  requests already sent are answered and written (up to DRAIN_SECONDS: a token the
  endpoint issued and nobody wrote is a request wasted, and the next holder asks again);
  then its workers are stopped (`on_change`); then, once the writes in flight through the
  fence for it have returned, its Lease is released. A shard lost (another holder, or the
  deadline passed) is dropped at once and not written.

A replica becomes a member (writes its membership Lease, so that the others give it its
share) only once it can serve: its sources and managed Secrets are listed (`ready`).
Until then it takes no shard another live replica could take, and gives back any it
took while it was alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from tokensync import metrics
from tokensync.kube import Kube, KubeError
from tokensync.leader import (
    LEASE_DURATION,
    RELEASE_TIMEOUT,
    RENEW_DEADLINE,
    RENEW_INTERVAL,
    RETRY_PERIOD,
    Action,
    LeaseRecord,
    Observation,
    ProblemLog,
    decide,
    describe_api_error,
    lease_body,
    observe,
    released_body,
    renewed_within,
)
from tokensync.shards import (
    LABEL_ROLE,
    LABEL_SET,
    LABEL_SHARDS,
    ROLE_MEMBER,
    ROLE_SHARD,
    NotHolding,
    Plan,
    ShardState,
    live_members,
    member_lease_name,
    plan,
    shard_lease_name,
    shard_of,
)

log = logging.getLogger("tokensync.shards")
T = TypeVar("T")

# A member Lease nobody renewed for this long is deleted by whichever replica sees it
# (pods of a Deployment get new names: their Leases would pile up).
MEMBER_GARBAGE_SECONDS = 10 * LEASE_DURATION
DRAIN_SECONDS = 5.0  # before giving a shard back: its requests, then writes, in flight return


class ShardKeeper:
    def __init__(
        self,
        kube: Kube,
        prefix: str,
        namespace: str,
        identity: str,
        shards: int,
        *,
        on_change: Callable[[], None],
        ready: Callable[[], bool] = lambda: True,
        lease_duration: float = LEASE_DURATION,
        renew_interval: float = RENEW_INTERVAL,
        retry_period: float = RETRY_PERIOD,
        renew_deadline: float = RENEW_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert renew_deadline < lease_duration, "a holder must stop before a taker starts"
        self.kube = kube
        self.prefix = prefix
        self.namespace = namespace
        self.identity = identity
        self.shards = shards
        self.on_change = on_change  # the supervisor starts and stops workers
        # Whether this replica can serve (its sources and managed Secrets are listed):
        # until then it is no member, so nobody gives it shards it would sit on.
        self.ready = ready
        self._joined = False
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.retry_period = retry_period
        self.renew_deadline = renew_deadline
        self.clock = clock
        self.wall_clock = wall_clock
        # shard -> monotonic time its last successful acquire or renewal was sent
        self._held: dict[int, float] = {}
        # shard -> wall-clock time of the same: the monotonic clock stands still while
        # the machine or its VM is paused, and the others' clocks do not.
        self._held_wall: dict[int, float] = {}
        # shard -> how often it was dropped (lost, overdue, handed back, stopped): a
        # renewal sent before a drop and answered after must not hold it again.
        self._drops: Counter[int] = Counter()
        self._lock = threading.Lock()  # _held and _in_flight: read by write threads
        self._in_flight: Counter[int] = Counter()
        self._events = [asyncio.Event() for _ in range(shards)]
        self._observations: dict[str, Observation] = {}
        self._member_renewed = -float("inf")
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokensync-shards")
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._problem = ProblemLog(log, "shard Leases")
        self._live: set[str] = {identity}
        self._mismatch: set[str] = set()  # live replicas with another --shards
        # Shards being handed back (requests, then writes, draining): not taken again.
        self._releasing: dict[int, asyncio.Task[None]] = {}
        # Shards being handed back whose token requests in flight still write: held (the
        # fence lets their writes through, their Leases are renewed), but no pass starts.
        self._leaving: set[int] = set()
        # The credentials with a token request sent and not yet written (the runtime
        # sets it; one still queued for its endpoint is never sent once the shard leaves).
        self.requesting: Callable[[], Iterable[str]] = lambda: ()
        self.first_cycle = asyncio.Event()  # one look at the Leases done (or failed)

    @property
    def selector(self) -> str:
        return f"{LABEL_SET}={self.prefix}"

    # --- what workers ask (any thread) -----------------------------------------------

    def held(self) -> set[int]:
        with self._lock:
            return {s for s in self._held if self._current(s)}

    def holds(self, shard: int) -> bool:
        with self._lock:
            return self._current(shard)

    def holds_uid(self, uid: str) -> bool:
        return self.holds(shard_of(uid, self.shards))

    def may_request(self, uid: str) -> bool:
        """Whether a token request for `uid` may start: its shard is held and not being
        handed back."""
        shard = shard_of(uid, self.shards)
        with self._lock:
            return self._current(shard) and shard not in self._leaving

    def _current(self, shard: int) -> bool:
        """Renewed within the deadline by both clocks (leader.renewed_within)."""
        renewed = self._held.get(shard)
        if renewed is None:
            return False
        # Both are recorded together; a test may set only the monotonic one.
        renewed_wall = self._held_wall.get(shard)
        now_wall = self.wall_clock().timestamp()
        return renewed_within(
            self.renew_deadline,
            renewed,
            now_wall if renewed_wall is None else renewed_wall,
            self.clock(),
            now_wall,
        )

    @contextlib.contextmanager
    def writing(self, uid: str) -> Iterator[None]:
        """The fence around one write for credential `uid`: entered on the thread that
        sends it; NotHolding unless the shard's Lease is held and current."""
        shard = shard_of(uid, self.shards)
        with self._lock:
            if not self._current(shard):
                raise NotHolding(f"shard {shard} is not held by this replica")
            self._in_flight[shard] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[shard] -= 1

    async def wait_held(self, uid: str) -> None:
        """Return once the credential's shard is held and current (a worker's hook)."""
        shard = shard_of(uid, self.shards)
        while True:
            await self._events[shard].wait()
            if self.holds(shard):
                return
            # The loop has not noticed yet (after a pause of the process): never start a
            # pass on an overdue Lease.
            self._drop(shard, f"not renewed for over {self.renew_deadline:g}s")

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        log.info(
            "sharding: %d shards on Leases %s-shard-* in %s as %s",
            self.shards,
            self.prefix,
            self.namespace,
            self.identity,
        )
        self._task = asyncio.create_task(self.run(), name="shard-keeper")

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self.renew_deadline):
                    await self.cycle()
                self._problem(None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # API trouble: the deadline fences the shards
                self._problem(describe_api_error(error))
            self.first_cycle.set()
            self._expire_overdue()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_period):
                    await self._stopping.wait()

    async def stop(self) -> None:
        """After the workers stopped and their writes drained (Runtime.stop): hand every
        shard back, then the membership, so the others take over at once."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=RELEASE_TIMEOUT)
        if self._releasing:  # hand-backs under way finish first (each bounded)
            await asyncio.wait(list(self._releasing.values()), timeout=RELEASE_TIMEOUT)
        shards = sorted(self.held())
        with self._lock:
            self._drops.update(self._held.keys())
            self._held.clear()
            self._held_wall.clear()
        for shard in shards:
            self._events[shard].clear()
            with contextlib.suppress(KeyError):
                metrics.SHARD_HELD.remove(str(shard))
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await asyncio.gather(*(self._release(s) for s in shards))
                await self._release_lease(member_lease_name(self.prefix, self.identity))
        except Exception as error:
            log.warning(
                "could not hand back every shard (%s); they expire", describe_api_error(error)
            )
        else:
            log.info("handed back %d shards", len(shards))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- one cycle --------------------------------------------------------------------

    async def cycle(self) -> None:
        items = await self._blocking(self.kube.list_leases, self.namespace, self.selector)
        now = self.clock()
        by_name = {item["metadata"]["name"]: item for item in items}
        # Leases deleted since: forget them (a shard's is judged absent, so free).
        self._observations = {n: o for n, o in self._observations.items() if n in by_name}
        states: dict[int, ShardState] = {}
        for shard in range(self.shards):
            name = shard_lease_name(self.prefix, shard)
            if name in by_name:
                states[shard] = self._judge(name, by_name[name], now)
        members: dict[str, bool] = {}
        differing: set[str] = set()
        for name, item in by_name.items():
            labels = item["metadata"].get("labels") or {}
            if labels.get(LABEL_ROLE) != ROLE_MEMBER:
                continue
            state = self._judge(name, item, now)
            if state.holder:
                members[state.holder] = state.expired
                if not state.expired and labels.get(LABEL_SHARDS) != str(self.shards):
                    differing.add(state.holder)
            await self._collect_garbage(name, item, now)
        self._live = live_members(members, self.identity)
        self._differing(differing - {self.identity})

        # Held shards someone else holds now: lost (our Lease expired as they saw it).
        for shard, state in states.items():
            if shard in self._held and state.holder != self.identity:
                self._drop(shard, f"its Lease is held by {state.holder or 'nobody'}")
        self._expire_overdue()

        held_before = self.held()
        ready = self.ready()
        if ready and not self._joined:
            self._joined = True
            log.info("joining the replicas: sources listed, ready to serve shards")
        renewals = [self._renew_member(by_name)] if ready else []
        for shard in self.held():
            if now - self._held[shard] >= self.renew_interval:
                name = shard_lease_name(self.prefix, shard)
                renewals.append(self._acquire(shard, by_name.get(name)))
        await asyncio.gather(*renewals)

        serving = self.held() - self._leaving
        decided = plan(self.identity, self.shards, states, self._live, serving)
        why = "given back to balance the replicas"
        if self._mismatch:  # keep what we hold (and renew it); take nothing new
            decided = Plan(take=(), release=())
        elif not ready and self._live - {self.identity}:
            # Not serving yet: what another live replica can serve, this one must not
            # hold (its tokens would expire while this one lists): it takes nothing and
            # gives back what it took alone. Alone (a cold start), it takes its shards
            # now: nobody else would serve them sooner.
            decided = Plan(take=(), release=tuple(sorted(serving)))
            why = "given back while this replica still lists its sources"
        for shard in decided.release:
            self._hand_back_in_background(shard, why)
        take = [s for s in decided.take if s not in self._releasing]
        if take:
            await asyncio.gather(
                *(self._acquire(s, by_name.get(shard_lease_name(self.prefix, s))) for s in take)
            )
        if self.held() != held_before:
            self.on_change()  # once for every shard taken: their workers start

    def _judge(self, name: str, item: dict[str, Any], now: float) -> ShardState:
        record = LeaseRecord.from_object(item)
        self._observations[name] = observe(self._observations.get(name), record, now)
        decision = decide(
            record,
            self.identity,
            now,
            self._observations[name].since,
            default_duration=self.lease_duration,
        )
        expired = decision.action is Action.ACQUIRE and record.holder not in ("", self.identity)
        return ShardState(record.holder, expired)

    async def _acquire(self, shard: int, current: dict[str, Any] | None) -> None:
        """Take or renew one shard; a 409 or another failure leaves it to the next cycle
        (and to the deadline, for one held)."""
        started, started_wall = self.clock(), self.wall_clock().timestamp()
        with self._lock:
            drops_before = self._drops[shard]
        name = shard_lease_name(self.prefix, shard)
        try:
            await self._write(name, current, ROLE_SHARD)
        except KubeError as error:
            if error.status != 409:
                self._problem(f"shard {shard}: {error}")
            return
        with self._lock:
            if self._drops[shard] != drops_before:
                # Dropped while this was on its way (its hand-back may have released the
                # Lease already, and another replica taken it): the next cycle decides.
                return
            gained = shard not in self._held
            self._held[shard] = started
            self._held_wall[shard] = started_wall
        if gained:
            self._events[shard].set()
            metrics.SHARD_HELD.labels(str(shard)).set(1)
            log.info("took shard %d", shard)

    async def _renew_member(self, by_name: dict[str, dict[str, Any]]) -> None:
        if self.clock() - self._member_renewed < self.renew_interval:
            return
        started = self.clock()
        name = member_lease_name(self.prefix, self.identity)
        try:
            await self._write(name, by_name.get(name), ROLE_MEMBER)
        except KubeError as error:
            self._problem(f"membership: {error}")
            return
        self._member_renewed = started

    async def _write(self, name: str, current: dict[str, Any] | None, role: str) -> None:
        body = lease_body(
            name,
            self.namespace,
            self.identity,
            self.wall_clock(),
            current,
            duration=self.lease_duration,
        )
        labels = dict(body["metadata"].get("labels") or {})
        labels.update({LABEL_SET: self.prefix, LABEL_ROLE: role, LABEL_SHARDS: str(self.shards)})
        body["metadata"] = {**body["metadata"], "labels": labels}
        if current is None:
            await self._blocking(self.kube.create_lease, self.namespace, body)
        else:
            await self._blocking(self.kube.replace_lease, self.namespace, body)

    def _hand_back_in_background(self, shard: int, why: str) -> None:
        """Not awaited by the cycle: its drains may take 2 x DRAIN_SECONDS, and the shards
        kept must be renewed meanwhile (a cycle that waited, on a loaded node, let every
        shard it kept pass its renew deadline: they were dropped and their workers
        restarted). The shard stays held, and renewed, until its requests are written."""
        with self._lock:
            self._leaving.add(shard)
        self._events[shard].clear()  # no pass starts for it now
        task = asyncio.create_task(self._hand_back(shard, why), name=f"release-shard-{shard}")
        self._releasing[shard] = task
        task.add_done_callback(lambda _: self._releasing.pop(shard, None))

    async def _hand_back(self, shard: int, why: str) -> None:
        try:
            requesting = await self._until_requests_written(shard)
            if not self.holds(shard):
                return  # lost meanwhile: dropped, and not ours to release
            self._drop(shard, why, lost=False)
            if requesting:
                log.warning(
                    "shard %d: %d token requests still in flight after %gs; their tokens "
                    "are not written here",
                    shard,
                    requesting,
                    DRAIN_SECONDS,
                )
            await self._release(shard)
        except Exception as error:  # e.g. the API did not answer: the Lease expires
            log.warning(
                "could not hand back shard %d (%s); it expires", shard, describe_api_error(error)
            )
        finally:
            with self._lock:
                self._leaving.discard(shard)

    async def _until_requests_written(self, shard: int) -> int:
        """Wait up to DRAIN_SECONDS for the shard's token requests in flight to end (each
        writes what it brought first); how many are still in flight after that."""
        deadline = self.clock() + DRAIN_SECONDS
        while True:
            requesting = sum(1 for u in self.requesting() if shard_of(u, self.shards) == shard)
            if not requesting or self.clock() >= deadline or not self.holds(shard):
                return requesting
            await asyncio.sleep(0.05)

    async def _release(self, shard: int) -> None:
        """Hand a shard (already dropped) back, once its writes in flight returned."""
        deadline = self.clock() + DRAIN_SECONDS
        while True:
            with self._lock:
                busy = self._in_flight[shard]
            if not busy:
                break
            if self.clock() >= deadline:
                log.warning("shard %d: writes still in flight; its Lease is left to expire", shard)
                return
            await asyncio.sleep(0.05)
        await self._release_lease(shard_lease_name(self.prefix, shard))

    async def _release_lease(self, name: str) -> None:
        try:
            current = await self._blocking(self.kube.read_lease, self.namespace, name)
            if current is None or LeaseRecord.from_object(current).holder != self.identity:
                return
            released = released_body(current, self.wall_clock())
            await self._blocking(self.kube.replace_lease, self.namespace, released)
        except KubeError as error:  # a 409: renewed meanwhile by us? then it expires
            log.warning("could not hand back Lease %s (%s); it expires", name, error)

    async def _collect_garbage(self, name: str, item: dict[str, Any], now: float) -> None:
        observation = self._observations.get(name)
        record = observation.record if observation else None
        if observation is None or record is None or record.holder == self.identity:
            return
        if now - observation.since < MEMBER_GARBAGE_SECONDS:
            return
        version = item["metadata"].get("resourceVersion", "")
        try:
            await self._blocking(self.kube.delete_lease, self.namespace, name, version)
        except KubeError:
            return  # renewed meanwhile (409), or not ours to delete: next time
        log.info("deleted the membership Lease %s of a replica gone for long", name)

    # --- helpers ----------------------------------------------------------------------

    def _drop(self, shard: int, why: str, *, lost: bool = True) -> None:
        """Stop serving a shard at once: the fence closes, then its workers stop."""
        with self._lock:
            self._held_wall.pop(shard, None)
            self._drops[shard] += 1
            if self._held.pop(shard, None) is None:
                return
        self._events[shard].clear()
        with contextlib.suppress(KeyError):
            metrics.SHARD_HELD.remove(str(shard))
        if lost:
            log.warning("lost shard %d: %s", shard, why)
        else:
            log.info("gave back shard %d: %s", shard, why)
        self.on_change()

    def _differing(self, replicas: set[str]) -> None:
        """Log when replicas with another --shards appear or go (an error while they run:
        nothing new is taken until they are gone)."""
        if replicas == self._mismatch:
            return
        if replicas:
            log.error(
                "replicas %s run with another number of shards than %d: taking no shard "
                "until they stop (scale to 0 before changing --shards)",
                ", ".join(sorted(replicas)),
                self.shards,
            )
        else:
            log.info("every live replica runs with %d shards again", self.shards)
        self._mismatch = replicas

    def _expire_overdue(self) -> None:
        with self._lock:
            overdue = [s for s in self._held if not self._current(s)]
        for shard in overdue:
            self._drop(shard, f"not renewed for over {self.renew_deadline:g}s")

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)
