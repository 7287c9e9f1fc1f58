"""The operator's compact view of a managed Secret and the merge patch that updates only
the fields tokensync owns."""

from __future__ import annotations

from typing import Any

from test_secret import OWNER, T0, spec_of, token_of  # type: ignore[import-not-found]

from tokensync.managed import FIELD_MANAGER, managed_state, update_patch
from tokensync.secret import LABEL_CREDENTIAL, managed_secret


def fields_v1(data: list[str], labels: list[str], annotations: list[str]) -> dict[str, Any]:
    return {
        "f:data": {f"f:{k}": {} for k in data},
        "f:metadata": {
            "f:labels": {f"f:{k}": {} for k in labels},
            "f:annotations": {f"f:{k}": {} for k in annotations},
        },
        "f:type": {},
    }


def written(spec_fields: dict[str, Any] | None = None, **extra_meta: Any) -> dict[str, Any]:
    """A Secret as the API returns it after tokensync created it, plus others' edits."""
    spec = spec_of(**(spec_fields or {}))
    body = managed_secret(OWNER, spec, token_of(), "sha256:x")
    meta = body["metadata"]
    meta.update(uid="s-uid", resourceVersion="41")
    meta["managedFields"] = [
        {
            "manager": FIELD_MANAGER,
            "operation": "Update",
            "fieldsV1": fields_v1(
                list(body["data"]), list(meta["labels"]), list(meta["annotations"])
            ),
        },
        {  # status of someone else's subresource, or another tool: not ours
            "manager": "kubectl-edit",
            "operation": "Update",
            "fieldsV1": fields_v1([], ["team"], ["reloader.stakater.com/match"]),
        },
    ]
    meta["labels"]["team"] = "a"
    meta["annotations"]["reloader.stakater.com/match"] = "true"
    meta["finalizers"] = ["backup.example/keep"]
    meta.update(extra_meta)
    return body


def test_state_keeps_only_what_passes_need():
    state = managed_state(written())
    assert state.resource_version == "41"
    assert state.owned_by(OWNER)
    assert state.owned_data == {"access_token", "token_type", "authorization", "expires_at"}
    assert "team" not in state.labels and LABEL_CREDENTIAL in state.labels
    assert "reloader.stakater.com/match" not in state.annotations
    held = state.held_token()
    assert held.issued_at == T0.replace(microsecond=0) and held.config_hash == "sha256:x"


def test_an_emptied_key_counts_as_missing_in_a_full_object():
    body = written()
    body["data"]["access_token"] = ""
    assert "access_token" not in managed_state(body).owned_data


def test_metadata_only_view_reports_owned_keys_from_managed_fields():
    body = written()
    del body["data"]
    state = managed_state(body)
    assert "authorization" in state.owned_data


def test_update_patch_keeps_what_other_tools_added():
    state = managed_state(written())
    patch = update_patch(OWNER, spec_of(), token_of(), "sha256:y", state)
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "41"  # optimistic lock on the object checked
    assert "team" not in meta["labels"]  # not touched, so kept by the merge
    assert "reloader.stakater.com/match" not in meta["annotations"]
    assert "finalizers" not in meta and "ownerReferences" not in meta
    assert meta["annotations"]["tokensync.dev/config-hash"] == "sha256:y"


def test_update_patch_removes_what_we_set_and_no_longer_want():
    before = written(
        {"secret": {"labels": {"app": "x"}, "template": {"token.txt": "${access_token}"}}}
    )
    state = managed_state(before)
    assert "token.txt" in state.owned_data and "app" in state.owned_labels
    patch = update_patch(OWNER, spec_of(), token_of(), "sha256:y", state)
    assert patch["data"]["token.txt"] is None
    assert patch["metadata"]["labels"]["app"] is None


def test_update_patch_flips_only_our_owner_reference_on_deletion_policy_change():
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "other"}
    body = written()
    body["metadata"]["ownerReferences"].append(foreign)
    state = managed_state(body)
    patch = update_patch(
        OWNER, spec_of(secret={"deletionPolicy": "Retain"}), token_of(), "h", state
    )
    assert patch["metadata"]["ownerReferences"] == [foreign]


def test_what_a_tenant_packs_onto_a_managed_secret_is_not_kept():
    """Issue 18: a Secret labelled tokensync.dev/credential keeps a bounded view, however
    many tokensync.dev/* labels, ownerReferences and forged managedFields it carries."""
    import sys

    from tokensync import managed

    body = written()
    meta = body["metadata"]
    meta["labels"].update({f"tokensync.dev/x{i}": "v" for i in range(5000)})
    meta["annotations"].update({f"tokensync.dev/a{i}": "v" * 1000 for i in range(200)})
    meta["annotations"]["tokensync.dev/issued-at"] = "x" * 100_000
    meta["ownerReferences"] = list(meta.get("ownerReferences") or []) + [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": f"n{i}", "uid": f"u{i}", "pad": "p"}
        for i in range(5000)
    ]
    meta["managedFields"].append(
        {
            "manager": FIELD_MANAGER,
            "operation": "Update",
            "fieldsV1": fields_v1([f"k{i}" for i in range(90_000)], [], []),
        }
    )
    state = managed_state(body)
    assert set(state.labels) <= {LABEL_CREDENTIAL}
    assert "tokensync.dev/issued-at" not in state.annotations  # over MAX_VALUE_CHARS
    assert len(state.owner_references) <= managed.MAX_OWNER_REFERENCES
    assert all("pad" not in r for r in state.owner_references)
    assert len(state.owned_data) <= managed.MAX_OWNED_KEYS
    assert {"access_token", "token_type", "authorization", "expires_at"} <= state.owned_data
    assert state.owned_by(OWNER)  # ownership is still decided by the controller reference
    size = sum(sys.getsizeof(v) for v in (state.owned_data, state.owned_labels))
    assert size < 16 * 1024
