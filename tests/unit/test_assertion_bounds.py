"""Issue 18, item 2: signing keys are tenant input. An RSA key over 4096 bits or an EC key
on another curve is refused from a few DER fields, before `cryptography` loads and
validates it (an 8192-bit key took ~6 s); results and failures are cached by digest in a
cache bounded in bytes; the operator checks keys in a thread, not on the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokensync import assertion
from tokensync.sources import ReferenceProblem, Source, key_checked, resolve_references
from tokensync.spec import parse_spec

KEY_8192 = (
    Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "rsa-8192-test-only.pem"
).read_bytes()
RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key, fmt=serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def der_pem(der: bytes, label: str) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def test_an_8192_bit_key_is_refused_unparsed():
    """The measured attack key; refusing it takes far less than loading it would."""
    cache = assertion.SignerCache()
    started = time.process_time()
    with pytest.raises(assertion.KeyProblem, match="8192-bit RSA key; at most 4096"):
        assertion.private_key_signer(KEY_8192, cache=cache)
    assert time.process_time() - started < 0.05


def test_pkcs1_form_is_refused_too():
    key = serialization.load_pem_private_key(KEY_8192, None, unsafe_skip_rsa_key_validation=True)
    pkcs1 = pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert b"BEGIN RSA PRIVATE KEY" in pkcs1
    with pytest.raises(assertion.KeyProblem, match="8192-bit"):
        assertion.private_key_signer(pkcs1, cache=assertion.SignerCache())


@pytest.mark.parametrize(
    ("curve", "problem"),
    [(ec.SECP256K1(), "another curve"), (ec.SECP521R1(), "secp521r1"), (ec.BrainpoolP256R1(), "")],
)
def test_other_curves_are_refused_before_parsing(curve, problem):
    try:
        key = ec.generate_private_key(curve)
    except Exception:  # a curve this OpenSSL build does not offer
        pytest.skip(f"{curve.name} unavailable")
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        shape = assertion.key_shape_problem(der)
        assert shape is not None and "P-256 or P-384 required" in shape and problem in shape


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_accepted_rsa_sizes_pass_the_shape_check(bits):
    key = RSA_2048 if bits == 2048 else rsa.generate_private_key(65537, bits)
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        assert assertion.key_shape_problem(der) is None


def test_accepted_curves_pass_the_shape_check():
    for curve in (ec.SECP256R1(), ec.SECP384R1()):
        key = ec.generate_private_key(curve)
        for fmt in (
            serialization.PrivateFormat.PKCS8,
            serialization.PrivateFormat.TraditionalOpenSSL,
        ):
            der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
            assert assertion.key_shape_problem(der) is None


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x84\xff\xff\xff\xff",  # a length past the data
        b"\x30\x03\x02\x01\x00",
        b"\x04\x00",
        b"\x30\x82" + (20000).to_bytes(2, "big") + b"\x00" * 20000,  # over 8 KiB
    ],
)
def test_garbage_is_a_problem_not_an_error(der):
    assert assertion.key_shape_problem(der)
    with pytest.raises(assertion.KeyProblem):
        assertion.private_key_signer(der_pem(der, "PRIVATE KEY"), cache=assertion.SignerCache())


def test_failures_are_cached_by_digest(monkeypatch):
    cache = assertion.SignerCache()
    loads = []
    real = assertion._load_signer
    monkeypatch.setattr(
        assertion, "_load_signer", lambda *a: loads.append(1) or real(*a), raising=True
    )
    bad = pem(rsa.generate_private_key(65537, 1024))
    for _ in range(3):
        with pytest.raises(assertion.KeyProblem, match="1024-bit"):
            assertion.private_key_signer(bad, cache=cache)
    good = pem(RSA_2048)
    first = assertion.private_key_signer(good, cache=cache)
    assert assertion.private_key_signer(good, cache=cache) is first
    assert len(loads) == 2  # one load per distinct key, failure or not
    # The cache keeps digests, never the PEM.
    assert all(len(k) == 32 for k in cache._entries)


def test_the_cache_is_bounded_in_bytes():
    cache = assertion.SignerCache(max_bytes=3 * assertion.SignerCache.KEY_BYTES)
    keys = [pem(ec.generate_private_key(ec.SECP256R1())) for _ in range(6)]
    for key in keys:
        assertion.private_key_signer(key, cache=cache)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    for i in range(40):  # problems are charged too
        with pytest.raises(assertion.KeyProblem):
            assertion.private_key_signer(b"-----BEGIN PRIVATE KEY-----%d" % i, cache=cache)
    assert cache.bytes <= cache.max_bytes


def test_the_operator_checks_keys_in_a_thread():
    """`key_checked` runs the parse off the event loop: the loop keeps answering."""
    spec = parse_spec(
        {
            "tokenURL": "https://idp.example/token",
            "clientID": "c",
            "clientAuthentication": "private_key_jwt",
            "clientAssertion": {"keyRef": {"name": "key", "key": "key.pem"}},
        },
        name="x",
    )
    data = {"key.pem": pem(rsa.generate_private_key(65537, 4096))}

    def lookup(kind, name):
        return Source(kind, name, data)

    unchecked = resolve_references(spec, lookup, lambda u, a: True, check_key=False)
    threads: set[str] = set()
    real = assertion._load_signer

    def spy(*args):
        threads.add(threading.current_thread().name)
        return real(*args)

    async def main():
        assertion._load_signer = spy
        try:
            return await key_checked(spec, unchecked)
        finally:
            assertion._load_signer = real

    result = asyncio.run(main())
    assert not isinstance(result, ReferenceProblem)
    assert threads and threading.main_thread().name not in threads
