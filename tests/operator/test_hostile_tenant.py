"""The isolation promise end to end: one namespace full of hostile credentials (deep,
huge, slow, short-lived, denied, unparseable) next to 50 ordinary credentials in another
namespace, all in one operator. The ordinary ones get their first token within 10 s and
never hold an expired token; the operator stays under 256 MB and never restarts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import Cluster, wait_for
from test_isolation import _deny_secret_writes
from token_endpoint import TokenEndpoint

from fixtures.pauses import MachinePauses

pytestmark = pytest.mark.envtest

ORDINARY = 50
RSS_LIMIT_MB = 256


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _hostile_bodies() -> dict[str, bytes]:
    deep = b'{"access_token": "x", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    huge_token = "h" * (1024 * 1024 - 100)
    return {
        "deep": deep,
        "huge": json.dumps({"access_token": huge_token, "expires_in": 60}).encode(),
        "overflow": b'{"access_token": "t", "expires_in": 1e15}',
        "nan": b'{"access_token": "t", "expires_in": NaN}',
        "html": b"<html><body>login</body></html>",
    }


def _credential(cluster: Cluster, name: str, client: Any, url: str, **spec: Any) -> None:
    cluster.source_secret(
        name, {"client_secret": client.secret}, allowed_urls=url.split("/oauth2")[0] + "/"
    )
    cluster.create_credential_object(
        name, {**cluster.credential_spec(client, name), "tokenURL": url, **spec}
    )


def _expired_report(expired: list[int], clients: list[Any], log: str, now: datetime) -> str:
    """Which ordinary credentials hold an expired token and, for the first, when the
    endpoint got its requests and what its worker logged: a late pass or a slow request."""
    first = expired[0]
    sent = ", ".join(f"{t - now.timestamp():+.1f}s" for t in clients[first].requests[-4:])
    lines = [line for line in log.splitlines() if f"/app-{first}:" in line][-15:]
    return (
        f"{len(expired)} of {ORDINARY} ordinary credentials hold an expired token; "
        f"app-{first}'s last requests reached the endpoint at {sent} from now; "
        "its worker's last lines:\n" + "\n".join(lines)
    )


def test_a_hostile_namespace_does_not_hurt_ordinary_credentials(
    cluster, own_operator, token_endpoint, ca, installed, control_plane
):
    # --verbose: each pass logs what it decided, for the report below if a token expires.
    operator = own_operator("--no-deny-private-networks", "--verbose")
    hostile = cluster
    slow = TokenEndpoint(ca, host="localhost")
    ordinary_ns = control_plane.create_namespace("ordinary")
    ordinary = cluster.for_namespace(ordinary_ns)
    try:
        for i in range(20):
            client = slow.add_client(delay=100)
            _credential(hostile, f"slow-{i}", client, slow.url, timeoutSeconds=120)
        for kind, body in _hostile_bodies().items():
            for i in range(3):
                client = token_endpoint.add_client(body=body)
                template = {"amplified": "${access_token}" * 270} if kind == "huge" else None
                extra = {"secret": {"template": template}} if template else {}
                _credential(hostile, f"{kind}-{i}", client, token_endpoint.url, **extra)
        for i in range(5):
            client = token_endpoint.add_client(expires_in=0.001)
            _credential(hostile, f"blink-{i}", client, token_endpoint.url)
        _deny_secret_writes(installed, f"deny-{hostile.ns}", "denied-0", ["CREATE", "UPDATE"])
        _credential(hostile, "denied-0", token_endpoint.add_client(), token_endpoint.url)

        clients = []
        for i in range(ORDINARY):
            client = token_endpoint.add_client(lifetime=30)
            clients.append(client)
            ordinary.create_credential(
                f"app-{i}", client, secret_name=f"client-{i}", secret={"name": f"app-{i}"}
            )

        def all_issued() -> bool:
            return all(ordinary.secret(f"app-{i}") for i in range(ORDINARY))

        wait_for(all_issued, 60, "every ordinary credential's first token")
        for i in range(ORDINARY):
            created = _time(ordinary.credential(f"app-{i}")["metadata"]["creationTimestamp"])
            issued = _time(
                ordinary.secret(f"app-{i}")["metadata"]["annotations"]["tokensync.dev/issued-at"]
            )
            assert (issued - created).total_seconds() <= 10, f"app-{i}: {issued - created}"

        peak = 0.0
        pauses = MachinePauses()
        deadline = time.monotonic() + 75  # more than two lifetimes of the ordinary tokens
        while time.monotonic() < deadline:
            assert operator.process.poll() is None, operator.log()[-3000:]
            peak = max(peak, _rss_mb(operator.process.pid))
            if pauses.settling():  # the machine was paused: the operator catches up
                time.sleep(1)
                continue
            now = datetime.now(UTC)
            expired = [
                i
                for i in range(ORDINARY)
                if _time(
                    ordinary.secret(f"app-{i}")["metadata"]["annotations"][
                        "tokensync.dev/expires-at"
                    ]
                )
                <= now
            ]
            assert not expired, _expired_report(expired, clients, operator.log(), now)
            time.sleep(3)
        assert peak < RSS_LIMIT_MB, f"operator RSS peaked at {peak:.0f} MB"
        assert "Traceback" not in operator.log()
        assert "RecursionError" not in operator.log()
    finally:
        installed.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            f"deny-{hostile.ns}",
            "--ignore-not-found",
        )
        control_plane.delete_namespace(ordinary_ns)
        slow.close()
