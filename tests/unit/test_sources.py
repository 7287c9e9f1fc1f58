"""SourceCache: only referenced values are kept, a value over 512 KiB never is, and only
a change of what a credential reads wakes it."""

from __future__ import annotations

import base64
from typing import Any

from tokensync.secret import url_allowed
from tokensync.sources import (
    MAX_VALUE_BYTES,
    ReferenceProblem,
    SourceCache,
    ValueNotKept,
    resolve_references,
)
from tokensync.spec import ResolvedValues, parse_spec

NS = "team"
SPEC = {
    "tokenURL": "https://idp.example/token",
    "clientID": "app",
    "clientSecretRef": {"name": "client", "key": "client_secret"},
}


def secret(name: str = "client", version: str = "1", **data: bytes) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": name, "resourceVersion": version},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def ref(key: str = "client_secret", name: str = "client", kind: str = "Secret") -> tuple:
    return (NS, kind, name, key)


def resolve(cache: SourceCache, spec: dict[str, Any] = SPEC) -> Any:
    return resolve_references(parse_spec(spec, name="c"), cache.lookup(NS), url_allowed)


def test_only_referenced_keys_are_kept():
    """Issue 18: neither values nor names of keys nobody references are kept (90,000 key
    names of an unreferenced labelled Secret were ~10 MiB)."""
    cache = SourceCache()
    cache.set_references("uid-1", [ref()])
    many = {f"k{i}": b"" for i in range(1000)}
    cache.apply("Secret", "LISTED", secret(client_secret=b"s3cret", other=b"x" * 100_000, **many))
    cache.apply("Secret", "LISTED", secret("unreferenced", **many))
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None
    assert dict(source.data) == {"client_secret": b"s3cret"}
    assert source.keys == {"client_secret"}
    unreferenced = cache.lookup(NS)("Secret", "unreferenced")
    assert unreferenced is not None and unreferenced.keys == frozenset() and not unreferenced.data
    resolved = resolve(cache)
    assert isinstance(resolved, ResolvedValues) and resolved.client_secret == "s3cret"
    # No longer referenced: its key name goes too.
    cache.forget("uid-1")
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and source.keys == frozenset() and not source.data


def test_missing_key_is_exact_after_one_read():
    cache = SourceCache()
    cache.apply("Secret", "LISTED", secret(other=b"x"))
    cache.set_references("uid-1", [ref()])
    assert isinstance(resolve(cache), ValueNotKept)  # the cache did not look at that key
    assert cache.fill("Secret", secret(other=b"x"))
    assert resolve(cache) == ReferenceProblem(
        "ReferenceKeyMissing", "Secret 'client' key 'client_secret' does not exist"
    )


def test_value_over_512_kib_is_never_stored_and_is_reference_invalid():
    cache = SourceCache()
    cache.set_references("uid-1", [ref()])
    big = b"B" * (MAX_VALUE_BYTES + 1)
    cache.apply("Secret", "ADDED", secret(client_secret=big))
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and not source.data and source.oversized == {"client_secret"}
    problem = resolve(cache)
    assert isinstance(problem, ReferenceProblem) and problem.reason == "ReferenceInvalid"
    assert "larger than 512 KiB" in problem.message and "BBBB" not in problem.message
    # exactly at the limit is fine
    assert cache.apply("Secret", "MODIFIED", secret(client_secret=b"B" * MAX_VALUE_BYTES)) == {
        "uid-1"
    }
    assert isinstance(resolve(cache), ResolvedValues)


def test_configmap_text_and_binary_values_are_bounded_too():
    cache = SourceCache()
    cache.set_references("uid-1", [ref("ca.crt", "ca", "ConfigMap"), ref("bin", "ca", "ConfigMap")])
    body = {
        "metadata": {"namespace": NS, "name": "ca", "resourceVersion": "1"},
        "data": {"ca.crt": "é" * (MAX_VALUE_BYTES // 2 + 1)},  # 2 bytes each in UTF-8
        "binaryData": {"bin": base64.b64encode(b"\x00\x01").decode()},
    }
    cache.apply("ConfigMap", "ADDED", body)
    source = cache.lookup(NS)("ConfigMap", "ca")
    assert source is not None
    assert source.oversized == {"ca.crt"} and dict(source.data) == {"bin": b"\x00\x01"}


def test_a_key_referenced_after_the_object_arrived_is_value_not_kept_until_filled():
    cache = SourceCache()
    cache.apply("Secret", "LISTED", secret(client_secret=b"s3cret"))  # start: no credential yet
    cache.set_references("uid-1", [ref()])
    missing = resolve(cache)
    assert isinstance(missing, ValueNotKept) and missing.ref.key == "client_secret"
    # A read of another version is refused (the watch will deliver the newer one) ...
    assert not cache.fill("Secret", secret(version="0", client_secret=b"old"))
    assert isinstance(resolve(cache), ValueNotKept)
    # ... the same version fills it.
    assert cache.fill("Secret", secret(client_secret=b"s3cret"))
    resolved = resolve(cache)
    assert isinstance(resolved, ResolvedValues) and resolved.client_secret == "s3cret"


def test_a_watch_event_after_the_key_became_wanted_fills_it_and_wakes_the_reader():
    cache = SourceCache()
    cache.apply("Secret", "LISTED", secret(client_secret=b"s3cret"))
    cache.set_references("uid-1", [ref()])
    assert cache.apply("Secret", "MODIFIED", secret(version="2", client_secret=b"s3cret")) == {
        "uid-1"
    }
    assert isinstance(resolve(cache), ResolvedValues)


def test_only_changes_of_what_a_credential_reads_wake_it():
    cache = SourceCache()
    cache.set_references("uid-a", [ref("a")])
    cache.set_references("uid-b", [ref("b")])
    assert cache.apply("Secret", "LISTED", secret(a=b"1", b=b"1", c=b"1")) == {"uid-a", "uid-b"}
    # a resourceVersion bump alone, or a change of a key nobody reads: nobody
    assert cache.apply("Secret", "MODIFIED", secret(version="2", a=b"1", b=b"1", c=b"1")) == set()
    assert cache.apply("Secret", "MODIFIED", secret(version="3", a=b"1", b=b"1", c=b"2")) == set()
    # a change of key a: only its reader
    assert cache.apply("Secret", "MODIFIED", secret(version="4", a=b"2", b=b"1")) == {"uid-a"}
    # key b removed: its reader (ReferenceKeyMissing now)
    assert cache.apply("Secret", "MODIFIED", secret(version="5", a=b"2")) == {"uid-b"}
    # the allowed URLs change what every reader may do
    annotated = secret(version="6", a=b"2")
    annotated["metadata"]["annotations"] = {"tokensync.dev/allowed-token-urls": "https://x/"}
    assert cache.apply("Secret", "MODIFIED", annotated) == {"uid-a", "uid-b"}
    assert cache.apply("Secret", "DELETED", annotated) == {"uid-a", "uid-b"}
    assert cache.lookup(NS)("Secret", "client") is None


def test_values_nobody_reads_any_more_are_dropped():
    cache = SourceCache()
    cache.set_references("uid-1", [ref()])
    cache.set_references("uid-2", [ref()])
    cache.apply("Secret", "LISTED", secret(client_secret=b"s3cret"))
    cache.forget("uid-1")
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and "client_secret" in source.data  # uid-2 still reads it
    cache.set_references("uid-2", [ref("other")])  # spec changed to another key
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and not source.data and source.keys == frozenset()  # issue 18
    assert cache.apply("Secret", "MODIFIED", secret(version="2", client_secret=b"new")) == set()


def test_managed_secrets_are_never_sources():
    cache = SourceCache()
    cache.set_references("uid-1", [ref()])
    body = secret(client_secret=b"token")
    body["metadata"]["labels"] = {"tokensync.dev/credential": "other"}
    cache.apply("Secret", "ADDED", body)
    assert cache.lookup(NS)("Secret", "client") is None
    assert not cache.fill("Secret", body)


def test_references_primed_at_start_keep_values_from_the_first_list():
    cache = SourceCache()
    cache.prime("uid-1", [ref()])  # a credential listed before the sources
    cache.apply("Secret", "LISTED", secret(client_secret=b"s3cret"))
    assert isinstance(resolve(cache), ResolvedValues)  # no read needed


def test_priming_never_overrides_references_from_a_newer_version():
    cache = SourceCache()
    cache.set_references("uid-1", [ref("new")])  # kopf delivered the current spec first
    cache.prime("uid-1", [ref("old")])  # the start-up list saw an older one
    cache.apply("Secret", "LISTED", secret(old=b"1", new=b"2"))
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and dict(source.data) == {"new": b"2"}
    cache.forget("uid-1")
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and not source.data


def test_retain_forgets_credentials_that_no_longer_exist():
    cache = SourceCache()
    cache.prime("gone", [ref()])  # listed at start, deleted before kopf listed it
    cache.set_references("here", [ref("other")])
    cache.apply("Secret", "LISTED", secret(client_secret=b"s", other=b"o"))
    cache.retain({"here"})
    source = cache.lookup(NS)("Secret", "client")
    assert source is not None and dict(source.data) == {"other": b"o"}
