"""Authorization grants beyond client credentials: the RFC 7523 2.1 JWT bearer grant's
assertion, signed here with a key from a Secret (a ServiceAccount token as the grant is
minted by tokensync.workload instead). No Kubernetes here."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import jwt

from tokensync.assertion import SigningKey


def sign_jwt_bearer(
    signing_key: SigningKey,
    *,
    issuer: str,
    subject: str,
    audience: str,
    issued_at: int,
    lifetime_seconds: int,
    jti: str,
) -> str:
    """One grant assertion (RFC 7523 3): iss, sub, aud, iat, exp, a unique jti."""
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "jti": jti,
        "iat": issued_at,
        "exp": issued_at + lifetime_seconds,
    }
    return jwt.encode(
        claims, signing_key.key, algorithm=signing_key.algorithm, headers=signing_key.headers
    )


def jwt_bearer_factory(
    signing_key: SigningKey,
    *,
    issuer: str,
    subject: str,
    audience: str,
    lifetime_seconds: int,
    clock: Callable[[], float] = time.time,
) -> Callable[[], str]:
    """A function returning a fresh grant assertion (new jti, current iat) per call."""

    def make() -> str:
        return sign_jwt_bearer(
            signing_key,
            issuer=issuer,
            subject=subject,
            audience=audience,
            issued_at=int(clock()),
            lifetime_seconds=lifetime_seconds,
            jti=secrets.token_urlsafe(24),
        )

    return make
