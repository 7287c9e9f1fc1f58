"""Start and drive the real OAuth2 server (oidc-provider, tests/servers/oidc_server.mjs).

    with OIDCProvider.start(tmp_dir) as op:
        client = op.add_client("client_secret_basic", scope="api:read")
        ... client.token_url, client.client_id, client.client_secret ...
        op.set_secret(client.client_id, "new secret")   # rotate
        op.set_ttl(5); op.set_mode("500"); op.set_mode("429", retry_after=3)
        op.issued()                                    # the issuance log

    # RFC 7523 / RFC 8705 clients (metadata is oidc-provider client metadata):
        op.add_client("private_key_jwt", metadata={"jwks": {"keys": [public_jwk]}})
        op.add_client("client_secret_jwt")
        with OIDCProvider.start(tmp, mtls=(server_cert_pem, server_key_pem, client_ca_pem)):
            op.add_client("tls_client_auth", metadata={"tls_client_auth_san_email": "..."})
            ... op.mtls_token_url (https, asks for a client certificate) ...

Run `npm ci --prefix tests/servers` once before.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import Request, urlopen

SERVERS_DIR = Path(__file__).resolve().parent
SCRIPT = SERVERS_DIR / "oidc_server.mjs"
RESOURCE = "https://api.tokensync.test"
SCOPES = ("api:read", "api:write")
START_TIMEOUT = 60.0  # a loaded CI machine can take a while to load node modules


class OIDCStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class OIDCClient:
    client_id: str
    client_secret: str
    method: str  # client_secret_basic | client_secret_post | an RFC 7523 / 8705 method
    scope: str
    token_url: str

    @property
    def client_authentication(self) -> str:
        """The tokensync spelling of this client's auth method."""
        spelling = {"client_secret_basic": "header", "client_secret_post": "body"}
        return spelling.get(self.method, self.method)


def unusual_secret() -> str:
    """A unique secret with the characters that encoding bugs trip over. oidc-provider
    allows only RFC 6749 VSCHARs (printable ASCII), so no non-ASCII here."""
    return f"{secrets.token_urlsafe(18)}+/:=% &{secrets.token_hex(4)}"


class OIDCProvider:
    def __init__(self, process: subprocess.Popen[str], ready: dict[str, Any], log: Path) -> None:
        self.process = process
        self.port: int = ready["port"]
        self.issuer: str = ready["issuer"]
        self.token_url: str = ready["token_url"]
        self.mtls_token_url: str | None = ready.get("mtls_token_url")
        self.issuance_log = log

    @classmethod
    def start(
        cls,
        work_dir: Path,
        *,
        ttl_seconds: float = 60,
        node: str | None = None,
        mtls: tuple[bytes, bytes, bytes] | None = None,
    ) -> OIDCProvider:
        """`mtls`: (server certificate chain, its key, client CA), all PEM: also serve
        HTTPS asking for client certificates, at `mtls_token_url`."""
        node = node or shutil.which("node")
        if node is None:
            raise OIDCStartError("node is not installed")
        if not (SERVERS_DIR / "node_modules" / "oidc-provider").is_dir():
            raise OIDCStartError("oidc-provider is missing: run npm ci --prefix tests/servers")
        log = work_dir / "oidc-issued.jsonl"
        config = {
            "port": 0,
            "clients": [],
            "scopes": list(SCOPES),
            "ttl_seconds": ttl_seconds,
            "resource": {"identifier": RESOURCE, "scope": " ".join(SCOPES), "format": "jwt"},
            "issuance_log": str(log),
        }
        if mtls is not None:
            cert, key, client_ca = (pem.decode("ascii") for pem in mtls)
            config["mtls"] = {"cert": cert, "key": key, "client_ca": client_ca}
        config_path = work_dir / "oidc-config.json"
        config_path.write_text(json.dumps(config))
        stderr = (work_dir / "oidc-stderr.log").open("w")
        process = subprocess.Popen(
            [node, str(SCRIPT), str(config_path)],
            cwd=SERVERS_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "NODE_ENV": "test"},
        )
        stderr.close()
        try:
            ready = _wait_ready(process, START_TIMEOUT)
        except OIDCStartError as error:
            process.kill()
            process.wait()
            log_tail = (work_dir / "oidc-stderr.log").read_text()[-2000:]
            raise OIDCStartError(f"{error}; its stderr:\n{log_tail}") from None
        except BaseException:
            process.kill()
            process.wait()
            raise
        return cls(process, ready, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> OIDCProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- admin API of oidc_server.mjs

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = Request(f"{self.issuer}/admin/{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def add_client(
        self,
        method: str = "client_secret_basic",
        *,
        scope: str = " ".join(SCOPES),
        client_id: str | None = None,
        client_secret: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> OIDCClient:
        """Register a client with a unique id and a secret full of special characters;
        `metadata` adds oidc-provider client metadata (jwks, tls_client_auth_san_email,
        token_endpoint_auth_signing_alg). private_key_jwt and tls_client_auth clients
        get no secret."""
        client_id = client_id or f"tokensync {secrets.token_hex(4)}+/:"
        body: dict[str, Any] = {"token_endpoint_auth_method": method, "scope": scope}
        if method in ("private_key_jwt", "tls_client_auth"):
            client_secret = ""
        else:
            client_secret = client_secret or unusual_secret()
            body["client_secret"] = client_secret
        self._admin("PUT", f"clients/{quote(client_id, safe='')}", {**body, **(metadata or {})})
        token_url = self.mtls_token_url if method == "tls_client_auth" else self.token_url
        return OIDCClient(client_id, client_secret, method, scope, token_url or self.token_url)

    def set_secret(self, client_id: str, client_secret: str) -> None:
        self._admin(
            "POST", f"clients/{quote(client_id, safe='')}/secret", {"client_secret": client_secret}
        )

    def revoke(self, client_id: str) -> None:
        self._admin("DELETE", f"clients/{quote(client_id, safe='')}")

    def set_ttl(self, seconds: float) -> None:
        self._admin("PUT", "ttl", {"seconds": seconds})

    def set_mode(self, mode: str, *, retry_after: int = 1) -> None:
        """ "healthy", "500" or "429" (with Retry-After: retry_after)."""
        self._admin("PUT", "mode", {"mode": mode, "retry_after": retry_after})

    def issued(self) -> list[dict[str, Any]]:
        """Every token issued so far: token_sha256, client_id, issued_at, expires_at (epoch)."""
        return self._admin("GET", "issued")


def _wait_ready(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The readiness line the server prints once it listens (no sleeping, no polling)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise OIDCStartError(f"oidc-provider did not start within {timeout}s") from None
        if line is None:
            raise OIDCStartError(f"oidc-provider exited with {process.wait()}")
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("ready"):
            return message
