"""The OAuth2Credential CRD this tokensync was built with (data/oauth2credential.yaml, a
copy of crds/oauth2credential.yaml): its schema for `check`, which reports unknown fields
as the API server does, and for `doctor`, which compares it with the installed CRD."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

CRD_NAME = "oauth2credentials.tokensync.dev"
VERSION = "v1alpha1"


@functools.cache
def packaged() -> dict[str, Any]:
    text = resources.files("tokensync").joinpath("data/oauth2credential.yaml").read_text()
    return yaml.safe_load(text)


def version_of(crd: Mapping[str, Any], name: str = VERSION) -> Mapping[str, Any] | None:
    for version in (crd.get("spec") or {}).get("versions") or []:
        if version.get("name") == name:
            return version
    return None


def schema() -> Mapping[str, Any]:
    version = version_of(packaged())
    assert version is not None
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, node: Mapping[str, Any], path: str = "") -> list[str]:
    """Fields of `obj` that the structural schema `node` does not declare, as the API
    server's strict field validation names them: `unknown field "spec.clientId"`, with a
    suggestion when a declared field differs only in case or by a letter or two. The
    metadata is the API server's business and is not looked into."""
    found: list[str] = []
    if isinstance(obj, list):
        items = node.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(obj):
                found += unknown_fields(item, items, f"{path}[{index}]")
        return found
    if not isinstance(obj, Mapping) or node.get("x-kubernetes-preserve-unknown-fields"):
        return found
    properties = node.get("properties") or {}
    additional = node.get("additionalProperties")
    for key, value in obj.items():
        where = f"{path}.{key}" if path else str(key)
        if key in properties:
            if where != "metadata":
                found += unknown_fields(value, properties[key], where)
        elif isinstance(additional, Mapping):
            found += unknown_fields(value, additional, where)
        elif additional is not True:
            found.append(f'unknown field "{where}"{_suggestion(str(key), properties)}')
    return found


def _suggestion(key: str, declared: Mapping[str, Any]) -> str:
    by_case = [name for name in declared if name.lower() == key.lower()]
    close = by_case or difflib.get_close_matches(key, list(declared), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""
