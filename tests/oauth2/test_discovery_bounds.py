"""Issue 18: discovery against real servers. A cached endpoint is checked against each
credential's own settings, whoever filled the cache (item 5); a deeply nested document
is DiscoveryFailed, never a RecursionError (item 6); what is kept per document is a few
hundred bytes however large it was, in a bounded cache (item 3)."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from fixtures.token_servers import Credentials
from servers.metadata import MetadataServer
from servers.quirky import ServerTLS
from tokensync import discovery, identity
from tokensync.gates import OperatorConfig
from tokensync.oauth2 import TLSSettings
from tokensync.sources import ReferenceProblem, Source
from tokensync.spec import ResolvedValues, parse_spec, token_url_problem

CONFIG = OperatorConfig(allow_insecure=True, deny_private_networks=False)


@pytest.fixture
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_issuer(credentials: Credentials, tls_ca, tmp_path) -> Iterator[MetadataServer]:
    server = MetadataServer(
        clients={credentials.client_id: credentials.client_secret},
        issuance_log=tmp_path / "issued.jsonl",
        tls=ServerTLS.for_ca(tls_ca),
    ).start()
    yield server
    server.stop()


def prepare(spec, values, cache) -> Any:
    async def blocking(fn):
        return await asyncio.to_thread(fn)

    data = {"secret": b"s", "ca.crt": values.ca_pem or b""}
    lookup = lambda kind, name: Source(kind, name, data)  # noqa: E731
    return asyncio.run(
        identity.prepare_request(
            spec, values, None, CONFIG, namespace="ns", lookup=lookup, blocking=blocking,
            cache=cache,
        )
    )  # fmt: skip


def test_a_cached_http_endpoint_is_not_served_to_an_https_only_credential(
    https_issuer: MetadataServer, tls_ca, credentials: Credentials
):
    """Tenant A (allowInsecureHTTP) fills the cache with an http:// endpoint of the
    shared issuer; tenant B (https only) must not send its client secret there."""
    plain = "http://127.0.0.1:9/token"
    https_issuer.metadata_overrides["token_endpoint"] = plain
    values = ResolvedValues(
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        ca_pem=tls_ca.cert_pem.bytes(),
        ca_description="ConfigMap 'ca'",
    )

    def spec(insecure: bool):
        return parse_spec(
            {
                "issuerURL": https_issuer.issuer,
                "allowInsecureHTTP": insecure,
                "clientID": credentials.client_id,
                "clientSecretRef": {"name": "client", "key": "secret"},
                "tls": {"caRef": {"kind": "ConfigMap", "name": "ca", "key": "ca.crt"}},
            },
            name="x",
        )

    cache = discovery.DiscoveryCache()
    first = prepare(spec(True), values, cache)
    assert not isinstance(first, ReferenceProblem) and first.token_url == plain
    second = prepare(spec(False), values, cache)
    assert isinstance(second, ReferenceProblem), second
    assert second.reason == "DiscoveryFailed" and "allowInsecureHTTP" in second.message
    assert https_issuer.metadata_reads == 1  # the refusal came from the cached document


def test_a_deeply_nested_document_is_discovery_failed(https_issuer, tls_ca):
    depth = sys.getrecursionlimit() * 2
    https_issuer.metadata_overrides["x"] = None
    body = b'{"issuer": "' + https_issuer.issuer.encode() + b'", "x": '
    body += b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(discovery.DiscoveryFailed, match="nests deeper than 32"):
        discovery.parse_metadata(body, https_issuer.issuer, "u", lambda url: None)
    # Through the real server too.
    https_issuer.metadata_overrides["x"] = [
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
    ]
    with pytest.raises(discovery.DiscoveryFailed, match="nests deeper"):
        discovery.fetch_metadata(
            https_issuer.issuer,
            tls=TLSSettings(ca_pem=tls_ca.cert_pem.bytes()),
            timeout=5,
            deny_private_networks=False,
            url_problem=lambda url: token_url_problem(url, True),
        )


def test_a_one_mib_document_keeps_a_few_hundred_bytes(https_issuer, tls_ca):
    """100,000 auth methods: the cached entry keeps only the flags and a short sample."""
    methods = [f"m{i}" for i in range(100_000)] + ["client_secret_post"]  # just under 1 MiB
    https_issuer.metadata_overrides["token_endpoint_auth_methods_supported"] = methods
    https_issuer.metadata_overrides["token_endpoint"] = https_issuer.base_url + "/token"
    cache = discovery.DiscoveryCache()
    tls = TLSSettings(ca_pem=tls_ca.cert_pem.bytes())

    def fetch() -> discovery.Metadata:
        return discovery.fetch_metadata(
            https_issuer.issuer,
            tls=tls,
            timeout=10,
            deny_private_networks=False,
            url_problem=lambda url: token_url_problem(url, False),
        )

    tracemalloc.start()
    try:
        metadata = cache.get(https_issuer.issuer, tls, fetch)
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert metadata.supports_post and not metadata.supports_basic
    assert discovery.choose_client_authentication(metadata) == "body"
    assert len(metadata.auth_methods_shown) <= 300
    assert kept < 64 * 1024, kept  # the parsed 1 MiB document is gone


def test_the_cache_is_bounded_and_forgets_unused_issuers():
    now = [0.0]
    cache = discovery.DiscoveryCache(clock=lambda: now[0], max_entries=5)

    def read(i: int):
        return lambda: discovery.Metadata(
            f"https://i{i}", f"https://i{i}/token", False, False, False, "none", "d"
        )

    for i in range(12):
        cache.get(f"https://i{i}", TLSSettings(), read(i))
    assert cache.entries() == 5
    assert cache.token_endpoint("https://i11") == "https://i11/token"
    assert cache.token_endpoint("https://i0") is None
    # Nobody asks for those five for over two hours: the next store drops them.
    now[0] = 2 * discovery.CACHE_SECONDS + 1
    cache.get("https://fresh", TLSSettings(), read(99))
    assert cache.entries() == 1


def test_an_issuers_documents_go_with_its_last_credential():
    cache = discovery.DiscoveryCache()
    users = discovery.IssuerUsers(cache)

    def read(issuer: str):
        return lambda: discovery.Metadata(
            issuer, f"{issuer}/token", False, False, False, "none", "d"
        )

    for issuer in ("https://a", "https://b"):
        cache.get(issuer, TLSSettings(), read(issuer))
    users.set("uid-1", "https://a")
    users.set("uid-2", "https://a")
    users.set("uid-3", "https://b")
    users.set("uid-1", None)  # deleted: uid-2 still names a
    assert cache.token_endpoint("https://a") == "https://a/token"
    users.set("uid-2", "https://b")  # moved to another issuer: a has no credential left
    assert cache.token_endpoint("https://a") is None
    users.set("uid-2", None)
    users.set("uid-3", None)
    assert cache.entries() == 0
