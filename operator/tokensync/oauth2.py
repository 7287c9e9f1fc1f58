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
import http.client
import json
import math
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import urllib3

from tokensync import __version__, transport
from tokensync.redact import redact, redact_truncate, truncate

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_BODY_BYTES = 1024 * 1024
MAX_ACCESS_TOKEN_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # arrays and objects; deeper bodies are refused before json.loads
MAX_LIFETIME_SECONDS = 365 * 24 * 3600  # longer lifetimes are capped (Token.warnings)
# Shorter lifetimes are raised to this: Secrets and status hold times at second
# precision, where a sub-second lifetime would be an already expired token.
MIN_LIFETIME_SECONDS = 1.0
SHORT_LIFETIME_SECONDS = 30  # below this, Token.warnings says a mounted Secret can't keep up
MAX_TOKEN_TYPE_LENGTH = 128  # "Bearer", "DPoP", "N_A": a word, not a payload
DESCRIPTION_LIMIT = 200
ERROR_CODE_LIMIT = 64
# Remote text is cut to this before redaction (which then runs in bounded time); the final
# cut to DESCRIPTION_LIMIT comes after redaction.
_REMOTE_TEXT_PRECUT = 16 * 1024
USER_AGENT = f"tokensync/{__version__}"

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
    # "workload_identity" | "none"
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
    # Assertion methods only: also send `client_id` (optional there, RFC 7521 4.2).
    client_id_in_request: bool = True
    # or JWT_BEARER_GRANT, SAML2_BEARER_GRANT, TOKEN_EXCHANGE_GRANT
    grant_type: str = "client_credentials"
    # JWT_BEARER_GRANT, SAML2_BEARER_GRANT: returns the grant's `assertion` (RFC 7523 2.1,
    # RFC 7522 2.1) for every request.
    grant_assertion: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    # TOKEN_EXCHANGE_GRANT (RFC 8693 2.1): returns the `subject_token` for every request.
    subject_token: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    subject_token_type: str | None = None
    requested_token_type: str | None = None

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
    # Lifetimes capped at a year or under 30 s, for status.warnings; never token data.
    warnings: tuple[str, ...] = ()

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
        self, clean: Callable[[str], str], clean_remote: Callable[[str, int], str]
    ) -> TokenError:
        """A copy with `clean` applied to our own text and the stricter `clean_remote`
        (text, length limit) to the text the endpoint sent."""
        error, description = self.oauth_error, self.oauth_error_description
        return type(self)(
            clean(self.message),
            reason=self.reason,
            http_status=self.http_status,
            oauth_error=None if error is None else clean_remote(error, ERROR_CODE_LIMIT),
            oauth_error_description=None
            if description is None
            else clean_remote(description, DESCRIPTION_LIMIT),
            hint=None if self.hint is None else clean(self.hint),
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
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
SAML2_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:saml2-bearer"
ASSERTION_METHODS = ("private_key_jwt", "client_secret_jwt", "workload_identity")
# none: a public client, identified by client_id alone (RFC 6749 3.2.1, RFC 8414 "none").
CLIENT_AUTHENTICATIONS = ("header", "body", "tls_client_auth", "none", *ASSERTION_METHODS)


def _client_parameters(request: TokenRequest) -> list[tuple[str, Any]]:
    """How the client authenticates in the body (RFC 6749 2.3.1, RFC 7523 2.2, RFC 8705 2)."""
    method = request.client_authentication
    if method == "body":
        return [("client_id", request.client_id), ("client_secret", request.client_secret)]
    if method == "none":
        return [("client_id", request.client_id)]
    if method == "tls_client_auth":
        if request.tls.client_cert_pem is None:
            raise ConfigurationError(
                "tls_client_auth needs a client certificate", reason="InvalidRequest"
            )
        return [("client_id", request.client_id)]
    if method in ASSERTION_METHODS:
        if request.client_assertion is None:
            raise ConfigurationError(f"{method} needs a client assertion", reason="InvalidRequest")
        params = [("client_id", request.client_id)] if request.client_id_in_request else []
        return [
            *params,
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", request.client_assertion()),
        ]
    return []


def _grant_parameters(request: TokenRequest) -> list[tuple[str, Any]]:
    """grant_type and what the grant itself carries (RFC 6749 4.4, RFC 7523 2.1,
    RFC 8693 2.1; audience, resource and scope are sent for every grant)."""
    if request.grant_type == "client_credentials":
        return [("grant_type", "client_credentials")]
    if request.grant_type in (JWT_BEARER_GRANT, SAML2_BEARER_GRANT):
        if request.grant_assertion is None:
            raise ConfigurationError(
                f"the {request.grant_type} grant needs an assertion", reason="InvalidRequest"
            )
        return [("grant_type", request.grant_type), ("assertion", request.grant_assertion())]
    if request.grant_type == TOKEN_EXCHANGE_GRANT:
        if request.subject_token is None or not request.subject_token_type:
            raise ConfigurationError(
                "the token_exchange grant needs a subject token and its type",
                reason="InvalidRequest",
            )
        params: list[tuple[str, Any]] = [
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", request.subject_token()),
            ("subject_token_type", request.subject_token_type),
        ]
        if request.requested_token_type:
            params.append(("requested_token_type", request.requested_token_type))
        return params
    raise ConfigurationError(
        f"unsupported grant type {request.grant_type!r}", reason="InvalidRequest"
    )


def _body_parameters(request: TokenRequest) -> list[tuple[str, Any]]:
    params = _grant_parameters(request)
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


class JSONRefused(ValueError):
    """Remote JSON that is not parsed: too deeply nested, or a non-finite number."""


# A JSON string, or an unterminated one to the end: the optional closing quote means a
# match never fails and backtracks, which keeps the scan linear (with a required quote,
# `"\"\"\"...` unterminated took quadratic time: 50 s for 80 KB).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects nest deeper than `limit` (brackets inside strings don't
    count). A cheap scan, run before json.loads so that no RecursionError can occur."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise JSONRefused("number out of range")
    return number


def _no_constant(name: str) -> None:
    raise JSONRefused(f"{name} is not JSON")


def load_json(data: bytes | str) -> Any:
    """json.loads for remote data: at most MAX_JSON_DEPTH levels, finite numbers only
    (no NaN, Infinity or 1e400), integers of at most 4300 digits (Python's own limit).
    Raises ValueError (JSONRefused for the first two)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth_exceeds(raw):
        raise JSONRefused(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, decoded without any signature check; None if not a JWT (or
    one whose payload is not plain, bounded JSON)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = load_json(payload)
    except (binascii.Error, ValueError, RecursionError):
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
    """OAuth2 `error` and `error_description` of an error response, if it has them. Not
    cut to their final length yet: that happens after redaction (_sanitize)."""
    try:
        data = load_json(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error, description = data.get("error"), data.get("error_description")
    return (
        error[:_REMOTE_TEXT_PRECUT] if isinstance(error, str) and error else None,
        description[:_REMOTE_TEXT_PRECUT] if isinstance(description, str) else None,
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
    if body_not_read:
        # First, whatever the OAuth2 error: the usual cause of a 400/401 to a JSON body is
        # an endpoint that reads only form bodies (AWS Cognito: 401 invalid_client).
        hints.append(
            f"set contentType: {FORM}: most token endpoints (AWS Cognito, Entra ID, Okta, "
            "Keycloak) read only form bodies and refuse a JSON body with 400 or 401"
        )
    if oauth_error == "invalid_scope" and json_body and isinstance(request.scope_sent, str):
        hints.append(
            "if the endpoint does read JSON, it may expect the scope as an object: set scopeObject"
        )
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
    """Whether a refusal of a JSON body may come from a server that did not read it: any
    400 or 401 (docs/concepts/status-and-conditions.md), a 415, or an error about parameters that
    were in fact sent."""
    if status in (400, 401, 415):
        return True
    if oauth_error in ("invalid_request", "unsupported_grant_type"):
        return True
    return oauth_error == "invalid_client" and request.client_authentication == "body"


_BASIC_DECODING_HINT = (
    "the client id or secret contains characters that HTTP Basic credentials carry "
    "form-urlencoded (RFC 6749 2.3.1), and some servers don't decode them; "
    "try clientAuthentication: body"
)


_CLIENT_ID_HINT = (
    "; if the endpoint says client_id does not match the assertion's sub, set "
    "clientIDInRequest: false (Keycloak 26.5 federated clients)"
)


def _auth_hint(request: TokenRequest) -> str:
    method = request.client_authentication
    client_id_hint = _CLIENT_ID_HINT if request.client_id_in_request else ""
    if method in ("private_key_jwt", "client_secret_jwt"):
        return (
            f"check clientID and that the endpoint registered {method} with this "
            "client's key (keyID, certificate) and accepts the assertion's audience "
            "(clientAssertion.audience)"
        )
    if method == "workload_identity":
        return (
            "check that the IdP trusts the cluster's ServiceAccount issuer for this subject "
            "and workloadIdentity.audience" + client_id_hint
        )
    if method == "tls_client_auth":
        return "check that the endpoint registered tls_client_auth with this client certificate"
    if method == "none":
        return (
            "check clientID; the endpoint may want the client to authenticate "
            "(clientAuthentication header or body with a clientSecretRef)"
        )
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


def _expires_in_seconds(value: Any) -> float | None:
    """expires_in (or exp) as sent, an int, a float, or a numeric string; None if it is
    none of these. Integers too large for a float come back as infinity (capped later)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 4096 and _NUMERIC_TEXT.fullmatch(value):
        return float(value)  # digits only: float() gives inf, never an error, when huge
    return None


_NUMERIC_TEXT = re.compile(r"\s*-?\d+(\.\d+)?\s*")


def bounded_lifetime(seconds: float) -> tuple[float, tuple[str, ...]]:
    """A positive lifetime as the operator uses it: at least MIN_LIFETIME_SECONDS (a
    Secret's second-precision times would make a sub-second token expired at once), at
    most a year; and the warnings that go with it."""
    if seconds > MAX_LIFETIME_SECONDS:
        days = MAX_LIFETIME_SECONDS // 86400
        return float(MAX_LIFETIME_SECONDS), (
            f"token lifetime capped at one year ({days} days); the endpoint sent a longer one",
        )
    if seconds < SHORT_LIFETIME_SECONDS:
        lifetime = max(seconds, MIN_LIFETIME_SECONDS)
        return lifetime, (
            f"the token lives {lifetime:g} s: a mounted Secret cannot keep a token living "
            f"under {SHORT_LIFETIME_SECONDS} s fresh (the kubelet updates it about once a minute)",
        )
    return seconds, ()


def _lifetime(
    data: Mapping[str, Any],
    access_token: str,
    request: TokenRequest,
    issued_at: datetime,
    status: int,
) -> tuple[datetime, str, tuple[str, ...]]:
    """Expiry, where it came from (expires_in, a JWT's exp claim, or the default), and
    warnings about its length."""
    raw = data.get("expires_in")
    if raw is not None:
        seconds = _expires_in_seconds(raw)
        if seconds is None or seconds <= 0:
            what = "not a finite number" if seconds is None else "not positive"
            raise ProtocolError(
                f"token response has an expires_in that is {what}",
                reason="InvalidExpiresIn",
                http_status=status,
                hint="the endpoint's tokens cannot be scheduled for refresh",
            )
        source = "expires_in"
    else:
        claims = jwt_claims(access_token)
        exp = _expires_in_seconds(claims.get("exp")) if claims else None
        if exp is not None:
            seconds = exp - issued_at.timestamp()
            if seconds <= 0:
                raise ProtocolError(
                    "token response has no expires_in and the JWT's exp claim is not in the future",
                    reason="InvalidExpiresIn",
                    http_status=status,
                    hint="check the clocks of the token endpoint and of this host",
                )
            source = "jwt"
        else:
            seconds, source = request.default_lifetime_seconds, "default"
    lifetime, warnings = bounded_lifetime(seconds)
    return issued_at + timedelta(seconds=lifetime), source, warnings


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
    """The token of a response, or the classified TokenError it amounts to. Whatever the
    body holds, nothing else is raised: any other exception while reading it becomes a
    ProtocolError (backoff, a status message), never an unhandled error in the worker."""
    try:
        return _parse_token_response(status, headers, body, request, issued_at)
    except TokenError as error:
        raise _sanitize(error, request, body) from None
    except Exception as exc:  # a hostile body must never escape unclassified
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with a response that could not be read "
            f"({type(exc).__name__})",
            reason="UnreadableResponse",
            http_status=status,
            hint="check tokenURL",
        ) from None


def _parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request: TokenRequest,
    issued_at: datetime,
) -> Token:
    if not 200 <= status < 300:
        raise _error_for_status(status, headers, body, request, issued_at)
    if len(body) > MAX_BODY_BYTES:
        raise _too_large(status)
    try:
        data = load_json(body)
    except JSONRefused as refused:
        deep = "nested" in str(refused)
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with JSON "
            + (
                f"nested more than {MAX_JSON_DEPTH} levels deep"
                if deep
                else "holding NaN, Infinity or a number out of range"
            ),
            reason="NestedTooDeeply" if deep else "NotJSON",
            http_status=status,
            hint="check tokenURL",
        ) from None
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
        # Key names are not shown: they are the endpoint's text, and may echo anything.
        raise ProtocolError(
            f"token endpoint answered HTTP {status} without an access_token "
            f"(a JSON object with {len(data)} other keys)",
            reason="MissingAccessToken",
            http_status=status,
            hint="check tokenURL and grant type support",
        )
    if len(access_token) > MAX_ACCESS_TOKEN_BYTES or (
        len(access_token.encode("utf-8", "surrogatepass")) > MAX_ACCESS_TOKEN_BYTES
    ):
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with an access_token larger than "
            f"{MAX_ACCESS_TOKEN_BYTES // 1024} KiB",
            reason="AccessTokenTooLarge",
            http_status=status,
            hint="tokensync keeps tokens of at most 64 KiB; check tokenURL",
        )
    token_type = data.get("token_type")
    token_type = token_type if isinstance(token_type, str) and token_type else "Bearer"
    scope = _granted_scope(data.get("scope"))
    _check_secret_text(status, access_token=access_token, token_type=token_type, scope=scope)
    expires_at, source, warnings = _lifetime(data, access_token, request, issued_at, status)
    return Token(
        access_token=access_token,
        token_type=token_type,
        issued_at=issued_at,
        expires_at=expires_at,
        scope=scope,
        lifetime_source=source,
        http_status=status,
        warnings=warnings,
    )


def _check_secret_text(status: int, **fields: str | None) -> None:
    """What goes into the managed Secret must be UTF-8 text (JSON escapes can produce lone
    surrogates, which cannot be written), and token_type a short word."""
    for name, text in fields.items():
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(
                f"token endpoint answered HTTP {status}, but its {name} is not valid Unicode text",
                reason="InvalidTokenText",
                http_status=status,
            ) from None
    token_type = fields.get("token_type") or ""
    if len(token_type) > MAX_TOKEN_TYPE_LENGTH:
        raise ProtocolError(
            f"token endpoint answered HTTP {status} with a token_type longer than "
            f"{MAX_TOKEN_TYPE_LENGTH} characters",
            reason="InvalidTokenType",
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
    """A new SSLContext for the token endpoint (transport.build_ssl_context); the
    transport itself reuses one per trust configuration."""
    try:
        return transport.build_ssl_context(tls)
    except transport.TLSMaterialError as error:
        raise _tls_material_error(error) from None


def _tls_material_error(error: transport.TLSMaterialError) -> ConfigurationError:
    return ConfigurationError(error.message, reason=error.reason, hint=error.hint)


# --------------------------------------------------------------------------------------
# Sending (transport.py does the connection work)


is_denied_address = transport.is_denied_address


@dataclass(frozen=True)
class _RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _exchange(
    request: TokenRequest,
    headers: dict[str, str],
    body: bytes,
    sender: transport.Transport,
) -> _RawResponse:
    """Send the request and read the response, all within the deadline."""
    https = request.token_url.lower().startswith("https:")
    raw = sender.post(
        request.token_url,
        headers,
        body,
        tls=request.tls if https else None,
        timeout=request.timeout_seconds,
        max_body_bytes=MAX_BODY_BYTES,
    )
    if raw.oversized:
        if 200 <= raw.status < 300:
            raise _too_large(raw.status)
        return _RawResponse(raw.status, raw.headers, b"")  # an oversized error page
    return _RawResponse(raw.status, raw.headers, raw.body)


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
    if tls is None and _find(exc, urllib3.exceptions.SSLError) is None:
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
    denied = _find(exc, transport.PrivateNetworkDenied)
    if denied is not None:
        return ConfigurationError(
            f"refused to connect to {url}: its host resolves to {denied.address}, a "
            "loopback, link-local, metadata or denied address",
            reason="PrivateNetworkDenied",
            hint="the operator's --deny-private-networks guard and --deny-cidrs refuse "
            "such addresses",
        )
    material = _find(exc, transport.TLSMaterialError)
    if material is not None:
        return _tls_material_error(material)
    if _find(exc, transport.URLProblem) is not None:
        return ConfigurationError(f"tokenURL {url} is not a valid URL", reason="InvalidURL")
    if _find(exc, transport.DeadlineExceeded) is None:
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
    transport.URLProblem,
    urllib3.exceptions.LocationParseError,
    urllib3.exceptions.LocationValueError,
)
_TIMEOUT_ERRORS = (
    transport.DeadlineExceeded,
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
    of the client id as well (and of the client assertion that was sent), and is cut to
    length only after that (a cut through an echo would leave a fragment that no longer
    matches)."""
    secrets = [request.client_secret, *_token_in(body), *_assertion_in(sent)]

    def clean(text: str) -> str:
        return redact(text, secrets, client_id=request.client_id)

    def clean_remote(text: str, limit: int) -> str:
        return redact_truncate(
            text, [*secrets, request.client_id], limit, client_id=request.client_id
        )

    return error.sanitized(clean, clean_remote)


_ASSERTION_PARAMETERS = ("client_assertion", "assertion", "subject_token")


def _assertion_in(sent: bytes) -> list[str]:
    """The client assertion, the grant's assertion and the subject token in a request
    body (form or JSON): an endpoint's echo of any of them is removed."""
    text = sent.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            return [data[k] for k in _ASSERTION_PARAMETERS if isinstance(data.get(k), str)]
    return [v for k, v in parse_qsl(text) if k in _ASSERTION_PARAMETERS]


def _token_in(body: bytes) -> list[str]:
    """The access token in a response body, if any, so it can be redacted too."""
    try:
        data = load_json(body)
    except Exception:  # whatever the body, the error it explains goes on
        return []
    if isinstance(data, dict) and isinstance(data.get("access_token"), str):
        return [data["access_token"]]
    return []


_TRANSPORT_ERRORS = (
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
    transport.PrivateNetworkDenied,
)


def fetch_token(
    request: TokenRequest,
    *,
    deny_private_networks: bool = False,
    deny_cidrs: tuple[transport.Network, ...] = (),
    now: Callable[[], datetime] = _utc_now,
    sender: transport.Transport | None = None,
) -> Token:
    """Make one token request. Raises TokenError (Transient/Configuration/Protocol).

    Connections are pooled per guard configuration (`deny_private_networks`,
    `deny_cidrs`) unless a `sender` is given."""
    body_seen = sent = b""
    if sender is None:
        guard = transport.NetworkGuard(deny_private_networks, tuple(deny_cidrs))
        sender = transport.transport_for(guard)
    try:
        headers, body = build_request_parts(request)
        sent = body
        issued_at = now()  # before sending: the token can only be younger than this
        try:
            raw = _exchange(request, headers, body, sender)
        except TokenError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, request) from None
        body_seen = raw.body
        return parse_token_response(raw.status, raw.headers, raw.body, request, issued_at)
    except TokenError as error:
        raise _sanitize(error, request, body_seen, sent) from None
