"""What the operator knows of a managed Secret without holding its data, and the patch
that updates it (pure).

Each managed Secret is kept in memory as a `ManagedSecret`: a few metadata fields and
which data keys, labels and annotations tokensync's field manager owns (from
`metadata.managedFields`, which the metadata-only watch delivers). That is all a pass
needs: who owns the Secret, when its token was issued and expires, its config-hash, and
whether our keys are all there. So a routine renewal reads nothing before it writes, and
no token is ever kept in memory after it was written.

Updates are merge patches of exactly the fields tokensync owns, with the resourceVersion
of the object whose ownership was checked: labels, annotations, finalizers and
ownerReferences that other tools (Reloader, Argo CD, Kyverno, backup tools) add stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokensync.oauth2 import Token
from tokensync.schedule import HeldToken, parse_time
from tokensync.secret import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_EXPIRES,
    ANNOTATION_ISSUED,
    ANNOTATION_OWNER_UID,
    FIXED_KEYS,
    LABEL_CREDENTIAL,
    Owner,
    managed_secret,
    owned_by,
)
from tokensync.spec import CredentialSpec

FIELD_MANAGER = "tokensync"  # the fieldManager of every Secret write


@dataclass(frozen=True)
class ManagedSecret:
    namespace: str
    name: str
    uid: str
    resource_version: str
    # Only the labels and annotations tokensync reads (KEPT_LABELS, KEPT_ANNOTATIONS):
    # enough for ownership and the held token, without copying what others put there.
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner_references: tuple[Mapping[str, Any], ...]
    # What our field manager set and still owns (someone else's change of a value takes
    # its ownership away, so an emptied or deleted key shows up as not owned).
    owned_data: frozenset[str]
    owned_labels: frozenset[str]
    owned_annotations: frozenset[str]
    # Known from a full read or a write's answer; None from the metadata-only watch.
    secret_type: str | None = None

    def as_object(self) -> dict[str, Any]:
        """The metadata view `secret.owned_by` expects."""
        return {
            "metadata": {
                "labels": dict(self.labels),
                "annotations": dict(self.annotations),
                "ownerReferences": [dict(r) for r in self.owner_references],
            }
        }

    def owned_by(self, owner: Owner) -> bool:
        return owned_by(self.as_object(), owner)

    def held_token(self) -> HeldToken:
        return HeldToken(
            keys=self.owned_data,
            issued_at=parse_time(self.annotations.get(ANNOTATION_ISSUED)),
            expires_at=parse_time(self.annotations.get(ANNOTATION_EXPIRES)),
            config_hash=self.annotations.get(ANNOTATION_CONFIG_HASH),
        )

    @property
    def credential(self) -> str | None:
        return self.labels.get(LABEL_CREDENTIAL)


# What is kept of a managed Secret is bounded whatever a tenant packs onto a Secret it
# labels tokensync.dev/credential: only the labels and annotations tokensync
# reads, values up to MAX_VALUE_CHARS, at most MAX_OWNER_REFERENCES references and
# MAX_OWNED_KEYS names per owned set (our fixed keys first).
KEPT_LABELS = (LABEL_CREDENTIAL,)
KEPT_ANNOTATIONS = (
    ANNOTATION_EXPIRES,
    ANNOTATION_ISSUED,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_OWNER_UID,
)
MAX_VALUE_CHARS = 256
MAX_OWNER_REFERENCES = 16
MAX_OWNED_KEYS = 64
_REFERENCE_FIELDS = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")


def _ours(values: Mapping[str, str] | None, kept: tuple[str, ...]) -> dict[str, str]:
    values = values or {}
    return {
        k: values[k]
        for k in kept
        if isinstance(values.get(k), str) and len(values[k]) <= MAX_VALUE_CHARS
    }


def _references(references: Any) -> tuple[Mapping[str, Any], ...]:
    """The controller reference (the one ownership is decided by) and the first others,
    each with only the fields an ownerReference has."""
    if not isinstance(references, list):
        return ()
    refs = [r for r in references if isinstance(r, Mapping)]
    controller = [r for r in refs if r.get("controller")][:1]
    others = [r for r in refs if not r.get("controller")][: MAX_OWNER_REFERENCES - 1]
    return tuple(
        {f: r[f] for f in _REFERENCE_FIELDS if f in r and len(str(r[f])) <= 512}
        for r in controller + others
    )


def _capped(keys: set[str], first: tuple[str, ...] = ()) -> frozenset[str]:
    ordered = [k for k in first if k in keys] + sorted(k for k in keys if k not in first)
    return frozenset(ordered[:MAX_OWNED_KEYS])


def _owned_fields(managed_fields: list[Mapping[str, Any]] | None) -> dict[str, set[str]]:
    """Keys under data, metadata.labels and metadata.annotations that our field manager
    owns, from the fieldsV1 sets of its entries on the main resource."""
    owned: dict[str, set[str]] = {"data": set(), "labels": set(), "annotations": set()}
    for entry in managed_fields or []:
        if entry.get("manager") != FIELD_MANAGER or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        metadata = fields.get("f:metadata") or {}
        for where, tree in (
            ("data", fields.get("f:data")),
            ("labels", metadata.get("f:labels")),
            ("annotations", metadata.get("f:annotations")),
        ):
            owned[where].update(k[2:] for k in (tree or {}) if k.startswith("f:"))
    return owned


def managed_state(body: Mapping[str, Any]) -> ManagedSecret:
    """Compact a Secret (full or PartialObjectMetadata) to what the operator keeps."""
    metadata = body.get("metadata") or {}
    owned = _owned_fields(metadata.get("managedFields"))
    data = body.get("data")
    owned_data = owned["data"]
    if data is not None:  # a full object: an empty value is as good as missing
        owned_data = {k for k in owned_data if data.get(k)}
    return ManagedSecret(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        resource_version=metadata.get("resourceVersion", ""),
        labels=_ours(metadata.get("labels"), KEPT_LABELS),
        annotations=_ours(metadata.get("annotations"), KEPT_ANNOTATIONS),
        owner_references=_references(metadata.get("ownerReferences")),
        owned_data=_capped(owned_data, FIXED_KEYS),
        owned_labels=_capped(owned["labels"], KEPT_LABELS),
        owned_annotations=_capped(owned["annotations"], KEPT_ANNOTATIONS),
        secret_type=_type_of(body.get("type")),
    )


def _type_of(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS else None


def _with_removals(wanted: Mapping[str, Any], owned: frozenset[str]) -> dict[str, Any]:
    """Merge-patch values: what we want, and null for what we set before and no longer
    want (a template key or secret.labels entry removed from the spec)."""
    result: dict[str, Any] = dict(wanted)
    for key in owned - wanted.keys():
        result[key] = None
    return result


def needs_replacing(spec: CredentialSpec, current: ManagedSecret) -> bool:
    """Kubernetes does not change a Secret's type in place: an owned Secret of another
    type than spec.secret.type is deleted and created again."""
    return current.secret_type is not None and current.secret_type != spec.secret.type


def update_patch(
    owner: Owner, spec: CredentialSpec, token: Token, fingerprint: str, current: ManagedSecret
) -> dict[str, Any]:
    """Merge patch that brings an owned managed Secret to the new token and spec."""
    wanted = managed_secret(owner, spec, token, fingerprint)
    metadata = wanted["metadata"]
    patch_metadata: dict[str, Any] = {
        "resourceVersion": current.resource_version,
        "labels": _with_removals(metadata["labels"], current.owned_labels),
        "annotations": _with_removals(metadata["annotations"], current.owned_annotations),
    }
    # ownerReferences is a list, replaced whole by a merge patch: send it only when our
    # own reference must change (deletionPolicy flipped), keeping everyone else's.
    others = [r for r in current.owner_references if r.get("uid") != owner.uid]
    references = others + list(metadata.get("ownerReferences") or [])
    if references != list(current.owner_references):
        patch_metadata["ownerReferences"] = references
    return {
        "metadata": patch_metadata,
        # A Secret's type cannot change: sent so that a Secret of another type (seen
        # only through the metadata watch) fails with 422 rather than keep its old type.
        "type": wanted["type"],
        "data": _with_removals(wanted["data"], current.owned_data),
    }
