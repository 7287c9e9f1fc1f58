"""Referenced Secrets and ConfigMaps: what the operator may read, what it keeps of them,
and resolving a credential's references against them (pure apart from a lock).

Only objects labelled `tokensync.dev/credential-source=true` ever reach this module: the
operator watches them with a server-side label selector (watches.py).

Memory is bounded by what credentials reference, not by what is labelled: for every
source the cache keeps its name, type and allowed-token-urls annotation, and of its keys
only those some credential references (whether each exists, and its value unless over
`MAX_VALUE_BYTES`); an object labelled but referenced by nobody keeps no key names at
all, however many it has. At start the sources are listed before any credential is
known, so nothing is kept yet; a credential that then references a key the cache did
not look at gets `ValueNotKept`, and its worker reads that one object
(`Kube.read_source`) and hands it to `SourceCache.fill`. Later events of a referenced
object keep the wanted keys themselves, so each object is read at most once per
operator start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tokensync.assertion import KeyProblem
from tokensync.secret import (
    ANNOTATION_ALLOWED_URLS,
    LABEL_SOURCE,
    is_managed,
    offered_as_source,
    readable_as_source,
)
from tokensync.spec import (
    CredentialSpec,
    Ref,
    ResolvedValues,
    assertion_signer,
    grant_key_ref,
    grant_signer,
)

TLS_SECRET_TYPE = "kubernetes.io/tls"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
MAX_VALUE_BYTES = 512 * 1024  # a referenced value over this is invalid (bounded input)

SIGNED = ("private_key_jwt", "client_secret_jwt")
T = TypeVar("T")

ObjectKey = tuple[str, str, str]  # (namespace, kind, name)
RefKey = tuple[str, str, str, str]  # (namespace, kind, name, key)


@dataclass(frozen=True)
class Source:
    kind: str  # "Secret" | "ConfigMap"
    name: str
    data: Mapping[str, bytes] = field(repr=False)  # the values kept (operator: referenced only)
    type: str | None = None  # a Secret's type
    allowed_token_urls: str | None = None
    # The keys looked at that the object has (operator: the referenced ones); empty when
    # `data` holds them all (check.py).
    keys: frozenset[str] = frozenset()
    oversized: frozenset[str] = frozenset()  # referenced keys whose value is too large
    resource_version: str | None = None
    # The keys looked at (None: all of them), so that a key not in `keys` is known to be
    # missing only if it is in here.
    looked_at: frozenset[str] | None = None
    # Another credential's managed Secret, offered as a subject token (secret.asSource).
    managed: bool = False

    def has(self, key: str) -> bool:
        return key in self.keys or key in self.data

    def knows(self, key: str) -> bool:
        """Whether `has(key)` is the truth (else the object must be read for it)."""
        return self.looked_at is None or key in self.looked_at


@dataclass(frozen=True)
class ReferenceProblem:
    reason: str  # a Ready reason: ReferenceNotFound, ReferenceKeyMissing, ...
    message: str


@dataclass(frozen=True)
class Unresolved:
    """A reference whose object is not among the labelled sources: the caller finds out
    (from metadata only) whether it is missing or merely unlabelled."""

    ref: Ref


@dataclass(frozen=True)
class ValueNotKept:
    """The object is cached, but the referenced key's value was not kept (nobody referenced
    it when the object arrived): read the object once and `SourceCache.fill` it."""

    ref: Ref


SourceLookup = Callable[[str, str], "Source | None"]  # (kind, name) -> labelled source


def _decoded_size(encoded: str) -> int:
    """Bytes that a base64 string decodes to, without decoding it."""
    return len(encoded) // 4 * 3 - encoded[-2:].count("=")


def _value(kind: str, body: Mapping[str, Any], key: str) -> bytes | None:
    """One key's value, decoded; None when it is over MAX_VALUE_BYTES (then never decoded)."""
    text = (body.get("data") or {}).get(key) if kind == "ConfigMap" else None
    if text is not None:
        if len(text) > MAX_VALUE_BYTES:  # each character is at least one byte
            return None
        value = str(text).encode()
        return value if len(value) <= MAX_VALUE_BYTES else None
    encoded = (body.get("data" if kind == "Secret" else "binaryData") or {}).get(key)
    if not isinstance(encoded, str) or _decoded_size(encoded) > MAX_VALUE_BYTES:
        return None
    try:
        return base64.b64decode(encoded)
    except (binascii.Error, ValueError):
        return None  # the API server never serves invalid base64; unusable either way


def _keys(kind: str, body: Mapping[str, Any]) -> frozenset[str]:
    keys = set(body.get("data") or {})
    if kind == "ConfigMap":
        keys.update(body.get("binaryData") or {})
    return frozenset(keys)


def source_from_body(
    kind: str, body: Mapping[str, Any], wanted: Iterable[str] | None = None
) -> Source | None:
    """What is kept of a labelled object (the values of the `wanted` keys only; every
    value when None), or None for objects tokensync must not read."""
    metadata = body.get("metadata") or {}
    if not readable_as_source(metadata):
        return None  # a Secret managed by tokensync whose credential does not offer it
    keys = _keys(kind, body)
    looked_at = None if wanted is None else frozenset(wanted)
    if looked_at is not None:
        keys = keys & looked_at
    data: dict[str, bytes] = {}
    oversized = set()
    for key in keys:
        value = _value(kind, body, key)
        if value is None:
            oversized.add(key)
        else:
            data[key] = value
    return Source(
        kind=kind,
        name=metadata.get("name", ""),
        data=data,
        type=body.get("type"),
        allowed_token_urls=(metadata.get("annotations") or {}).get(ANNOTATION_ALLOWED_URLS),
        keys=keys,
        oversized=frozenset(oversized),
        resource_version=metadata.get("resourceVersion"),
        looked_at=looked_at,
        managed=is_managed(metadata),
    )


def _object_key(kind: str, body: Mapping[str, Any]) -> ObjectKey:
    metadata = body.get("metadata") or {}
    return (metadata.get("namespace", ""), kind, metadata.get("name", ""))


def _view(source: Source | None, key: str) -> object:
    """What a credential referencing `key` would read: compared to decide who to wake."""
    if source is None or not source.has(key):
        return None
    if key in source.oversized:
        return "oversized"
    return source.data.get(key, "not kept")


class SourceCache:
    """The labelled sources the operator has seen, by (namespace, kind, name), and which
    keys of them each credential (by UID) references. Fed by the watch threads and by
    `fill`, read by the workers on the event loop: every method takes the lock."""

    def __init__(self) -> None:
        self._items: dict[ObjectKey, Source] = {}
        self._references: dict[str, frozenset[RefKey]] = {}  # UID -> what it reads
        # object -> key -> UIDs reading it: the keys whose values are kept
        self._wanted: dict[ObjectKey, dict[str, set[str]]] = {}
        self._lock = threading.Lock()

    # --- references -------------------------------------------------------------------

    def set_references(self, uid: str, refs: Iterable[RefKey]) -> None:
        """What credential `uid` reads now. Values nobody reads any more are dropped; a
        newly wanted value of a cached object is not there yet (`ValueNotKept`)."""
        with self._lock:
            self._set_references(uid, frozenset(refs))

    def prime(self, uid: str, refs: Iterable[RefKey]) -> None:
        """`set_references` from a credential listed at start, unless its references are
        already known (then they come from a newer version of it)."""
        with self._lock:
            if uid not in self._references:
                self._set_references(uid, frozenset(refs))

    def forget(self, uid: str) -> None:
        """The credential is gone."""
        with self._lock:
            self._set_references(uid, frozenset())
            del self._references[uid]

    def retain(self, uids: Iterable[str]) -> None:
        """Forget every credential but these (after a full list of credentials: one that
        was primed at start and deleted before kopf listed it is never reported)."""
        keep = set(uids)
        with self._lock:
            for uid in [u for u in self._references if u not in keep]:
                self._set_references(uid, frozenset())
                del self._references[uid]

    def _set_references(self, uid: str, new: frozenset[RefKey]) -> None:
        old = self._references.get(uid, frozenset())
        self._references[uid] = new
        for namespace, kind, name, key in new - old:
            self._wanted.setdefault((namespace, kind, name), {}).setdefault(key, set()).add(uid)
        for namespace, kind, name, key in old - new:
            self._unwant((namespace, kind, name), key, uid)

    def _unwant(self, obj: ObjectKey, key: str, uid: str) -> None:
        keys = self._wanted.get(obj, {})
        readers = keys.get(key, set())
        readers.discard(uid)
        if readers:
            return
        keys.pop(key, None)
        if not keys:
            self._wanted.pop(obj, None)
        source = self._items.get(obj)
        if source is not None and source.looked_at is not None and key in source.looked_at:
            data = {k: v for k, v in source.data.items() if k != key}
            self._items[obj] = replace(
                source,
                data=data,
                keys=source.keys - {key},
                oversized=source.oversized - {key},
                looked_at=source.looked_at - {key},
            )

    # --- events -----------------------------------------------------------------------

    def apply(self, kind: str, event_type: str, body: Mapping[str, Any]) -> set[str]:
        """Record a watch event (LISTED, ADDED, MODIFIED, DELETED); the UIDs of the
        credentials whose referenced data changed (a resourceVersion bump alone: none)."""
        obj = _object_key(kind, body)
        with self._lock:
            wanted = self._wanted.get(obj, {})
            new = None if event_type == "DELETED" else source_from_body(kind, body, wanted)
            old = self._items.pop(obj, None)
            if new is not None:
                self._items[obj] = new
            return _changed(old, new, wanted)

    def fill(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Keep the wanted values of a freshly read object (`Kube.read_source`). False when
        the cache holds another version of it (or none): the watch brings the news and
        keeps the wanted values itself; read again only if still `ValueNotKept`."""
        obj = _object_key(kind, body)
        with self._lock:
            cached = self._items.get(obj)
            version = (body.get("metadata") or {}).get("resourceVersion")
            if cached is None or version is None or cached.resource_version != version:
                return False
            source = source_from_body(kind, body, self._wanted.get(obj, {}))
            if source is None:
                return False
            self._items[obj] = source
            return True

    def readers(self, namespace: str, kind: str, name: str) -> set[str]:
        """The UIDs of the credentials that reference this object (any key)."""
        with self._lock:
            keys = self._wanted.get((namespace, kind, name), {})
            return {uid for uids in keys.values() for uid in uids}

    def lookup(self, namespace: str) -> SourceLookup:
        def get(kind: str, name: str) -> Source | None:
            with self._lock:
                return self._items.get((namespace, kind, name))

        return get

    def __len__(self) -> int:
        return len(self._items)


def _changed(old: Source | None, new: Source | None, wanted: Mapping[str, set[str]]) -> set[str]:
    if not wanted:
        return set()
    if (old is None) != (new is None) or (
        old is not None
        and new is not None
        and (old.type, old.allowed_token_urls) != (new.type, new.allowed_token_urls)
    ):
        return set().union(*wanted.values())
    woken: set[str] = set()
    for key, readers in wanted.items():
        if _view(old, key) != _view(new, key):
            woken |= readers
    return woken


def describe(ref: Ref) -> str:
    return f"{ref.kind} {ref.name!r} key {ref.key!r}"


def _text(value: bytes, ref: Ref) -> str | ReferenceProblem:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return ReferenceProblem("ReferenceInvalid", f"{describe(ref)} is not UTF-8 text")


def resolve_references(
    spec: CredentialSpec,
    lookup: SourceLookup,
    url_allowed: Callable[[str, str | None], bool],
    *,
    check_key: bool = True,
) -> ResolvedValues | ReferenceProblem | Unresolved | ValueNotKept:
    """Everything the token request needs from referenced objects, or the first problem.
    `check_key=False` leaves the signing key's check (a parse of tenant input) to the
    caller: the operator runs it in a thread with `key_checked`."""
    values: dict[str, bytes] = {}
    for ref in spec.references:
        source = lookup(ref.kind, ref.name)
        if source is None:
            return Unresolved(ref)
        if not source.knows(ref.key):
            return ValueNotKept(ref)  # newly referenced: the cache did not look at it
        if source.managed and (problem := managed_source_problem(spec, ref)):
            return problem
        if not source.has(ref.key):
            return ReferenceProblem("ReferenceKeyMissing", f"{describe(ref)} does not exist")
        # With issuerURL the binding is checked again once discovery found the endpoint.
        if spec.token_url is not None and not url_allowed(
            spec.token_url, source.allowed_token_urls
        ):
            return ReferenceProblem(
                "TokenURLNotAllowed",
                f"{ref.kind} {ref.name!r} may only be sent to the token URLs in its "
                f"annotation tokensync.dev/allowed-token-urls, and spec.tokenURL is not one",
            )
        tls_secret = (
            ref.name == spec.tls.client_certificate_secret
            and not spec.tls.client_certificate_keys_named
        ) or (
            spec.client_assertion.certificate_ref is not None
            and ref.name == spec.client_assertion.certificate_ref.name
        )
        if tls_secret and source.type != TLS_SECRET_TYPE:
            return ReferenceProblem(
                "ReferenceInvalid", f"Secret {ref.name!r} must be of type {TLS_SECRET_TYPE}"
            )
        value = source.data.get(ref.key)
        if ref.key in source.oversized or (value is not None and len(value) > MAX_VALUE_BYTES):
            return ReferenceProblem(
                "ReferenceInvalid", f"{describe(ref)} is larger than {MAX_VALUE_BYTES // 1024} KiB"
            )
        if value is None:
            return ValueNotKept(ref)
        values[_slot(spec, ref)] = value

    secret: str | ReferenceProblem = ""
    if spec.client_secret_ref is not None:
        secret = _text(values["client_secret"], spec.client_secret_ref)
        if isinstance(secret, ReferenceProblem):
            return secret
    client_id: str | ReferenceProblem = spec.client_id or ""
    if spec.client_id_ref:
        client_id = _text(values["client_id"], spec.client_id_ref)
        if isinstance(client_id, ReferenceProblem):
            return client_id
    subject = _subject_token(spec, values.get("subject_token"))
    if isinstance(subject, ReferenceProblem):
        return subject
    ca_pem = values.get("ca")
    if ca_pem is not None and PEM_CERTIFICATE not in ca_pem:
        assert spec.tls.ca_ref is not None
        return ReferenceProblem(
            "ReferenceInvalid", f"{describe(spec.tls.ca_ref)} holds no PEM certificate"
        )
    resolved = ResolvedValues(
        client_id=client_id,
        client_secret=secret,
        ca_pem=ca_pem,
        ca_description=describe(spec.tls.ca_ref) if spec.tls.ca_ref else "system trust store",
        client_cert_pem=values.get("tls.crt"),
        client_key_pem=values.get("tls.key"),
        assertion_key_pem=values.get("assertion_key"),
        assertion_cert_pem=values.get("assertion_cert"),
        grant_key_pem=values.get("grant_key"),
        grant_cert_pem=values.get("grant_cert"),
        subject_token=subject,
    )
    return (signing_problem(spec, resolved) if check_key else None) or resolved


def managed_source_problem(spec: CredentialSpec, ref: Ref) -> ReferenceProblem | None:
    """Another credential's token serves only as a subject token, and one step deep: a
    credential fed by one may not offer its own (so no chain or cycle of exchanges)."""
    exchange = spec.token_exchange
    if exchange is None or ref is not exchange.subject_token_ref:
        return ReferenceProblem(
            "ReferenceInvalid",
            f"{ref.kind} {ref.name!r} holds a token tokensync manages: only "
            "tokenExchange.subjectTokenRef may name it",
        )
    if spec.secret.as_source is not None:
        return ReferenceProblem(
            "ReferenceInvalid",
            f"{ref.kind} {ref.name!r} holds another credential's token, so this credential "
            "cannot offer its own with spec.secret.asSource (exchanges are one step deep)",
        )
    return None


def _subject_token(spec: CredentialSpec, value: bytes | None) -> str | ReferenceProblem | None:
    """tokenExchange.subjectTokenRef's token. Surrounding whitespace is dropped: a token
    never holds any (RFC 6750 2.1), and files written with `echo` end in a newline."""
    exchange = spec.token_exchange
    if value is None or exchange is None or exchange.subject_token_ref is None:
        return None
    ref = exchange.subject_token_ref
    text = _text(value, ref)
    if isinstance(text, ReferenceProblem):
        return text
    token = text.strip()
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        return ReferenceProblem(
            "ReferenceInvalid", f"{describe(ref)} holds no token (empty, or with inner spaces)"
        )
    return token


async def key_checked(spec: CredentialSpec, result: T) -> T | ReferenceProblem:
    """`result` once its signing key (if any) was checked in a thread, never on the event
    loop: a key is tenant input, and parsing one costs milliseconds to seconds."""
    if not isinstance(result, ResolvedValues):
        return result
    if spec.client_authentication not in SIGNED and grant_key_ref(spec) is None:
        return result
    problem = await asyncio.to_thread(signing_problem, spec, result)
    return problem or result


def signing_problem(spec: CredentialSpec, resolved: ResolvedValues) -> ReferenceProblem | None:
    """A key that is not PEM, too weak, or does not fit the algorithm or certificate is
    found here, before any request; the message names the Secret, never the key."""
    try:
        assertion_signer(spec, resolved)
    except KeyProblem as problem:
        ref = spec.client_assertion.key_ref or spec.client_secret_ref
        where = f"Secret {ref.name!r}" if ref else "the client assertion key"
        return ReferenceProblem("ReferenceInvalid", f"{where} {problem}")
    try:
        grant_signer(spec, resolved)
    except KeyProblem as problem:
        ref, field_name = grant_key_ref(spec) or (None, "")
        assert ref is not None
        where = f"Secret {ref.name!r}"
        return ReferenceProblem("ReferenceInvalid", f"{where} ({field_name}) {problem}")
    return None


def _slot(spec: CredentialSpec, ref: Ref) -> str:
    if ref is spec.client_secret_ref:
        return "client_secret"
    if ref is spec.client_id_ref:
        return "client_id"
    if ref is spec.tls.ca_ref:
        return "ca"
    if ref is spec.client_assertion.key_ref:
        return "assertion_key"
    if ref is spec.client_assertion.certificate_ref:
        return "assertion_cert"
    if (grant_key := grant_key_ref(spec)) is not None and ref is grant_key[0]:
        return "grant_key"
    if spec.saml2_bearer is not None and ref is spec.saml2_bearer.certificate_ref:
        return "grant_cert"
    if spec.token_exchange is not None and ref is spec.token_exchange.subject_token_ref:
        return "subject_token"
    if ref.name == spec.tls.client_certificate_secret:
        if ref.key == spec.tls.client_certificate_key:
            return "tls.crt"
        if ref.key == spec.tls.client_private_key_key:
            return "tls.key"
    return ref.key


def unresolved_problem(ref: Ref, metadata: Mapping[str, Any] | None) -> ReferenceProblem | None:
    """Turn a reference missing from the labelled sources into the reason users see,
    from the object's metadata (None: it does not exist). None when the object is
    labelled after all: the watch has not delivered it yet, and will."""
    if metadata is None:
        return ReferenceProblem("ReferenceNotFound", f"{ref.kind} {ref.name!r} does not exist")
    if is_managed(metadata) and not offered_as_source(metadata):
        return ReferenceProblem(
            "ReferenceInvalid",
            f"{ref.kind} {ref.name!r} is managed by tokensync, not a source; its credential "
            "can offer its token as a subject token with spec.secret.asSource",
        )
    if (metadata.get("labels") or {}).get(LABEL_SOURCE) == "true":
        return None
    return ReferenceProblem(
        "ReferenceNotLabeled",
        f"{ref.kind} {ref.name!r} lacks the label tokensync.dev/credential-source=true, "
        "so the operator does not read it",
    )
