"""RFC 7523 client assertions: load the signing key, sign a fresh JWT per token request.

Signing is PyJWT with `cryptography` (a maintained JOSE implementation, not a hand-written
signer). Keys are checked once, when a credential's references are resolved, so a weak or
malformed key is a `ReferenceInvalid` before any request; `KeyProblem` texts never hold
key material. No Kubernetes here.

Keys are tenant input: before `cryptography` sees one, `key_shape_problem` reads the few
DER fields that say what it is (RSA modulus size, EC curve) and refuses an RSA key over
4096 bits or another curve, whose loading and validation would cost seconds. Results,
failures included, are cached by the SHA-256 of their inputs, in a cache bounded in bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict
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
MAX_RSA_BITS = 4096
# A 4096-bit RSA key in PKCS#8 is ~2.4 KB of DER; anything much larger is not a key we use.
MAX_KEY_DER_BYTES = 8 * 1024
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


# DER object identifiers (full TLVs) of the key types and curves told apart before parsing.
_OID_RSA = bytes.fromhex("06092a864886f70d010101")
_OID_RSA_PSS = bytes.fromhex("06092a864886f70d01010a")
_OID_EC = bytes.fromhex("06072a8648ce3d0201")
_OID_CURVES = {
    bytes.fromhex("06082a8648ce3d030107"): "secp256r1",
    bytes.fromhex("06052b81040022"): "secp384r1",
    bytes.fromhex("06052b81040023"): "secp521r1",
}


class _DerError(ValueError):
    pass


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `at`."""
    if at + 2 > len(data):
        raise _DerError("truncated")
    tag, first = data[at], data[at + 1]
    start = at + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3 or start + count > len(data):
            raise _DerError("bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > len(data):
        raise _DerError("truncated")
    return tag, start, start + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, value start, value end, element start) of the elements in data[start:end]."""
    out = []
    at = start
    while at < end and len(out) < 16:
        tag, vstart, vend = _der(data, at)
        out.append((tag, vstart, vend, at))
        at = vend
    return out


def _integer_bits(data: bytes, start: int, end: int) -> int:
    value = data[start:end].lstrip(b"\0")
    return (len(value) - 1) * 8 + value[0].bit_length() if value else 0


def _rsa_bits(data: bytes, start: int, end: int) -> int:
    """The modulus size of a PKCS#1 RSAPrivateKey (SEQUENCE { version, n, ... })."""
    tag, vstart, vend = _der(data, start)
    fields = _children(data, vstart, vend) if tag == 0x30 else []
    if len(fields) < 2 or fields[1][0] != 0x02:
        raise _DerError("not PKCS#1")
    return _integer_bits(data, fields[1][1], fields[1][2])


def _sec1_curve(data: bytes, start: int, end: int) -> bytes | None:
    """The curve OID of a SEC1 ECPrivateKey ([0] parameters), if it names one."""
    tag, vstart, vend = _der(data, start)
    for child_tag, cstart, cend, _ in _children(data, vstart, vend) if tag == 0x30 else []:
        if child_tag == 0xA0:
            return data[cstart:cend]
    return None


def key_shape_problem(der: bytes) -> str | None:
    """Why this DER private key is refused before parsing (pure, linear in its size): not
    RSA or EC, RSA over MAX_RSA_BITS, or a curve other than P-256/P-384. None when it
    may be handed to `cryptography`, which then checks everything else."""
    if len(der) > MAX_KEY_DER_BYTES:
        return f"holds a private key larger than {MAX_KEY_DER_BYTES // 1024} KiB"
    try:
        tag, start, end = _der(der, 0)
        if tag != 0x30:
            raise _DerError("not a SEQUENCE")
        fields = _children(der, start, end)
        tags = [f[0] for f in fields]
        curve: bytes | None = None
        if tags[:3] == [0x02, 0x30, 0x04]:  # PKCS#8 PrivateKeyInfo
            algorithm = _children(der, fields[1][1], fields[1][2])
            oid = der[algorithm[0][3] : algorithm[0][2]] if algorithm else b""
            inner = (fields[2][1], fields[2][2])
            if oid in (_OID_RSA, _OID_RSA_PSS):
                bits = _rsa_bits(der, *inner)
            elif oid == _OID_EC:
                bits = 0
                if len(algorithm) > 1:
                    curve = der[algorithm[1][3] : algorithm[1][2]]
                curve = curve or _sec1_curve(der, *inner)
                if curve is None:
                    return "holds an EC key without a named curve; P-256 or P-384 required"
            else:
                return "holds a private key of another type; RSA or EC (P-256/P-384) required"
        elif tags[:3] == [0x02, 0x02, 0x02]:  # PKCS#1 RSAPrivateKey
            bits = _integer_bits(der, fields[1][1], fields[1][2])
        elif tags[:2] == [0x02, 0x04]:  # SEC1 ECPrivateKey
            bits = 0
            curve = _sec1_curve(der, 0, len(der))
            if curve is None:
                return "holds an EC key without a named curve; P-256 or P-384 required"
        else:
            return "holds a PEM block that is not a readable private key"
    except (_DerError, IndexError):
        return "holds a PEM block that is not a readable private key"
    if bits > MAX_RSA_BITS:
        return f"holds a {bits}-bit RSA key; at most {MAX_RSA_BITS} bits are accepted"
    if curve is not None and _OID_CURVES.get(curve) not in _CURVE_ALGORITHMS:
        name = _OID_CURVES.get(curve, "another curve")
        return f"holds an EC key on {name}; P-256 or P-384 required"
    return None


def _pem_der(block: bytes) -> bytes:
    """The DER inside one PEM block (headers of encrypted keys are refused earlier)."""
    lines = block.strip().splitlines()[1:-1]
    try:
        return base64.b64decode(b"".join(line.strip() for line in lines), validate=True)
    except ValueError:
        raise KeyProblem("holds a PEM block that is not a readable private key") from None


def load_private_key(pem: bytes) -> PrivateKey:
    """An RSA (2048 to 4096 bits) or EC (P-256, P-384) private key from PEM: PKCS#8,
    PKCS#1 or SEC1."""
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise KeyProblem("holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if b"ENCRYPTED" in pem:
        raise KeyProblem("holds an encrypted private key; store it unencrypted in the Secret")
    block = _private_key_block(pem)
    if problem := key_shape_problem(_pem_der(block)):
        raise KeyProblem(problem)
    try:
        key = serialization.load_pem_private_key(block, password=None)
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


class SignerCache:
    """Signing keys and key problems by the SHA-256 of their inputs (no PEM is kept),
    least recently used first out, bounded by the bytes charged per entry: KEY_BYTES for a
    parsed key with its headers (a 4096-bit RSA key object and a certificate thumbprint
    take less), PROBLEM_BYTES for a problem."""

    KEY_BYTES = 16 * 1024
    PROBLEM_BYTES = 512

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[SigningKey | KeyProblem, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> SigningKey | KeyProblem | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            self._entries.move_to_end(digest)
            return entry[0]

    def put(self, digest: bytes, value: SigningKey | KeyProblem, charge: int) -> None:
        with self._lock:
            old = self._entries.pop(digest, None)
            if old is not None:
                self.bytes -= old[1]
            if charge > self.max_bytes:
                return
            self._entries[digest] = (value, charge)
            self.bytes += charge
            while self.bytes > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed

    def __len__(self) -> int:
        return len(self._entries)


SIGNERS = SignerCache()


def _signer_digest(
    key_pem: bytes, algorithm: str | None, key_id: str | None, cert_pem: bytes | None
) -> bytes:
    digest = hashlib.sha256()
    for part in (key_pem, (algorithm or "").encode(), (key_id or "").encode(), cert_pem):
        if part is None:
            digest.update(b"\xff")
        else:
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def private_key_signer(
    key_pem: bytes,
    *,
    algorithm: str | None = None,
    key_id: str | None = None,
    cert_pem: bytes | None = None,
    cache: SignerCache = SIGNERS,
) -> SigningKey:
    """The signing key of `private_key_jwt`; KeyProblem if key, certificate or algorithm
    do not fit together. Every reconcile pass resolves (and so checks) the key: the result
    or the problem is cached by digest, so a bad key costs its check once."""
    digest = _signer_digest(key_pem, algorithm, key_id, cert_pem)
    cached = cache.get(digest)
    if isinstance(cached, KeyProblem):
        raise KeyProblem(str(cached))
    if cached is not None:
        return cached
    try:
        signer = _load_signer(key_pem, algorithm, key_id, cert_pem)
    except KeyProblem as problem:
        cache.put(digest, problem, SignerCache.PROBLEM_BYTES)
        raise
    cache.put(digest, signer, SignerCache.KEY_BYTES)
    return signer


def _load_signer(
    key_pem: bytes, algorithm: str | None, key_id: str | None, cert_pem: bytes | None
) -> SigningKey:
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
