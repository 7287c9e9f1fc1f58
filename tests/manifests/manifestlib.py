"""Helpers shared by the manifest tests: where the manifests are, and loading them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "oauth2credential.yaml"
DEPLOY = REPO / "deploy"
EXAMPLES = REPO / "examples"
SOURCE_LABEL = "tokensync.dev/credential-source"
ALLOWED_URLS_ANNOTATION = "tokensync.dev/allowed-token-urls"


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_crd() -> dict[str, Any]:
    (crd,) = load_docs(CRD_PATH)
    return crd


def crd_schema() -> dict[str, Any]:
    (version,) = load_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def walk_schema(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) for the schema and every nested schema (properties, items, map
    values)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk_schema(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk_schema(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk_schema(schema["additionalProperties"], f"{path}{{}}")


def load_field_reference() -> ModuleType:
    """hack/gen_field_reference.py as a module (hack/ is not a package)."""
    path = REPO / "hack" / "gen_field_reference.py"
    spec = importlib.util.spec_from_file_location("gen_field_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
