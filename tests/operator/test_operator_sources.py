"""Labelled Secrets cost memory only for what credentials reference (API.md "Bounded
inputs"): lists are paginated, only referenced values are kept, a referenced value over
512 KiB is ReferenceInvalid, and a key referenced after its Secret was listed is read
once on first use."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from operator_helpers import SOURCE_LABEL
from operator_process import OPERATOR_USER

pytestmark = pytest.mark.envtest

BIG_SECRET_BYTES = 700 * 1000
RSS_LIMIT_MB = 150  # the operator idles at about 65 MB; 120 such Secrets held were 394 MB


def _allowed(token_endpoint) -> dict[str, str]:
    return {"tokensync.dev/allowed-token-urls": token_endpoint.url.split("/oauth2")[0] + "/"}


def _big_secret(cluster, token_endpoint, name: str, client_secret: str | None = None) -> None:
    data = {"blob": base64.b64encode(os.urandom(BIG_SECRET_BYTES)).decode()}
    if client_secret is not None:
        data["client_secret"] = base64.b64encode(client_secret.encode()).decode()
    metadata = {"name": name, "labels": SOURCE_LABEL, "annotations": _allowed(token_endpoint)}
    cluster.core.create_namespaced_secret(cluster.ns, {"metadata": metadata, "data": data})


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_labelled_secrets_cost_memory_only_for_referenced_keys(
    cluster, own_operator, token_endpoint, installed
):
    early, late = token_endpoint.add_client(), token_endpoint.add_client()
    # 100 before the operator starts (its paginated list, before any credential is
    # known), 20 while it runs (its watch).
    for i in range(100):
        _big_secret(cluster, token_endpoint, f"big-{i:03}", early.secret if i == 0 else None)
    operator = own_operator("--no-deny-private-networks")
    for i in range(100, 120):
        _big_secret(cluster, token_endpoint, f"big-{i:03}", late.secret if i == 119 else None)

    # Small keys of big Secrets that arrived before their credentials: read on first use.
    cluster.create_credential("early", early, secret_name="big-000", source=False)
    cluster.create_credential("late", late, secret_name="big-119", source=False)
    cluster.wait_ready("early", reason="TokenIssued", timeout=60)
    cluster.wait_ready("late", reason="TokenIssued", timeout=60)  # so every event arrived

    rss = _rss_mb(operator.process.pid)
    print(f"operator RSS with 120 labelled 700 KB Secrets: {rss:.0f} MB")
    assert rss < RSS_LIMIT_MB, f"operator RSS {rss:.0f} MB with 120 labelled 700 KB Secrets"

    reads = [
        e
        for e in installed.audit_events(user=OPERATOR_USER)
        if _is_read(e) and "big-000" in e["requestURI"] and e["stage"] == "ResponseComplete"
    ]
    assert len(reads) == 1, "big-000 is read once, when a credential first references it"

    # A restart lists the credentials before the sources: nothing is read one by one.
    operator.stop()
    since = time.time()
    operator = own_operator("--no-deny-private-networks")
    # Its workers have run their first passes by the time a new credential is served.
    cluster.create_credential("after", early, secret_name="big-000", source=False)
    cluster.wait_ready("after", reason="TokenIssued", timeout=60)
    reads = [e for e in installed.audit_events(user=OPERATOR_USER, since=since) if _is_read(e)]
    assert reads == [], "a restarted operator read sources one by one"
    rss = _rss_mb(operator.process.pid)
    print(f"restarted operator RSS: {rss:.0f} MB")
    assert rss < RSS_LIMIT_MB, f"restarted operator RSS {rss:.0f} MB"


def _is_read(event: dict) -> bool:
    """Kube.read_source: a list of Secrets or ConfigMaps narrowed to one name."""
    resource = (event.get("objectRef") or {}).get("resource")
    uri = event["requestURI"].replace("%3D", "=")
    return resource in ("secrets", "configmaps") and "fieldSelector=metadata.name" in uri


def test_referenced_value_over_512_kib_is_reference_invalid(cluster, operator, token_endpoint):
    client = token_endpoint.add_client()
    huge = "h" * (512 * 1024 + 1)
    cluster.source_secret("huge", {"client_secret": huge}, allowed_urls=token_endpoint.url)
    cluster.create_credential("uses-huge", client, secret_name="huge", source=False)
    ready = cluster.wait_ready("uses-huge", "False", "ReferenceInvalid")
    assert "larger than 512 KiB" in ready["message"] and "hhhh" not in ready["message"]
    assert not client.requests  # nothing was sent

    cluster.source_secret("huge", {"client_secret": client.secret})  # fixed: woken, served
    cluster.wait_ready("uses-huge", reason="TokenIssued")


def test_source_deleted_during_an_api_server_outage_is_noticed(
    cluster, own_operator, token_endpoint, installed
):
    """Deleted behind a gap (etcd compacted, so the watch must list again): the re-list's
    sweep reports it, and its credential says so at once, not at the next resync. The
    credential reads only that Secret (the CA too), so nothing else wakes it."""
    operator = own_operator("--no-deny-private-networks")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.source_secret(
        "outage-client",
        {"client_secret": client.secret, "ca.crt": cluster.ca.cert_pem.bytes().decode()},
        allowed_urls=token_endpoint.url,
    )
    tls = {"caRef": {"kind": "Secret", "name": "outage-client", "key": "ca.crt"}}
    cluster.create_credential("outage", client, secret_name="outage-client", source=False, tls=tls)
    cluster.wait_ready("outage", reason="TokenIssued")

    def delete_behind_the_gap() -> None:
        assert installed.etcd_delete("secrets", cluster.ns, "outage-client") == 1
        installed.compact()

    installed.restart_apiserver(while_down=delete_behind_the_gap)
    ready = cluster.wait_ready("outage", "False", "ReferenceNotFound", timeout=60)
    assert "outage-client" in ready["message"]
    failures = [line for line in operator.log().splitlines() if "watch of" in line]
    assert len(failures) <= 3 * 6, "one line per watch and attempt"  # 3 watches
