"""Referenced Secrets and ConfigMaps: what the operator may read, and resolving a
credential's references against them (pure).

Only objects labelled `tokensync.dev/credential-source=true` ever reach this module: the
operator watches them with a server-side label selector and keeps them in a kopf index.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokensync.assertion import KeyProblem
from tokensync.secret import ANNOTATION_ALLOWED_URLS, LABEL_SOURCE, is_managed
from tokensync.spec import CredentialSpec, Ref, ResolvedValues, assertion_signer

TLS_SECRET_TYPE = "kubernetes.io/tls"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class Source:
    kind: str  # "Secret" | "ConfigMap"
    name: str
    data: Mapping[str, bytes] = field(repr=False)
    type: str | None = None  # a Secret's type
    allowed_token_urls: str | None = None


@dataclass(frozen=True)
class ReferenceProblem:
    reason: str  # a Ready reason: ReferenceNotFound, ReferenceKeyMissing, ...
    message: str


@dataclass(frozen=True)
class Unresolved:
    """A reference whose object is not among the labelled sources: the caller finds out
    (from metadata only) whether it is missing or merely unlabelled."""

    ref: Ref


SourceLookup = Callable[[str, str], "Source | None"]  # (kind, name) -> labelled source


def source_from_body(kind: str, body: Mapping[str, Any]) -> Source | None:
    """An indexable source, or None for objects tokensync must not read."""
    metadata = body.get("metadata") or {}
    if is_managed(metadata):
        return None  # a Secret managed by tokensync is never read as a source
    if kind == "Secret":
        data = {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
    else:
        data = {k: v.encode() for k, v in (body.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (body.get("binaryData") or {}).items()})
    return Source(
        kind=kind,
        name=metadata.get("name", ""),
        data=data,
        type=body.get("type"),
        allowed_token_urls=(metadata.get("annotations") or {}).get(ANNOTATION_ALLOWED_URLS),
    )


class SourceCache:
    """The labelled sources the operator has seen, by (namespace, kind, name). Fed by
    the label-selected watches; read by the credential workers (both on the event loop)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], Source] = {}

    def apply(
        self, kind: str, event_type: str, body: Mapping[str, Any]
    ) -> tuple[str, str, str] | None:
        """Record a watch event; the key of the object if what a credential reads changed."""
        metadata = body.get("metadata") or {}
        key = (metadata.get("namespace", ""), kind, metadata.get("name", ""))
        source = None if event_type == "DELETED" else source_from_body(kind, body)
        old = self._items.pop(key, None)
        if source is not None:
            self._items[key] = source
        return key if old != source else None

    def reset(self, kind: str, namespace: str | None) -> None:
        """Forget one kind in a namespace (None: everywhere) before a re-list."""
        for key in [k for k in self._items if k[1] == kind and namespace in (None, k[0])]:
            del self._items[key]

    def lookup(self, namespace: str) -> SourceLookup:
        return lambda kind, name: self._items.get((namespace, kind, name))


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
) -> ResolvedValues | ReferenceProblem | Unresolved:
    """Everything the token request needs from referenced objects, or the first problem."""
    values: dict[str, bytes] = {}
    for ref in spec.references:
        source = lookup(ref.kind, ref.name)
        if source is None:
            return Unresolved(ref)
        if ref.key not in source.data:
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
        tls_secret = ref.name == spec.tls.client_certificate_secret or (
            spec.client_assertion.certificate_ref is not None
            and ref.name == spec.client_assertion.certificate_ref.name
        )
        if tls_secret and source.type != TLS_SECRET_TYPE:
            return ReferenceProblem(
                "ReferenceInvalid", f"Secret {ref.name!r} must be of type {TLS_SECRET_TYPE}"
            )
        values[_slot(spec, ref)] = source.data[ref.key]

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
    )
    return _signing_problem(spec, resolved) or resolved


def _signing_problem(spec: CredentialSpec, resolved: ResolvedValues) -> ReferenceProblem | None:
    """A key that is not PEM, too weak, or does not fit the algorithm or certificate is
    found here, before any request; the message names the Secret, never the key."""
    try:
        assertion_signer(spec, resolved)
    except KeyProblem as problem:
        ref = spec.client_assertion.key_ref or spec.client_secret_ref
        where = f"Secret {ref.name!r}" if ref else "the client assertion key"
        return ReferenceProblem("ReferenceInvalid", f"{where} {problem}")
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
    return ref.key  # tls.crt / tls.key of the client certificate Secret


def unresolved_problem(ref: Ref, metadata: Mapping[str, Any] | None) -> ReferenceProblem | None:
    """Turn a reference missing from the labelled sources into the reason users see,
    from the object's metadata (None: it does not exist). None when the object is
    labelled after all: the watch has not delivered it yet, and will."""
    if metadata is None:
        return ReferenceProblem("ReferenceNotFound", f"{ref.kind} {ref.name!r} does not exist")
    if is_managed(metadata):
        return ReferenceProblem(
            "ReferenceInvalid", f"{ref.kind} {ref.name!r} is managed by tokensync, not a source"
        )
    if (metadata.get("labels") or {}).get(LABEL_SOURCE) == "true":
        return None
    return ReferenceProblem(
        "ReferenceNotLabeled",
        f"{ref.kind} {ref.name!r} lacks the label tokensync.dev/credential-source=true, "
        "so the operator does not read it",
    )
