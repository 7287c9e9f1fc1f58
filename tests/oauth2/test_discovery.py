"""issuerURL: oidc-provider's real discovery document, an RFC 8414-only server, and the
documents that must be refused (DiscoveryFailed naming the URL and the problem)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fixtures.token_servers import Credentials
from servers.metadata import MetadataServer
from servers.oidc import OIDCProvider
from tokensync import discovery, identity
from tokensync.gates import OperatorConfig
from tokensync.oauth2 import TLSSettings, TokenError, fetch_token
from tokensync.sources import ReferenceProblem, Source
from tokensync.spec import ResolvedValues, parse_spec, token_url_problem

# Loopback test servers: the private-network guard is turned off explicitly.
CONFIG = OperatorConfig(allow_insecure=True, deny_private_networks=False)


@pytest.fixture
def metadata_server(credentials: Credentials, tmp_path) -> Iterator[MetadataServer]:
    server = MetadataServer(
        clients={credentials.client_id: credentials.client_secret},
        issuance_log=tmp_path / "rfc8414-issued.jsonl",
    ).start()
    yield server
    server.stop()


def fetch(issuer: str, *, deny: bool = False, allow_http: bool = True) -> discovery.Metadata:
    return discovery.fetch_metadata(
        issuer,
        tls=TLSSettings(),
        timeout=5,
        deny_private_networks=deny,
        url_problem=lambda url: token_url_problem(url, allow_http),
    )


def issuer_spec(issuer: str, **fields: Any):
    raw = {
        "issuerURL": issuer,
        "allowInsecureHTTP": True,
        "clientID": "placeholder",
        "clientSecretRef": {"name": "client", "key": "secret"},
        **fields,
    }
    return parse_spec(raw, name="x")


def lookup_of(secret: str, allowed: str | None = None) -> Callable[[str, str], Source]:
    return lambda kind, name: Source(
        kind, name, {"secret": secret.encode()}, allowed_token_urls=allowed
    )


def prepare(spec, values, lookup, cache=None) -> Any:
    async def blocking(fn):
        return await asyncio.to_thread(fn)

    return asyncio.run(
        identity.prepare_request(
            spec,
            values,
            None,
            CONFIG,
            namespace="ns",
            lookup=lookup,
            blocking=blocking,
            cache=cache or discovery.DiscoveryCache(),
        )
    )


# ---- oidc-provider (OpenID Connect Discovery)


def test_oidc_provider_document(oidc_provider: OIDCProvider):
    metadata = fetch(oidc_provider.issuer)
    assert metadata.token_endpoint == oidc_provider.token_url
    assert metadata.document_url == oidc_provider.issuer + "/.well-known/openid-configuration"
    assert "private_key_jwt" in metadata.auth_methods_shown
    assert discovery.choose_client_authentication(metadata) == "header"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_token_through_discovery_from_oidc_provider(method, oidc_provider: OIDCProvider):
    client = oidc_provider.add_client(method, scope="api:read")
    spec = issuer_spec(
        oidc_provider.issuer,
        clientID=client.client_id,
        clientAuthentication=client.client_authentication,
        scope="api:read",
    )
    values = ResolvedValues(client_id=client.client_id, client_secret=client.client_secret)
    allowed = oidc_provider.issuer + "/"
    request = prepare(spec, values, lookup_of(client.client_secret, allowed))
    assert request.token_url == oidc_provider.token_url
    assert fetch_token(request).scope == "api:read"


# ---- an RFC 8414-only server


def test_rfc8414_only_server_and_method_from_the_document(
    metadata_server: MetadataServer, credentials: Credentials
):
    metadata_server.auth_methods = ["client_secret_post"]
    spec = issuer_spec(metadata_server.issuer, clientID=credentials.client_id)
    values = ResolvedValues(
        client_id=credentials.client_id, client_secret=credentials.client_secret
    )
    request = prepare(spec, values, lookup_of(credentials.client_secret))
    assert request.client_authentication == "body"
    assert request.token_url == metadata_server.token_url
    fetch_token(request)
    paths = [r.path for r in metadata_server.received if r.method == "GET"]
    # OpenID Connect Discovery first (404 here), then RFC 8414.
    assert paths == ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
    # No credentials of any kind were sent to read the document.
    for get in (r for r in metadata_server.received if r.method == "GET"):
        assert get.header("Authorization") is None and get.body == b""


def test_issuer_with_a_path(credentials: Credentials, tmp_path):
    with MetadataServer(issuer_path="/tenant-a", issuance_log=tmp_path / "x.jsonl") as server:
        assert fetch(server.issuer).token_endpoint == server.token_url


def test_method_defaults_to_header_without_the_list(metadata_server: MetadataServer):
    assert discovery.choose_client_authentication(fetch(metadata_server.issuer)) == "header"


def test_neither_secret_method_listed_is_refused(metadata_server: MetadataServer):
    metadata_server.auth_methods = ["private_key_jwt"]
    with pytest.raises(discovery.DiscoveryFailed, match=r"set spec\.clientAuthentication"):
        discovery.choose_client_authentication(fetch(metadata_server.issuer))


# ---- refused documents


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"issuer": "https://idp.example"}, "does not equal spec.issuerURL"),
        ({"issuer": None}, "(missing) does not equal"),
        ({"token_endpoint": None}, "no token_endpoint"),
        ({"token_endpoint": "https://user:pw@idp.example/token"}, "user information"),
        ({"token_endpoint": "https://idp.example/token#x"}, "fragment"),
        ({"token_endpoint": "ftp://idp.example/token"}, "https://"),
        ({"token_endpoint_auth_methods_supported": "client_secret_basic"}, "list of strings"),
    ],
)
def test_bad_documents_are_refused(override, problem, metadata_server: MetadataServer):
    metadata_server.metadata_overrides.update(override)
    with pytest.raises(discovery.DiscoveryFailed) as caught:
        fetch(metadata_server.issuer)
    message = str(caught.value)
    assert problem in message
    assert metadata_server.issuer + "/.well-known/oauth-authorization-server" in message
    assert "pw" not in message


def test_http_token_endpoint_needs_allow_insecure_http(metadata_server: MetadataServer):
    with pytest.raises(discovery.DiscoveryFailed, match="allowInsecureHTTP"):
        fetch(metadata_server.issuer, allow_http=False)


@pytest.mark.parametrize(
    ("fault", "problem"),
    [("redirect", "HTTP 302"), ("huge", "larger than 1 MiB"), ("html", "not JSON")],
)
def test_transport_rules_apply(fault, problem, metadata_server: MetadataServer):
    metadata_server.metadata_fault = fault
    with pytest.raises(discovery.DiscoveryFailed, match=problem):
        fetch(metadata_server.issuer)


def test_private_network_guard_applies(metadata_server: MetadataServer):
    with pytest.raises(discovery.DiscoveryFailed, match="refused to connect"):
        fetch(metadata_server.issuer, deny=True)


def test_no_document_at_all(metadata_server: MetadataServer):
    with pytest.raises(discovery.DiscoveryFailed, match="no metadata document: HTTP 404"):
        fetch(metadata_server.base_url + "/nothing-here")


def test_prepare_request_reports_discovery_failed(metadata_server: MetadataServer):
    metadata_server.metadata_overrides["issuer"] = "https://idp.example"
    spec = issuer_spec(metadata_server.issuer)
    result = prepare(spec, ResolvedValues(client_id="c", client_secret="s"), lookup_of("s"))
    assert isinstance(result, ReferenceProblem)
    assert result.reason == "DiscoveryFailed"
    assert "/.well-known/oauth-authorization-server" in result.message


def test_discovered_endpoint_must_satisfy_the_secret_binding(
    metadata_server: MetadataServer, credentials: Credentials
):
    """The client secret is bound to the issuer's host; a document that names a token
    endpoint elsewhere must not receive it."""
    metadata_server.metadata_overrides["token_endpoint"] = "https://collector.example/token"
    spec = issuer_spec(metadata_server.issuer)
    values = ResolvedValues(client_id="c", client_secret=credentials.client_secret)
    result = prepare(spec, values, lookup_of(credentials.client_secret, metadata_server.issuer))
    assert isinstance(result, ReferenceProblem)
    assert result.reason == "TokenURLNotAllowed"


def test_discovered_endpoint_must_pass_the_operator_gates(metadata_server: MetadataServer):
    spec = issuer_spec(metadata_server.issuer)
    config = OperatorConfig(allow_insecure=True, allowed_token_hosts=("*.example",))
    from tokensync.gates import gate_problem

    discovered = identity.discover(
        spec, ResolvedValues(client_id="c", client_secret="s"), CONFIG, discovery.DiscoveryCache()
    )
    assert gate_problem(discovered, config).reason == "TokenURLNotAllowed"


# ---- cache


def test_cache_reads_once_and_rereads_after_404_or_connection_failure(
    metadata_server: MetadataServer, credentials: Credentials
):
    cache = discovery.DiscoveryCache()
    spec = issuer_spec(metadata_server.issuer, clientID=credentials.client_id)
    values = ResolvedValues(
        client_id=credentials.client_id, client_secret=credentials.client_secret
    )
    lookup = lookup_of(credentials.client_secret)
    for _ in range(3):
        request = prepare(spec, values, lookup, cache)
        fetch_token(request)
    assert metadata_server.metadata_reads == 1

    # The server moves its endpoint: the cached document still names the old one.
    metadata_server.path = "/moved"
    metadata_server.metadata_overrides["token_endpoint"] = metadata_server.base_url + "/moved"
    with pytest.raises(TokenError) as caught:
        fetch_token(prepare(spec, values, lookup, cache))
    assert caught.value.http_status == 404
    assert metadata_server.metadata_reads == 1
    identity.request_failed(spec, caught.value, cache)
    request = prepare(spec, values, lookup, cache)
    assert request.token_url.endswith("/moved")
    fetch_token(request)
    assert metadata_server.metadata_reads == 2


def metadata_of(endpoint: str) -> discovery.Metadata:
    return discovery.Metadata("i", endpoint, False, False, False, "none", "https://i/.well-known/x")


def test_cache_expires_after_an_hour():
    now = [0.0]
    cache = discovery.DiscoveryCache(clock=lambda: now[0])
    reads = []

    def read() -> discovery.Metadata:
        reads.append(1)
        return metadata_of("https://i/token")

    for moment in (0.0, 3599.0, 3600.0, 3601.0):
        now[0] = moment
        cache.get("i", TLSSettings(), read)
    assert len(reads) == 2


def test_a_transient_failure_after_invalidation_uses_the_last_good_document():
    cache = discovery.DiscoveryCache()
    good = metadata_of("https://i/token")

    def down() -> discovery.Metadata:
        raise discovery.DiscoveryFailed(
            "https://i/.well-known/x", "could not connect", transient=True
        )

    def lying() -> discovery.Metadata:
        raise discovery.DiscoveryFailed("https://i/.well-known/x", "issuer differs")

    assert cache.get("i", TLSSettings(), lambda: good) is good
    cache.invalidate("i")
    assert cache.get("i", TLSSettings(), down) is good  # issuer down: keep going
    with pytest.raises(discovery.DiscoveryFailed, match="issuer differs"):
        cache.get("i", TLSSettings(), lying)  # a bad document is never papered over
    fresh = metadata_of("https://i/token2")
    assert cache.get("i", TLSSettings(), lambda: fresh) is fresh
    assert cache.token_endpoint("i") == "https://i/token2"
    with pytest.raises(discovery.DiscoveryFailed):
        discovery.DiscoveryCache().get("j", TLSSettings(), down)  # nothing to fall back on


def test_an_unreachable_issuer_is_a_transient_failure():
    from servers.quirky import free_port

    with pytest.raises(discovery.DiscoveryFailed) as caught:
        fetch(f"http://127.0.0.1:{free_port()}")
    assert caught.value.transient
    assert "could not connect" in str(caught.value)
