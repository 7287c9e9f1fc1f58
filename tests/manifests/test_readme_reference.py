"""The README documents every field of the CRD.

hack/gen_field_reference.py prints the reference from the CRD's descriptions; this test
fails when a field of the CRD is not mentioned (as `spec.x.y` in backticks) in the README's
"## Field reference" section. It skips until that section exists.
"""

from __future__ import annotations

import pytest
from manifestlib import REPO, crd_schema, load_field_reference

README = REPO / "README.md"
HEADING = "## Field reference"


def reference_section() -> str:
    text = README.read_text() if README.exists() else ""
    if HEADING not in text.splitlines():
        pytest.skip("README reference not written yet")
    section = text.split(f"\n{HEADING}\n", 1)[1] if not text.startswith(HEADING) else text
    # Up to the next second-level heading (### subsections belong to it).
    lines = []
    for line in section.splitlines():
        if line.startswith("## "):
            break
        lines.append(line)
    return "\n".join(lines)


def test_every_crd_field_is_in_the_readme_reference() -> None:
    section = reference_section()
    generator = load_field_reference()
    schema = crd_schema()
    missing = [
        path
        for root in ("spec", "status")
        for path, _sub, _required in generator.iter_fields(schema["properties"][root], root)
        if path != root and f"`{path}`" not in section
    ]
    assert missing == [], (
        f"fields missing from the README's field reference: {', '.join(missing)}; "
        "regenerate it with `python hack/gen_field_reference.py`"
    )


def test_generator_covers_every_field() -> None:
    """The generator itself lists every spec and status field (no README needed)."""
    generator = load_field_reference()
    rendered = generator.render()
    schema = crd_schema()
    for root in ("spec", "status"):
        for name in schema["properties"][root]["properties"]:
            assert f"`{root}.{name}`" in rendered
