"""Issue 18, item 2, through the real operator on the real control plane: 8192-bit RSA
signing keys (6 to 11 s to load and validate each) on credentials edited every 2 s cost
the other namespaces no time. Before, they were parsed on the event loop: /healthz
answered after 11 s and another namespace's first token waited 41 s."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
from operator_helpers import Cluster

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
KEY_8192 = (REPO / "tests" / "fixtures" / "keys" / "rsa-8192-test-only.pem").read_text()


def _healthz_seconds(port: int) -> float:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            r.read()
    except OSError:
        pass
    return time.monotonic() - started


def test_big_keys_do_not_stall_the_operator(cluster, installed, own_operator, token_endpoint):
    operator = own_operator("--no-deny-private-networks")
    url = token_endpoint.url
    cluster.source_secret(
        "big-key", {"key.pem": KEY_8192}, allowed_urls=url.split("/oauth2")[0] + "/"
    )
    client = token_endpoint.add_client()
    for i in range(3):
        cluster.create_credential_object(
            f"big-{i}",
            {
                "tokenURL": url,
                "clientID": client.client_id,
                "clientAuthentication": "private_key_jwt",
                "clientAssertion": {"keyRef": {"name": "big-key", "key": "key.pem"}},
                "tls": {"caRef": cluster.ca_configmap()},
            },
        )
    stop = threading.Event()

    def edit() -> None:  # every edit is a new pass that resolves (and checks) the key
        n = 0
        while not stop.wait(2):
            n += 1
            for i in range(3):
                cluster.patch_credential(f"big-{i}", {"spec": {"scope": f"s{n}"}})

    editor = threading.Thread(target=edit, daemon=True)
    editor.start()
    other = Cluster(
        installed, cluster.core.api_client, installed.create_namespace("victim"), cluster.ca,
        token_endpoint,
    )  # fmt: skip
    try:
        latencies = [_healthz_seconds(operator.health_port) for _ in range(3)]
        started = time.monotonic()
        other.create_credential("victim", token_endpoint.add_client())
        other.wait_ready("victim", reason="TokenIssued", timeout=20)
        first_token = time.monotonic() - started
        latencies += [_healthz_seconds(operator.health_port) for _ in range(5)]
        for i in range(3):
            ready = cluster.wait_ready(f"big-{i}", "False", "ReferenceInvalid")
            assert "8192-bit RSA key" in ready["message"]
    finally:
        stop.set()
        editor.join(10)
        installed.delete_namespace(other.ns)
    assert first_token < 15, first_token
    assert max(latencies) < 2, latencies
