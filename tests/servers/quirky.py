"""Small token servers reproducing real endpoints' quirks and faults (stdlib only).

Every server listens on 127.0.0.1 on a free port, serves from a background thread, records
every request it receives and every token it issues, and can be switched at runtime to
answer with a fault (`server.fail("500")`, `server.fail("429", retry_after=3)`,
`server.heal()`).

- `TokenServer`: a standard endpoint; accepts HTTP Basic (RFC 6749 2.3.1 decoding) or
  body credentials, form or JSON bodies.
- `CognitoServer`: form body with HTTP Basic only; a JSON body gets a bare 401 (or, with
  `json_answer="invalid_client"`, `401 {"error": "invalid_client"}` as Cognito sends today).
- `SAPLearningServer`: JSON body only (415 otherwise), HTTP Basic only, scope must be a
  JSON object naming userId, companyId, userType and resourceType.

HTTPS: pass `tls=ServerTLS(...)` (see `ServerTLS.for_ca`), optionally requiring a client
certificate (mutual TLS).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

FAULTS = (
    "500",  # HTTP 500 with an OAuth2 server_error body
    "503",  # HTTP 503 with an HTML body
    "429",  # HTTP 429 with Retry-After: retry_after (seconds, or an HTTP-date string)
    "drip",  # a valid response whose body arrives one byte every `interval` seconds
    "redirect",  # 302 to `location`
    "html",  # 200 with an HTML login page
    "huge",  # 200 with a 2 MiB JSON body (`content_length=False`: close-delimited)
    "no_access_token",  # 200 JSON without access_token
    "expires_in_string",  # 200 with expires_in as a numeric string
    "expires_in_zero",  # 200 with expires_in 0
    "expires_in_garbage",  # 200 with expires_in "soon"
    "jwt_no_expires_in",  # 200 with a JWT access token (exp = now + lifetime), no expires_in
    "echo_secret",  # 400 whose error_description echoes the secret, Basic header and body
    "error_in_200",  # 200 with an OAuth2 error and no token
    "raw",  # `status` with `body` (bytes) as `content_type`: hostile or malformed answers
    "echo_spelling",  # 400 echoing the client secret spelled by `spell` after `pad` chars
)


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class Issued:
    """One issued token; the token itself is kept only as a hash."""

    server: str
    client_id: str | None
    token_sha256: str
    issued_at: float
    expires_at: float | None
    expires_in: float | None
    scope: str | None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip_interval: float | None = None  # seconds between single body bytes
    content_length: bool = True


@dataclass(frozen=True)
class ServerTLS:
    """Server side TLS: a certificate chain and, for mutual TLS, the CA of client certs."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None

    @classmethod
    def for_ca(cls, ca: Any, *, client_ca: Any = None, hosts: Iterable[str] = ()) -> ServerTLS:
        """A leaf certificate for 127.0.0.1/localhost issued by a `trustme.CA`."""
        leaf = ca.issue_cert("127.0.0.1", "localhost", *hosts)
        return cls(
            cert_chain_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            client_ca_pem=client_ca.cert_pem.bytes() if client_ca is not None else None,
        )

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # load_cert_chain reads files only; test-only material, so a temp dir is fine.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_bytes(self.cert_chain_pem)
            key.write_bytes(self.private_key_pem)
            context.load_cert_chain(cert, key)
        if self.client_ca_pem is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.client_ca_pem.decode("ascii"))
        return context


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (random signature): clients only read its payload."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{part(claims)}.{signature}"


def basic_credentials(header: str | None, *, decode: bool = True) -> tuple[str, str] | None:
    """Client id and secret of an HTTP Basic header; `decode=False` mimics servers that
    skip the RFC 6749 2.3.1 form-decoding step."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        pair = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, secret = pair.partition(":")
    if not sep:
        return None
    if decode:
        return unquote_plus(client_id), unquote_plus(secret)
    return client_id, secret


def parse_body(content_type: str | None, body: bytes) -> dict[str, Any] | None:
    """The request parameters, or None if the body does not match its content type."""
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        if kind == FORM:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        if kind == JSON:
            data = json.loads(body)
            return data if isinstance(data, dict) else None
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": JSON, **(headers or {})})


def oauth_error(status: int, error: str, description: str | None = None) -> Reply:
    data = {"error": error}
    if description is not None:
        data["error_description"] = description
    return json_reply(status, data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `received` instead; nothing reaches stderr

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, dict(self.headers.items()), body, time.time())
        reply = self.server.owner._dispatch(received)
        self._send(reply)

    do_POST = do_GET = do_PUT = _serve

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_length:
            self.send_header("Content-Length", str(len(reply.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            if reply.drip_interval is None:
                self.wfile.write(reply.body)
                return
            for byte in reply.body:
                if self.server.owner.stopping.wait(reply.drip_interval):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (deadline, size cap)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: TokenServer, tls: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a client that
        # stalls or fails the handshake cannot block the accept loop.
        if self.tls is not None:
            request.settimeout(10)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                self.owner._record_tls_failure()
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-response is expected in fault tests


class TokenServer:
    """A standard client-credentials token endpoint with recorded traffic and faults."""

    name = "standard"
    path = "/oauth2/token"

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        *,
        lifetime: float = 3600,
        tls: ServerTLS | None = None,
        issuance_log: Path | str | None = None,
        decode_basic: bool = True,
        token_format: str = "opaque",  # or "jwt"
    ) -> None:
        self.clients: dict[str, str] = dict(clients or {})
        self.lifetime = lifetime
        self.decode_basic = decode_basic
        self.token_format = token_format
        self.issuance_log = Path(issuance_log) if issuance_log else None
        self.received: list[Received] = []
        self.issued: list[Issued] = []
        # Raw issued tokens, in memory only (the log file holds hashes): tests grep output
        # for them to prove that no token ever leaks.
        self.tokens: list[str] = []
        self.tls_failures = 0
        self.stopping = threading.Event()
        self._fault: tuple[str, dict[str, Any]] | None = None
        self._changed = threading.Condition()
        self._httpd = _HTTPServer(self, tls.context() if tls else None)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # ---- lifecycle

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        scheme = "https" if self._httpd.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + self.path

    # ---- runtime control

    def fail(self, fault: str, **params: Any) -> None:
        """Answer every token request with `fault` (one of FAULTS) until `heal()`."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self._fault = (fault, params)

    def heal(self) -> None:
        self._fault = None

    def set_secret(self, client_id: str, secret: str) -> None:
        """Rotate (or add) a client's secret; the old one stops working at once."""
        self.clients[client_id] = secret

    def revoke(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    def wait_for(self, predicate: Callable[[TokenServer], bool], timeout: float = 10) -> None:
        """Block until `predicate(server)` holds after some request; fail after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"{self.name} server: condition not met in {timeout}s")

    def wait_issued(self, count: int, timeout: float = 10) -> list[Issued]:
        self.wait_for(lambda s: len(s.issued) >= count, timeout)
        return list(self.issued)

    # ---- request handling

    def _record_tls_failure(self) -> None:
        with self._changed:
            self.tls_failures += 1
            self._changed.notify_all()

    def _dispatch(self, received: Received) -> Reply:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()
        if received.method != "POST" or received.path.split("?")[0] != self.path:
            return Reply(404, b"not found", {"Content-Type": "text/plain"})
        fault = self._fault
        reply = self._fault_reply(received, *fault) if fault else self.handle(received)
        with self._changed:
            self._changed.notify_all()
        return reply

    def authenticate(
        self, received: Received, params: dict[str, Any], methods: tuple[str, ...]
    ) -> tuple[str | None, Reply | None]:
        """The authenticated client id, or the error reply to send."""
        basic = basic_credentials(received.header("Authorization"), decode=self.decode_basic)
        in_body = "client_secret" in params
        if basic and in_body:
            return None, oauth_error(400, "invalid_request", "use one authentication method")
        if basic and "header" in methods:
            client_id, secret = basic
        elif in_body and "body" in methods:
            client_id, secret = str(params.get("client_id")), str(params["client_secret"])
        else:
            return None, oauth_error(401, "invalid_client", "client authentication failed")
        if not self.clients:  # accept anyone
            return client_id, None
        known = self.clients.get(client_id)
        if known is None or not secrets.compare_digest(known.encode(), secret.encode()):
            return None, oauth_error(401, "invalid_client", "client authentication failed")
        return client_id, None

    def handle(self, received: Received) -> Reply:
        params = parse_body(received.header("Content-Type"), received.body)
        if params is None:
            return oauth_error(400, "invalid_request", "unsupported request body")
        client_id, error = self.authenticate(received, params, ("header", "body"))
        if error:
            return error
        if params.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        scope = params.get("scope")
        return self.issue(client_id, scope if isinstance(scope, str) else None)

    def issue(
        self,
        client_id: str | None,
        scope: str | None = None,
        *,
        expires_in: Any = "lifetime",
        token_format: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Reply:
        """A token response; the token is logged (as a hash) with its issue and expiry time."""
        now = time.time()
        lifetime = float(self.lifetime)
        jwt = (token_format or self.token_format) == "jwt"
        if jwt:
            token = make_jwt(
                {
                    "jti": secrets.token_urlsafe(12),
                    "sub": client_id,
                    "iat": int(now),
                    "exp": int(now + lifetime),
                    "scope": scope,
                }
            )
        else:
            token = secrets.token_urlsafe(32)
        data: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if expires_in == "lifetime":
            data["expires_in"] = int(lifetime) if lifetime == int(lifetime) else lifetime
        elif expires_in is not None:
            data["expires_in"] = expires_in
        if scope:
            data["scope"] = scope
        data.update(extra or {})
        numeric = _seconds(data.get("expires_in"))
        if "expires_in" not in data and jwt:
            numeric = lifetime  # the exp claim
        self._log(
            token,
            Issued(
                server=self.name,
                client_id=client_id,
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                issued_at=now,
                expires_at=now + numeric if numeric is not None else None,
                expires_in=numeric,
                scope=scope,
            ),
        )
        return json_reply(200, data, {"Cache-Control": "no-store"})

    def _log(self, token: str, issued: Issued) -> None:
        with self._changed:
            self.tokens.append(token)
            self.issued.append(issued)
            if self.issuance_log is not None:
                with self.issuance_log.open("a") as log:
                    log.write(json.dumps(asdict(issued)) + "\n")
            self._changed.notify_all()

    # ---- faults

    def _fault_reply(self, received: Received, fault: str, params: dict[str, Any]) -> Reply:
        return getattr(self, "_fault_" + fault)(received, **params)

    def _fault_500(self, received: Received) -> Reply:
        return oauth_error(500, "server_error", "injected failure")

    def _fault_503(self, received: Received) -> Reply:
        return Reply(
            503, b"<html><body>Service Unavailable</body></html>", {"Content-Type": "text/html"}
        )

    def _fault_429(self, received: Received, retry_after: float | str = 1) -> Reply:
        value = str(int(retry_after)) if isinstance(retry_after, int | float) else retry_after
        return json_reply(429, {"error": "slow_down"}, {"Retry-After": value})

    def _fault_drip(self, received: Received, interval: float = 0.2) -> Reply:
        reply = self.issue(None)
        reply.drip_interval = interval
        return reply

    def _fault_redirect(self, received: Received, location: str, status: int = 302) -> Reply:
        return Reply(status, b"", {"Location": location})

    def _fault_html(self, received: Received) -> Reply:
        page = b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>"
        return Reply(200, page, {"Content-Type": "text/html; charset=utf-8"})

    def _fault_huge(self, received: Received, content_length: bool = True) -> Reply:
        padding = "x" * (2 * 1024 * 1024)
        body = json.dumps({"access_token": "t" * 16, "expires_in": 60, "padding": padding})
        return Reply(200, body.encode(), {"Content-Type": JSON}, content_length=content_length)

    def _fault_no_access_token(self, received: Received) -> Reply:
        token = secrets.token_urlsafe(16)
        self.tokens.append(token)
        return json_reply(200, {"token": token, "expires_in": 60})

    def _fault_expires_in_string(self, received: Received) -> Reply:
        return self.issue(None, expires_in=str(int(self.lifetime)))

    def _fault_expires_in_zero(self, received: Received) -> Reply:
        return self.issue(None, expires_in=0)

    def _fault_expires_in_garbage(self, received: Received) -> Reply:
        return self.issue(None, expires_in="soon")

    def _fault_jwt_no_expires_in(self, received: Received) -> Reply:
        return self.issue(None, expires_in=None, token_format="jwt")

    def _fault_echo_secret(self, received: Received) -> Reply:
        params = parse_body(received.header("Content-Type"), received.body) or {}
        basic = basic_credentials(received.header("Authorization"), decode=True)
        secret = basic[1] if basic else params.get("client_secret")
        client_id = basic[0] if basic else params.get("client_id")
        description = (
            f"client {client_id} presented secret {secret} in "
            f"{received.header('Authorization')} with body {received.body.decode(errors='replace')}"
        )
        return oauth_error(400, "invalid_client", description)

    def _fault_error_in_200(self, received: Received) -> Reply:
        return oauth_error(200, "invalid_client", "client authentication failed")

    def _fault_raw(
        self, received: Received, body: bytes, status: int = 200, content_type: str = JSON
    ) -> Reply:
        return Reply(status, body, {"Content-Type": content_type})

    def _fault_echo_spelling(
        self,
        received: Received,
        spell: Callable[[str], str],
        pad: int = 0,
        error: str = "invalid_client",
        status: int = 400,
    ) -> Reply:
        """An error whose error_description (and, spelled again, error) echoes the client
        secret `pad` characters in, the way a careless endpoint reports what it got."""
        params = parse_body(received.header("Content-Type"), received.body) or {}
        basic = basic_credentials(received.header("Authorization"), decode=True)
        secret = str(basic[1] if basic else params.get("client_secret"))
        echoed = spell(secret)
        description = "p" * pad + echoed + " was not accepted"
        return oauth_error(status, f"{error} {echoed}", description)


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return None


class CognitoServer(TokenServer):
    """Amazon Cognito's /oauth2/token as client credentials users meet it: form body and
    HTTP Basic only; a JSON body gets a bare 401 with an empty body."""

    name = "cognito"
    path = "/oauth2/token"

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        *,
        scopes: Iterable[str] = ("api/read", "api/write"),
        json_answer: str = "bare",  # or "invalid_client": 401 {"error": "invalid_client"}
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("token_format", "jwt")
        super().__init__(clients, **kwargs)
        self.scopes = frozenset(scopes)
        self.json_answer = json_answer

    def handle(self, received: Received) -> Reply:
        content_type = (received.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != FORM:
            if self.json_answer == "invalid_client":
                return oauth_error(401, "invalid_client")
            return Reply(401, b"")
        params = parse_body(content_type, received.body) or {}
        client_id, error = self.authenticate(received, params, ("header",))
        if error:
            return oauth_error(400, "invalid_client") if error.status == 401 else error
        if params.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        requested = str(params.get("scope") or " ".join(sorted(self.scopes))).split()
        if not set(requested) <= self.scopes:
            return oauth_error(400, "invalid_scope")
        return self.issue(client_id, " ".join(requested))


SAP_SCOPE_KEYS = ("userId", "companyId", "userType", "resourceType")


class SAPLearningServer(TokenServer):
    """SAP SuccessFactors Learning's OAuth token endpoint: JSON body only, HTTP Basic only,
    and the scope is a JSON object."""

    name = "sap-learning"
    path = "/learning/oauth-api/rest/v1/token"

    def handle(self, received: Received) -> Reply:
        content_type = (received.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != JSON:
            return json_reply(
                415, {"error": "invalid_request", "error_description": "Unsupported Media Type"}
            )
        params = parse_body(content_type, received.body)
        if params is None:
            return oauth_error(400, "invalid_request", "malformed JSON")
        client_id, error = self.authenticate(received, params, ("header",))
        if error:
            return error
        if params.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        scope = params.get("scope")
        if not isinstance(scope, dict) or any(not scope.get(k) for k in SAP_SCOPE_KEYS):
            return oauth_error(
                400,
                "invalid_scope",
                "scope must be a JSON object with " + ", ".join(SAP_SCOPE_KEYS),
            )
        return self.issue(client_id, None)


def free_port() -> int:
    """A port nothing listens on (bound and released), for connection-refused tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(server: TokenServer) -> Iterator[TokenServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
