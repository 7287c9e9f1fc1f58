"""The documentation: the site builds with strict link checking, and the reference pages
list everything the code has (every flag of `tokensync run`, every CLI option, every metric,
every label and annotation). The CRD field reference is checked in
tests/manifests/test_crd_reference.py, the README's two commands in tests/readme.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tokensync import cli

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REFERENCE = DOCS / "reference"
PACKAGE = REPO / "operator" / "tokensync"
# Markdown files that are part of the documentation (the README and its siblings link
# into docs/, so they are held to the same rules).
ROOT_PAGES = ("README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md")


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    config = str(root / "mkdocs.yml")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def documented(page: Path, option: str) -> bool:
    """`option` appears on the page in backticks, alone or followed by its argument."""
    return re.search(r"`" + re.escape(option) + r"[` =\[]", page.read_text()) is not None


def all_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [REPO / name for name in ROOT_PAGES]


# -- the site --------------------------------------------------------------------------


def test_the_site_builds_with_strict_link_checking(tmp_path: Path) -> None:
    result = mkdocs_build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "crd" / "index.html").exists()
    assert (tmp_path / "site" / "operations" / "runbooks" / "index.html").exists()


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        ("[x](operations/install.md#no-such-heading)", "does not contain an anchor"),
        ("[x](operations/no-such-page.md)", "not found among documentation files"),
        ("[x](../README.md)", "not found among documentation files"),
    ],
)
def test_a_broken_link_fails_the_build(tmp_path: Path, link: str, complaint: str) -> None:
    """The strictness is real: a link to a missing anchor, page or a file outside docs/
    fails the build that passes above."""
    root = tmp_path / "repo"
    shutil.copytree(DOCS, root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    with (root / "docs" / "index.md").open("a") as page:
        page.write(f"\n{link}\n")
    result = mkdocs_build(root, tmp_path / "site")
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


def nav_pages(nav: list) -> set[str]:
    pages: set[str] = set()
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages |= nav_pages(value)
            elif not value.startswith("https://"):
                pages.add(value)
    return pages


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["strict"] is True
    in_nav = nav_pages(config["nav"])
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == in_nav


# -- the reference lists what the code has -----------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    ]


def test_every_flag_of_tokensync_run_is_in_the_flags_reference() -> None:
    flags = options(subcommands()["run"])
    assert {"--all-namespaces", "--peering", "--no-deny-private-networks"} <= set(flags)
    page = REFERENCE / "flags.md"
    missing = [flag for flag in flags if not documented(page, flag)]
    assert missing == [], f"flags of `tokensync run` missing from {page.name}: {missing}"


def test_every_cli_command_and_option_is_in_the_cli_reference() -> None:
    page = REFERENCE / "cli.md"
    commands = subcommands()
    assert {"run", "check", "status", "refresh", "version"} <= set(commands)
    text = page.read_text()
    missing = [f"tokensync {name}" for name in commands if f"`tokensync {name}" not in text]
    for name, parser in commands.items():
        if name != "run":  # its flags have their own page, checked above
            missing += [f"{name} {o}" for o in options(parser) if not documented(page, o)]
    assert missing == [], f"missing from {page.name}: {missing}"


def exported_metrics() -> set[str]:
    """The sample names metrics.py exports (counters get their `_total`)."""
    source = (PACKAGE / "metrics.py").read_text()
    constructor = r"\b(Counter|Gauge|Histogram|\w+MetricFamily)\(\s*\"(tokensync_\w+)\""
    found = re.findall(constructor, source)
    return {name + "_total" if kind.startswith("Counter") else name for kind, name in found}


def test_every_metric_is_in_the_metrics_reference_and_nothing_else() -> None:
    exported = exported_metrics()
    assert {"tokensync_token_requests_total", "tokensync_credential_ready"} <= exported
    table = re.findall(r"^\| `(tokensync_\w+)` \|", (REFERENCE / "metrics.md").read_text(), re.M)
    assert sorted(table) == sorted(exported)


def labels_and_annotations() -> set[str]:
    keys: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        source = path.read_text()
        keys |= set(re.findall(r"\"(tokensync\.dev/[a-z][a-z-]+)\"", source))
        keys |= {f"tokensync.dev/{k}" for k in re.findall(r"f\"\{DOMAIN\}/([a-z-]+)\"", source)}
    keys.discard("tokensync.dev/operator")  # the events' reportingController, not a key
    return keys


def test_every_label_and_annotation_is_in_the_api_reference() -> None:
    keys = labels_and_annotations()
    assert {"tokensync.dev/credential-source", "tokensync.dev/config-hash"} <= keys
    page = (REFERENCE / "api.md").read_text()
    assert sorted(k for k in keys if f"`{k}`" not in page) == []


# -- what the pages may refer to ---------------------------------------------------------

OUTSIDE = re.compile(r"\bAPI\.md\b|\bENGINEERING\.md\b|/work/|\bissue-\d+")
ISSUE_NUMBER = re.compile(r"\b(issues?|pull request|PR)\s*#?\d+", re.I)
# Backticked paths into the repository, e.g. `examples/okta.yaml` or `deploy/peering/`.
REPO_PATH = re.compile(
    r"`((?:\.ci|bench|charts|crds|deploy|docs|examples|hack|operator|tests)/[\w./-]*)"
)


@pytest.mark.parametrize("page", all_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_pages_refer_only_to_the_repository_and_carry_no_issue_numbers(page: Path) -> None:
    text = page.read_text()
    assert OUTSIDE.findall(text) == []
    assert [m.group(0) for m in ISSUE_NUMBER.finditer(text)] == []
    missing = sorted(
        {p for p in REPO_PATH.findall(text) if "<" not in p and not (REPO / p).exists()}
    )
    assert missing == [], f"{page.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("name", ROOT_PAGES)
def test_links_of_the_root_pages_resolve(name: str) -> None:
    page = REPO / name
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    if name == "README.md":
        assert len(local) > 20, local  # the links into docs/ were found
    assert [t for t in local if not (REPO / t).exists()] == []


def test_the_readme_is_a_front_page() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## The two commands", "## In 60 seconds", "## Documentation"):
        assert heading in text.splitlines()
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text))
    # Every section of the site is reachable from the README.
    for section in ("getting-started", "concepts", "guides", "operations", "reference", "design"):
        assert any(link.startswith(f"docs/{section}/") for link in linked), section


# -- the manifests shown on the pages ----------------------------------------------------


def shown_manifests() -> list[tuple[str, dict]]:
    """Every YAML document of a ```yaml block, and of a heredoc in a ```sh block."""
    found = []
    for page in all_pages():
        text = page.read_text()
        blocks = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
        for sh in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
            blocks += re.findall(r"<<'EOF'\n(.*?)^EOF$", sh, flags=re.S | re.M)
        for block in blocks:
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict):
                    found.append((str(page.relative_to(REPO)), doc))
    return found


def unknown_fields(value: object, schema: dict, path: str) -> list[str]:
    """Fields the CRD's structural schema does not have (what the API server rejects as
    `unknown field`)."""
    if isinstance(value, dict) and "properties" in schema:
        unknown = [f"{path}.{k}" for k in value if k not in schema["properties"]]
        return unknown + [
            field
            for k, v in value.items()
            if k in schema["properties"]
            for field in unknown_fields(v, schema["properties"][k], f"{path}.{k}")
        ]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [f for v in value for f in unknown_fields(v, schema["items"], f"{path}[]")]
    return []


def test_every_credential_shown_is_valid() -> None:
    from tokensync.spec import parse_spec

    crd = yaml.safe_load((REPO / "crds" / "oauth2credential.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    credentials = [
        (page, doc) for page, doc in shown_manifests() if doc.get("kind") == "OAuth2Credential"
    ]
    pages = {page for page, _ in credentials}
    assert len(credentials) >= 8 and "README.md" in pages, pages
    for page, doc in credentials:
        assert doc["apiVersion"] == "tokensync.dev/v1alpha1", page
        assert unknown_fields(doc["spec"], schema, "spec") == [], page
        parse_spec(doc["spec"], name=doc["metadata"]["name"])  # raises SpecError with the field


def test_unknown_fields_are_found() -> None:
    schema = {"properties": {"a": {"properties": {"b": {}}}, "l": {"items": {"properties": {}}}}}
    value = {"a": {"b": 1, "c": 2}, "x": 1, "l": [{"y": 1}]}
    assert unknown_fields(value, schema, "spec") == ["spec.x", "spec.a.c", "spec.l[].y"]
