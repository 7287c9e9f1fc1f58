"""Memory that tokensync's own per-credential state costs, without kopf or a cluster.

N credentials go through the real Supervisor and CredentialWorker: each worker runs its
first pass (token request, Secret create, status patch) against in-process fakes that keep
nothing, then parks until its refresh point, as in steady state. Prints the RSS each
credential adds. What refresh_at_scale.py reports per credential minus this is what the
rest of the process costs per credential (kopf's per-object memories and queues, the
watches, allocator fragmentation left by the creation burst).

    python bench/worker_memory.py [--credentials 10000]

Prints numbers; never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from tokensync import oauth2
from tokensync.controller import OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.managed import FIELD_MANAGER
from tokensync.sources import Source, SourceCache
from tokensync.supervisor import Supervisor


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) * 1024


class ForgetfulKube:
    """Answers like the API server (resourceVersion, managedFields) and keeps nothing."""

    def __init__(self) -> None:
        self.version = 0
        self.calls = 0
        self.statuses = 0

    def read_secret(self, namespace: str, name: str) -> None:
        """The conflict check before a first token request: no Secret of that name."""
        self.calls += 1

    def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.version += 1
        fields = {
            "f:data": {f"f:{key}": {} for key in body["data"]},
            "f:metadata": {
                where: {f"f:{key}": {} for key in body["metadata"].get(where[2:]) or {}}
                for where in ("f:labels", "f:annotations")
            },
        }
        metadata = {
            **body["metadata"],
            "uid": f"secret-{self.version}",
            "resourceVersion": str(self.version),
            "managedFields": [
                {"manager": FIELD_MANAGER, "operation": "Update", "fieldsV1": fields}
            ],
        }
        return {**body, "metadata": metadata}

    def credential_metadata(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls += 1
        return {"uid": f"uid-{name}"}

    def patch_credential_status(self, *_: Any) -> dict[str, Any]:
        self.calls += 1
        self.statuses += 1
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}


def issue(request: oauth2.TokenRequest, **_: Any) -> oauth2.Token:
    now = datetime.now(UTC)
    return oauth2.Token(
        access_token=secrets.token_urlsafe(600),  # about the size of a JWT access token
        token_type="Bearer",
        issued_at=now,
        expires_at=now + timedelta(seconds=300),
        scope=None,
        lifetime_source="expires_in",
        http_status=200,
    )


def credential(i: int) -> dict[str, Any]:
    name = f"cred-{i:05d}"
    return {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": str(10**6 + i),
        },
        "spec": {
            "tokenURL": "https://idp.example/oauth2/token",
            "clientID": f"client-{i}",
            "clientSecretRef": {"name": f"client-{i:05d}", "key": "client_secret"},
        },
    }


async def measure(n: int) -> None:
    kube = ForgetfulKube()
    client_secret = Source(kind="Secret", name="client", data={"client_secret": b"x" * 40})
    ctx = OperatorContext(
        config=OperatorConfig(),
        kube=kube,  # type: ignore[arg-type]
        kube_executor=ThreadPoolExecutor(16),
        sources=lambda _ns: lambda _kind, _name: client_secret,
        post_event=lambda *_: None,
    )
    supervisor = Supervisor(ctx, SourceCache())
    gc.collect()
    before = rss_bytes()
    for i in range(n):
        supervisor.observe("ADDED", credential(i))
    # Every first pass is over (parked until its refresh point) once the calls stop.
    calls = -1
    while kube.calls != calls or kube.statuses < n:
        calls = kube.calls
        await asyncio.sleep(2)
    gc.collect()
    added = rss_bytes() - before
    print(
        f"{n} credentials after their first pass: RSS +{added / 2**20:.0f} MiB, "
        f"{added / n:,.0f} bytes per credential (worker, compact body and status, "
        f"managed-Secret view, references, asyncio task; RSS before: {before / 2**20:.0f} MiB)"
    )
    await supervisor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--credentials", type=int, default=10000)
    args = parser.parse_args()
    oauth2.fetch_token = issue  # type: ignore[assignment]
    asyncio.run(measure(args.credentials))


if __name__ == "__main__":
    main()
