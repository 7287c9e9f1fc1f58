"""kopf wiring: the operator's lifecycle (kopf's startup and cleanup handlers).

kopf runs the process (logging, signals, the ready flag) and calls these two handlers;
everything the process owns between them is one `runtime.Runtime`, which starts and stops
it in a stated order.

The credential resource is watched by watches.py, not by a kopf handler: for a
credential watch kopf kept a memory record and the latest full body of every object and
ran its handler machinery for every status echo (most of the memory and a fifth
of the CPU per credential that were not tokensync's own), and kopf sends no server-side
label selector, which the Secret and ConfigMap watches need. One asyncio task per
credential (supervisor.py), never a kopf.daemon: kopf puts a finalizer on every object
with a daemon, and a finalizer would block namespace deletion once the operator is gone;
the managed Secret's ownerReference does the cleanup on deletion.

Several replicas (`--peering NAME`): kopf runs standalone in every replica and the
workers run their passes only while `leader.LeaderElector` holds Lease NAME. kopf's own
peering would not do: it pauses kopf's watchers, not these tasks.
"""

from __future__ import annotations

from typing import Any

import kopf

from tokensync.runtime import Options, Runtime


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf watches no resource here (no resource handler is registered)."""
    # The resources are fixed: no need to watch CRDs and namespaces (nor the RBAC for it).
    settings.scanning.disabled = True
    # tokensync posts its own events (events.py); kopf would turn log lines into events.
    settings.posting.enabled = False


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    options = Options(
        config=memo.config,
        namespaces=memo.namespaces,
        max_requests=memo.max_requests,
        max_requests_per_host=memo.max_requests_per_host,
        metrics_port=memo.metrics_port,
        metrics_host=memo.metrics_host,
        metrics_security=memo.metrics_security,
        health_port=memo.health_port,
        health_host=memo.health_host,
        leader_election=memo.leader_election,
        shards=memo.shards,
    )
    memo.runtime = await Runtime.start(options, memo.ready_flag)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if (runtime := getattr(memo, "runtime", None)) is not None:
        await runtime.stop()
