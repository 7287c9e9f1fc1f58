"""Who may read /metrics, and over what: HTTPS, and only for callers whose bearer token
the API server authenticates (TokenReview) and authorises for `get` on the non-resource
URL `/metrics` (SubjectAccessReview). The same checks controller-runtime's secure metrics
(`filters.WithAuthenticationAndAuthorization`) and kube-rbac-proxy make, so the same
ClusterRole (`nonResourceURLs: [/metrics]`, `verbs: [get]`) and ServiceMonitor settings
work.

The decision (`decide`) is a pure function of the header, a reviewer and a cache; the
review calls go through the `kubernetes` client; the TLS certificate is the one in
`--metrics-cert-dir` (reloaded when it changes, e.g. renewed by cert-manager) or a
self-signed one generated at start.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("tokensync.metrics")

METRICS_PATH = "/metrics"
# Review results are reused briefly, so a scrape every 15-30 s costs about one
# TokenReview and one SubjectAccessReview per minute, while a revoked grant or
# token stops working within a minute. Denials expire sooner.
ALLOW_TTL_SECONDS = 60.0
DENY_TTL_SECONDS = 10.0
CACHE_MAX_ENTRIES = 1024
# Unknown bearers (not allowed within RECENT_ALLOW_SECONDS) get at most this many reviews:
# a flood of random tokens costs the API server REVIEW_RATE TokenReviews a second, and a
# scraper that was allowed before is reviewed again whatever the flood.
REVIEW_RATE_PER_SECOND = 5.0
REVIEW_BURST = 20
RECENT_ALLOW_SECONDS = 900.0
RECENT_ALLOW_MAX = 256
# Connections served at once (one thread each); more are closed at once.
MAX_CONNECTIONS = 32
REVIEW_TIMEOUT = (5, 10)  # connect, read
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"  # the layout of a kubernetes.io/tls Secret
SELF_SIGNED_DAYS = 365


@dataclass(frozen=True)
class MetricsSecurity:
    """How /metrics is served: `insecure` is plain HTTP for anyone (--metrics-insecure);
    otherwise HTTPS with TokenReview + SubjectAccessReview, with the certificate from
    `cert_dir` (tls.crt, tls.key) or a self-signed one."""

    insecure: bool = False
    cert_dir: str | None = None


# --- the decision -----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 401, 403, or 503 when the API server could not be asked
    reason: str  # for the response body and debug logs; never contains the token


class ReviewUnavailable(Exception):
    """The API server could not answer a review (not cached; the scrape gets 503)."""


class Reviewer(Protocol):
    def authenticate(self, token: str) -> User | None: ...

    def authorize(self, user: User, path: str, verb: str) -> bool: ...


@dataclass
class ReviewCache:
    """Decisions by SHA-256 of the token: the token itself is never kept."""

    now: Callable[[], float] = time.monotonic
    entries: dict[str, tuple[float, Decision]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # token digest -> until when it counts as a known scraper (see ReviewLimiter)
    recent_allows: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def get(self, key: str) -> Decision | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.now():
                del self.entries[key]
                return None
            return entry[1]

    def put(self, key: str, decision: Decision) -> None:
        ttl = ALLOW_TTL_SECONDS if decision.status == 200 else DENY_TTL_SECONDS
        with self.lock:
            now = self.now()
            if len(self.entries) >= CACHE_MAX_ENTRIES:
                # Expired first, then the oldest denials (a flood of unknown tokens must
                # not evict the scrapers' grants), then the oldest (dicts keep order).
                for k in [k for k, (expiry, _) in self.entries.items() if expiry <= now]:
                    del self.entries[k]
                denials = (k for k, (_, d) in self.entries.items() if d.status != 200)
                for k in list(self._take(denials, len(self.entries) - CACHE_MAX_ENTRIES + 1)):
                    del self.entries[k]
                while len(self.entries) >= CACHE_MAX_ENTRIES:
                    del self.entries[next(iter(self.entries))]
            self.entries[key] = (now + ttl, decision)
            if decision.status == 200:
                self.recent_allows[key] = now + RECENT_ALLOW_SECONDS
                self.recent_allows.move_to_end(key)
                while len(self.recent_allows) > RECENT_ALLOW_MAX:
                    self.recent_allows.popitem(last=False)

    @staticmethod
    def _take(keys: Any, count: int) -> list[str]:
        taken: list[str] = []
        for key in keys:
            if len(taken) >= count:
                break
            taken.append(key)
        return taken

    def recently_allowed(self, key: str) -> bool:
        """Whether this token was allowed within RECENT_ALLOW_SECONDS (its review is not
        rate-limited: a known scraper is never starved by a flood of unknown tokens)."""
        with self.lock:
            expiry = self.recent_allows.get(key)
            return expiry is not None and expiry > self.now()


@dataclass
class ReviewLimiter:
    """A token bucket for reviews of unknown bearers: `rate` a second, up to `burst`."""

    rate: float = REVIEW_RATE_PER_SECOND
    burst: float = REVIEW_BURST
    now: Callable[[], float] = time.monotonic
    tokens: float = REVIEW_BURST
    stamp: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            now = self.now()
            if self.stamp is not None:
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


def decide(
    authorization: str | None,
    reviewer: Reviewer,
    cache: ReviewCache,
    path: str = METRICS_PATH,
    verb: str = "get",
    limiter: ReviewLimiter | None = None,
) -> Decision:
    token = bearer_token(authorization)
    if token is None:
        return Decision(401, "a bearer token is required")
    key = hashlib.sha256(f"{verb} {path} {token}".encode()).hexdigest()
    if (cached := cache.get(key)) is not None:
        return cached
    if limiter is not None and not cache.recently_allowed(key) and not limiter.take():
        return Decision(429, "too many reviews of unknown tokens; try again later")
    try:
        user = reviewer.authenticate(token)
        if user is None:
            decision = Decision(401, "the token was not accepted by the API server")
        elif reviewer.authorize(user, path, verb):
            decision = Decision(200, f"{user.username} may {verb} {path}")
        else:
            decision = Decision(403, f"{user.username} may not {verb} {path}")
    except ReviewUnavailable as error:
        return Decision(503, f"cannot review the token: {error}")
    cache.put(key, decision)
    return decision


# --- serving: bounded threads -----------------------------------------------------------------


class BoundedThreads:
    """A mix-in before socketserver.ThreadingMixIn: at most `max_connections` connections
    are served at once (a thread each); one beyond that is closed without a thread, so
    idle connections cannot pile up threads and memory."""

    max_connections = MAX_CONNECTIONS
    request_queue_size = 128  # the listen backlog (socketserver's default is 5)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._slots.release()


# --- the reviews, through the API server --------------------------------------------------


class KubernetesReviewer:
    """TokenReview and SubjectAccessReview, as the operator's ServiceAccount (RBAC:
    create on tokenreviews and subjectaccessreviews, deploy/base/rbac-metrics.yaml)."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client

    @classmethod
    def from_environment(cls) -> KubernetesReviewer:
        import kubernetes

        from tokensync.kube import load_configuration

        return cls(kubernetes.client.ApiClient(load_configuration(connection_pool_size=4)))

    def authenticate(self, token: str) -> User | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        review = self._post("/apis/authentication.k8s.io/v1/tokenreviews", body)
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        info = status.get("user") or {}
        return User(
            username=info.get("username", ""),
            uid=info.get("uid", ""),
            groups=tuple(info.get("groups") or ()),
            extra=tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items())),
        )

    def authorize(self, user: User, path: str, verb: str) -> bool:
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        review = self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
        return bool((review.get("status") or {}).get("allowed"))

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            method, url, headers, data, params = self._api.param_serialize(
                "POST",
                path,
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                method, url, headers, data, params, _request_timeout=REVIEW_TIMEOUT
            )
            status, payload = response.status, response.read()
        except ApiException as error:  # raised by some client versions for non-2xx
            status, payload = error.status or 0, b""
        except Exception as error:  # connection errors of every kind (urllib3, OSError)
            # The type only: nothing of the request, which holds the token.
            raise ReviewUnavailable(type(error).__name__) from None
        if not 200 <= status < 300:
            raise ReviewUnavailable(f"Kubernetes API {status}")
        try:
            return json.loads(payload or b"{}")
        except ValueError:
            raise ReviewUnavailable("unreadable review response") from None


# --- TLS ----------------------------------------------------------------------------------


def self_signed_certificate(hosts: list[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): ECDSA P-256, valid for SELF_SIGNED_DAYS, with
    every host as a subject alternative name (DNS names and IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokensync-metrics")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def default_hosts() -> list[str]:
    """Names a scraper may use: the pod's host name, the metrics Service's names in the
    pod's namespace, and loopback."""
    namespace = os.environ.get("POD_NAMESPACE", "tokensync-system")
    service = "tokensync-metrics"
    return [
        socket.gethostname(),
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "::1",
    ]


def _server_context(cert_pem: bytes | Path, key_pem: bytes | Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(cert_pem, Path) and isinstance(key_pem, Path):
        context.load_cert_chain(cert_pem, key_pem)
        return context
    # ssl loads only from files: write them to the memory-backed temporary directory for
    # the moment of loading (as oauth2.py does for mutual TLS keys).
    with tempfile.TemporaryDirectory(
        prefix="tokensync-metrics-", dir=os.environ.get("TOKENSYNC_TMPDIR") or None
    ) as directory:
        cert_path, key_path = Path(directory, CERT_FILE), Path(directory, KEY_FILE)
        cert_path.write_bytes(cert_pem)  # type: ignore[arg-type]
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)  # type: ignore[arg-type]
        context.load_cert_chain(cert_path, key_path)
    return context


def cert_dir_problem(cert_dir: str) -> str | None:
    """Why --metrics-cert-dir cannot be served from, or None: checked before the
    operator starts, so a wrong path fails at once instead of at the first scrape."""
    try:
        _server_context(Path(cert_dir, CERT_FILE), Path(cert_dir, KEY_FILE))
    except (OSError, ssl.SSLError) as error:
        return f"{cert_dir}: needs {CERT_FILE} and a matching {KEY_FILE} ({error})"
    return None


class ServerCertificate:
    """The SSLContext for each connection: from cert_dir, reloaded when its files change
    (a failed reload keeps the previous certificate), else self-signed once."""

    def __init__(self, cert_dir: str | None) -> None:
        self._dir = Path(cert_dir) if cert_dir else None
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        if self._dir is None:
            self._context = _server_context(*self_signed_certificate(default_hosts()))
            log.info("metrics: serving HTTPS with a self-signed certificate")
        else:
            self._stamp = self._file_stamp()
            self._context = _server_context(self._dir / CERT_FILE, self._dir / KEY_FILE)
            log.info("metrics: serving HTTPS with the certificate in %s", self._dir)

    def _file_stamp(self) -> tuple[Any, ...]:
        assert self._dir is not None
        stats = [(self._dir / name).stat() for name in (CERT_FILE, KEY_FILE)]
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)

    def context(self) -> ssl.SSLContext:
        if self._dir is None:
            return self._context
        with self._lock:
            try:
                stamp = self._file_stamp()
            except OSError:  # mid-rotation: a file is briefly missing
                return self._context
            if stamp != self._stamp:
                self._stamp = stamp  # once per change, whether or not it loads
                try:
                    self._context = _server_context(self._dir / CERT_FILE, self._dir / KEY_FILE)
                    log.info("metrics: reloaded the certificate in %s", self._dir)
                except (OSError, ssl.SSLError) as error:
                    log.warning("metrics: keeping the previous certificate: %s", error)
            return self._context
