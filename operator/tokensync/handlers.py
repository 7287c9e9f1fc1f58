"""Which events start, wake and stop credential workers, and the operator's lifecycle
(kopf's startup and cleanup handlers).

One asyncio task per credential, never a kopf.daemon: kopf puts a finalizer on every
object with a daemon, and a finalizer would block namespace deletion once the operator is
gone; the managed Secret's ownerReference does the cleanup on deletion.

Everything is watched by watches.py, not by kopf: credentials (reduced to what a worker
uses on the watch thread, the operator's own status echoes dropped there), referenced
Secrets and ConfigMaps (label `tokensync.dev/credential-source=true`) and managed Secrets
(label `tokensync.dev/credential`, metadata only), the latter two with their label
selectors sent to the API server. kopf allows one selector per resource, its indices
stalled start-up at a thousand credentials, and for a credential watch it kept a memory
record and the latest full body of every object and ran its handler machinery for every
status echo (issue 10: most of the memory and a fifth of the CPU per credential that were
not tokensync's own). No kopf handler is ever attached to Secrets.

Several replicas (`--peering NAME`): kopf runs standalone in every replica and keeps
their views warm; the workers run their passes only while `leader.LeaderElector` holds
Lease NAME. kopf's own peering would not do: it pauses kopf's watchers, not these tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from aiohttp import web

from tokensync import events, metrics
from tokensync.controller import CredentialWorker, OperatorContext, _where
from tokensync.gates import OperatorConfig
from tokensync.kube import GROUP, PLURAL, VERSION, Kube, KubeError, load_configuration
from tokensync.leader import LeaderElector
from tokensync.limits import PassGate, RequestLimits
from tokensync.managed import managed_state
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED, LABEL_CREDENTIAL, LABEL_SOURCE
from tokensync.sources import SourceCache
from tokensync.spec import SpecError, parse_spec
from tokensync.watches import LISTED, LabelledWatch, WatchTarget

log = logging.getLogger("tokensync")

SOURCE_SELECTOR = f"{LABEL_SOURCE}=true"
OWN_WRITE_SETTLE_SECONDS = 1.0
# Workers are compared with a complete list of credentials this often, and after every
# re-list of a watch: a safety net under the credential watch's own sweep.
SWEEP_INTERVAL_SECONDS = 300.0
KUBE_THREADS = 16  # Kubernetes API calls: short, never behind token requests
PASSES_PER_SECOND = 500.0  # mass wake-ups (start, leadership, API back) are paced to this
WRITES_DRAIN_SECONDS = 10.0  # at shutdown, for Kubernetes calls of cancelled workers


class Supervisor:
    """Keeps one worker task per credential, keyed by UID: the one store that decides
    which workers exist. Watch events start, wake and stop workers; a periodic list may
    only stop the workers of credentials whose last event came before that list began
    (`list_began` then `sweep`), so a credential created while the list ran keeps its
    worker."""

    def __init__(
        self,
        ctx: OperatorContext,
        sources: SourceCache,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self.ctx = ctx
        self.sources = sources
        self.serving = serving  # False on a standby
        self.workers: dict[str, CredentialWorker] = {}
        self.by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> UID
        # Event sequence: the number of the last event applied, and per UID the number of
        # its own last event (kept for deleted UIDs too, until a sweep no longer needs it).
        self.sequence = 0
        self.last_event: dict[str, int] = {}

    def is_own_echo(self, body: Mapping[str, Any]) -> bool:
        """Our own status patch coming back through the watch (called on its thread):
        recognised by its resourceVersion, or, while the write has not returned yet, by
        carrying exactly the status being written and nothing new in what wakes a worker."""
        metadata = body.get("metadata") or {}
        worker = self.workers.get(metadata.get("uid", ""))
        if worker is None:
            return False
        version = metadata.get("resourceVersion")
        if version is not None and version == worker.status_version:
            return True
        in_flight = worker.status_in_flight
        if in_flight is None or body.get("status") != in_flight:
            return False
        known = worker.metadata
        return (
            metadata.get("generation") == known.get("generation")
            and _refresh_requested(metadata) == _refresh_requested(known)
            and not metadata.get("deletionTimestamp")
        )

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A credential was listed, added, changed or deleted."""
        metadata = body["metadata"]
        # A DELETED found by a re-list's sweep carries the name only.
        uid = metadata.get("uid") or self.by_name.get((metadata["namespace"], metadata["name"]))
        if uid is None:
            return
        self.sequence += 1
        self.last_event[uid] = self.sequence
        key = (metadata["namespace"], metadata["name"])
        if event_type == "DELETED" or metadata.get("deletionTimestamp"):
            # Being deleted (foreground deletion, a GitOps prune): nothing more is written.
            self.stop_worker(uid)
            return
        previous = self.by_name.get(key)
        if previous is not None and previous != uid:
            # The name was deleted and created again (the DELETED was lost in a watch
            # gap, or a re-list reports only the new object): the old one is gone.
            log.info("%s/%s was re-created: the old object's worker stopped", *key)
            self.stop_worker(previous)
        self.by_name[key] = uid
        # Replaces the previous references: values still read are kept, not read again.
        self.sources.set_references(uid, _referenced(body))
        worker = self.workers.get(uid)
        if worker is None:
            worker = CredentialWorker(self.ctx, dict(body))
            worker.task = asyncio.create_task(worker.run(), name=f"credential:{uid}")
            worker.task.add_done_callback(lambda _, uid=uid: self._worker_ended(uid))
            self.workers[uid] = worker
        else:
            worker.observe(body)

    def stop_worker(self, uid: str) -> None:
        self._forget_references(uid)
        worker = self.workers.pop(uid, None)
        if worker is None:
            return
        if worker.task:
            worker.task.cancel()
        self._forget_worker(uid, worker)

    def _worker_ended(self, uid: str) -> None:
        """A worker returned by itself (its credential is gone): drop it."""
        worker = self.workers.get(uid)
        if worker is not None and worker.task is not None and worker.task.done():
            del self.workers[uid]
            self._forget_references(uid)
            self._forget_worker(uid, worker)

    def _forget_worker(self, uid: str, worker: CredentialWorker) -> None:
        worker.disarm_expiry()
        if worker.expiry_task is not None:
            worker.expiry_task.cancel()
        key = (worker.owner.namespace, worker.owner.name)
        holder = self.by_name.get(key)
        if holder == uid:
            del self.by_name[key]
        # The series are keyed by name: they belong to whichever object holds the name
        # now, and only a credential that still holds it may drop them.
        if holder in (uid, None):
            metrics.forget(worker.owner.namespace, worker.owner.name)

    def list_began(self) -> int:
        """Call right before a complete list of credentials starts; pass the result to
        `sweep` with that list."""
        return self.sequence

    def sweep(self, existing: set[str], began: int) -> int:
        """Mark and sweep: stop every worker whose credential is not in a complete list
        of UIDs that began (`list_began`) after the credential's last event; a worker
        started or changed by an event since is newer than the list. Returns how many
        were stopped."""
        gone = [
            uid
            for uid in self.workers
            if uid not in existing and self.last_event.get(uid, 0) <= began
        ]
        for uid in gone:
            log.info("credential %s is gone (missed while a watch was down): worker stopped", uid)
            self.stop_worker(uid)
        # Sequence numbers of UIDs without a worker matter to no later sweep.
        for uid in [u for u, seen in self.last_event.items() if seen <= began]:
            if uid not in self.workers:
                del self.last_event[uid]
        return len(gone)

    def _forget_references(self, uid: str) -> None:
        self.sources.forget(uid)

    def source_event(self, uids: set[str]) -> None:
        """What these credentials read of a labelled Secret or ConfigMap changed (the
        watch thread applied the event to the cache): wake them."""
        for uid in uids:
            if worker := self.workers.get(uid):
                worker.wake()

    def managed_secret_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A managed Secret was listed, changed or deleted: remember what the passes need
        of it; wake its worker unless the change is the worker's own write."""
        metadata = body.get("metadata") or {}
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        known = self.ctx.managed_secrets.get(key)
        if event_type == "DELETED":
            if known is not None and known.uid == metadata.get("uid"):
                del self.ctx.managed_secrets[key]
            version = None
        else:
            version = metadata.get("resourceVersion")
            if known is not None and known.resource_version == version:
                return  # our own write, already recorded when it returned
            self.ctx.managed_secrets[key] = managed_state(body)
        credential = (metadata.get("labels") or {}).get(LABEL_CREDENTIAL)
        worker = self.workers.get(self.by_name.get((key[0], credential or ""), ""))
        if worker is None or event_type == LISTED:
            return
        if version is None:
            worker.wake()
            return
        # A worker's own write is usually reported before its write returns: compare once
        # the write has settled, so only someone else's change wakes it.
        asyncio.get_running_loop().call_later(
            OWN_WRITE_SETTLE_SECONDS, self._wake_if_foreign, worker, version
        )

    @staticmethod
    def _wake_if_foreign(worker: CredentialWorker, version: str | None) -> None:
        if version != worker.secret_version and not (worker.task and worker.task.done()):
            worker.wake()

    def samples(self) -> list[metrics.CredentialSample]:
        """Per-credential metrics come from the replica that serves; a standby's view of
        status is not its own."""
        if not self.serving():
            return []
        return [
            metrics.sample_from_status(w.owner.namespace, w.owner.name, w.status, w.expires_at)
            for w in list(self.workers.values())
        ]

    async def stop(self) -> None:
        """Cancel every worker and expiry report, and wait until they have ended."""
        tasks = []
        for worker in self.workers.values():
            worker.disarm_expiry()
            tasks += [t for t in (worker.task, worker.expiry_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _refresh_requested(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)


def _referenced(body: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    metadata = body["metadata"]
    try:
        refs = parse_spec(body.get("spec") or {}, name=metadata["name"]).references
    except SpecError:
        return []
    return [(metadata["namespace"], ref.kind, ref.name, ref.key) for ref in refs]


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings that keep data out of the objects and events it writes."""
    # The resources are fixed: no need to watch CRDs and namespaces (nor the RBAC for it).
    settings.scanning.disabled = True
    # Events only from explicit kopf.event() calls with messages we built, never from
    # log lines (which might one day carry an exception's text).
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "tokensync"
    # Only an on.event handler exists, so kopf persists no progress and no diff-base on
    # credentials (a test checks their annotations stay clean).


def _start_watches(
    memo: kopf.Memo, kube: Kube, supervisor: Supervisor, synced: asyncio.Event
) -> list[LabelledWatch]:
    """Sources and managed Secrets, label-selected; source events are applied to the
    cache on their watch thread, the rest handled on the loop. The sources are listed
    only after the existing credentials' references are known (one list of credentials),
    so that list keeps their values and no worker reads its sources one by one at start."""
    loop = asyncio.get_running_loop()

    def on_loop(handler: Callable[..., None], *first: str) -> Callable[[str, dict], None]:
        return lambda event_type, body: loop.call_soon_threadsafe(handler, *first, event_type, body)

    def relisted() -> None:
        # A watch had to list again (410 Gone, a reconnect after a failure): compare the
        # workers with a complete list too.
        loop.call_soon_threadsafe(memo.sweep_now.set)

    def on_source(kind: str) -> Callable[[str, dict], None]:
        # Applied on the watch thread, so a large object is reduced to what credentials
        # read before anything queues it; only the wake-ups go to the loop.
        def apply(event_type: str, body: dict) -> None:
            if uids := supervisor.sources.apply(kind, event_type, body):
                loop.call_soon_threadsafe(supervisor.source_event, uids)

        return apply

    namespaces = memo.namespaces
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
    )

    def on_credential(event_type: str, body: dict) -> None:
        # On the watch thread: our own status echoes (most events) stop here, the rest is
        # reduced to what a worker uses before anything queues it.
        try:
            if event_type != "DELETED" and supervisor.is_own_echo(body):
                return
            if event_type == LISTED:  # before the sources are listed: keep what it reads
                supervisor.sources.prime(body["metadata"]["uid"], _referenced(body))
            compact = _compact(body)
        except Exception as error:  # an error here would stop the watch for every credential
            metadata = body.get("metadata") or {}
            log.error(
                "credential %s/%s skipped by the watch: unexpected %s",
                metadata.get("namespace"),
                metadata.get("name"),
                type(error).__name__,
            )
            return
        loop.call_soon_threadsafe(supervisor.observe, event_type, compact)

    credentials = LabelledWatch(
        kube.api,
        WatchTarget(PLURAL, "", api=f"/apis/{GROUP}/{VERSION}", small=True),
        namespaces,
        on_credential,
        on_relisted=relisted,
    )
    managed.start()

    def start_sources() -> None:
        credentials.start()
        credentials.synced.wait()
        for watch in source_watches:
            watch.start()
        for watch in [*source_watches, managed]:
            watch.synced.wait()
        loop.call_soon_threadsafe(synced.set)

    threading.Thread(target=start_sources, name="sources-start", daemon=True).start()
    return [credentials, *source_watches, managed]


# --- operator lifecycle ---------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    config: OperatorConfig = memo.config
    # Token-side calls run on their endpoint's own threads (RequestLimits); Kubernetes
    # calls here, never behind them (one slow endpoint starved everyone's writes before).
    kube_executor = ThreadPoolExecutor(
        max_workers=KUBE_THREADS, thread_name_prefix="tokensync-kube"
    )
    limits = RequestLimits(memo.max_requests, memo.max_requests_per_host)
    # One pool for the API calls and the label-selected watches (each holds a connection).
    kube = Kube(load_configuration(connection_pool_size=KUBE_THREADS + 8))
    memo.kube_executor = kube_executor
    memo.limits = limits
    sources = SourceCache()
    memo.sources_synced = asyncio.Event()
    elector = None
    if memo.leader_election is not None:
        name, namespace, identity = memo.leader_election
        # Its own API client: renewals never queue behind token-request writes.
        elector = LeaderElector(
            Kube(load_configuration(connection_pool_size=2)),
            name,
            namespace,
            identity,
            on_lost=_exit_after_lost_leadership,
        )
        memo.elector = elector
    memo.supervisor = Supervisor(
        OperatorContext(
            config=config,
            kube=kube,
            kube_executor=kube_executor,
            limits=limits,
            pass_gate=PassGate(PASSES_PER_SECOND, burst=int(PASSES_PER_SECOND)),
            sources=sources.lookup,
            post_event=_post_event,
            leadership=elector.wait if elector else None,
            is_leading=elector.is_leader.is_set if elector else lambda: True,
            sources_synced=memo.sources_synced.wait,
            fill_source=sources.fill,
        ),
        sources,
        serving=elector.is_leader.is_set if elector else lambda: True,
    )
    memo.sweep_now = asyncio.Event()
    memo.watches = _start_watches(memo, kube, memo.supervisor, memo.sources_synced)
    memo.sweeper = supervised("credential sweep", lambda: _sweep_forever(memo, kube))
    metrics.serve(
        memo.metrics_port, memo.supervisor.samples, memo.metrics_host, memo.metrics_security
    )
    if elector is None:
        metrics.LEADER.set(1)
    else:
        elector.start()
    if memo.health_port:
        memo.health_runner = await _serve_health(memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await stop_in_order(
        watches=getattr(memo, "watches", []),
        supervisor=getattr(memo, "supervisor", None),
        kube_executor=getattr(memo, "kube_executor", None),
        elector=getattr(memo, "elector", None),
        background=[t for t in (getattr(memo, "sweeper", None),) if t is not None],
    )
    if limits := getattr(memo, "limits", None):
        limits.close()
    if runner := getattr(memo, "health_runner", None):
        await runner.cleanup()


async def stop_in_order(
    *,
    watches: list[LabelledWatch],
    supervisor: Supervisor | None,
    kube_executor: ThreadPoolExecutor | None,
    elector: LeaderElector | None,
    background: list[asyncio.Task[None]],
    writes_timeout: float = WRITES_DRAIN_SECONDS,
) -> None:
    """Stop so that nothing of ours writes once a standby can take over: events and
    background tasks, then the workers, then the Kubernetes writes they left in flight
    (a cancelled task's thread still runs its call; bounded wait), then the Lease."""
    for watch in watches:
        watch.stop()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if supervisor is not None:
        await supervisor.stop()
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
                    _where(error),
                    restart_after,
                )
            await asyncio.sleep(restart_after)

    return asyncio.create_task(loop(), name=name)


async def _sweep_forever(memo: kopf.Memo, kube: Kube) -> None:
    """Mark and sweep the workers against a complete list of credentials, periodically
    and whenever `memo.sweep_now` is set (after a watch had to list again)."""
    await memo.sources_synced.wait()
    loop = asyncio.get_running_loop()
    supervisor: Supervisor = memo.supervisor
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SWEEP_INTERVAL_SECONDS):
                await memo.sweep_now.wait()
        memo.sweep_now.clear()
        began = supervisor.list_began()  # events after this are newer than the list
        try:
            existing = await loop.run_in_executor(
                memo.kube_executor, kube.credential_uids, memo.namespaces
            )
        except KubeError as error:
            log.warning("credential sweep skipped: %s", error)
            continue
        supervisor.sweep(existing, began)
        # References of credentials primed at start but deleted before kopf listed them
        # (credentials created since the list have workers, and keep theirs).
        memo.supervisor.sources.retain(existing | set(memo.supervisor.workers))


def _exit_after_lost_leadership(why: str) -> None:
    """Another replica may lead by now (or will, once our lease expires): stop at once,
    with whatever pass is in flight, and let Kubernetes restart us as a clean standby."""
    log.critical("exiting: leadership lost (%s)", why)
    logging.shutdown()  # flush the log handlers; os._exit skips that
    os._exit(1)


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    events.post(body, type_, reason, message)


async def _serve_health(memo: kopf.Memo) -> web.AppRunner:
    """/healthz: the event loop answers. /readyz: kopf started, credentials and sources listed."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ready = memo.ready_flag.is_set() and memo.sources_synced.is_set()
        return web.Response(text="ok" if ready else "starting", status=200 if ready else 503)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, memo.health_host, memo.health_port).start()
    return runner


# --- credentials ------------------------------------------------------------------------


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what a worker uses of a credential just decoded by the watch: no
    managedFields, no other annotations or labels."""
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
        # Fresh from the watch's decoder and referenced by nothing else: no copy needed.
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }
