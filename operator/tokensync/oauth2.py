"""One OAuth2 client-credentials token request: build it, send it, parse the answer.

No Kubernetes here. Everything that leaves this module (Token, TokenError and its message)
is free of the client secret and the token: library exceptions are never passed on, only
classified, and every error text is redacted before it is raised.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tokensync import __version__
from tokensync.redact import redact, truncate

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_BODY_BYTES = 1024 * 1024
DESCRIPTION_LIMIT = 200
USER_AGENT = f"tokensync/{__version__}"

# Addresses a token request must never reach when the private-network guard is on.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
# Characters that RFC 6749 2.3.1 form-encoding changes in Basic credentials; servers that
# skip the decoding step then see a different secret.
_BASIC_ENCODED_CHARS = re.compile(r"[+/=%:&\s]|[^\x00-\x7f]")


# --------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class TLSSettings:
    """How to verify the token endpoint, all from bytes (never from user-created files)."""

    ca_pem: bytes | None = None  # replaces (never adds to) the default trust store
    insecure_skip_verify: bool = False
    client_cert_pem: bytes | None = None  # mTLS: tls.crt
    client_key_pem: bytes | None = field(default=None, repr=False)  # tls.key
    ca_description: str = "system trust store"  # names the CA in TLS error hints

    @property
    def verification(self) -> str:
        """One phrase saying how the server certificate is checked."""
        if self.insecure_skip_verify:
            return "disabled (insecureSkipVerify)"
        return f"verified against {self.ca_description}"


@dataclass(frozen=True)
class TokenRequest:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    # "header" | "body" | "private_key_jwt" | "client_secret_jwt" | "tls_client_auth" |
    # "workload_identity"
    client_authentication: str = "header"
    content_type: str = FORM  # or JSON
    scope: str | None = None
    scope_object: Any = None  # a JSON value sent as `scope` (JSON bodies only)
    include_scope: bool = True
    audience: str | None = None
    resource: str | None = None
    extra_parameters: Mapping[str, str] = field(default_factory=dict)
    tls: TLSSettings = TLSSettings()
    timeout_seconds: float = 30.0
    default_lifetime_seconds: float = 3600.0
    # RFC 7523: returns a fresh signed client assertion for every request (assertion methods).
    client_assertion: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    @property
    def scope_sent(self) -> Any:
        """The value sent as `scope`, or None when no scope is sent."""
        if not self.include_scope:
            return None
        if self.scope_object is not None:
            return self.scope_object
        return self.scope or None


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    token_type: str
    issued_at: datetime  # tz-aware UTC
    expires_at: datetime  # tz-aware UTC
    scope: str | None  # granted scope as returned
    lifetime_source: str  # "expires_in" | "jwt" | "default"
    http_status: int

    @property
    def lifetime_seconds(self) -> float:
        return (self.expires_at - self.issued_at).total_seconds()


class TokenError(Exception):
    """A token request failed. `str()` is one line for users; it never holds a secret."""

    kind: ClassVar[str] = "configuration"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        http_status: int | None = None,
        oauth_error: str | None = None,
        oauth_error_description: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.http_status = http_status
        self.oauth_error = oauth_error
        self.oauth_error_description = oauth_error_description
        self.hint = hint
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = self.message
        if self.oauth_error:
            text += f": {self.oauth_error}"
            if self.oauth_error_description:
                text += f" ({self.oauth_error_description})"
        if self.hint:
            text += f". Hint: {self.hint}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={str(self)!r})"

    def sanitized(
        self, clean: Callable[[str], str], clean_remote: Callable[[str], str]
    ) -> TokenError:
        """A copy with `clean` applied to our own text and the stricter `clean_remote` to
        the text the endpoint sent."""

        def opt(text: str | None, cleaner: Callable[[str], str]) -> str | None:
            return None if text is None else cleaner(text)

        return type(self)(
            clean(self.message),
            reason=self.reason,
            http_status=self.http_status,
            oauth_error=opt(self.oauth_error, clean_remote),
            oauth_error_description=opt(self.oauth_error_description, clean_remote),
            hint=opt(self.hint, clean),
            retry_after=self.retry_after,
        )


class TransientError(TokenError):
    """Worth retrying soon: timeouts, connection errors, 408, 429, 5xx."""

    kind: ClassVar[str] = "transient"


class ConfigurationError(TokenError):
    """The endpoint refused the request as configured; retrying soon will not help."""

    kind: ClassVar[str] = "configuration"


class ProtocolError(TokenError):
    """The endpoint answered 2xx with something that is not a usable token response."""

    kind: ClassVar[str] = "protocol"


# --------------------------------------------------------------------------------------
# Building the request (pure)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """`Basic ...` with id and secret form-urlencoded first, as RFC 6749 2.3.1 requires."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_METHODS = ("private_key_jwt", "client_secret_jwt", "workload_identity")
CLIENT_AUTHENTICATIONS = ("header", "body", "tls_client_auth", *ASSERTION_METHODS)


def _client_parameters(request: TokenRequest) -> list[tuple[str, Any]]:
    """How the client authenticates in the body (RFC 6749 2.3.1, RFC 7523 2.2, RFC 8705 2)."""
    method = request.client_authentication
    if method == "body":
        return [("client_id", request.client_id), ("client_secret", request.client_secret)]
    if method == "tls_client_auth":
        if request.tls.client_cert_pem is None:
            raise ConfigurationError(
                "tls_client_auth needs a client certificate", reason="InvalidRequest"
            )
        return [("client_id", request.client_id)]
    if method in ASSERTION_METHODS:
        if request.client_assertion is None:
            raise ConfigurationError(f"{method} needs a client assertion", reason="InvalidRequest")
        return [
            ("client_id", request.client_id),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", request.client_assertion()),
        ]
    return []


def _body_parameters(request: TokenRequest) -> list[tuple[str, Any]]:
    params: list[tuple[str, Any]] = [("grant_type", "client_credentials")]
    params += _client_parameters(request)
    scope = request.scope_sent
    if scope is not None:
        params.append(("scope", scope))
    for name in ("audience", "resource"):
        value = getattr(request, name)
        if value:
            params.append((name, value))
    params += list(request.extra_parameters.items())
    return params


def build_request_parts(request: TokenRequest) -> tuple[dict[str, str], bytes]:
    """The exact headers and body of the token request."""
    if request.client_authentication not in CLIENT_AUTHENTICATIONS:
        raise ConfigurationError(
            f"unknown clientAuthentication {request.client_authentication!r}",
            reason="InvalidRequest",
        )
    headers = {
        "Accept": "application/json",
        "Content-Type": request.content_type,
        "User-Agent": USER_AGENT,
    }
    if request.client_authentication == "header":
        headers["Authorization"] = basic_authorization(request.client_id, request.client_secret)
    params = _body_parameters(request)
    if request.content_type == JSON:
        body = json.dumps(dict(params), ensure_ascii=False, separators=(",", ":"))
    elif request.content_type == FORM:
        if request.include_scope and request.scope_object is not None:
            raise ConfigurationError(
                "scopeObject needs contentType: application/json", reason="InvalidRequest"
            )
        body = urlencode(params)
    else:
        raise ConfigurationError(
            f"unsupported contentType {request.content_type!r}", reason="InvalidRequest"
        )
    return headers, body.encode("utf-8")


# --------------------------------------------------------------------------------------
# Parsing the response (pure)


def display_url(url: str) -> str:
    """The URL without query, fragment or userinfo, safe to show."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, decoded without any signature check; None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: Any) -> float | None:
    """expires_in as sent: an int, a float, or a numeric string; None if it is none of these."""
    if isinstance(value, bool):
        return None
    numeric_text = isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value)
    if not (isinstance(value, int | float) or numeric_text):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    """OAuth2 `error` and `error_description` of an error response, if it has them."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    error, description = data.get("error"), data.get("error_description")
    return (
        truncate(error, 64) if isinstance(error, str) and error else None,
        truncate(description, DESCRIPTION_LIMIT) if isinstance(description, str) else None,
    )


def _looks_like_html(headers: Mapping[str, str], body: bytes) -> bool:
    content_type = _header(headers, "Content-Type") or ""
    return "html" in content_type.lower() or body.lstrip()[:1] == b"<"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _status_hint(request: TokenRequest, status: int, oauth_error: str | None) -> str | None:
    """Advice for a refused request, where the likely cause is known."""
    hints = []
    json_body = request.content_type == JSON
    body_not_read = json_body and _json_not_understood(request, status, oauth_error)
    if oauth_error == "invalid_scope" and json_body and isinstance(request.scope_sent, str):
        hints.append("this endpoint may expect the scope as a JSON object: set scopeObject")
    elif body_not_read:
        hints.append(f"this endpoint may need {FORM} (set contentType: {FORM})")
    if not json_body and status == 415:
        hints.append(f"this endpoint may need {JSON} (set contentType: {JSON})")
    if status == 401 or oauth_error == "invalid_client":
        auth_hint = _auth_hint(request)
        # With the body format as the likely cause, only the Basic-encoding caveat adds to it.
        if not body_not_read or auth_hint == _BASIC_DECODING_HINT:
            hints.append(auth_hint)
    if status in (404, 405):
        hints.append("check tokenURL: it must be the token endpoint itself")
    return "; ".join(hints) or None


def _json_not_understood(request: TokenRequest, status: int, oauth_error: str | None) -> bool:
    """Whether a refusal looks like a server that did not read the JSON body: a bare
    400/401/415 (Cognito), or an error about parameters that were in fact sent."""
    if oauth_error is None:
        return status in (400, 401, 415)
    if oauth_error in ("invalid_request", "unsupported_grant_type"):
        return True
    return oauth_error == "invalid_client" and request.client_authentication == "body"


_BASIC_DECODING_HINT = (
    "the client id or secret contains characters that HTTP Basic credentials carry "
    "form-urlencoded (RFC 6749 2.3.1), and some servers don't decode them; "
    "try clientAuthentication: body"
)


def _auth_hint(request: TokenRequest) -> str:
    method = request.client_authentication
    if method in ("private_key_jwt", "client_secret_jwt"):
        return (
            f"check clientID and that the endpoint registered {method} with this "
            "client's key (keyID, certificate) and accepts the assertion's audience "
            "(clientAssertion.audience)"
        )
    if method == "workload_identity":
        return (
            "check that the IdP trusts the cluster's ServiceAccount issuer for this subject "
            "and workloadIdentity.audience"
        )
    if method == "tls_client_auth":
        return "check that the endpoint registered tls_client_auth with this client certificate"
    if request.client_authentication == "body":
        return (
            "check clientID and the client secret; the endpoint may expect "
            "clientAuthentication: header (HTTP Basic)"
        )
    if _BASIC_ENCODED_CHARS.search(request.client_id + request.client_secret):
        return _BASIC_DECODING_HINT
    return (
        "check clientID and the client secret; the endpoint may expect clientAuthentication: body"
    )


def _error_for_status(
    status: int, headers: Mapping[str, str], body: bytes, request: TokenRequest, now: datetime
) -> TokenError:
    if 300 <= status < 400:
        location = _header(headers, "Location")
        where = f" to {display_url(location)}" if location else ""
        return ConfigurationError(
            f"token endpoint answered HTTP {status} (redirect{where})",
            reason="Redirect",
            http_status=status,
            hint="redirects are not followed, since they would re-send the client secret "
            "elsewhere; point tokenURL at the final endpoint",
        )
    oauth_error, description = _error_fields(body)
    transient = status in (408, 429) or status >= 500 or oauth_error in _TRANSIENT_OAUTH_ERRORS
    cls: type[TokenError] = TransientError if transient else ConfigurationError
    return cls(
        f"token endpoint answered HTTP {status}",
        reason="OAuth2Error" if oauth_error else "HTTPStatus",
        http_status=status,
        oauth_error=oauth_error,
        oauth_error_description=description,
        hint=None if transient else _status_hint(request, status, oauth_error),
        retry_after=parse_retry_after(_header(headers, "Retry-After"), now) if transient else None,
    )


def _lifetime(
    data: Mapping[str, Any],
    access_token: str,
    request: TokenRequest,
    issued_at: datetime,
    status: int,
) -> tuple[datetime, str]:
    """Expiry and where it came from: expires_in, a JWT's exp claim, or the default."""
    raw = data.get("expires_in")
    if raw is not None:
        seconds = _number(raw)
        if seconds is None or seconds <= 0:
            what = "not a number" if seconds is None else "not positive"
            raise ProtocolError(
                f"token response has an expires_in that is {what}",
                reason="InvalidExpiresIn",
                http_status=status,
                hint="the endpoint's tokens cannot be scheduled for refresh",
            )
        return issued_at + timedelta(seconds=seconds), "expires_in"
    claims = jwt_claims(access_token)
    exp = _number(claims.get("exp")) if claims else None
    if exp is not None:
        expires_at = datetime.fromtimestamp(exp, UTC)
        if expires_at <= issued_at:
            raise ProtocolError(
                "token response has no expires_in and the JWT's exp claim is not in the future",
                reason="InvalidExpiresIn",
                http_status=status,
                hint="check the clocks of the token endpoint and of this host",
            )
        return expires_at, "jwt"
    return issued_at + timedelta(seconds=request.default_lifetime_seconds), "default"


def _granted_scope(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or None
    return None


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request: TokenRequest,
    issued_at: datetime,
) -> Token:
    """The token of a response, or the classified TokenError it amounts to."""
    if not 200 <= status < 300:
        raise _error_for_status(status, headers, body, request, issued_at)
    if len(body) > MAX_BODY_BYTES:
        raise _too_large(status)
    try:
        data = json.loads(body)
    except ValueError:
        html = _looks_like_html(headers, body)
        what = "HTML" if html else "a body that is not JSON"
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with {what}",
            reason="NotJSON",
            http_status=status,
            hint="check tokenURL: it may point at a login page or a proxy"
            if html
            else "check tokenURL",
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with JSON that is not an object",
            reason="NotJSON",
            http_status=status,
        )
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        if isinstance(data.get("error"), str):  # an error reported with a 2xx status
            raise _oauth_error_in_2xx(status, headers, body, request, issued_at)
        keys = ", ".join(sorted(str(k) for k in data)[:10]) or "none"
        raise ProtocolError(
            f"token endpoint answered HTTP {status} without an access_token (keys: {keys})",
            reason="MissingAccessToken",
            http_status=status,
            hint="check tokenURL and grant type support",
        )
    token_type = data.get("token_type")
    expires_at, source = _lifetime(data, access_token, request, issued_at, status)
    return Token(
        access_token=access_token,
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        issued_at=issued_at,
        expires_at=expires_at,
        scope=_granted_scope(data.get("scope")),
        lifetime_source=source,
        http_status=status,
    )


def _oauth_error_in_2xx(
    status: int, headers: Mapping[str, str], body: bytes, request: TokenRequest, now: datetime
) -> TokenError:
    """An OAuth2 error sent with a 2xx status, classified as if it came with a 400."""
    error = _error_for_status(400, headers, body, request, now)
    error.http_status = status
    error.message = f"token endpoint answered HTTP {status} with an OAuth2 error"
    return error


def _too_large(status: int | None) -> ProtocolError:
    return ProtocolError(
        f"token response is larger than {MAX_BODY_BYTES // 1024} KiB",
        reason="ResponseTooLarge",
        http_status=status,
        hint="check tokenURL",
    )


# --------------------------------------------------------------------------------------
# TLS


def ssl_context_for(tls: TLSSettings) -> ssl.SSLContext:
    """The SSLContext for the token endpoint: caRef replaces the default trust store."""
    try:
        if tls.ca_pem is not None:
            context = ssl.create_default_context(cadata=tls.ca_pem.decode("ascii"))
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        raise ConfigurationError(
            f"the CA bundle from {tls.ca_description} is not valid PEM",
            reason="InvalidCABundle",
            hint="tls.caRef must name PEM certificates (-----BEGIN CERTIFICATE-----)",
        ) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert_pem is not None or tls.client_key_pem is not None:
        _load_client_certificate(context, tls)
    return context


def _load_client_certificate(context: ssl.SSLContext, tls: TLSSettings) -> None:
    # The ssl module loads certificates only from files: write a private file (mkstemp
    # creates it with mode 0600) and remove it at once.
    if not tls.client_cert_pem or not tls.client_key_pem:
        raise ConfigurationError(
            "mutual TLS needs both a client certificate and its key",
            reason="InvalidClientCertificate",
            hint="tls.clientCertificateRef must name a kubernetes.io/tls Secret",
        )
    fd, path = tempfile.mkstemp(
        prefix="tokensync-", suffix=".pem", dir=os.environ.get("TOKENSYNC_TMPDIR") or None
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(tls.client_cert_pem.rstrip(b"\n") + b"\n" + tls.client_key_pem)
        context.load_cert_chain(path)
    except (ssl.SSLError, ValueError):
        raise ConfigurationError(
            "the client certificate or key is not valid PEM, or they do not match",
            reason="InvalidClientCertificate",
            hint="tls.clientCertificateRef must name a kubernetes.io/tls Secret with "
            "tls.crt and tls.key",
        ) from None
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------------------
# Transport: deadline, private-network guard, adapter


class _PrivateNetworkDenied(Exception):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class _DeadlineExceeded(Exception):
    pass


def is_denied_address(address: str) -> bool:
    """Loopback, link-local, unspecified and cloud metadata addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip in _METADATA_ADDRESSES


class _Deadline:
    """The whole-request deadline. At expiry a watchdog shuts down every connection
    socket, which unblocks any read in progress (a per-read timeout cannot stop a server
    that sends one byte at a time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._fired or self.remaining() <= 0

    def check(self) -> None:
        if self.expired:
            raise _DeadlineExceeded()

    def watch(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            fired = self._fired
        if fired:
            self._shutdown(connection)

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            connections = list(self._connections)
        for connection in connections:
            self._shutdown(connection)

    @staticmethod
    def _shutdown(connection: Any) -> None:
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _pool_classes(deadline: _Deadline, deny_private_networks: bool) -> dict[str, type]:
    """Connection pools whose connections obey the deadline and, if asked, the guard."""

    class Watched:
        def _new_conn(self) -> socket.socket:
            deadline.check()
            sock = super()._new_conn()  # type: ignore[misc]
            if deny_private_networks:
                # Check the address actually connected, not a separate DNS answer.
                address = sock.getpeername()[0]
                if is_denied_address(address):
                    sock.close()
                    raise _PrivateNetworkDenied(address)
            deadline.watch(self)
            return sock

    class Connection(Watched, urllib3.connection.HTTPConnection):
        pass

    class TLSConnection(Watched, urllib3.connection.HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


class _TokenAdapter(HTTPAdapter):
    """Mounts our SSLContext and connection classes. Direct connections get the private
    network guard; proxied ones only the deadline (the proxy is the operator's own)."""

    def __init__(
        self, ssl_context: ssl.SSLContext | None, deadline: _Deadline, deny_private: bool
    ) -> None:
        self._ssl_context = ssl_context
        self._direct_pools = _pool_classes(deadline, deny_private)
        self._proxied_pools = _pool_classes(deadline, False)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._direct_pools

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._proxied_pools
        return manager

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        # Only our context decides trust: no ca_certs from requests (certifi or
        # REQUESTS_CA_BUNDLE) may be added to it.
        return host_params, {"ssl_context": self._ssl_context} if self._ssl_context else {}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        pass  # see build_connection_pool_key_attributes


def _environment_proxies(url: str) -> dict[str, str]:
    """HTTPS_PROXY / NO_PROXY of this process; never .netrc or REQUESTS_CA_BUNDLE."""
    return dict(requests.utils.get_environ_proxies(url))


@dataclass(frozen=True)
class _RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _read_body(response: requests.Response, deadline: _Deadline) -> bytes:
    length = _number(_header(response.headers, "Content-Length"))
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large(response.status_code)
    chunks, total = [], 0
    for chunk in response.iter_content(16 * 1024):
        deadline.check()
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise _too_large(response.status_code)
        chunks.append(chunk)
    deadline.check()
    return b"".join(chunks)


def _exchange(
    request: TokenRequest, headers: dict[str, str], body: bytes, deny_private_networks: bool
) -> _RawResponse:
    """Send the request and read the response, all within the deadline."""
    https = urlsplit(request.token_url).scheme.lower() == "https"
    context = ssl_context_for(request.tls) if https else None
    prepared = requests.Request("POST", request.token_url, headers=headers, data=body).prepare()
    with _Deadline(request.timeout_seconds) as deadline, requests.Session() as session:
        session.trust_env = False  # no .netrc, no REQUESTS_CA_BUNDLE
        adapter = _TokenAdapter(context, deadline, deny_private_networks)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        remaining = deadline.remaining()
        try:
            response = session.send(
                prepared,
                stream=True,
                allow_redirects=False,
                timeout=(remaining, remaining),
                proxies=_environment_proxies(request.token_url),
            )
        except Exception:
            if deadline.expired:
                raise _DeadlineExceeded() from None
            raise
        with response:
            if 300 <= response.status_code < 400:
                return _RawResponse(response.status_code, dict(response.headers), b"")
            try:
                content = _read_body(response, deadline)
            except ProtocolError:
                if 200 <= response.status_code < 300:
                    raise
                content = b""  # an oversized error page: the status says enough
            except Exception:
                if deadline.expired:
                    raise _DeadlineExceeded() from None
                raise
            return _RawResponse(response.status_code, dict(response.headers), content)


# --------------------------------------------------------------------------------------
# Classifying transport failures


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (causes, contexts, urllib3 reasons)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in linked if isinstance(e, BaseException)]


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    return next((e for e in _causes(exc) if isinstance(e, kind)), None)


def _tls_error(exc: BaseException, request: TokenRequest) -> TokenError | None:
    verify = _find(exc, ssl.SSLCertVerificationError)
    url = display_url(request.token_url)
    if verify is not None:
        detail = truncate(str(getattr(verify, "verify_message", "") or "certificate rejected"))
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            hint = "the certificate does not name the host in tokenURL"
        else:
            hint = (
                f"the server certificate is not trusted by {request.tls.ca_description}; "
                "set tls.caRef to the CA bundle that issued it"
            )
        return ConfigurationError(
            f"TLS verification of {url} failed: {detail}",
            reason="TLSVerificationFailed",
            hint=hint,
        )
    tls = _find(exc, ssl.SSLError)
    if tls is None and _find(exc, requests.exceptions.SSLError) is None:
        return None
    reason = str(getattr(tls, "reason", "") or "") if tls is not None else ""
    return ConfigurationError(
        f"TLS handshake with {url} failed" + (f": {reason}" if reason else ""),
        reason="TLSHandshakeFailed",
        hint=_handshake_hint(reason, request.tls),
    )


def _handshake_hint(reason: str, tls: TLSSettings) -> str:
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
        if tls.client_cert_pem is None:
            return "the server requires a client certificate: set tls.clientCertificateRef"
        return "the server did not accept the client certificate of tls.clientCertificateRef"
    if "WRONG_VERSION_NUMBER" in reason:
        return "the endpoint does not speak TLS on this port: check the scheme and port"
    if tls.client_cert_pem is None:
        return (
            "check that tokenURL speaks TLS; if the server requires a client certificate, "
            "set tls.clientCertificateRef"
        )
    return "check that tokenURL speaks TLS and that the server accepts the client certificate"


def _transport_error(exc: BaseException, request: TokenRequest) -> TokenError:
    """A TokenError for an exception raised while talking to the endpoint; the exception's
    own text is never used (it may hold URLs or bodies)."""
    url = display_url(request.token_url)
    denied = _find(exc, _PrivateNetworkDenied)
    if denied is not None:
        return ConfigurationError(
            f"refused to connect to {url}: the connection reached {denied.address}, a "
            "loopback, link-local or metadata address",
            reason="PrivateNetworkDenied",
            hint="the operator's --deny-private-networks guard refuses such addresses",
        )
    if _find(exc, _DeadlineExceeded) is None:
        # Checked before timeouts: urllib3's NewConnectionError subclasses its timeout error.
        tls = _tls_error(exc, request)
        if tls is not None:
            return tls
        if _find(exc, _INVALID_URL_ERRORS) is not None:
            return ConfigurationError(f"tokenURL {url} is not a valid URL", reason="InvalidURL")
        if _find(exc, (socket.gaierror, urllib3.exceptions.NameResolutionError)) is not None:
            return TransientError(
                f"could not resolve the host of {url}",
                reason="ConnectionFailed",
                hint="check the host name in tokenURL and DNS",
            )
        refused = _find(exc, ConnectionError)  # the builtin: refused, reset, aborted
        if refused is not None or _find(exc, urllib3.exceptions.NewConnectionError):
            detail = f": {refused.strerror.lower()}" if getattr(refused, "strerror", None) else ""
            return TransientError(f"could not connect to {url}{detail}", reason="ConnectionFailed")
    if _find(exc, _TIMEOUT_ERRORS) is not None:
        return TransientError(
            f"no complete response from {url} within {request.timeout_seconds:g}s",
            reason="Timeout",
            hint="raise timeoutSeconds if the endpoint is slow",
        )
    return TransientError(f"connection to {url} failed", reason="ConnectionFailed")


_INVALID_URL_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    urllib3.exceptions.LocationParseError,
)
_TIMEOUT_ERRORS = (
    _DeadlineExceeded,
    requests.exceptions.Timeout,
    TimeoutError,
    urllib3.exceptions.TimeoutError,
)


# --------------------------------------------------------------------------------------
# Entry point


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _sanitize(
    error: TokenError, request: TokenRequest, body: bytes, sent: bytes = b""
) -> TokenError:
    """The error with every secret spelling removed; text the endpoint sent loses echoes
    of the client id as well (and of the client assertion that was sent)."""
    secrets = [request.client_secret, *_token_in(body), *_assertion_in(sent)]

    def clean(text: str) -> str:
        return redact(text, secrets, client_id=request.client_id)

    def clean_remote(text: str) -> str:
        return truncate(redact(clean(text), [request.client_id]), DESCRIPTION_LIMIT)

    return error.sanitized(clean, clean_remote)


def _assertion_in(sent: bytes) -> list[str]:
    """The client assertion in a request body (form or JSON), if any."""
    text = sent.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("client_assertion"), str):
            return [data["client_assertion"]]
    return [v for k, v in parse_qsl(text) if k == "client_assertion"]


def _token_in(body: bytes) -> list[str]:
    """The access token in a response body, if any, so it can be redacted too."""
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("access_token"), str):
            return [data["access_token"]]
    return []


_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,
    _DeadlineExceeded,
    _PrivateNetworkDenied,
)


def fetch_token(
    request: TokenRequest,
    *,
    deny_private_networks: bool = False,
    now: Callable[[], datetime] = _utc_now,
) -> Token:
    """Make one token request. Raises TokenError (Transient/Configuration/Protocol)."""
    body_seen = sent = b""
    try:
        headers, body = build_request_parts(request)
        sent = body
        issued_at = now()  # before sending: the token can only be younger than this
        try:
            raw = _exchange(request, headers, body, deny_private_networks)
        except TokenError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, request) from None
        body_seen = raw.body
        return parse_token_response(raw.status, raw.headers, raw.body, request, issued_at)
    except TokenError as error:
        raise _sanitize(error, request, body_seen, sent) from None
