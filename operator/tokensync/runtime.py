"""Everything the operator process owns, in one typed object, started and stopped in a
stated order (as kopf's own reactor does in `_core/reactor/running.py`).

Start (kopf's startup handler, before kopf watches anything): the Kubernetes threads and
the per-endpoint token limits, the store of workers (supervisor.Supervisor), the elector
(with --peering) or the shard keeper (with --peering and --shards:
shardkeeper.ShardKeeper), one list of the credentials (what they reference, so the
source cache keeps those values only), the label-selected watches (watches.py), the
sweep, metrics and the health endpoints. Then kopf watches the credentials and hands
each event to `Runtime.credential_event` (handlers.py): the store applies it.

Stop (`Runtime.stop`): the watches and the sweep, then the workers (a token request in
flight is answered and written first, bounded wait), then the Kubernetes writes the
workers left in flight (a cancelled task's thread still runs its call; bounded wait), then
the Lease(s): nothing of ours writes once another replica can take over.

Background tasks are supervised: an unexpected exit is logged and the task restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tokensync import events, metrics
from tokensync.controller import OperatorContext, where
from tokensync.gates import OperatorConfig
from tokensync.kube import Kube, KubeError, load_configuration
from tokensync.leader import LeaderElector
from tokensync.limits import PassGate, QueueTimedExecutor, RequestLimits
from tokensync.metrics_auth import MetricsSecurity
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED, LABEL_CREDENTIAL, LABEL_SOURCE
from tokensync.shardkeeper import ShardKeeper
from tokensync.sources import SourceCache
from tokensync.supervisor import Supervisor, referenced
from tokensync.watches import LabelledWatch, WatchTarget

log = logging.getLogger("tokensync")

SOURCE_SELECTOR = f"{LABEL_SOURCE}=true"
# Workers are compared with a complete list of credentials this often, and after every
# re-list of a watch: kopf reports no DELETED for a credential deleted while its watch
# was down (it lists again after 410 Gone), so the sweep stops those workers.
SWEEP_INTERVAL_SECONDS = 300.0
KUBE_THREADS = 16  # Kubernetes API calls: short, never behind token requests
PASSES_PER_SECOND = 500.0  # mass wake-ups (start, leadership, API back) are paced to this
WRITES_DRAIN_SECONDS = 10.0  # at shutdown, for Kubernetes calls of cancelled workers
# At shutdown, for token requests in flight to be answered and written (a rolling update
# must not throw tokens away); with the writes' drain, within the pod's 30 s grace period.
REQUESTS_DRAIN_SECONDS = 10.0
KEEPER_FIRST_LOOK_SECONDS = 10.0  # at start, with --shards: the first look at the Leases
# The wall clock is compared with the monotonic one this often; moving ahead by more than
# CLOCK_JUMP_SECONDS between two looks is a pause (see watch_the_wall_clock).
CLOCK_CHECK_SECONDS = 1.0
CLOCK_JUMP_SECONDS = 2.0


@dataclass(frozen=True)
class Options:
    """What `tokensync run` decided (cli.py), as the runtime needs it."""

    config: OperatorConfig
    namespaces: list[str] | None
    max_requests: int
    max_requests_per_host: int
    metrics_port: int
    metrics_host: str
    metrics_security: MetricsSecurity
    health_port: int | None
    health_host: str
    leader_election: tuple[str, str, str] | None  # (lease name, namespace, identity)
    # With leader_election: the number of shards (the Lease name is their prefix); None:
    # one leader.
    shards: int | None = None


@dataclass
class Runtime:
    options: Options
    kube: Kube
    kube_executor: ThreadPoolExecutor
    limits: RequestLimits
    supervisor: Supervisor
    elector: LeaderElector | ShardKeeper | None
    synced: asyncio.Event  # credentials read once, sources and managed Secrets listed
    # Managed Secrets listed (their watch starts first).
    managed_listed: asyncio.Event = field(default_factory=asyncio.Event)
    sweep_now: asyncio.Event = field(default_factory=asyncio.Event)
    watches: list[LabelledWatch] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    health: web.AppRunner | None = None

    @classmethod
    async def start(cls, options: Options, started: asyncio.Event) -> Runtime:
        """Start everything; `started` is kopf's ready flag (for /readyz)."""
        kube_executor = QueueTimedExecutor(
            KUBE_THREADS,
            "tokensync-kube",
            on_wait=metrics.KUBE_CALL_WAIT.observe,
            on_depth=metrics.KUBE_CALLS_WAITING.set,
        )
        # Token-side calls run on their endpoint's own threads; Kubernetes calls on
        # kube_executor, never behind them (one slow endpoint starved everyone's writes).
        limits = RequestLimits(options.max_requests, options.max_requests_per_host)
        # One pool for the API calls and the label-selected watches (each holds a
        # connection).
        sharded = options.leader_election is not None and options.shards is not None
        replica = options.leader_election[2] if sharded and options.leader_election else None
        kube = Kube(load_configuration(connection_pool_size=KUBE_THREADS + 8), replica=replica)
        sources = SourceCache()
        synced = asyncio.Event()
        managed_listed = asyncio.Event()
        elector = None
        keeper: ShardKeeper | None = None
        rebalance = _Coalesced()
        if sharded and options.leader_election is not None and options.shards is not None:
            prefix, namespace, identity = options.leader_election
            # Its own API client, as the elector's: renewals never queue behind writes.
            keeper = ShardKeeper(
                Kube(load_configuration(connection_pool_size=4), replica=identity),
                prefix,
                namespace,
                identity,
                options.shards,
                on_change=rebalance,
                ready=synced.is_set,
            )
        elif options.leader_election is not None:
            name, namespace, identity = options.leader_election
            # Its own API client: renewals never queue behind token-request writes.
            elector = LeaderElector(
                Kube(load_configuration(connection_pool_size=2)),
                name,
                namespace,
                identity,
                on_lost=_exit_after_lost_leadership,
            )
        leading = elector.holds if elector else lambda: True
        supervisor = Supervisor(
            OperatorContext(
                config=options.config,
                kube=kube,
                kube_executor=kube_executor,
                limits=limits,
                pass_gate=PassGate(PASSES_PER_SECOND, burst=int(PASSES_PER_SECOND)),
                sources=sources.lookup,
                post_event=_post_event,
                leadership=elector.wait if elector else None,
                is_leading=leading,
                sources_synced=synced.wait,
                managed_secrets_listed=managed_listed.wait,
                fill_source=sources.fill,
                **(
                    {
                        "holds": keeper.holds_uid,
                        "held": keeper.wait_held,
                        "writing": keeper.writing,
                        "may_request": keeper.may_request,
                    }
                    if keeper
                    else {}
                ),
            ),
            sources,
            serving=leading,
            owns=keeper.holds_uid if keeper else None,
        )
        rebalance.target = supervisor.rebalance
        if keeper is not None:
            keeper.requesting = supervisor.ctx.sent_uids
        runtime = cls(
            options,
            kube,
            kube_executor,
            limits,
            supervisor,
            elector or keeper,
            synced,
            managed_listed,
        )
        if keeper is not None:
            metrics.LEADER.set(1)  # every replica serves (its shards)
            keeper.start()
            # The shards held before the first list: the sources listed then keep the
            # values of this replica's credentials only, and those are not read one by
            # one (a replica that starts among others gets its share once it has listed:
            # it joins only then).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPER_FIRST_LOOK_SECONDS):
                    await keeper.first_cycle.wait()
        runtime.watches = _start_watches(runtime)
        runtime.background.append(supervised("credential sweep", runtime.sweep_forever))
        runtime.background.append(
            supervised("wall clock", lambda: watch_the_wall_clock(runtime.wall_clock_jumped))
        )
        metrics.serve(
            options.metrics_port,
            supervisor.samples,
            options.metrics_host,
            options.metrics_security,
        )
        if elector is not None:
            elector.start()
        elif keeper is None:
            metrics.LEADER.set(1)
        if options.health_port:
            runtime.health = await _serve_health(options, started, synced)
        return runtime

    async def stop(self) -> None:
        await stop_in_order(
            watches=self.watches,
            supervisor=self.supervisor,
            kube_executor=self.kube_executor,
            elector=self.elector,
            background=self.background,
        )
        self.limits.close()
        if self.health is not None:
            await self.health.cleanup()

    def credential_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A credential event from kopf (type None: listed). Our own status echoes (most
        events) stop here; the rest is reduced to what a worker uses, then stored."""
        supervisor = self.supervisor
        try:
            if event_type != "DELETED" and supervisor.is_own_echo(body):
                return
            uid = body["metadata"]["uid"]
            if event_type is None and self.synced.is_set() and uid in supervisor.last_event:
                # kopf listed again (410 Gone, or its watch failed): a credential deleted
                # meanwhile gets no DELETED, so compare the workers with a complete list.
                self.sweep_now.set()
            compact = _compact(body)
        except Exception as error:  # one malformed object must not stop the others' events
            metadata = body.get("metadata") or {}
            log.error(
                "credential %s/%s skipped: unexpected %s",
                metadata.get("namespace"),
                metadata.get("name"),
                type(error).__name__,
            )
            return
        supervisor.observe(event_type, compact)

    def wall_clock_jumped(self, ahead: float) -> None:
        log.warning(
            "the wall clock moved %.0fs ahead of the monotonic clock (this machine or its "
            "VM was paused or suspended, or the clock was stepped): every credential is "
            "looked at again now",
            ahead,
        )
        if isinstance(self.elector, LeaderElector):
            self.elector.look_now()  # its workers wait for a renewal by both clocks
        self.supervisor.clock_jumped()

    async def sweep_forever(self) -> None:
        """Mark and sweep the workers against a complete list of credentials,
        periodically and whenever `sweep_now` is set (after a watch had to list again)."""
        await self.synced.wait()
        loop = asyncio.get_running_loop()
        supervisor = self.supervisor
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_INTERVAL_SECONDS):
                    await self.sweep_now.wait()
            self.sweep_now.clear()
            began = supervisor.list_began()  # events after this are newer than the list
            try:
                existing = await loop.run_in_executor(
                    self.kube_executor, self.kube.credential_uids, self.options.namespaces
                )
            except KubeError as error:
                log.warning("credential sweep skipped: %s", error)
                continue
            supervisor.sweep(existing, began)
            # References of credentials primed at start but deleted before the watch
            # listed them (credentials created since the list have workers, and keep
            # theirs); with --shards, of those served elsewhere too.
            supervisor.sources.retain((existing - set(supervisor.parked)) | set(supervisor.workers))


async def stop_in_order(
    *,
    watches: list[LabelledWatch],
    supervisor: Supervisor | None,
    kube_executor: ThreadPoolExecutor | None,
    elector: LeaderElector | ShardKeeper | None,
    background: list[asyncio.Task[None]],
    writes_timeout: float = WRITES_DRAIN_SECONDS,
    requests_timeout: float = REQUESTS_DRAIN_SECONDS,
) -> None:
    """Stop so that nothing of ours writes once a standby can take over: events and
    background tasks, then the workers (those with a token request in flight once it is
    written, bounded wait), then the Kubernetes writes they left in flight (a cancelled
    task's thread still runs its call; bounded wait), then the Lease."""
    for watch in watches:
        watch.stop()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if supervisor is not None:
        await supervisor.stop(requests_grace=requests_timeout)
    if kube_executor is not None:
        drained = asyncio.get_running_loop().run_in_executor(
            None, lambda: kube_executor.shutdown(wait=True, cancel_futures=True)
        )
        try:
            async with asyncio.timeout(writes_timeout):
                await asyncio.shield(drained)
        except TimeoutError:
            log.warning(
                "Kubernetes calls still running after %.0fs; the Lease is kept (it expires)",
                writes_timeout,
            )
            return  # a standby takes over when the Lease expires, not before
    if elector is not None:
        await elector.stop()


class _Coalesced:
    """Calls `target` once on the next loop iteration however often it is asked in
    this one (the keeper reports every shard it takes; one rebalance does for all)."""

    def __init__(self) -> None:
        self.target: Callable[[], None] = lambda: None
        self._pending = False

    def __call__(self) -> None:
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._pending = False
        self.target()


async def watch_the_wall_clock(
    jumped: Callable[[float], None],
    *,
    wall: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    interval: float = CLOCK_CHECK_SECONDS,
) -> None:
    """Call `jumped(seconds)` when the wall clock moves that far ahead of the monotonic
    clock. Every timer (a refresh point, an expiry report) runs on the monotonic clock,
    which stands still while the machine or its VM is suspended or paused; tokens expire
    on the wall clock, which the host or NTP sets right after. Without this, a worker
    would sleep out the rest of its delay after a pause, its token expired meanwhile and
    Ready still True. A stalled event loop moves both clocks alike: no call."""
    wall_before, monotonic_before = wall(), monotonic()
    while True:
        await asyncio.sleep(interval)
        wall_now, monotonic_now = wall(), monotonic()
        ahead = (wall_now - wall_before) - (monotonic_now - monotonic_before)
        wall_before, monotonic_before = wall_now, monotonic_now
        if ahead > CLOCK_JUMP_SECONDS:
            jumped(ahead)


def supervised(
    name: str, run: Callable[[], Awaitable[None]], restart_after: float = 5.0
) -> asyncio.Task[None]:
    """A background task that is never gone silently: an unexpected exit is logged
    (the exception's class and place, never its text) and the task restarted."""

    async def loop() -> None:
        while True:
            try:
                await run()
                log.error("background task %r returned; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error(
                    "background task %r failed: unexpected %s at %s; restarting it in %.0fs",
                    name,
                    type(error).__name__,
                    where(error),
                    restart_after,
                )
            await asyncio.sleep(restart_after)

    return asyncio.create_task(loop(), name=name)


def _exit_after_lost_leadership(why: str) -> None:
    """Another replica may lead by now (or will, once our lease expires): stop at once,
    with whatever pass is in flight, and let Kubernetes restart us as a clean standby."""
    log.critical("exiting: leadership lost (%s)", why)
    logging.shutdown()  # flush the log handlers; os._exit skips that
    os._exit(1)


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    events.post(body, type_, reason, message)


async def _serve_health(
    options: Options, started: asyncio.Event, synced: asyncio.Event
) -> web.AppRunner:
    """/healthz: the event loop answers. /readyz: kopf started, credentials and sources
    listed."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ready = started.is_set() and synced.is_set()
        return web.Response(text="ok" if ready else "starting", status=200 if ready else 503)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, options.health_host, options.health_port).start()
    return runner


def _start_watches(runtime: Runtime) -> list[LabelledWatch]:
    """Sources and managed Secrets, label-selected; source events are applied to the
    cache on their watch thread, the rest handled on the loop. The sources are listed
    only after the existing credentials' references are known (one list of credentials,
    on the thread started here), so that list keeps their values and no worker reads its
    sources one by one at start. kopf's own credential watch starts when the startup
    handler returns, so it may list while this thread does: its events reach the store
    either way; this list only primes the source cache."""
    loop = asyncio.get_running_loop()
    kube, supervisor, synced = runtime.kube, runtime.supervisor, runtime.synced
    namespaces = runtime.options.namespaces

    def on_loop(handler: Callable[..., None], *first: str) -> Callable[[str, dict], None]:
        return lambda event_type, body: loop.call_soon_threadsafe(handler, *first, event_type, body)

    def relisted() -> None:
        # A watch had to list again (410 Gone, a reconnect after a failure): compare the
        # workers with a complete list too.
        loop.call_soon_threadsafe(runtime.sweep_now.set)

    def on_source(kind: str) -> Callable[[str, dict], None]:
        # Applied on the watch thread, so a large object is reduced to what credentials
        # read before anything queues it; only the wake-ups go to the loop.
        def apply(event_type: str, body: dict) -> None:
            if uids := supervisor.sources.apply(kind, event_type, body):
                loop.call_soon_threadsafe(supervisor.source_event, uids)

        return apply

    source_watches = [
        LabelledWatch(
            kube.api,
            WatchTarget(plural, SOURCE_SELECTOR),
            namespaces,
            on_source(kind),
            on_relisted=relisted,
        )
        for plural, kind in (("secrets", "Secret"), ("configmaps", "ConfigMap"))
    ]
    managed = LabelledWatch(
        kube.api,
        WatchTarget("secrets", LABEL_CREDENTIAL, metadata_only=True),
        namespaces,
        on_loop(supervisor.managed_secret_event),
        on_relisted=relisted,
        # After its events: they are queued to the loop first.
        on_synced=lambda: loop.call_soon_threadsafe(runtime.managed_listed.set),
    )
    managed.start()

    def start_sources() -> None:
        began = time.monotonic()
        listed = 0
        try:
            for body in kube.credentials(namespaces):
                supervisor.sources.prime(body["metadata"]["uid"], referenced(body))
                listed += 1
        except KubeError as error:
            # Nothing primed: each worker reads its sources once instead.
            log.warning("credentials not listed before the sources: %s", error)
        primed = time.monotonic()
        for watch in source_watches:
            watch.start()
        for watch in [*source_watches, managed]:
            watch.synced.wait()
        done = time.monotonic()
        log.info(
            "sources and managed Secrets listed in %.1fs (%d credentials read first, %.1fs)",
            done - began,
            listed,
            primed - began,
        )
        loop.call_soon_threadsafe(synced.set)

    threading.Thread(target=start_sources, name="sources-start", daemon=True).start()
    return [*source_watches, managed]


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what a worker uses of a credential kopf just decoded: no managedFields, no
    other annotations or labels."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    kept_metadata = {
        key: metadata[key]
        for key in (
            "name",
            "namespace",
            "uid",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        )
        if key in metadata
    }
    if ANNOTATION_REFRESH_REQUESTED in annotations:
        kept_metadata["annotations"] = {
            ANNOTATION_REFRESH_REQUESTED: annotations[ANNOTATION_REFRESH_REQUESTED]
        }
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept_metadata,
        # Fresh from kopf's decoder; kopf keeps no reference to it after the handler.
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }
