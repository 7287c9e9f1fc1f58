"""`issuerURL`: find the token endpoint in the issuer's metadata (OpenID Connect Discovery,
else RFC 8414), and choose the client authentication from it. No Kubernetes here.

The document is read with the transport of token requests (deadline, private-network
guard, no redirects, caRef trust, no proxy credentials or .netrc) and with no credentials
at all; the body is capped at 1 MiB. Its token endpoint is then held to every rule a
`tokenURL` is (the caller re-runs the operator's gates and the allowed-token-urls
binding on it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tokensync import oauth2, transport
from tokensync.oauth2 import (
    _TRANSPORT_ERRORS,
    MAX_BODY_BYTES,
    USER_AGENT,
    TLSSettings,
    TokenError,
    TokenRequest,
    _transport_error,
)
from tokensync.redact import truncate

OPENID_CONFIGURATION = "/.well-known/openid-configuration"
OAUTH_AUTHORIZATION_SERVER = "/.well-known/oauth-authorization-server"
CACHE_SECONDS = 3600.0


class DiscoveryFailed(Exception):
    """Discovery found no usable token endpoint. The text names the URL read and what was
    wrong; `transient` says whether trying again soon may help."""

    def __init__(self, url: str, problem: str, *, transient: bool = False) -> None:
        super().__init__(f"discovery from {url} failed: {problem}")
        self.url = url
        self.problem = problem
        self.transient = transient


MAX_ENDPOINT_CHARS = 2048
CACHE_ENTRIES = 1024


@dataclass(frozen=True)
class Metadata:
    """What tokensync uses of an authorization server's metadata, and nothing more (a
    document may be 1 MiB; what is kept is a few hundred bytes)."""

    issuer: str
    token_endpoint: str
    auth_methods_listed: bool  # token_endpoint_auth_methods_supported is present
    supports_basic: bool
    supports_post: bool
    auth_methods_shown: str  # the first few listed, for a message
    document_url: str


def document_urls(issuer: str) -> list[str]:
    """Where the metadata may be, in order: OpenID Connect Discovery, then RFC 8414 (the
    well-known path appended to the issuer, and RFC 8414's own for an issuer with a path:
    the well-known segment inserted before the path)."""
    base = issuer.rstrip("/")
    urls = [base + OPENID_CONFIGURATION, base + OAUTH_AUTHORIZATION_SERVER]
    parts = urlsplit(base)
    if parts.path:
        inserted = urlunsplit(
            (parts.scheme, parts.netloc, OAUTH_AUTHORIZATION_SERVER + parts.path, "", "")
        )
        urls.append(inserted)
    return urls


def parse_metadata(
    body: bytes,
    issuer: str,
    document_url: str,
    url_problem: Callable[[str], str | None],
) -> Metadata:
    """Validate a metadata document (pure): its issuer must equal `issuer` and its token
    endpoint must pass `url_problem` (the tokenURL rules)."""
    if oauth2.json_depth_exceeds(body):
        raise DiscoveryFailed(
            document_url, f"the document nests deeper than {oauth2.MAX_JSON_DEPTH} levels"
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise DiscoveryFailed(document_url, "the document is not JSON") from None
    if not isinstance(data, dict):
        raise DiscoveryFailed(document_url, "the document is not a JSON object")
    found = data.get("issuer")
    if found != issuer:
        shown = truncate(found, 200) if isinstance(found, str) else "missing"
        raise DiscoveryFailed(
            document_url, f"its issuer ({shown}) does not equal spec.issuerURL ({issuer})"
        )
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise DiscoveryFailed(document_url, "the document has no token_endpoint")
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise DiscoveryFailed(
            document_url, f"its token_endpoint is longer than {MAX_ENDPOINT_CHARS} characters"
        )
    if problem := url_problem(endpoint):
        shown = oauth2.display_url(endpoint)
        raise DiscoveryFailed(document_url, f"its token_endpoint {shown} {problem}")
    methods = data.get("token_endpoint_auth_methods_supported")
    if methods is not None and not (
        isinstance(methods, list) and all(isinstance(m, str) for m in methods)
    ):
        raise DiscoveryFailed(
            document_url, "token_endpoint_auth_methods_supported is not a list of strings"
        )
    listed = methods or []
    return Metadata(
        issuer=issuer,
        token_endpoint=endpoint,
        auth_methods_listed=methods is not None,
        supports_basic="client_secret_basic" in listed,
        supports_post="client_secret_post" in listed,
        auth_methods_shown=truncate(", ".join(m[:64] for m in listed[:8]), 300) or "none",
        document_url=document_url,
    )


def choose_client_authentication(metadata: Metadata) -> str:
    """The method when the spec sets none: `header` when the server lists
    client_secret_basic or nothing, else `body` for client_secret_post (docs/reference/api.md)."""
    if not metadata.auth_methods_listed or metadata.supports_basic:
        return "header"
    if metadata.supports_post:
        return "body"
    listed = metadata.auth_methods_shown
    raise DiscoveryFailed(
        metadata.document_url,
        f"the token endpoint supports neither client_secret_basic nor client_secret_post "
        f"({listed}); set spec.clientAuthentication",
    )


# --------------------------------------------------------------------------------------
# Reading the document


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes


def _get(url: str, tls: TLSSettings, timeout: float, deny_private_networks: bool) -> _Response:
    """GET with the token transport (deadline, guard, proxies, no redirects, no
    credentials); the body only of a 200, and at most 1 MiB of it."""
    https = urlsplit(url).scheme.lower() == "https"
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    sender = transport.transport_for(transport.NetworkGuard(deny_private_networks, ()))
    raw = sender.request(
        "GET",
        url,
        headers,
        None,
        tls=tls if https else None,
        timeout=timeout,
        max_body_bytes=MAX_BODY_BYTES,
    )
    if raw.status != 200:
        return _Response(raw.status, b"")
    if raw.oversized:
        raise _TooLarge()
    return _Response(200, raw.body)


class _TooLarge(Exception):
    pass


def fetch_metadata(
    issuer: str,
    *,
    tls: TLSSettings,
    timeout: float,
    deny_private_networks: bool,
    url_problem: Callable[[str], str | None],
) -> Metadata:
    """Read and validate the issuer's metadata; DiscoveryFailed names the URL and why."""
    last_status: tuple[str, int] | None = None
    for url in document_urls(issuer):
        probe = TokenRequest(token_url=url, client_id="", client_secret="", tls=tls)
        try:
            response = _get(url, tls, timeout, deny_private_networks)
        except _TooLarge:
            raise DiscoveryFailed(url, "the document is larger than 1 MiB") from None
        except TokenError as error:
            raise DiscoveryFailed(url, _error_text(error), transient=_transient(error)) from None
        except _TRANSPORT_ERRORS as exc:
            error = _transport_error(exc, probe)
            raise DiscoveryFailed(url, _error_text(error), transient=_transient(error)) from None
        if response.status == 200:
            return parse_metadata(response.body, issuer, url, url_problem)
        if response.status not in (404, 410):
            what = "a redirect, which is not followed" if 300 <= response.status < 400 else ""
            raise DiscoveryFailed(
                url,
                f"HTTP {response.status}" + (f" ({what})" if what else ""),
                transient=response.status in (408, 429) or response.status >= 500,
            )
        last_status = (url, response.status)
    assert last_status is not None
    tried = ", ".join(document_urls(issuer))
    raise DiscoveryFailed(
        last_status[0], f"no metadata document: HTTP {last_status[1]} (tried {tried})"
    )


def _error_text(error: TokenError) -> str:
    return str(error) if not error.hint else f"{error.message}. Hint: {error.hint}"


def _transient(error: TokenError) -> bool:
    return error.kind == "transient"


# --------------------------------------------------------------------------------------
# Cache


def _cache_key(issuer: str, tls: TLSSettings) -> tuple[str, str, bool]:
    # Per trust setting too: a document read under one caRef proves nothing under another.
    ca = hashlib.sha256(tls.ca_pem or b"").hexdigest()
    return issuer, ca, tls.insecure_skip_verify


class DiscoveryCache:
    """Documents by issuer for an hour; read again after a token request to the discovered
    endpoint answered 404 or could not connect. When reading again fails transiently
    (the issuer is down too), the last good document is used meanwhile, so a valid token
    is kept and the failure goes through the token request's own backoff, as without
    discovery. Thread-safe (used from the executor).

    Bounded: at most `max_entries` documents (least recently used out first), each only
    the few fields of `Metadata`; an issuer's documents are dropped with the last
    credential that names it (`IssuerUsers`), and entries older than twice the TTL, whose
    issuer no credential asked for since, whenever another is stored. The cache says
    what was discovered, not whether a credential may use it: callers check the endpoint
    against each credential's own settings (identity.discover)."""

    def __init__(
        self,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        # key -> (read at, document, last used); a stale entry has read-at -inf
        self._items: OrderedDict[tuple[str, str, bool], tuple[float, Metadata, float]] = (
            OrderedDict()
        )

    def entries(self) -> int:
        """How many documents are kept (not __len__: an empty cache must stay truthy)."""
        return len(self._items)

    def get(self, issuer: str, tls: TLSSettings, fetch: Callable[[], Metadata]) -> Metadata:
        key = _cache_key(issuer, tls)
        now = self._clock()
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items[key] = (item[0], item[1], now)
                self._items.move_to_end(key)
        if item is not None and now - item[0] < self._ttl:
            return item[1]
        try:
            metadata = fetch()  # failures are not cached: the next pass reads again
        except DiscoveryFailed as failed:
            if failed.transient and item is not None:
                return item[1]
            raise
        with self._lock:
            now = self._clock()
            self._items[key] = (now, metadata, now)
            self._items.move_to_end(key)
            for old, (_, _, used) in list(self._items.items()):
                if now - used > 2 * self._ttl:
                    del self._items[old]
            while len(self._items) > self._max_entries:
                self._items.popitem(last=False)
        return metadata

    def token_endpoint(self, issuer: str) -> str | None:
        """The token endpoint of the newest cached document of `issuer`, if any."""
        with self._lock:
            items = [v for k, v in self._items.items() if k[0] == issuer]
        return max(items, key=lambda item: item[2])[1].token_endpoint if items else None

    def forget(self, issuer: str) -> None:
        """Drop every document of `issuer` (its last credential is gone)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == issuer]:
                del self._items[key]

    def invalidate(self, issuer: str) -> None:
        """Read the documents of `issuer` again next time (kept for a transient failure)."""
        with self._lock:
            for key, (_, metadata, used) in list(self._items.items()):
                if key[0] == issuer:
                    self._items[key] = (float("-inf"), metadata, used)


class IssuerUsers:
    """Which credentials name which issuerURL, so that the cache drops an issuer's
    documents when its last credential is deleted or moves to another issuer (a tenant
    cycling issuers would otherwise fill the cache up to its bound and keep it there).
    Used on the event loop only."""

    def __init__(self, cache: DiscoveryCache) -> None:
        self._cache = cache
        self._issuer_of: dict[str, str] = {}  # credential UID -> its issuerURL
        self._users: Counter[str] = Counter()

    def set(self, uid: str, issuer: str | None) -> None:
        """The credential `uid` now names `issuer` (None: none, or it is gone)."""
        old = self._issuer_of.pop(uid, None)
        if issuer is not None:
            self._issuer_of[uid] = issuer
            self._users[issuer] += 1
        if old is not None:
            self._users[old] -= 1
            if self._users[old] <= 0:
                del self._users[old]
                self._cache.forget(old)


def invalidates_discovery(error: TokenError) -> bool:
    """A token request whose answer says the discovered endpoint may have moved."""
    return error.http_status == 404 or error.reason == "ConnectionFailed"
