"""The Supervisor keeps the source cache's references in step with credential events:
a credential's own status write must not drop the values it reads (they would have to
be read from the API again on its next pass)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from tokensync.controller import OperatorContext
from tokensync.secret import url_allowed
from tokensync.sources import SourceCache, ValueNotKept, resolve_references
from tokensync.spec import ResolvedValues, parse_spec
from tokensync.supervisor import Supervisor

SPEC = {
    "tokenURL": "https://idp.example/token",
    "clientID": "app",
    "clientSecretRef": {"name": "client", "key": "client_secret"},
}


def credential(**status: Any) -> dict[str, Any]:
    metadata = {"namespace": "team", "name": "c", "uid": "uid-1", "generation": 1}
    return {"metadata": metadata, "spec": SPEC, "status": status}


def source() -> dict[str, Any]:
    metadata = {"namespace": "team", "name": "client", "resourceVersion": "1"}
    return {"metadata": metadata, "data": {"client_secret": base64.b64encode(b"s").decode()}}


def resolve(cache: SourceCache) -> Any:
    return resolve_references(parse_spec(SPEC, name="c"), cache.lookup("team"), url_allowed)


def test_status_writes_keep_and_deletion_drops_the_referenced_values():
    async def scenario() -> None:
        cache = SourceCache()
        never = asyncio.Event()
        ctx = OperatorContext(
            config=None,  # type: ignore[arg-type]  # the worker never gets past sources_synced
            kube=None,  # type: ignore[arg-type]
            kube_executor=None,  # type: ignore[arg-type]
            sources=cache.lookup,
            post_event=lambda *_: None,
            sources_synced=never.wait,
        )
        supervisor = Supervisor(ctx, cache)
        supervisor.observe("ADDED", credential())
        cache.apply("Secret", "ADDED", source())
        assert isinstance(resolve(cache), ResolvedValues)
        supervisor.observe("MODIFIED", credential(observedGeneration=1))  # its status write
        assert isinstance(resolve(cache), ResolvedValues)
        supervisor.observe("DELETED", credential())
        assert isinstance(resolve(cache), ValueNotKept)  # nobody reads it any more
        await supervisor.stop()

    asyncio.run(scenario())
