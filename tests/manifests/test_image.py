"""The Dockerfile, checked without building it (tests/node/test_image_build.py builds it and
tests/operator/test_deploy_on_node.py runs the image on the test node):
base images pinned by tag and digest, multi-stage, a distroless final stage (no shell,
no package manager), runtime dependencies only, numeric non-root user, and `tokensync` as
the entrypoint."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from manifestlib import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


DIGEST = r"@sha256:[0-9a-f]{64}"


def build_args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )


def test_base_images_are_pinned_by_tag_and_digest() -> None:
    """Every FROM resolves to `image:tag@sha256:<digest>`: the digest fixes what is pulled
    (a moved tag cannot change the image), the tag says what it is (and what to look up
    when refreshing the digest for security updates)."""
    args = build_args()
    froms = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    for image in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+" + DIGEST, resolved), resolved


def test_build_stage_uses_the_runtime_images_python() -> None:
    """The virtualenv's python links to the build image's interpreter: Debian 12's python3
    in both stages, so it resolves in the runtime image (/usr/bin/python3)."""
    args = build_args()
    assert re.fullmatch(r"debian:12(\.\d+)?-slim" + DIGEST, args["BUILD_IMAGE"])
    assert args["RUNTIME_IMAGE"].startswith("gcr.io/distroless/python3-debian12:")
    build_stage = instructions()[: -len(final_stage())]
    assert any(w == "RUN" and "python3 -m venv /opt/tokensync" in r for w, r in build_stage)


def test_runtime_stage_has_no_shell_or_package_manager() -> None:
    """Distroless: no /bin/sh, apt, dpkg or pip in the final image, so the final stage can
    have no RUN step (it would need a shell) and only exec-form ENTRYPOINT/CMD."""
    stage = final_stage()
    assert stage[0][1].split()[0] == "${RUNTIME_IMAGE}"
    assert "distroless" in build_args()["RUNTIME_IMAGE"]
    assert not any(word == "RUN" for word, _ in stage), "RUN needs a shell"
    for word, rest in stage:
        if word in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(rest), list), f"{word} must be exec form"
    # The virtualenv copied into it carries no installer either.
    (install,) = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert "pip uninstall --yes pip setuptools" in install


def test_runtime_stage_runs_as_numeric_non_root_user() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric, got {user!r}"
    assert all(int(part) != 0 for part in user.split(":"))
    # Matches the Deployment's runAsUser.
    assert user.split(":")[0] == "65532"


def test_entrypoint_is_the_tokensync_console_script() -> None:
    stage = final_stage()
    (entrypoint,) = [json.loads(rest) for word, rest in stage if word == "ENTRYPOINT"]
    assert entrypoint == ["/opt/tokensync/bin/tokensync"]
    (cmd,) = [json.loads(rest) for word, rest in stage if word == "CMD"]
    assert cmd == ["run", "--all-namespaces"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tokensync" in scripts


def test_only_runtime_dependencies_are_installed() -> None:
    installs = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert installs
    for command in installs:
        assert "[" not in command, f"extras installed: {command}"
        for dev in ("pytest", "ruff", "trustme", "-e ", "--editable", "requirements-dev"):
            assert dev not in command, command
    # The runtime stage copies the virtualenv, and never runs pip itself.
    assert not any(word == "RUN" and "pip" in rest for word, rest in final_stage())


def test_runtime_stage_copies_only_the_virtualenv() -> None:
    copies = [rest for word, rest in final_stage() if word in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/tokensync /opt/tokensync"]


@pytest.mark.parametrize("needed", ["pyproject.toml", "README.md", "operator/"])
def test_dockerignore_lets_the_build_inputs_through(needed: str) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert f"!{needed}" in lines
