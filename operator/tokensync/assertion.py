"""RFC 7523 client assertions: load the signing key, sign a fresh JWT per token request.

Signing is PyJWT with `cryptography` (a maintained JOSE implementation, not a hand-written
signer). Keys are checked once, when a credential's references are resolved, so a weak or
malformed key is a `ReferenceInvalid` before any request; `KeyProblem` texts never hold
key material. No Kubernetes here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 60
ASYMMETRIC_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384")
SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
ALGORITHMS = ASYMMETRIC_ALGORITHMS + SYMMETRIC_ALGORITHMS
MIN_RSA_BITS = 2048
_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384"}

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyProblem(ValueError):
    """The key, certificate or algorithm cannot be used; the text names no key material."""


@dataclass(frozen=True)
class SigningKey:
    """Everything needed to sign assertions: the algorithm, the key, the extra headers."""

    algorithm: str
    key: Any = field(repr=False)  # a cryptography private key, or the HMAC secret (bytes)
    headers: dict[str, str] = field(default_factory=dict)


def load_private_key(pem: bytes) -> PrivateKey:
    """An RSA (>= 2048 bits) or EC (P-256, P-384) private key from PEM: PKCS#8, PKCS#1
    or SEC1."""
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise KeyProblem("holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if b"ENCRYPTED" in pem:
        raise KeyProblem("holds an encrypted private key; store it unencrypted in the Secret")
    try:
        key = serialization.load_pem_private_key(_private_key_block(pem), password=None)
    except (ValueError, TypeError, serialization.UnsupportedAlgorithm):
        raise KeyProblem("holds a PEM block that is not a readable private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"holds a {key.key_size}-bit RSA key; at least 2048 bits required")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVE_ALGORITHMS:
            raise KeyProblem(f"holds an EC key on {key.curve.name}; P-256 or P-384 required")
        return key
    raise KeyProblem(f"holds a {type(key).__name__.lstrip('_')}; RSA or EC (P-256/P-384) required")


def _private_key_block(pem: bytes) -> bytes:
    """The private key block alone: `openssl ecparam -genkey` puts an EC PARAMETERS block
    first, and a tls.key may carry text around it."""
    match = _KEY_BLOCK.search(pem)
    if match is None:
        raise KeyProblem("holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    return match.group(0) + b"\n"


def default_algorithm(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return _CURVE_ALGORITHMS[key.curve.name]


def algorithm_problem(key: PrivateKey, algorithm: str) -> str | None:
    """Why `algorithm` cannot sign with `key`, or None."""
    if algorithm in ("RS256", "PS256"):
        return None if isinstance(key, rsa.RSAPrivateKey) else f"{algorithm} needs an RSA key"
    if algorithm in ("ES256", "ES384"):
        if isinstance(key, ec.EllipticCurvePrivateKey) and default_algorithm(key) == algorithm:
            return None
        curve = "P-256" if algorithm == "ES256" else "P-384"
        return f"{algorithm} needs an EC {curve} key"
    return f"{algorithm} is not an algorithm for private_key_jwt"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_headers(cert_pem: bytes, key: PrivateKey) -> dict[str, str]:
    """`x5t#S256` and `x5t` of the first certificate of a PEM chain, which must be the
    key's own certificate (Entra ID looks the credential up by this thumbprint)."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise KeyProblem("holds no PEM certificate") from None
    public = certificate.public_key()
    if not isinstance(public, type(key.public_key())) or public.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise KeyProblem("holds a certificate that does not match the private key")
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "x5t#S256": _b64url(hashlib.sha256(der).digest()),
        "x5t": _b64url(hashlib.sha1(der, usedforsecurity=False).digest()),
    }


# Every reconcile pass resolves (and so checks) the key; parsing and validating an RSA key
# costs milliseconds, so the result is kept per distinct key, certificate and settings.
@functools.lru_cache(maxsize=256)
def private_key_signer(
    key_pem: bytes,
    *,
    algorithm: str | None = None,
    key_id: str | None = None,
    cert_pem: bytes | None = None,
) -> SigningKey:
    """The signing key of `private_key_jwt`; KeyProblem if key, certificate or algorithm
    do not fit together."""
    key = load_private_key(key_pem)
    algorithm = algorithm or default_algorithm(key)
    if problem := algorithm_problem(key, algorithm):
        raise KeyProblem(f"cannot be used: {problem}")
    headers = certificate_headers(cert_pem, key) if cert_pem is not None else {}
    if key_id:
        headers["kid"] = key_id
    return SigningKey(algorithm, key, headers)


def secret_signer(
    client_secret: str, *, algorithm: str | None = None, key_id: str | None = None
) -> SigningKey:
    """The signing key of `client_secret_jwt`: HMAC with the client secret."""
    algorithm = algorithm or "HS256"
    if algorithm not in SYMMETRIC_ALGORITHMS:
        raise KeyProblem(f"{algorithm} is not an HMAC algorithm for client_secret_jwt")
    if not client_secret:
        raise KeyProblem("the client secret is empty")
    return SigningKey(algorithm, client_secret.encode("utf-8"), {"kid": key_id} if key_id else {})


def sign_assertion(
    signing_key: SigningKey, client_id: str, audience: str, *, issued_at: int, jti: str
) -> str:
    """One assertion: iss = sub = client id, aud, jti, iat, nbf-free, exp = iat + 60 s."""
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": issued_at,
        "exp": issued_at + ASSERTION_LIFETIME_SECONDS,
    }
    with warnings.catch_warnings():
        # The IdP chooses the client secret's length; PyJWT's advice cannot change it.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(
            claims, signing_key.key, algorithm=signing_key.algorithm, headers=signing_key.headers
        )


def assertion_factory(
    signing_key: SigningKey,
    client_id: str,
    audience: str,
    clock: Callable[[], float] = time.time,
) -> Callable[[], str]:
    """A function returning a fresh assertion (new jti, current iat) on every call."""

    def make() -> str:
        return sign_assertion(
            signing_key, client_id, audience, issued_at=int(clock()), jti=secrets.token_urlsafe(24)
        )

    return make
