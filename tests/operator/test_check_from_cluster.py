"""Issue 18, item 6: `tokensync check --from-cluster` holds what it reads from the cluster
to the operator's two rules (source label, allowed-token-urls binding; with issuerURL,
against the discovered endpoint) before it sends anything, against the real API server;
`--send-unbound-sources` overrides, and says what goes where before the request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import Cluster

from fixtures.token_servers import run_tokensync
from servers.metadata import MetadataServer
from servers.quirky import ServerTLS

pytestmark = pytest.mark.envtest

EXIT_REFERENCE = 3


def manifest(cluster: Cluster, tmp_path: Path, **spec: Any) -> Path:
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "checked", "namespace": cluster.ns},
        "spec": {
            "clientSecretRef": {"name": "client", "key": "client_secret"},
            "tls": {"caRef": cluster.ca_configmap()},
            **spec,
        },
    }
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def check(installed: Any, path: Path, *extra: str):
    return run_tokensync(
        "check", "-f", str(path), "--from-cluster", "--kubeconfig", str(installed.kubeconfig),
        *extra,
    )  # fmt: skip


def test_unlabelled_or_unbound_sources_are_not_sent(cluster, installed, token_endpoint, tmp_path):
    client = token_endpoint.add_client()
    path = manifest(cluster, tmp_path, tokenURL=token_endpoint.url, clientID=client.client_id)
    before = len(token_endpoint.all_requests())

    cluster.source_secret("client", {"client_secret": client.secret}, labelled=False)
    result = check(installed, path)
    assert result.returncode == EXIT_REFERENCE, result.stdout + result.stderr
    assert "ReferenceNotLabeled" in result.stdout and "--send-unbound-sources" in result.stdout

    cluster.core.delete_namespaced_secret("client", cluster.ns)
    cluster.source_secret(
        "client", {"client_secret": client.secret}, allowed_urls="https://idp.example/"
    )
    result = check(installed, path)
    assert result.returncode == EXIT_REFERENCE, result.stdout + result.stderr
    assert "TokenURLNotAllowed" in result.stdout
    assert len(token_endpoint.all_requests()) == before  # nothing reached the endpoint
    assert client.secret not in result.stdout + result.stderr

    # The explicit override: said before the request, then sent.
    result = check(installed, path, "--send-unbound-sources")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sending Secret 'client' (keys client_secret) to {token_endpoint.url}" in (
        result.stderr
    )
    assert len(token_endpoint.all_requests()) == before + 1


@pytest.fixture
def issuer(cluster: Cluster, tmp_path: Path) -> Iterator[MetadataServer]:
    server = MetadataServer(
        clients={}, issuance_log=tmp_path / "issued.jsonl", tls=ServerTLS.for_ca(cluster.ca)
    ).start()
    yield server
    server.stop()


def test_the_discovered_endpoint_must_be_bound(cluster, installed, issuer, tmp_path):
    issuer.clients["c"] = "s3cret-" + cluster.ns
    path = manifest(cluster, tmp_path, issuerURL=issuer.issuer, clientID="c")
    cluster.source_secret(
        "client", {"client_secret": issuer.clients["c"]}, allowed_urls="https://idp.example/"
    )
    result = check(installed, path)
    assert result.returncode == EXIT_REFERENCE, result.stdout + result.stderr
    assert "TokenURLNotAllowed" in result.stdout and issuer.token_url in result.stdout
    assert issuer.metadata_reads == 1  # the document (no credentials) was read...
    assert [r for r in issuer.received if r.method == "POST"] == []  # ...nothing was sent
