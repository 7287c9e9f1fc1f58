"""The one store of credential workers: which workers exist, and what wakes them.

One asyncio task per credential (CredentialWorker.run), keyed by UID. Credential events
start, wake and stop workers; a periodic list of credentials may only stop the workers
of credentials whose last event came before that list began. Source and managed-Secret
events wake the workers that read them.

With --shards a replica runs workers only for the credentials of the shards it holds
(`owns`); it keeps the compact body of every other credential ("parked": spec and status,
a few hundred bytes each) so that a shard it gains starts its workers at once, without a
list, from the status the previous holder wrote. Source values and references are kept
for owned credentials only; the managed-Secret views for the Secrets of owned ones.
`rebalance` starts and stops workers when the held shards change.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tokensync import discovery, identity, metrics
from tokensync.controller import CredentialWorker, OperatorContext
from tokensync.managed import managed_state
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED, LABEL_CREDENTIAL
from tokensync.sources import SourceCache
from tokensync.spec import SpecError, parse_spec
from tokensync.watches import LISTED

log = logging.getLogger("tokensync")

OWN_WRITE_SETTLE_SECONDS = 1.0


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
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sources = sources
        self.serving = serving  # False on a standby
        self.owns = owns  # with --shards: whether this replica serves that UID now
        self.workers: dict[str, CredentialWorker] = {}
        self.parked: dict[str, dict[str, Any]] = {}  # UID -> body, of credentials not owned
        self.by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> UID
        # Event sequence: the number of the last event applied, and per UID the number of
        # its own last event (kept for deleted UIDs too, until a sweep no longer needs it).
        self.sequence = 0
        self.last_event: dict[str, int] = {}
        self.issuers = discovery.IssuerUsers(identity.DISCOVERY)

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
        # In an empty context, not the caller's: inside a kopf handler that holds kopf's
        # cause (the whole decoded event, its patch, logger and memo), and every task,
        # timer and callback started here copies it and keeps it alive, a worker's task
        # for as long as its credential lives.
        contextvars.Context().run(self._observe, event_type, body)

    def _observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
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
            self._unpark(uid)
            return
        previous = self.by_name.get(key)
        if previous is not None and previous != uid:
            # The name was deleted and created again (the DELETED was lost in a watch
            # gap, or a re-list reports only the new object): the old one is gone.
            log.info("%s/%s was re-created: the old object's worker stopped", *key)
            self.stop_worker(previous)
            self._unpark(previous)
        self.by_name[key] = uid
        if self.owns is not None and not self.owns(uid):
            if uid in self.workers:  # its shard was lost and rebalance has not run yet
                self.park(uid)
            self.parked[uid] = dict(body)
            self.sources.forget(uid)  # primed at start, maybe: not ours to keep
            # Listed before its credential was known, maybe: not ours to keep either.
            self.ctx.managed_secrets.pop(_secret_key(body), None)
            return
        self.parked.pop(uid, None)
        # Replaces the previous references: values still read are kept, not read again.
        self.sources.set_references(uid, referenced(body))
        self.issuers.set(uid, _issuer_url(body))
        worker = self.workers.get(uid)
        if worker is None:
            worker = CredentialWorker(self.ctx, dict(body))
            worker.task = asyncio.create_task(worker.run(), name=f"credential:{uid}")
            worker.task.add_done_callback(lambda _, uid=uid: self._worker_ended(uid))
            self.workers[uid] = worker
        else:
            worker.observe(body)

    def rebalance(self) -> None:
        """The held shards changed: park the workers of credentials no longer owned (the
        fence already stops their writes), start workers for the parked ones now owned."""
        if self.owns is None:
            return
        for uid in [u for u in self.workers if not self.owns(u)]:
            self.park(uid)
        for uid in [u for u in self.parked if self.owns(u)]:
            body = self.parked.pop(uid)
            # No view of its Secret: the worker reads it once, fresh, before deciding
            # whether a token is due (the previous holder may have just renewed it).
            self.ctx.managed_secrets.pop(_secret_key(body), None)
            self.observe(None, body)
        log.info(
            "serving %d credentials (%d served elsewhere)", len(self.workers), len(self.parked)
        )

    def clock_jumped(self) -> None:
        """The wall clock moved ahead (a pause): every worker looks again now, and every
        expiry timer is set again from the wall clock (both ran on the monotonic clock,
        which stood still)."""
        for worker in list(self.workers.values()):
            worker.arm_expiry()
            worker.wake()

    def park(self, uid: str) -> None:
        """Stop the worker of a credential another replica serves now; keep its body,
        with the status as this worker last knew it, and its name."""
        worker = self.workers.get(uid)
        if worker is None:
            return
        body = {**worker.body, "status": worker.status}
        key = (worker.owner.namespace, worker.owner.name)
        self.stop_worker(uid)
        # Its managed Secret's view goes too: the worker that gains it reads it once.
        self.ctx.managed_secrets.pop(_secret_key(body), None)
        self.parked[uid] = body
        self.by_name[key] = uid

    def _unpark(self, uid: str) -> None:
        body = self.parked.pop(uid, None)
        if body is None:
            return
        metadata = body.get("metadata") or {}
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if self.by_name.get(key) == uid:
            del self.by_name[key]
        self.sources.forget(uid)

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
        worker.stop_expiry_reports()
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
        for uid in [u for u in self.parked if u not in existing]:
            if self.last_event.get(uid, 0) <= began:
                self._unpark(uid)
        # Sequence numbers of UIDs without a worker matter to no later sweep.
        for uid in [u for u, seen in self.last_event.items() if seen <= began]:
            if uid not in self.workers and uid not in self.parked:
                del self.last_event[uid]
        return len(gone)

    def _forget_references(self, uid: str) -> None:
        self.issuers.set(uid, None)
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
        credential = (metadata.get("labels") or {}).get(LABEL_CREDENTIAL)
        if event_type in ("ADDED", "DELETED"):
            # Credentials naming it as a subject token report it as existing now (not
            # offered yet), or gone; its offer comes through the source watch.
            self.source_event(self.sources.readers(key[0], "Secret", key[1]))
        if self.owns is not None:
            uid = self.by_name.get((key[0], credential or ""))
            if uid is not None and not self.owns(uid):  # served elsewhere: no view kept
                self.ctx.managed_secrets.pop(key, None)
                return
        if event_type == "DELETED":
            if known is not None and known.uid == metadata.get("uid"):
                del self.ctx.managed_secrets[key]
            version = None
        else:
            version = metadata.get("resourceVersion")
            if known is not None and known.resource_version == version:
                return  # our own write, already recorded when it returned
            self.ctx.managed_secrets[key] = managed_state(body)
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

    async def stop(self, requests_grace: float = 0.0) -> None:
        """Cancel every worker and expiry report, and wait until they have ended. Workers
        with a token request in flight get up to `requests_grace` seconds to write what it
        brings first: cancelled, the token the endpoint issued is lost and whoever serves
        the credential next asks again, ahead of its renew window. Their expiry timers stay
        armed meanwhile: a token that expires during the wait is still reported.

        As a shard's hand-back does, it waits only for requests already sent: from now on
        none starts or leaves its endpoint's queue (OperatorContext.may_send), so a queued
        one costs nothing and whoever serves next asks instead."""
        self.ctx.stopping = True
        in_flight = {uid: self.ctx.requests_in_flight[uid] for uid in self.ctx.sent_uids()}
        workers = list(self.workers.values())
        waiting = [w for w in workers if requests_grace > 0 and w.owner.uid in in_flight]
        # First the others, so that no new pass starts meanwhile.
        tasks = [task for w in workers if w not in waiting for task in _stop_tasks(w)]
        if waiting:
            log.info("waiting up to %.0fs for %d token requests", requests_grace, len(waiting))
            await asyncio.wait(in_flight.values(), timeout=requests_grace)
            tasks += [task for w in waiting for task in _stop_tasks(w)]
        await asyncio.gather(*tasks, return_exceptions=True)


def _stop_tasks(worker: CredentialWorker) -> list[asyncio.Task[Any]]:
    """Cancel a worker's pass and its expiry timer and report; the tasks to wait for."""
    if worker.task is not None:
        worker.task.cancel()
    return [t for t in (worker.task, worker.stop_expiry_reports()) if t is not None]


def _issuer_url(body: Mapping[str, Any]) -> str | None:
    issuer = (body.get("spec") or {}).get("issuerURL")
    return issuer if isinstance(issuer, str) else None


def _secret_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of the credential's managed Secret (spec.secret.name, by
    default the credential's name)."""
    metadata = body.get("metadata") or {}
    secret = (body.get("spec") or {}).get("secret") or {}
    return metadata.get("namespace", ""), secret.get("name") or metadata.get("name", "")


def _refresh_requested(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)


def referenced(body: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    metadata = body["metadata"]
    try:
        refs = parse_spec(body.get("spec") or {}, name=metadata["name"]).references
    except SpecError:
        return []
    return [(metadata["namespace"], ref.kind, ref.name, ref.key) for ref in refs]
