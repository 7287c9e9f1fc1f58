"""kopf wiring only: which events start, wake and stop credential workers.

Why no kopf.daemon: kopf puts a finalizer on every object with a daemon, and a finalizer
would block namespace deletion once the operator is gone. Instead a spy handler
(`on.event`, which stores nothing on the object) keeps one asyncio task per credential;
the managed Secret's ownerReference does the cleanup on deletion.

Referenced Secrets and ConfigMaps are watched with a server-side label selector and held
in kopf indices; no create/update handler is ever attached to Secrets (kopf would copy
their data into its last-handled-configuration annotation).

Several replicas (`--peering NAME`): kopf runs standalone in every replica and keeps
their views warm; the workers run their passes only while `leader.LeaderElector` holds
Lease NAME. kopf's own peering would not do: it pauses kopf's watchers, not these tasks.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from aiohttp import web

from tokensync import metrics
from tokensync.controller import CredentialWorker, OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.kube import GROUP, PLURAL, VERSION, Kube, load_configuration
from tokensync.leader import LeaderElector
from tokensync.secret import LABEL_SOURCE
from tokensync.sources import Source, SourceLookup, source_from_body
from tokensync.spec import SpecError, parse_spec

log = logging.getLogger("tokensync")

CREDENTIALS = (GROUP, VERSION, PLURAL)
SOURCE_SELECTOR = f"{LABEL_SOURCE}=true"


class Supervisor:
    """Keeps one worker task per credential, keyed by UID."""

    def __init__(self, ctx: OperatorContext, serving: Callable[[], bool] = lambda: True) -> None:
        self.ctx = ctx
        self.serving = serving  # False on a standby
        self.workers: dict[str, CredentialWorker] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        if event_type == "DELETED":
            worker = self.workers.pop(uid, None)
            if worker and worker.task:
                worker.task.cancel()
            return
        worker = self.workers.get(uid)
        if worker is None:
            worker = CredentialWorker(self.ctx, dict(body))
            worker.task = asyncio.create_task(worker.run(), name=f"credential:{uid}")
            self.workers[uid] = worker
        else:
            worker.observe(body)

    def wake(self, uids: Iterator[str]) -> None:
        for uid in uids:
            if worker := self.workers.get(uid):
                worker.wake()

    def samples(self) -> list[metrics.CredentialSample]:
        """Per-credential metrics come from the replica that serves; a standby's view of
        status is not its own."""
        if not self.serving():
            return []
        return [
            metrics.CredentialSample(
                namespace=w.owner.namespace,
                name=w.owner.name,
                ready_reason=w.ready_reason,
                expires_at=w.expires_at,
            )
            for w in list(self.workers.values())
        ]

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings that keep data out of the objects and events it writes."""
    # The resources are fixed: no need to watch CRDs and namespaces (nor the RBAC for it).
    settings.scanning.disabled = True
    settings.watching.label_selectors["v1", "secrets"] = SOURCE_SELECTOR
    settings.watching.label_selectors["v1", "configmaps"] = SOURCE_SELECTOR
    # Events only from explicit kopf.event() calls with messages we built, never from
    # log lines (which might one day carry an exception's text).
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "tokensync"
    # Only on.event/index handlers exist, so kopf persists no progress and no diff-base
    # on credentials (a test checks their annotations stay clean).


def _lookup(secrets: kopf.Index, configmaps: kopf.Index, namespace: str) -> SourceLookup:
    def lookup(kind: str, name: str) -> Source | None:
        index = secrets if kind == "Secret" else configmaps
        for source in index.get((namespace, name), []):
            return source
        return None

    return lookup


# --- operator lifecycle ---------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    config: OperatorConfig = memo.config
    executor = ThreadPoolExecutor(max_workers=memo.workers, thread_name_prefix="tokensync")
    kube = Kube(load_configuration(connection_pool_size=memo.workers))
    memo.executor = executor
    # kopf gives each object a shallow copy of memo: share the indices through a dict.
    indices: dict[str, kopf.Index] = memo.indices
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
            executor=executor,
            sources=lambda namespace: _lookup(indices["secrets"], indices["configmaps"], namespace),
            post_event=_post_event,
            leadership=elector.wait if elector else None,
        ),
        serving=elector.is_leader.is_set if elector else lambda: True,
    )
    metrics.serve(memo.metrics_port, memo.supervisor.samples)
    if elector is None:
        metrics.LEADER.set(1)
    else:
        elector.start()
    if memo.health_port:
        memo.health_runner = await _serve_health(memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if supervisor := getattr(memo, "supervisor", None):
        await supervisor.stop()
    # After the workers: nothing of ours writes any more when a standby takes over.
    if elector := getattr(memo, "elector", None):
        await elector.stop()
    if runner := getattr(memo, "health_runner", None):
        await runner.cleanup()
    if executor := getattr(memo, "executor", None):
        executor.shutdown(wait=False, cancel_futures=True)


def _exit_after_lost_leadership(why: str) -> None:
    """Another replica may lead by now (or will, once our lease expires): stop at once,
    with whatever pass is in flight, and let Kubernetes restart us as a clean standby."""
    log.critical("exiting: leadership lost (%s)", why)
    logging.shutdown()  # flush the log handlers; os._exit skips that
    os._exit(1)


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(body), type=type_, reason=reason, message=message)


async def _serve_health(memo: kopf.Memo) -> web.AppRunner:
    """/healthz: the event loop answers. /readyz: kopf started and listed everything."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ready = memo.ready_flag.is_set()
        return web.Response(text="ok" if ready else "starting", status=200 if ready else 503)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, memo.health_host, memo.health_port).start()
    return runner


# --- sources: labelled Secrets and ConfigMaps -------------------------------------------


@kopf.index("v1", "secrets")
async def source_secrets(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Source]:
    source = source_from_body("Secret", body)
    return {(namespace, name): source} if source else {}


@kopf.index("v1", "configmaps")
async def source_configmaps(
    namespace: str, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Source]:
    source = source_from_body("ConfigMap", body)
    return {(namespace, name): source} if source else {}


@kopf.index(*CREDENTIALS)
async def credential_references(
    namespace: str, name: str, uid: str, spec: kopf.Spec, **_: Any
) -> dict[Any, str]:
    """(namespace, kind, name) of every referenced object -> credential UID."""
    try:
        refs = parse_spec(spec, name=name).references
    except SpecError:
        return {}
    return {(namespace, ref.kind, ref.name): uid for ref in refs}


@kopf.on.event("v1", "secrets")
async def source_secret_changed(
    namespace: str, name: str, memo: kopf.Memo, credential_references: kopf.Index, **_: Any
) -> None:
    _wake_referrers(memo, credential_references, (namespace, "Secret", name))


@kopf.on.event("v1", "configmaps")
async def source_configmap_changed(
    namespace: str, name: str, memo: kopf.Memo, credential_references: kopf.Index, **_: Any
) -> None:
    _wake_referrers(memo, credential_references, (namespace, "ConfigMap", name))


def _wake_referrers(memo: kopf.Memo, references: kopf.Index, key: tuple[str, str, str]) -> None:
    memo.supervisor.wake(iter(references.get(key, [])))


# --- credentials ------------------------------------------------------------------------


@kopf.on.event(*CREDENTIALS)
async def credential_event(
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    source_secrets: kopf.Index,
    source_configmaps: kopf.Index,
    **_: Any,
) -> None:
    # The indices are live views; keep them for the workers' source lookups.
    memo.indices.update(secrets=source_secrets, configmaps=source_configmaps)
    memo.supervisor.observe(type, _plain(body))


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A private copy: kopf updates its body views in place."""
    return copy.deepcopy(dict(body))
