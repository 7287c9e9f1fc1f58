"""A token endpoint that trusts a Kubernetes cluster's ServiceAccount issuer, as Entra ID
federated credentials and Keycloak's federated client authentication do: the client
assertion must be a ServiceAccount token, verified against the API server's own discovery
(`/.well-known/openid-configuration`, then the `jwks_uri` path, `/openid/v1/jwks`) with a
real signature check (PyJWT) and `iss`, `sub`, `aud`, `exp`.

    server = FederatedTokenServer(
        fetch=lambda path: <GET path on the API server>,   # bytes
        audience="api://tokensync-test",
        federation={"client-id": "system:serviceaccount:NS:NAME"},
    ).start()

`rejections` records why each refused assertion was refused.

It also answers the RFC 8693 token exchange (as Google's STS or an Okta/Auth0
authorization server do for a federated JWT): a client authenticated with its secret
(`clients`) exchanges a ServiceAccount token, sent as `subject_token` with
`subject_token_type` urn:ietf:params:oauth:token-type:jwt and verified the same way,
`federation` mapping that client id to the trusted subject. `exchanges` records the
parameters of each accepted exchange (without the subject token).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt

from servers.quirky import Received, Reply, TokenServer, oauth_error, parse_body

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"


class FederatedTokenServer(TokenServer):
    name = "federated"

    def __init__(
        self,
        *,
        fetch: Callable[[str], bytes],
        audience: str,
        federation: dict[str, str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fetch = fetch
        self.audience = audience
        self.federation = dict(federation)  # client id -> trusted subject
        self.rejections: list[str] = []
        self.verified_claims: list[dict[str, Any]] = []
        self.exchanges: list[dict[str, Any]] = []

    def _trust(self) -> tuple[str, jwt.PyJWKSet]:
        """The cluster's issuer and signing keys, read from the API server each time (a
        rotated key is picked up at once)."""
        document = json.loads(self.fetch("/.well-known/openid-configuration"))
        jwks_path = urlsplit(document["jwks_uri"]).path
        keys = jwt.PyJWKSet.from_json(self.fetch(jwks_path).decode())
        return document["issuer"], keys

    def verify(self, assertion: str, client_id: str, *, ahead: float = 0) -> dict[str, Any]:
        """The verified claims; raises jwt.InvalidTokenError (or KeyError) otherwise.
        `ahead`: check exp as if the clock were that many seconds ahead (tests; the iat
        and nbf checks, which would then fail, are skipped)."""
        issuer, keys = self._trust()
        header = jwt.get_unverified_header(assertion)
        key = next(k for k in keys.keys if k.key_id == header.get("kid"))
        return jwt.decode(
            assertion,
            key=key.key,
            algorithms=["RS256", "ES256"],
            audience=self.audience,
            issuer=issuer,
            subject=self.federation[client_id],
            options={
                "require": ["exp", "iat", "iss", "sub", "aud"],
                "verify_iat": not ahead,
                "verify_nbf": not ahead,
            },
            leeway=-ahead,
        )

    def handle(self, received: Received) -> Reply:
        params = parse_body(received.header("Content-Type"), received.body)
        if params is None:
            return oauth_error(400, "invalid_request", "unsupported request body")
        if params.get("grant_type") == TOKEN_EXCHANGE:
            return self._exchange(received, params)
        if params.get("client_assertion_type") != JWT_BEARER:
            return oauth_error(401, "invalid_client", "a client assertion is required")
        client_id = str(params.get("client_id"))
        if client_id not in self.federation:
            return oauth_error(401, "invalid_client", "no federated credential for this client")
        try:
            claims = self.verify(str(params.get("client_assertion")), client_id)
        except (jwt.InvalidTokenError, StopIteration, KeyError, ValueError) as error:
            with self._changed:
                self.rejections.append(type(error).__name__)
                self._changed.notify_all()
            return oauth_error(401, "invalid_client", "the client assertion was not accepted")
        with self._changed:
            self.verified_claims.append(claims)
        if params.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        scope = params.get("scope")
        return self.issue(client_id, scope if isinstance(scope, str) else None)

    def _exchange(self, received: Received, params: dict[str, Any]) -> Reply:
        """RFC 8693 2.1: a secret-authenticated client exchanges a ServiceAccount token."""
        client_id, error = self.authenticate(received, params, ("header", "body"))
        if error:
            return error
        assert client_id is not None
        if client_id not in self.federation:
            return oauth_error(400, "invalid_grant", "no federated subject for this client")
        if params.get("subject_token_type") != TOKEN_TYPE_JWT:
            return oauth_error(400, "invalid_request", "subject_token_type must be jwt")
        try:
            claims = self.verify(str(params.get("subject_token")), client_id)
        except (jwt.InvalidTokenError, StopIteration, KeyError, ValueError) as error:
            with self._changed:
                self.rejections.append(type(error).__name__)
                self._changed.notify_all()
            return oauth_error(400, "invalid_grant", "the subject token was not accepted")
        wanted = (
            params.get("requested_token_type") or "urn:ietf:params:oauth:token-type:access_token"
        )
        with self._changed:
            self.verified_claims.append(claims)
            self.exchanges.append({k: v for k, v in params.items() if k != "subject_token"})
        scope = params.get("scope")
        return self.issue(
            client_id,
            scope if isinstance(scope, str) else None,
            extra={"issued_token_type": wanted},
        )
