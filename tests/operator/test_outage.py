"""The API server goes away for a minute and comes back: 0.1 logged an ERROR line per due
credential every 30 s, and woke every worker at once when the API returned. Now: no
Secret holds an expired token, no traceback, a handful of warning lines, and the
catch-up keeps every credential within its 10 s floor."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from operator_helpers import wait_for

pytestmark = pytest.mark.envtest

CREDENTIALS = 200
OUTAGE_SECONDS = 60


def test_an_api_server_outage_costs_no_token_and_no_flood(
    cluster, own_operator, token_endpoint, installed
):
    operator = own_operator("--no-deny-private-networks")
    clients = [token_endpoint.add_client(lifetime=300) for _ in range(CREDENTIALS)]
    cluster.source_secret(
        "client-shared",
        {f"s{i}": c.secret for i, c in enumerate(clients)},
        allowed_urls=token_endpoint.url.split("/oauth2")[0] + "/",
    )
    for i, client in enumerate(clients):
        # renewed 50 s after issue: most renewals fall inside the outage
        spec = cluster.credential_spec(client, "client-shared", refresh={"renewBefore": "250s"})
        spec["clientSecretRef"]["key"] = f"s{i}"
        cluster.create_credential_object(f"c{i}", spec)

    def all_issued() -> bool:
        items = cluster.core.list_namespaced_secret(
            cluster.ns, label_selector="tokensync.dev/credential"
        ).items
        return len(items) == CREDENTIALS

    wait_for(all_issued, 180, "every credential's first token")
    log_before = len(operator.log())

    installed.stop_apiserver()
    try:
        time.sleep(OUTAGE_SECONDS)
        assert operator.process.poll() is None, operator.log()[-3000:]
    finally:
        installed.start_apiserver()
    time.sleep(20)  # the catch-up

    outage_log = operator.log()[log_before:]
    assert "Traceback" not in outage_log, outage_log[-3000:]
    assert "unexpected" not in outage_log, outage_log[-3000:]
    lines = [line for line in outage_log.splitlines() if line.strip()]
    assert len(lines) < CREDENTIALS / 2, f"{len(lines)} log lines during the outage"
    # Renewals due during the outage fetched one token each and kept it until the
    # Secret could be written: no credential asked again and again.
    assert max(len(c.requests) for c in clients) <= 3
    now = datetime.now(UTC)
    for item in cluster.core.list_namespaced_secret(
        cluster.ns, label_selector="tokensync.dev/credential"
    ).items:
        expires = item.metadata.annotations["tokensync.dev/expires-at"]
        assert datetime.fromisoformat(expires.replace("Z", "+00:00")) > now
    for client in clients:  # the floor: never two requests within 10 s
        gaps = [b - a for a, b in zip(client.requests, client.requests[1:], strict=False)]
        assert all(gap >= 9.5 for gap in gaps), gaps
    # and the operator still works: a refresh request is served
    cluster.patch_credential(
        "c0", {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "after"}}}
    )
    wait_for(lambda: len(clients[0].requests) > 1, 30, "a refresh after the outage")
