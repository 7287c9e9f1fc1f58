"""docs/reference/crd.md documents every field of the CRD, and is what hack/ generates.

hack/gen_field_reference.py renders the page from the CRD's descriptions; these tests fail
when a field of the CRD is not mentioned (as `spec.x.y` in backticks) on the page, or when
the page differs from what the script generates from crds/ today.
"""

from __future__ import annotations

import subprocess
import sys

from manifestlib import REPO, crd_schema, load_field_reference

PAGE = REPO / "docs" / "reference" / "crd.md"


def test_every_crd_field_is_in_the_reference() -> None:
    page = PAGE.read_text()
    generator = load_field_reference()
    schema = crd_schema()
    fields = [
        path
        for root in ("spec", "status")
        for path, _sub, _required in generator.iter_fields(schema["properties"][root], root)
        if path != root
    ]
    assert len(fields) > 50  # the walk found the schema (this would pass on an empty list)
    missing = [path for path in fields if f"`{path}`" not in page]
    assert missing == [], (
        f"fields missing from {PAGE.relative_to(REPO)}: {', '.join(missing)}; "
        "regenerate it with `python hack/gen_field_reference.py`"
    )


def test_the_reference_is_generated_from_the_crd_of_today() -> None:
    assert PAGE.read_text() == load_field_reference().render()


def test_check_mode_fails_on_a_stale_page(tmp_path) -> None:
    """`--check` (what a contributor runs) exits 1 when the page differs, 0 when it does not."""
    script = REPO / "hack" / "gen_field_reference.py"
    ok = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stale_page = tmp_path / "crd.md"
    stale_page.write_text(PAGE.read_text().replace("`spec.tokenURL`", "`spec.tokenUrl`", 1))
    stale = subprocess.run(
        [sys.executable, str(script), "--check", str(stale_page)], capture_output=True, text=True
    )
    assert stale.returncode == 1
    assert "crd.md is out of date" in stale.stdout


def test_generator_covers_every_field() -> None:
    """The generator itself lists every spec and status field."""
    generator = load_field_reference()
    rendered = generator.render()
    schema = crd_schema()
    for root in ("spec", "status"):
        for name in schema["properties"][root]["properties"]:
            assert f"`{root}.{name}`" in rendered
