"""A toy OAuth2 token endpoint for trying tokensync out (docs/getting-started/kind.md).

Client credentials grant only, one client (CLIENT_ID, CLIENT_SECRET from the
environment), client authentication in the Basic header or the form body, opaque random
tokens that nothing verifies. HTTPS with the certificate in /tls (TLS_DIR). Not an identity
provider: for anything real, point tokensync at yours.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import ssl
from base64 import b64decode
from binascii import Error as Base64Error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus

CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
TOKEN_LIFETIME = int(os.environ.get("TOKEN_LIFETIME", "300"))
PORT = int(os.environ.get("PORT", "8443"))
TLS_DIR = os.environ.get("TLS_DIR", "/tls")
MAX_BODY = 16 * 1024


def basic_credentials(header: str) -> tuple[str, str] | None:
    """RFC 6749 2.3.1: form-urlencoded id and secret, joined by ':', in base64."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(value.strip(), validate=True).decode()
    except (Base64Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(client_secret)) if sep else None


def is_our_client(credentials: tuple[str, str] | None) -> bool:
    if credentials is None:
        return False
    client_id, client_secret = credentials
    return hmac.compare_digest(client_id.encode(), CLIENT_ID.encode()) and hmac.compare_digest(
        client_secret.encode(), CLIENT_SECRET.encode()
    )


class TokenHandler(BaseHTTPRequestHandler):
    server_version = "toy-token-endpoint"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self) -> None:
        if self.path != "/token":
            self.answer(404, {"error": "not_found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.answer(413, {"error": "invalid_request"})
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            self.answer(400, {"error": "invalid_request", "error_description": "form body only"})
            return
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        header = self.headers.get("Authorization")
        credentials = (
            basic_credentials(header)
            if header
            else (form.get("client_id", ""), form.get("client_secret", ""))
        )
        if not is_our_client(credentials):
            self.answer(401, {"error": "invalid_client"}, {"WWW-Authenticate": "Basic"})
        elif form.get("grant_type") != "client_credentials":
            self.answer(400, {"error": "unsupported_grant_type"})
        else:
            token = {
                "access_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
            }
            if "scope" in form:
                token["scope"] = form["scope"]
            self.answer(200, token, {"Cache-Control": "no-store"})

    def answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    server = ThreadingHTTPServer(("", PORT), TokenHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"toy token endpoint on :{PORT}, tokens valid {TOKEN_LIFETIME}s", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
