"""How token requests reach the endpoint: a requests Session per trust configuration with
a TokenAdapter (requests' HTTPAdapter, the extension point requests users know) that owns
pooled connections, the cached TLS context, the whole-request deadline, the private-network
guard, proxies and the response-size bound.

No OAuth2 and no Kubernetes here; oauth2.py builds the request and classifies what this
module raises. The rules of docs/reference/api.md hold on every connection, new or reused:

- Deadline (timeoutSeconds, connect to last byte): every blocking socket operation (TCP
  connect, TLS handshake, CONNECT, send, each recv) first sets the socket's timeout to
  the time left, so a server that drips one byte at a time still runs out of it. No
  watchdog thread.
- Private-network guard: every address a name resolves to is checked before connecting,
  and the address actually connected after. Through a proxy, the target is resolved
  and checked before CONNECT is sent. A pooled connection is only ever reused by the
  Transport (one guard configuration) that checked it.
- Redirects are never followed; no .netrc, no cookies, no default headers, the URL sent
  as urls.py parsed it (requests' re-quoting is skipped); proxies only from this
  process's HTTPS_PROXY / HTTP_PROXY / NO_PROXY; trust only from the request's own TLS
  settings (never REQUESTS_CA_BUNDLE or certifi).
- A client key is loaded from an anonymous memfd, never from a file (see pem_path).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import http.cookiejar
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import requests.adapters
import requests.cookies
import requests.structures
import requests.utils
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from tokensync.urls import ParsedURL, URLProblem, parse_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Connection reuse. A renewal every few minutes per credential keeps a busy endpoint's
# connections warm; an idle one is dropped before common load balancer and NAT idle
# timeouts (60 s and more) can silently cut it.
IDLE_TIMEOUT_SECONDS = 45.0
MAX_POOLS = 256  # endpoints x trust configurations with a warm connection
MAX_CONNECTIONS_PER_POOL = 8  # matches --max-requests-per-host's default
SSL_CONTEXT_CACHE_SIZE = 64  # a system-store context holds ~0.9 MB
MAX_SESSIONS = SSL_CONTEXT_CACHE_SIZE  # one requests Session per trust configuration
MAX_BODY_BYTES = 1024 * 1024  # the most any caller may ask the transport to read


# --------------------------------------------------------------------------------------
# Private-network guard


class PrivateNetworkDenied(Exception):
    """A token request would have reached an address the guard refuses."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


# Cloud metadata and platform endpoints; 169.254.169.254 (AWS, GCP, Azure IMDS, OCI) is
# link-local anyway, the others are not.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "168.63.129.16",  # Azure WireServer
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.x.y.z to this host
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::/96 and the RFC 8215 /48), 6to4 (2002::/16), or IPv4-compatible (::a.b.c.d)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    raw = ip.packed
    if ip in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(raw[12:16])
    if ip in _NAT64_LOCAL:
        # RFC 6052 2.2, /48 prefix: IPv4 bits in octets 6-7 and 9-10 (octet 8 is "u").
        return ipaddress.IPv4Address(raw[6:8] + raw[9:11])
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(raw[12:16])
    return None


def _private(ip: Address) -> bool:
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip in METADATA_ADDRESSES
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK)
    )


def parse_address(address: str) -> Address:
    return ipaddress.ip_address(address.split("%", 1)[0])


def is_denied_address(
    address: str, *, deny_private: bool = True, deny_cidrs: Iterable[Network] = ()
) -> bool:
    """Whether the guard refuses `address`: loopback, link-local, unspecified, cloud
    metadata (with `deny_private`), any of `deny_cidrs`; also through an IPv6 form that
    embeds one of these IPv4 addresses."""
    ip = parse_address(address)
    candidates: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and (v4 := embedded_ipv4(ip)) is not None:
        candidates.append(v4)
    cidrs = tuple(deny_cidrs)
    return any(
        (deny_private and _private(c)) or any(c in net for net in cidrs if c.version == net.version)
        for c in candidates
    )


def parse_cidrs(values: Iterable[str]) -> tuple[Network, ...]:
    """`--deny-cidrs` values (comma-separated, repeatable); a bare address is a /32 or /128.
    Raises ValueError naming the bad entry."""
    networks = []
    for value in values:
        for text in value.split(","):
            if text.strip():
                try:
                    networks.append(ipaddress.ip_network(text.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"not an IP network: {text.strip()!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class NetworkGuard:
    """Which addresses token requests may not reach (--deny-private-networks,
    --deny-cidrs)."""

    deny_private: bool = True
    deny_cidrs: tuple[Network, ...] = ()

    @property
    def active(self) -> bool:
        return self.deny_private or bool(self.deny_cidrs)

    def denies(self, address: str) -> bool:
        return is_denied_address(
            address, deny_private=self.deny_private, deny_cidrs=self.deny_cidrs
        )

    def check_resolved(self, host: str, port: int) -> None:
        """Resolve `host` and refuse it if any address is denied (raises gaierror when
        the name does not resolve)."""
        for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if self.denies(info[4][0]):
                raise PrivateNetworkDenied(info[4][0])


# --------------------------------------------------------------------------------------
# The deadline: one per request, applied to every blocking socket operation


class DeadlineExceeded(TimeoutError):
    """The request's whole deadline passed."""


@dataclass
class _Exchange:
    """The request in progress in this thread: its deadline and whether it runs on a
    reused connection (a stale keep-alive connection may be retried once)."""

    end: float
    reused: bool = False
    answered: bool = False  # a status line arrived: the request must not be sent again

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded()
        return left

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "tokensync_exchange", default=None
)


def _arm(sock: socket.socket) -> None:
    exchange = _EXCHANGE.get()
    if exchange is not None:
        socket.socket.settimeout(sock, exchange.remaining())


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every blocking call gets only the time the request has left."""

    def recv(self, *args: Any) -> bytes:
        _arm(self)
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        _arm(self)
        return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        _arm(self)
        return super().send(*args)

    def sendall(self, *args: Any) -> None:
        _arm(self)
        super().sendall(*args)


class _DeadlineSSLSocket(_DeadlineSocket, ssl.SSLSocket):
    """The same for TLS, handshake included (each call above goes on to SSLSocket's);
    every context of this module creates these (sslsocket_class)."""

    def do_handshake(self, *args: Any) -> None:
        _arm(self)
        super().do_handshake(*args)


def _connect(host: str, port: int, guard: NetworkGuard | None) -> socket.socket:
    """A connected socket; with a guard, every resolved address and the connected peer
    are checked."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if guard is not None:
        for info in infos:
            if guard.denies(info[4][0]):
                raise PrivateNetworkDenied(info[4][0])
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = _DeadlineSocket(family, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            exchange = _EXCHANGE.get()
            sock.settimeout(exchange.remaining() if exchange else None)
            sock.connect(address)
            peer = sock.getpeername()[0]
            if guard is not None and guard.denies(peer):
                raise PrivateNetworkDenied(peer)
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError) or isinstance(exc, DeadlineExceeded):
                raise
            error = exc
    raise error or OSError(f"no address for {host}")


# --------------------------------------------------------------------------------------
# TLS contexts, one per distinct trust configuration


class TrustSettings(Protocol):
    """What decides trust (oauth2.TLSSettings has these)."""

    ca_pem: bytes | None
    insecure_skip_verify: bool
    client_cert_pem: bytes | None
    client_key_pem: bytes | None
    ca_description: str


class TLSMaterialError(ValueError):
    """The CA bundle or client certificate cannot be loaded."""

    def __init__(self, message: str, *, reason: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.reason, self.hint = message, reason, hint


def build_ssl_context(tls: TrustSettings) -> ssl.SSLContext:
    """A new SSLContext for the token endpoint: caRef replaces the default trust store."""
    try:
        if tls.ca_pem is not None:
            context = ssl.create_default_context(cadata=tls.ca_pem.decode("ascii"))
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        raise TLSMaterialError(
            f"the CA bundle from {tls.ca_description} is not valid PEM",
            reason="InvalidCABundle",
            hint="tls.caRef must name PEM certificates (-----BEGIN CERTIFICATE-----)",
        ) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert_pem is not None or tls.client_key_pem is not None:
        _load_client_certificate(context, tls)
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def _load_client_certificate(context: ssl.SSLContext, tls: TrustSettings) -> None:
    if not tls.client_cert_pem or not tls.client_key_pem:
        raise TLSMaterialError(
            "mutual TLS needs both a client certificate and its key",
            reason="InvalidClientCertificate",
            hint="tls.clientCertificateRef must name a kubernetes.io/tls Secret",
        )
    pem = tls.client_cert_pem.rstrip(b"\n") + b"\n" + tls.client_key_pem
    try:
        with pem_path(pem) as path:
            context.load_cert_chain(path)
    except (ssl.SSLError, ValueError):
        raise TLSMaterialError(
            "the client certificate or key is not valid PEM, or they do not match",
            reason="InvalidClientCertificate",
            hint="tls.clientCertificateRef must name a kubernetes.io/tls Secret with "
            "tls.crt and tls.key (or the keys certificateKey and privateKeyKey name)",
        ) from None


# The ssl module loads certificates and keys only by path. On Linux the path is that of an
# anonymous memory file (memfd_create, no name in any filesystem, gone when closed),
# opened again through /proc/self/fd. Elsewhere (no memfd_create, or it is refused, or
# no /proc) the fallback is a mode-0600 file in $TOKENSYNC_TMPDIR removed at once; files
# such a process left behind (killed between write and unlink) are removed by the next
# one before its first write.
KEY_FILE_PREFIX = "tokensync-"
KEY_FILE_SUFFIX = ".pem"
STALE_KEY_FILE_SECONDS = 60.0  # older than any load in progress
_stale_files_removed = False
_log = logging.getLogger("tokensync.transport")


def _memfd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _memfd() -> int | None:
    """An anonymous memory file reachable by path, or None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        fd: int = create("tokensync-client-key", os.MFD_CLOEXEC)
    except OSError:
        return None
    if not os.path.exists(_memfd_path(fd)):
        os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def pem_path(pem: bytes) -> Iterator[str]:
    """A path from which `pem` can be read while the context lasts: a memfd when the
    platform has one, else a private temporary file (see above)."""
    fd = _memfd()
    if fd is not None:
        try:
            _write_all(fd, pem)
            yield _memfd_path(fd)
        finally:
            os.close(fd)
        return
    directory = os.environ.get("TOKENSYNC_TMPDIR") or tempfile.gettempdir()
    _remove_stale_key_files_once(directory)
    fd, path = tempfile.mkstemp(prefix=KEY_FILE_PREFIX, suffix=KEY_FILE_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        yield path
    finally:
        os.unlink(path)


def _remove_stale_key_files_once(directory: str) -> None:
    global _stale_files_removed
    if _stale_files_removed:
        return
    _stale_files_removed = True
    removed = remove_stale_key_files(directory, now=time.time())
    _log.warning(
        "no memfd_create here: client keys are loaded from a mode-0600 file in %s, "
        "removed at once (%d left by an earlier process removed)",
        directory,
        removed,
    )


def remove_stale_key_files(directory: str, *, now: float) -> int:
    """Remove key files of the fallback older than STALE_KEY_FILE_SECONDS; how many."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(KEY_FILE_PREFIX) and name.endswith(KEY_FILE_SUFFIX)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and (
                    now - entry.stat(follow_symlinks=False).st_mtime > STALE_KEY_FILE_SECONDS
                ):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _digest(*parts: bytes | None) -> str | None:
    if all(p is None for p in parts):
        return None
    sha = hashlib.sha256()
    for part in parts:
        sha.update(b"-" if part is None else len(part).to_bytes(8, "big") + part)
    return sha.hexdigest()


def _system_store_stamp() -> tuple[Any, ...]:
    """Changes when the default trust store (SSL_CERT_FILE, the system bundle) does, so
    an updated bundle is loaded without a restart."""
    paths = ssl.get_default_verify_paths()
    stamp: list[Any] = [paths.cafile, paths.capath]
    for path in (paths.cafile, paths.capath):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        stamp.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
    return tuple(stamp)


def trust_key(tls: TrustSettings) -> tuple[Any, ...]:
    """What makes two TLS settings trust the same servers and present the same client
    certificate; the key holds digests, never the key material itself."""
    return (
        _digest(tls.ca_pem) if tls.ca_pem is not None else ("system", _system_store_stamp()),
        _digest(tls.client_cert_pem, tls.client_key_pem),
        bool(tls.insecure_skip_verify),
    )


class SSLContextCache:
    """A bounded LRU of SSLContexts by trust_key. Building a context from the system
    store costs tens of milliseconds of CPU; using a cached one costs nothing. The
    contexts are never changed after they are built (urllib3 sets the verify mode it
    already has), so threads share them safely."""

    def __init__(self, maxsize: int = SSL_CONTEXT_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._contexts: OrderedDict[tuple[Any, ...], ssl.SSLContext] = OrderedDict()
        self.builds = 0

    def get(self, tls: TrustSettings) -> ssl.SSLContext:
        key = trust_key(tls)
        with self._lock:
            context = self._contexts.get(key)
            if context is not None:
                self._contexts.move_to_end(key)
                return context
        context = build_ssl_context(tls)  # outside the lock: it may take a while
        with self._lock:
            self.builds += 1
            context = self._contexts.setdefault(key, context)
            self._contexts.move_to_end(key)
            while len(self._contexts) > self.maxsize:
                self._contexts.popitem(last=False)
        return context

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()


SSL_CONTEXTS = SSLContextCache()


@dataclass(frozen=True)
class _SystemTrust:
    ca_pem: bytes | None = None
    insecure_skip_verify: bool = False
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    ca_description: str = "system trust store"


SYSTEM_TRUST = _SystemTrust()


# --------------------------------------------------------------------------------------
# Connection pools


def _pool_classes(
    guard: NetworkGuard, idle_timeout: float, connected: Callable[[], None]
) -> dict[str, type]:
    """Pools for one Transport: connections that obey the deadline and its guard, and
    that are dropped after `idle_timeout` seconds unused. `connected` counts sockets."""

    class Guarded:
        proxy: Any
        _dns_host: str
        port: int
        host: str

        def _new_conn(self) -> socket.socket:
            # Connections to the operator's own proxy are not guarded: the target is,
            # before CONNECT (TokenAdapter.send).
            direct = self.proxy is None
            try:
                sock = _connect(self._dns_host, self.port, guard if direct else None)
                connected()
                return sock
            except socket.gaierror as e:
                raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
            except TimeoutError as e:
                raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from e
            except OSError as e:
                raise NewConnectionError(self, f"failed to connect: {e}") from e  # type: ignore[arg-type]

    class Connection(Guarded, HTTPConnection):
        pass

    class TLSConnection(Guarded, HTTPSConnection):
        pass

    class Pooled:
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)  # type: ignore[misc]
            if _idle_for(conn, time.monotonic()) > idle_timeout:
                conn.close()
            if conn.sock is not None and conn.proxy is None and guard.active:
                # Each request checks the address it goes to, new connection or not.
                try:
                    peer = conn.sock.getpeername()[0]
                except OSError:
                    conn.close()
                else:
                    if guard.denies(peer):
                        conn.close()
                        raise PrivateNetworkDenied(peer)
            exchange = _EXCHANGE.get()
            if exchange is not None:
                exchange.reused = conn.sock is not None
            return conn

        def _put_conn(self, conn: Any) -> None:
            if conn is not None:
                conn.idle_since = time.monotonic()
            pool = self.pool  # type: ignore[attr-defined]
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.put(conn, block=False)
                    return
            if conn is not None:
                conn.close()  # pool closed or full: quietly, unlike urllib3's warning

    class Pool(Pooled, HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(Pooled, HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


def _idle_for(conn: Any, now: float) -> float:
    """Seconds an open pooled connection has been idle (0 when closed or never used)."""
    idle_since = getattr(conn, "idle_since", None)
    if conn is None or conn.sock is None or idle_since is None:
        return 0.0
    return now - idle_since


def _environment_proxy(url: ParsedURL) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY of this process unless NO_PROXY exempts the URL."""
    text = f"{url.scheme}://{url.authority}{url.request_target}"
    proxies = requests.utils.get_environ_proxies(text)
    proxy = requests.utils.select_proxy(text, proxies) if proxies else None
    return requests.utils.prepend_scheme_if_needed(proxy, "http") if proxy else None


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> ParsedURL:
    """parse_url, remembered: the adapter asks for the same few token URLs over and over."""
    return parse_url(url)


# --------------------------------------------------------------------------------------
# The requests adapter


class ResponseTooLarge(requests.RequestException):
    """The response body was over the adapter's bound; `response` has the status and
    headers, and an empty body (the rest was never read)."""


MAX_PROXY_MANAGERS = 8


class TokenAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter with the API's URL rules on every connection, new or
    reused. One per trust configuration: `ssl_context` decides whom https URLs trust and
    the client certificate they present (the `verify` and `cert` arguments of requests
    are not used); plain http needs none.

    - `timeout` is the whole request's deadline in seconds (connect to the last byte of
      the body); a `(connect, read)` pair counts as their sum.
    - The guard refuses denied addresses, checked on every resolved address and on the
      connected peer, and before CONNECT through a proxy.
    - Redirects are returned, never followed, with an empty body.
    - A body over `max_body_bytes` raises ResponseTooLarge; the body is read here, within
      the deadline, so `response.content` is always complete.
    - A keep-alive connection the server closed just as the request went out is
      replaced once, unless an answer had begun.
    """

    def __init__(
        self,
        guard: NetworkGuard,
        ssl_context: ssl.SSLContext | None,
        *,
        insecure: bool = False,
        max_body_bytes: int,
        pool_classes: Mapping[str, type],
        max_pools: int = MAX_POOLS,
        connections_per_pool: int = MAX_CONNECTIONS_PER_POOL,
        proxy_ssl_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.guard = guard
        self.ssl_context = ssl_context
        self.cert_reqs = "CERT_NONE" if insecure else "CERT_REQUIRED"
        self.max_body_bytes = max_body_bytes
        self._pool_classes = dict(pool_classes)
        self._proxy_ssl_context = proxy_ssl_context
        # requests' default retries: none, with its own exception types (a stale
        # keep-alive connection is retried by send, below).
        super().__init__(pool_connections=max_pools, pool_maxsize=connections_per_pool)

    # -- connection pools ----------------------------------------------------------------

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block=False, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = self.proxy_manager.get(proxy)
        if manager is not None:
            return manager
        parsed = urllib3.util.parse_url(proxy)
        if parsed.scheme not in ("http", "https"):
            raise requests.exceptions.InvalidProxyURL("only http:// and https:// proxies")
        # The proxy's credentials go in Proxy-Authorization (requests' proxy_headers),
        # never in the URL urllib3 keeps.
        headers = self.proxy_headers(proxy) if parsed.auth else None
        if parsed.scheme == "https" and self._proxy_ssl_context is not None:
            # The system store, and our socket class: the deadline also covers the
            # proxy's TLS and everything tunnelled in it.
            proxy_kwargs.setdefault("proxy_ssl_context", self._proxy_ssl_context())
        manager = urllib3.ProxyManager(
            parsed._replace(auth=None).url,
            num_pools=self._pool_connections,
            maxsize=self._pool_maxsize,
            block=False,
            proxy_headers=headers,
            **proxy_kwargs,
        )
        manager.pool_classes_by_scheme = self._pool_classes
        self.proxy_manager[proxy] = manager
        while len(self.proxy_manager) > MAX_PROXY_MANAGERS:
            oldest = next(iter(self.proxy_manager))
            self.proxy_manager.pop(oldest).clear()
        return manager

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pool is (scheme, the host DNS is asked for, port, SSL context): the URL
        checked is the URL connected."""
        url = _parsed(request.url or "")
        pool_kwargs: dict[str, Any] = {}
        if url.scheme == "https":
            if self.ssl_context is None:
                raise ValueError("an https request needs TLS settings")
            pool_kwargs = {"ssl_context": self.ssl_context, "cert_reqs": self.cert_reqs}
        return {"scheme": url.scheme, "host": url.connect_host, "port": url.port}, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing: trust is the adapter's SSL context alone (requests would add its own
        CA bundle to it)."""

    def request_url(self, request: requests.PreparedRequest, proxies: Any) -> str:
        url = _parsed(request.url or "")
        if url.scheme == "http" and requests.utils.select_proxy(request.url, proxies):
            return f"http://{url.authority}{url.request_target}"  # forwarded by the proxy
        return url.request_target

    # -- sending -------------------------------------------------------------------------

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        seconds = _deadline_seconds(timeout)
        exchange = _Exchange(time.monotonic() + seconds) if seconds is not None else None
        reset = _EXCHANGE.set(exchange)
        try:
            url = _parsed(request.url or "")
            if self.guard.active and requests.utils.select_proxy(request.url, proxies):
                # Before CONNECT: the proxy would otherwise reach whatever the name
                # resolves to from where it runs.
                self.guard.check_resolved(url.connect_host, url.port)
            for attempt in (1, 2):
                try:
                    return self._send_once(request, exchange, dict(proxies or {}))
                except requests.ConnectionError as error:
                    # A keep-alive connection the server closed just as we sent: once
                    # more on a new one (a token request is safe to repeat, but not after
                    # an answer began: that one may have issued a token).
                    stale = isinstance(error.args[0] if error.args else None, ProtocolError)
                    if attempt == 2 or not stale or exchange is None:
                        raise
                    if not exchange.reused or exchange.answered or exchange.expired:
                        raise
            raise AssertionError("unreachable")
        finally:
            _EXCHANGE.reset(reset)

    def _send_once(
        self,
        request: requests.PreparedRequest,
        exchange: _Exchange | None,
        proxies: dict[str, str],
    ) -> requests.Response:
        remaining = exchange.remaining() if exchange is not None else None
        response = super().send(request, stream=True, timeout=remaining, proxies=proxies)
        if exchange is not None:
            exchange.answered = True
        raw = response.raw
        done = False
        try:
            if 300 <= response.status_code < 400:
                body: bytes | None = b""  # never followed, never read
            else:
                body = _read_body(raw, self.max_body_bytes, request)
                done = body is not None
            response._content = body or b""
            response._content_consumed = True
            if body is None:
                raise ResponseTooLarge(
                    f"response body over {self.max_body_bytes} bytes", response=response
                )
            return response
        finally:
            if not done:
                raw.close()  # unread data: the connection cannot be reused
            raw.release_conn()

    def sweep(self, idle_timeout: float, now: float) -> int:
        """Close pooled connections idle longer than `idle_timeout` (their pools stay)."""
        closed = 0
        for manager in [self.poolmanager, *list(self.proxy_manager.values())]:
            for key in list(manager.pools.keys()):
                queue = getattr(manager.pools.get(key), "pool", None)
                if queue is None:
                    continue
                with queue.mutex:  # queued connections are idle; none is taken meanwhile
                    for conn in list(queue.queue):
                        if _idle_for(conn, now) > idle_timeout:
                            conn.close()
                            closed += 1
        return closed

    def pool_count(self) -> int:
        return len(self.poolmanager.pools) + sum(
            len(m.pools) for m in list(self.proxy_manager.values())
        )


def _read_body(raw: Any, limit: int, request: requests.PreparedRequest) -> bytes | None:
    """_read_limited, with read failures as the requests exceptions that
    Response.iter_content would raise."""
    try:
        return _read_limited(raw, limit)
    except ReadTimeoutError as error:
        raise requests.exceptions.ReadTimeout(error, request=request) from error
    except urllib3.exceptions.SSLError as error:
        raise requests.exceptions.SSLError(error, request=request) from error
    except (ProtocolError, urllib3.exceptions.HTTPError, OSError) as error:
        raise requests.ConnectionError(error, request=request) from error


def _deadline_seconds(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        return float(sum(t for t in timeout if t is not None))
    return float(timeout)


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Cookies are neither kept nor sent: a session serves many credentials."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


class TokenSession(requests.Session):
    """A requests Session for one trust configuration, with a TokenAdapter mounted for
    http:// and https://. Nothing comes from the environment (no .netrc, no
    REQUESTS_CA_BUNDLE, no proxies unless passed), no default headers, no cookies,
    redirects never followed."""

    def __init__(self, adapter: TokenAdapter) -> None:
        super().__init__()
        self.trust_env = False
        self.headers = requests.structures.CaseInsensitiveDict()
        self.cookies = requests.cookies.RequestsCookieJar(policy=_NoCookies())
        self.max_redirects = 0
        self.adapters.clear()
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self.adapter = adapter

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None  # a redirect is the answer, never followed (nor its body read)


def _prepared(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None
) -> requests.PreparedRequest:
    """A PreparedRequest of exactly these parts: requests' URL preparation (which
    re-quotes) is skipped, so the URL checked by urls.py is the URL sent."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    prepared.headers = requests.structures.CaseInsensitiveDict(headers)
    prepared.body = body
    prepared.prepare_content_length(body)
    return prepared


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    oversized: bool = False  # the body was over max_body_bytes and was not kept


class Transport:
    """Sends token requests through one TokenSession per trust configuration, all sharing
    this Transport's guard. One per guard configuration (see `transport_for`);
    thread-safe."""

    def __init__(
        self,
        guard: NetworkGuard = NetworkGuard(deny_private=False),
        *,
        max_pools: int = MAX_POOLS,
        connections_per_pool: int = MAX_CONNECTIONS_PER_POOL,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        ssl_contexts: SSLContextCache = SSL_CONTEXTS,
        max_sessions: int = MAX_SESSIONS,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.guard = guard
        self.ssl_contexts = ssl_contexts
        self.max_body_bytes = max_body_bytes
        self._max_pools = max_pools
        self._connections_per_pool = connections_per_pool
        self._max_sessions = max_sessions
        self._connects = 0
        self._classes = _pool_classes(guard, idle_timeout, self._count_connect)
        self._lock = threading.Lock()
        self._sessions: OrderedDict[Any, TokenSession] = OrderedDict()
        self._idle_timeout = idle_timeout
        self._next_sweep = time.monotonic() + idle_timeout

    def session_for(self, tls: TrustSettings | None) -> TokenSession:
        """The Session for one trust configuration (None: plain http only)."""
        key = trust_key(tls) if tls is not None else None
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
        context = self.ssl_contexts.get(tls) if tls is not None else None
        adapter = TokenAdapter(
            self.guard,
            context,
            insecure=bool(tls is not None and tls.insecure_skip_verify),
            max_body_bytes=self.max_body_bytes,
            pool_classes=self._classes,
            max_pools=self._max_pools,
            connections_per_pool=self._connections_per_pool,
            proxy_ssl_context=lambda: self.ssl_contexts.get(SYSTEM_TRUST),
        )
        created = TokenSession(adapter)
        evicted: list[TokenSession] = []
        with self._lock:
            session = self._sessions.setdefault(key, created)
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._max_sessions:
                evicted.append(self._sessions.popitem(last=False)[1])
        for old in [*evicted, *([created] if session is not created else [])]:
            old.close()
        return session

    def _all_sessions(self) -> list[TokenSession]:
        with self._lock:
            return list(self._sessions.values())

    def sweep(self) -> int:
        """Close pooled connections idle longer than the idle timeout (their pools stay);
        returns how many. Runs from `request` now and then, so idle endpoints do not hold
        sockets open, without a thread of its own."""
        now = time.monotonic()
        return sum(s.adapter.sweep(self._idle_timeout, now) for s in self._all_sessions())

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + max(self._idle_timeout, 1.0)
        self.sweep()

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()

    def _count_connect(self) -> None:
        with self._lock:
            self._connects += 1

    def connection_count(self) -> int:
        """TCP connections opened so far (tests and benchmarks)."""
        with self._lock:
            return self._connects

    def pool_count(self) -> int:
        """Connection pools held, over every session (tests)."""
        return sum(s.adapter.pool_count() for s in self._all_sessions())

    def post(
        self,
        url: ParsedURL | str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        tls: TrustSettings | None,
        timeout: float,
        max_body_bytes: int,
    ) -> RawResponse:
        """POST `body` to `url` and read the response within `timeout` seconds in all.
        Raises PrivateNetworkDenied, DeadlineExceeded, TLSMaterialError, URLProblem, or
        requests / urllib3 / OSError exceptions for connection failures."""
        return self.request(
            "POST", url, headers, body, tls=tls, timeout=timeout, max_body_bytes=max_body_bytes
        )

    def request(
        self,
        method: str,
        url: ParsedURL | str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        tls: TrustSettings | None,
        timeout: float,
        max_body_bytes: int,
    ) -> RawResponse:
        """One request (POST for tokens, GET for discovery documents) under every rule of
        the token transport: deadline, guard, proxies, no redirects, bounded body."""
        text = url if isinstance(url, str) else str(url)
        parsed = _parsed(text)
        if max_body_bytes > self.max_body_bytes:
            raise ValueError(f"max_body_bytes over the transport's {self.max_body_bytes}")
        self._maybe_sweep()
        if parsed.scheme == "https" and tls is None:
            raise ValueError("an https request needs TLS settings")
        session = self.session_for(tls if parsed.scheme == "https" else None)
        proxy = _environment_proxy(parsed)
        try:
            response = session.send(
                _prepared(method, text, headers, body),
                timeout=timeout,
                proxies={parsed.scheme: proxy} if proxy else {},
                allow_redirects=False,
                stream=True,
            )
        except ResponseTooLarge as too_large:
            answer = too_large.response
            assert answer is not None
            return RawResponse(answer.status_code, answer.headers, b"", oversized=True)
        if len(response.content) > max_body_bytes:
            return RawResponse(response.status_code, response.headers, b"", oversized=True)
        return RawResponse(response.status_code, response.headers, response.content)


def _read_limited(response: Any, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than `limit`."""
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        return None
    chunks, total = [], 0
    while True:
        chunk = response.read(16 * 1024, decode_content=False)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


_TRANSPORTS: dict[NetworkGuard, Transport] = {}
_TRANSPORTS_LOCK = threading.Lock()


def transport_for(guard: NetworkGuard) -> Transport:
    """The shared Transport (and so the connection pools) for one guard configuration."""
    with _TRANSPORTS_LOCK:
        transport = _TRANSPORTS.get(guard)
        if transport is None:
            transport = _TRANSPORTS[guard] = Transport(guard)
        return transport


def reset_transports() -> None:
    """Close every shared pool (tests; a process that forks)."""
    with _TRANSPORTS_LOCK:
        for transport in _TRANSPORTS.values():
            transport.close()
        _TRANSPORTS.clear()
    SSL_CONTEXTS.clear()


@contextlib.contextmanager
def exchange_deadline(seconds: float) -> Iterator[None]:
    """Run socket operations of this thread under a deadline (tests of the socket layer)."""
    reset = _EXCHANGE.set(_Exchange(time.monotonic() + seconds))
    try:
        yield
    finally:
        _EXCHANGE.reset(reset)


__all__ = [
    "DeadlineExceeded",
    "NetworkGuard",
    "PrivateNetworkDenied",
    "RawResponse",
    "ResponseTooLarge",
    "SSLContextCache",
    "TLSMaterialError",
    "TokenAdapter",
    "TokenSession",
    "Transport",
    "URLProblem",
    "build_ssl_context",
    "embedded_ipv4",
    "is_denied_address",
    "parse_cidrs",
    "pem_path",
    "transport_for",
]
