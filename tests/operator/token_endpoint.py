"""A scriptable HTTPS client-credentials token endpoint for the operator tests.

Each test registers its own client (random id and secret), so tests sharing one server
stay independent. Per client the test can set the token lifetime, rotate the secret
(the old one is revoked at once), or make the endpoint fail (500, 429 with Retry-After).
Every issued token and every request is logged with its time, so tests can check what
the operator asked for and when.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import trustme

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclass
class Issue:
    client_id: str
    token: str
    issued_at: float
    expires_at: float
    subject_token: str | None = None  # the token exchanged for it (RFC 8693)


@dataclass
class Client:
    client_id: str
    secret: str
    lifetime: int = 60
    failure: tuple[int, dict[str, str]] | None = None  # status and headers while failing
    delay: float = 0.0  # seconds before answering (a slow endpoint)
    expires_in: float | None = None  # sent instead of `lifetime` when set (e.g. 0.001)
    body: bytes | None = None  # a hostile 200 response instead of a token
    requests: list[float] = field(default_factory=list)  # time of every request
    issued: list[Issue] = field(default_factory=list)
    all_secrets: list[str] = field(default_factory=list)  # every secret it ever had

    def __post_init__(self) -> None:
        self.all_secrets.append(self.secret)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # bursts of hundreds of credentials must not lose SYNs
    tls: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        # The TLS handshake runs in the connection's own thread (finish_request), not in
        # the accept loop: a client stopped mid-handshake (a SIGSTOPped replica) must not
        # stop the endpoint accepting everyone else's connections.
        connection, address = self.socket.accept()
        return self.tls.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        ), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):  # a client that went away: nothing to answer
            return
        super().finish_request(request, client_address)


class TokenEndpoint:
    def __init__(self, ca: trustme.CA, host: str = "127.0.0.1") -> None:
        self.ca = ca
        self.host = host  # the name in its URL (always served on 127.0.0.1)
        self.clients: dict[str, Client] = {}
        self.lock = threading.Lock()
        self.discovery_delay = 0.0  # seconds before the metadata document is answered
        self.discovery_requests: list[float] = []
        self.documents: dict[str, bytes] = {}  # more metadata documents, by request path
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # Its URL's host is in the certificate too (e.g. the test node's gateway, which
        # relays to 127.0.0.1 for pods).
        names = dict.fromkeys(["127.0.0.1", "localhost", host])
        ca.issue_cert(*names).configure_cert(context)
        self._server.tls = context
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def issuer(self) -> str:
        """Its issuer URL: `/.well-known/openid-configuration` names `url`."""
        return f"https://{self.host}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._server.server_address[1]}/oauth2/token"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test controls --------------------------------------------------------------

    def add_client(
        self,
        lifetime: int = 60,
        *,
        delay: float = 0.0,
        expires_in: float | None = None,
        body: bytes | None = None,
    ) -> Client:
        client = Client(
            client_id="cid-" + secrets.token_hex(6),
            secret="sec-" + secrets.token_urlsafe(24),
            lifetime=lifetime,
            delay=delay,
            expires_in=expires_in,
            body=body,
        )
        with self.lock:
            self.clients[client.client_id] = client
        return client

    def rotate(self, client: Client) -> str:
        """A new secret; the old one stops working at once."""
        with self.lock:
            client.secret = "sec-" + secrets.token_urlsafe(24)
            client.all_secrets.append(client.secret)
        return client.secret

    def fail(self, client: Client, status: int, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self.lock:
            client.failure = (status, headers)

    def heal(self, client: Client) -> None:
        with self.lock:
            client.failure = None

    def all_requests(self) -> list[float]:
        with self.lock:
            return [t for c in self.clients.values() for t in c.requests]

    def all_tokens(self) -> list[str]:
        with self.lock:
            return [i.token for c in self.clients.values() for i in c.issued]

    def valid_token(self, token: str | None) -> bool:
        """A token this endpoint issued that has not expired (a subject token it takes)."""
        now = time.time()
        with self.lock:
            return any(
                i.token == token and now < i.expires_at
                for c in self.clients.values()
                for i in c.issued
            )

    # --- the endpoint ---------------------------------------------------------------

    def token_response(
        self, client_id: str, secret: str, subject_token: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            client = self.clients.get(client_id)
            if client is None or client.secret != secret:
                if client is not None:
                    client.requests.append(time.time())
                # Some real servers echo what they got; the operator must never repeat it.
                body = {
                    "error": "invalid_client",
                    "error_description": f"client {client_id} with secret {secret} is unknown",
                }
                return 401, {}, json.dumps(body).encode()
            client.requests.append(time.time())
            if client.failure:
                status, headers = client.failure
                return status, headers, b'{"error":"temporarily_unavailable"}'
            delay, hostile = client.delay, client.body
        if hostile is not None:
            return 200, {}, hostile
        if delay:
            time.sleep(delay)
        with self.lock:
            now = time.time()
            token = "tok-" + secrets.token_urlsafe(32)
            issue = Issue(client_id, token, now, now + client.lifetime, subject_token)
            client.issued.append(issue)
            expires_in = client.lifetime if client.expires_in is None else client.expires_in
        body = {"access_token": issue.token, "token_type": "Bearer", "expires_in": expires_in}
        return 200, {}, json.dumps(body).encode()


def _handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            if self.path in endpoint.documents:
                self._send(200, endpoint.documents[self.path])
                return
            if self.path != "/.well-known/openid-configuration":
                self.send_error(404)
                return
            endpoint.discovery_requests.append(time.time())
            if endpoint.discovery_delay:
                time.sleep(endpoint.discovery_delay)
            body = json.dumps({"issuer": endpoint.issuer, "token_endpoint": endpoint.url})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            client_id, secret = _basic(self.headers.get("Authorization", ""))
            if client_id is None:
                client_id = form.get("client_id", [""])[0]
                secret = form.get("client_secret", [""])[0]
            grant = form.get("grant_type", [""])[0]
            subject = form.get("subject_token", [None])[0]
            if grant not in ("client_credentials", TOKEN_EXCHANGE):
                status, headers, body = 400, {}, b'{"error":"unsupported_grant_type"}'
            elif grant == TOKEN_EXCHANGE and not endpoint.valid_token(subject):
                status, headers, body = 400, {}, b'{"error":"invalid_grant"}'
            else:
                status, headers, body = endpoint.token_response(client_id, secret or "", subject)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _basic(header: str) -> tuple[str | None, str | None]:
    if not header.startswith("Basic "):
        return None, None
    decoded = base64.b64decode(header[6:]).decode()
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)
