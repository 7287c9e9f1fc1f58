"""The pooled transport against real loopback servers: connections and TLS contexts are
reused, and every rule of API.md (deadline, private-network guard, no redirects, no
.netrc, proxies only from the environment) still holds on a reused connection."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import pytest
import requests
import trustme

from fixtures.token_servers import request_for
from servers.connect_proxy import ConnectProxy
from servers.quirky import ServerTLS
from tokensync.oauth2 import (
    ConfigurationError,
    TLSSettings,
    TransientError,
    fetch_token,
)
from tokensync.transport import (
    NetworkGuard,
    PrivateNetworkDenied,
    ResponseTooLarge,
    SSLContextCache,
    TokenAdapter,
    Transport,
)


@pytest.fixture
def transport():
    """A private, unguarded transport (loopback servers), closed after the test."""
    sender = Transport(NetworkGuard(deny_private=False), ssl_contexts=SSLContextCache())
    yield sender
    sender.close()


@pytest.fixture
def proxy():
    with ConnectProxy() as running:
        yield running


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def trusted(server, credentials, token_ca, **overrides):
    tls = TLSSettings(ca_pem=token_ca.cert_pem.bytes(), ca_description="the test CA")
    return request_for(server, credentials, tls=tls, **overrides)


# --- reuse ------------------------------------------------------------------------------


def test_renewals_reuse_one_tls_connection_and_one_context(
    tls_server, credentials, token_ca, transport
):
    for _ in range(5):
        assert fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
    assert len(tls_server.issued) == 5
    assert transport.connection_count() == 1
    assert transport.ssl_contexts.builds == 1


def test_one_context_per_trust_configuration(
    tls_server, mtls_server, credentials, token_ca, client_cert, transport
):
    # Equal CA bytes in distinct settings objects share a context...
    for description in ("Secret/a", "ConfigMap/b"):
        tls = TLSSettings(ca_pem=token_ca.cert_pem.bytes(), ca_description=description)
        fetch_token(request_for(tls_server, credentials, tls=tls), sender=transport)
    assert transport.ssl_contexts.builds == 1
    # ...a client certificate is another trust configuration, with its own connection.
    mtls = TLSSettings(
        ca_pem=token_ca.cert_pem.bytes(),
        client_cert_pem=client_cert.cert_pem,
        client_key_pem=client_cert.key_pem,
    )
    fetch_token(request_for(mtls_server, credentials, tls=mtls), sender=transport)
    assert transport.ssl_contexts.builds == 2
    # The client certificate's connection is never used without it, and vice versa.
    without = TLSSettings(ca_pem=token_ca.cert_pem.bytes())
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(mtls_server, credentials, tls=without), sender=transport)
    assert caught.value.reason == "TLSHandshakeFailed"


def test_idle_connections_are_dropped(token_server, credentials):
    sender = Transport(NetworkGuard(deny_private=False), idle_timeout=0)
    try:
        fetch_token(request_for(token_server, credentials), sender=sender)
        fetch_token(request_for(token_server, credentials), sender=sender)
        assert sender.connection_count() == 2
    finally:
        sender.close()


def test_pools_are_bounded(start_server, credentials):
    servers = [start_server(clients={credentials.client_id: credentials.client_secret})]
    servers += [start_server(clients={credentials.client_id: credentials.client_secret})]
    servers += [start_server(clients={credentials.client_id: credentials.client_secret})]
    sender = Transport(NetworkGuard(deny_private=False), max_pools=2)
    try:
        for server in servers:
            fetch_token(request_for(server, credentials), sender=sender)
        assert sender.pool_count() == 2
    finally:
        sender.close()


def test_a_connection_the_server_closed_is_replaced(credentials):
    """A keep-alive connection closed by the server between two renewals costs nothing:
    the next request goes out on a new connection."""
    served = []

    def serve(listener: socket.socket) -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                body = b'{"access_token":"t%d","expires_in":60}' % len(served)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                served.append(conn)
                # no "Connection: close": the client believes it may reuse it

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        sender = Transport(NetworkGuard(deny_private=False))
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/token"
        request = dataclasses.replace(
            request_for_url(url, credentials), timeout_seconds=5, client_authentication="body"
        )
        try:
            assert fetch_token(request, sender=sender).access_token == "t0"
            time.sleep(0.05)  # the server has closed its end
            assert fetch_token(request, sender=sender).access_token == "t1"
        finally:
            sender.close()
        thread.join(5)


def _read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request (headers and Content-Length body), b"" if none came."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)
    return data


def _answer(conn: socket.socket, token: str) -> None:
    body = b'{"access_token":"%s","expires_in":60}' % token.encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_a_request_the_reused_connection_drops_is_sent_once_more(credentials):
    """The server takes the second request on the kept-alive connection and hangs up
    without an answer (its idle timeout raced with our send): sent again, once, on a new
    connection. A new connection that drops a request is not retried."""
    requests_seen = []

    def serve(listener: socket.socket) -> None:
        first, _ = listener.accept()
        requests_seen.append(_read_request(first))
        _answer(first, "t0")
        requests_seen.append(_read_request(first))  # the second request...
        first.close()  # ...dropped
        second, _ = listener.accept()
        with second:
            requests_seen.append(_read_request(second))
            _answer(second, "t1")
        third, _ = listener.accept()
        with third:
            requests_seen.append(_read_request(third))  # dropped on a new connection

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        sender = Transport(NetworkGuard(deny_private=False), idle_timeout=60)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/token"
        request = dataclasses.replace(request_for_url(url, credentials), timeout_seconds=5)
        try:
            assert fetch_token(request, sender=sender).access_token == "t0"
            assert fetch_token(request, sender=sender).access_token == "t1"
            assert sender.connection_count() == 2
            sender.close()  # next request on a new connection
            with pytest.raises(TransientError) as caught:
                fetch_token(request, sender=sender)
            assert caught.value.reason == "ConnectionFailed"
        finally:
            sender.close()
        thread.join(5)
    assert len(requests_seen) == 4


def request_for_url(url, credentials):
    from tokensync.oauth2 import TokenRequest

    return TokenRequest(
        token_url=url, client_id=credentials.client_id, client_secret=credentials.client_secret
    )


# --- the rules hold on a reused connection ----------------------------------------------


def test_deadline_holds_on_a_reused_connection(token_server, credentials, transport):
    fetch_token(request_for(token_server, credentials), sender=transport)
    token_server.fail("drip", interval=0.05)  # a whole response takes several seconds
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        fetch_token(request_for(token_server, credentials, timeout_seconds=1), sender=transport)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "Timeout"
    assert 0.9 <= elapsed < 2.0
    assert transport.connection_count() == 1  # it was the pooled connection
    # The abandoned connection is not handed out again half-read.
    token_server.heal()
    assert fetch_token(request_for(token_server, credentials), sender=transport).access_token


def test_deadline_holds_on_a_reused_tls_connection(tls_server, credentials, token_ca, transport):
    fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
    tls_server.fail("drip", interval=0.05)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        fetch_token(trusted(tls_server, credentials, token_ca, timeout_seconds=1), sender=transport)
    assert caught.value.reason == "Timeout"
    assert time.monotonic() - started < 2.0
    assert transport.connection_count() == 1


def test_redirect_on_a_reused_connection_is_not_followed(
    start_server, token_server, credentials, transport
):
    elsewhere = start_server()
    fetch_token(request_for(token_server, credentials), sender=transport)
    token_server.fail("redirect", location=f"http://127.0.0.1:{elsewhere.port}/oauth2/token")
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(token_server, credentials), sender=transport)
    assert caught.value.reason == "Redirect"
    assert elsewhere.received == []
    token_server.heal()
    assert fetch_token(request_for(token_server, credentials), sender=transport).access_token


def test_guard_refuses_an_endpoint_another_configuration_has_a_connection_to(
    token_server, credentials
):
    # Unguarded (tests, or --no-deny-private-networks): pooled connection to 127.0.0.1.
    fetch_token(request_for(token_server, credentials), deny_private_networks=False)
    fetch_token(request_for(token_server, credentials), deny_private_networks=False)
    received = len(token_server.received)
    for kwargs in (
        {"deny_private_networks": True},
        {"deny_cidrs": (__import__("ipaddress").ip_network("127.0.0.0/8"),)},
    ):
        with pytest.raises(ConfigurationError) as caught:
            fetch_token(request_for(token_server, credentials), **kwargs)
        assert caught.value.reason == "PrivateNetworkDenied"
    assert len(token_server.received) == received  # nothing was sent


def test_guard_refuses_a_name_that_resolves_to_loopback(token_server, credentials):
    url = f"http://localhost:{token_server.port}/oauth2/token"
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(
            dataclasses.replace(request_for(token_server, credentials), token_url=url),
            deny_private_networks=True,
        )
    assert caught.value.reason == "PrivateNetworkDenied"
    assert token_server.received == []


def test_no_netrc_credentials_on_a_reused_connection(
    token_server, credentials, transport, tmp_path, monkeypatch
):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    for _ in range(2):
        fetch_token(
            request_for(token_server, credentials, client_authentication="body"),
            sender=transport,
        )
    assert [r.header("Authorization") for r in token_server.received] == [None, None]


# --- proxies ----------------------------------------------------------------------------


def test_guard_applies_before_connect_through_a_proxy(
    tls_server, credentials, token_ca, proxy, monkeypatch, no_proxy_env
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(trusted(tls_server, credentials, token_ca), deny_private_networks=True)
    assert caught.value.reason == "PrivateNetworkDenied"
    assert proxy.connects == []  # no CONNECT was ever sent
    assert tls_server.received == []


def test_guard_applies_before_a_forwarding_proxy(
    token_server, credentials, proxy, monkeypatch, no_proxy_env
):
    # A plain-http token URL (only with --allow-insecure) goes to HTTP_PROXY as an
    # absolute-form request: the target is checked before anything is sent.
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with pytest.raises(ConfigurationError) as caught:
        fetch_token(request_for(token_server, credentials), deny_private_networks=True)
    assert caught.value.reason == "PrivateNetworkDenied"
    assert proxy.requests == []
    assert token_server.received == []


def test_unguarded_requests_go_through_the_proxy(
    tls_server, credentials, token_ca, proxy, monkeypatch, no_proxy_env, transport
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    for _ in range(3):
        assert fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
    assert proxy.connects == [f"127.0.0.1:{tls_server.port}"]  # one tunnel, reused
    assert len(tls_server.issued) == 3


def test_deadline_holds_through_a_proxy_tunnel(
    tls_server, credentials, token_ca, proxy, monkeypatch, no_proxy_env, transport
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
    tls_server.fail("drip", interval=0.05)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        fetch_token(trusted(tls_server, credentials, token_ca, timeout_seconds=1), sender=transport)
    assert caught.value.reason == "Timeout"
    assert time.monotonic() - started < 2.0


def test_https_proxy_tls_and_deadline(
    tls_server, credentials, token_ca, monkeypatch, no_proxy_env, transport, tmp_path
):
    """TLS to the proxy (trusted through the system store, here SSL_CERT_FILE), TLS to
    the endpoint inside the tunnel, and the deadline across both."""
    bundle = tmp_path / "system.pem"
    bundle.write_bytes(token_ca.cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with ConnectProxy(tls=ServerTLS.for_ca(token_ca).context()) as tls_proxy:
        monkeypatch.setenv("HTTPS_PROXY", tls_proxy.url)
        assert fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
        assert tls_proxy.connects == [f"127.0.0.1:{tls_server.port}"]
        tls_server.fail("drip", interval=0.05)
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            fetch_token(
                trusted(tls_server, credentials, token_ca, timeout_seconds=1), sender=transport
            )
        assert caught.value.reason == "Timeout"
        assert time.monotonic() - started < 2.0


def test_no_proxy_exempts_the_endpoint(
    tls_server, credentials, token_ca, proxy, monkeypatch, no_proxy_env, transport
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch_token(trusted(tls_server, credentials, token_ca), sender=transport)
    assert proxy.connects == []


def test_every_request_checks_the_address_of_a_reused_connection(
    token_server, credentials, monkeypatch
):
    """Defence in depth: even a connection that got into the pool unchecked (simulated by
    a connect that skips the guard) is refused on its next use."""
    import tokensync.transport as transport_module

    unguarded = transport_module._connect
    monkeypatch.setattr(
        transport_module, "_connect", lambda host, port, guard: unguarded(host, port, None)
    )
    sender = Transport(NetworkGuard(deny_private=True))
    try:
        assert fetch_token(request_for(token_server, credentials), sender=sender)
        with pytest.raises(ConfigurationError) as caught:
            fetch_token(request_for(token_server, credentials), sender=sender)
        assert caught.value.reason == "PrivateNetworkDenied"
        assert len(token_server.received) == 1
    finally:
        sender.close()


def test_idle_connections_are_closed_without_waiting_for_their_endpoint(start_server, credentials):
    """An endpoint not asked again does not keep a socket open: a later request to any
    endpoint sweeps the pools."""
    quiet = start_server(clients={credentials.client_id: credentials.client_secret})
    busy = start_server(clients={credentials.client_id: credentials.client_secret})
    sender = Transport(NetworkGuard(deny_private=False), idle_timeout=0.2)
    try:
        fetch_token(request_for(quiet, credentials), sender=sender)
        pools = sender.session_for(None).adapter.poolmanager.pools  # plain http
        (key,) = pools.keys()
        pool = pools[key]
        (conn,) = [c for c in pool.pool.queue if c is not None]
        assert conn.sock is not None
        time.sleep(0.3)  # idle longer than the idle timeout
        fetch_token(request_for(busy, credentials), sender=sender)
        assert conn.sock is None
    finally:
        sender.close()


# --- the requests Session: what requests would add is not added -------------------------


class _RawServer:
    """Answers each request on keep-alive connections with the next canned response and
    records the raw requests."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = list(responses)
        self.requests: list[bytes] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while self.responses:
                conn, _ = self.listener.accept()
                with conn:
                    while self.responses:
                        seen = _read_request(conn)
                        if not seen:
                            break
                        self.requests.append(seen)
                        conn.sendall(self.responses.pop(0))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def _token_response(token: str, extra: bytes = b"") -> bytes:
    body = b'{"access_token":"%s","expires_in":60}' % token.encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (extra, len(body), body)
    )


def _headers(raw: bytes) -> dict[str, str]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


def test_cookies_are_neither_kept_nor_sent(credentials, transport):
    """A session serves every credential of a trust configuration: a cookie one
    endpoint sets must never reach the next request."""
    server = _RawServer(
        [_token_response("t0", b"Set-Cookie: session=abc; Path=/\r\n"), _token_response("t1")]
    )
    try:
        request = request_for_url(f"{server.url}/token", credentials)
        assert fetch_token(request, sender=transport).access_token == "t0"
        assert fetch_token(request, sender=transport).access_token == "t1"
    finally:
        server.close()
    assert [("cookie" in _headers(r)) for r in server.requests] == [False, False]
    assert len(transport.session_for(None).cookies) == 0


def test_only_our_headers_and_the_url_as_written_are_sent(credentials, transport):
    """No requests defaults (Accept-Encoding: gzip, python-requests User-Agent, Accept,
    Connection), and the URL is not re-quoted (requests would send /o/t~oken?x=A)."""
    server = _RawServer([_token_response("t0")])
    try:
        request = request_for_url(f"{server.url}/o/t%7Eoken?x=%41", credentials)
        assert fetch_token(request, sender=transport).access_token == "t0"
    finally:
        server.close()
    (raw,) = server.requests
    assert raw.split(b"\r\n", 1)[0] == b"POST /o/t%7Eoken?x=%41 HTTP/1.1"
    headers = _headers(raw)
    assert headers["user-agent"].startswith("tokensync/")
    assert headers.get("accept-encoding", "identity") == "identity"  # urllib3's, not gzip
    assert "connection" not in headers
    assert "python-requests" not in raw.decode("latin-1")


def test_the_session_keeps_every_rule_for_requests_callers(
    token_server, start_server, credentials, transport
):
    """session_for() is a plain requests Session: code that uses requests' own API on it
    gets the same deadline, body bound, redirect refusal and guard."""
    session = transport.session_for(None)
    url = token_server.token_url
    form = {
        "grant_type": "client_credentials",
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    }
    assert session.post(url, data=form, timeout=5).json()["access_token"]
    sent = token_server.received[-1]
    assert "python-requests" not in (sent.header("User-Agent") or "")  # no session defaults
    assert "gzip" not in (sent.header("Accept-Encoding") or "")

    token_server.fail("drip", interval=0.05)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        session.post(url, data=form, timeout=1)
    assert time.monotonic() - started < 2.0  # one deadline, not one per read

    token_server.fail("huge")
    with pytest.raises(ResponseTooLarge) as caught:
        session.post(url, data=form, timeout=5)
    assert caught.value.response is not None and caught.value.response.status_code == 200

    elsewhere = start_server()
    token_server.fail("redirect", location=f"http://127.0.0.1:{elsewhere.port}/oauth2/token")
    answer = session.post(url, data=form, timeout=5)
    assert answer.status_code == 302 and answer.history == [] and answer.content == b""
    assert elsewhere.received == []

    guarded = Transport(NetworkGuard(deny_private=True), ssl_contexts=SSLContextCache())
    try:
        token_server.heal()
        received = len(token_server.received)
        with pytest.raises(PrivateNetworkDenied):
            guarded.session_for(None).post(url, data=form, timeout=5)
        assert len(token_server.received) == received
    finally:
        guarded.close()


def test_one_session_per_trust_configuration(tls_server, credentials, token_ca, transport):
    a = TLSSettings(ca_pem=token_ca.cert_pem.bytes(), ca_description="Secret/a")
    b = TLSSettings(ca_pem=token_ca.cert_pem.bytes(), ca_description="ConfigMap/b")
    assert transport.session_for(a) is transport.session_for(b)
    assert transport.session_for(a) is not transport.session_for(TLSSettings())
    assert isinstance(transport.session_for(a), requests.Session)
    assert isinstance(transport.session_for(a).get_adapter("https://x/"), TokenAdapter)


def test_sessions_are_bounded(tls_server, credentials):
    sender = Transport(
        NetworkGuard(deny_private=False), ssl_contexts=SSLContextCache(), max_sessions=2
    )
    try:
        cas = [trustme.CA() for _ in range(3)]
        first = sender.session_for(TLSSettings(ca_pem=cas[0].cert_pem.bytes()))
        for ca in cas[1:]:
            sender.session_for(TLSSettings(ca_pem=ca.cert_pem.bytes()))
        assert len(sender._all_sessions()) == 2
        assert first not in sender._all_sessions()
    finally:
        sender.close()


def test_requests_adds_no_ca_bundle_to_a_ca_ref_context(
    tls_server, credentials, token_ca, transport, tmp_path, monkeypatch
):
    """requests' own cert_verify would load its CA bundle (certifi, or REQUESTS_CA_BUNDLE)
    into the shared context: caRef must stay the only trust."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    tls = TLSSettings(ca_pem=token_ca.cert_pem.bytes())
    for _ in range(2):
        assert fetch_token(request_for(tls_server, credentials, tls=tls), sender=transport)
    context = transport.session_for(tls).adapter.ssl_context
    assert context is not None and len(context.get_ca_certs()) == 1
