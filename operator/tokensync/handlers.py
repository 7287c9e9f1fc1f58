"""kopf wiring: kopf runs the process (logging, signals, the ready flag), watches the
credential resource and calls the three handlers here.

- startup: everything the process owns is one `runtime.Runtime`, started before kopf
  watches anything (kopf runs startup handlers first) and stopped by cleanup in a stated
  order.
- credential_event: every credential event (`kopf.on.event`; type None for a listed
  object) goes to the runtime's store, which starts, wakes and stops one asyncio task
  per credential (supervisor.py). Only an event handler: no kopf.daemon or timer, which
  would put a finalizer on every credential (and a finalizer blocks namespace deletion
  once the operator is gone; the managed Secret's ownerReference does the cleanup), and
  no change handlers, so kopf keeps no progress or diff-base and never writes to a
  credential.

The labelled Secrets and ConfigMaps are watched by watches.py, not by kopf: kopf sends no
server-side label selector, and the operator must not receive every Secret of the
cluster.

Several replicas (`--peering NAME`): kopf runs standalone in every replica and watches in
each; the workers run their passes only while `leader.LeaderElector` holds Lease NAME (or,
with --shards, for the shards `shardkeeper.ShardKeeper` holds). kopf's own peering would
not do: it pauses kopf's watchers, not these tasks.
"""

from __future__ import annotations

from typing import Any

import kopf

from tokensync.kube import GROUP, PLURAL, VERSION
from tokensync.runtime import Options, Runtime

# Credentials per page of kopf's list at start (and after 410 Gone): one page in memory
# at a time, not all of them at once.
LIST_CHUNK = 100


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf deep-copies and compares every object on every event, for change handlers
    and their diff-base annotation; there are none here, so nothing is built, read or
    written (a tenth of kopf's CPU per event in the 3,000-credential profile)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # The resources are fixed: no need to watch CRDs and namespaces (nor the RBAC for it).
    settings.scanning.disabled = True
    # tokensync posts its own events (events.py); kopf would turn log lines into events.
    settings.posting.enabled = False
    settings.watching.chunk_size = LIST_CHUNK
    # An event handler keeps no progress; the diff-base is for change handlers only.
    settings.persistence.diffbase_storage = NoDiffBase()
    # A watch request that hangs (a half-open connection) is noticed by kopf's
    # inactivity timeout (70 s: bookmarks come every minute); between two watch
    # requests kopf waits this long, so an API server that ends watches at once is not
    # hammered.
    settings.watching.reconnect_backoff = 1.0


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    options: Options = memo.options
    memo.runtime = await Runtime.start(options, memo.ready_flag)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def credential_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    # The raw object: kopf decoded it for this event and keeps no reference to it.
    runtime: Runtime = memo.runtime
    runtime.credential_event(event["type"], dict(event["object"]))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if (runtime := getattr(memo, "runtime", None)) is not None:
        await runtime.stop()
