"""The Dockerfile, checked without building it (no container engine on the test machines):
pinned slim base, multi-stage, runtime dependencies only, numeric non-root user, and
`tokensync` as the entrypoint."""

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


def test_base_image_is_a_pinned_slim_python() -> None:
    args = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", image), image
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)


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
    assert entrypoint == ["tokensync"]
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
