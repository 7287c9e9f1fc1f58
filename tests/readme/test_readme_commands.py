"""The README's two set-up commands, tested as written.

The first runs verbatim (its own venv, `pip install -e .`, the CRD, `tokensync run`) in a
scratch copy of the repository, against the test control plane, until the operator's
/readyz answers and the CRD is established. The second is what .ci/run runs, as its last
line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fixtures.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
HEADING = "## The two commands"
READY_URL = "http://127.0.0.1:8080/readyz"  # `tokensync run`'s default health port


def readme_commands() -> list[str]:
    """The ```sh blocks of the README section "The two commands", one command each."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n{HEADING}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    return [block.strip() for block in blocks]


def test_the_readme_has_two_one_line_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands), commands


def test_the_docs_show_the_same_run_command() -> None:
    """docs/operations/install.md ("Run from source") repeats the first command verbatim."""
    page = (REPO / "docs" / "operations" / "install.md").read_text()
    section = page.split("\n## Run from source\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    assert [block.strip() for block in blocks] == [readme_commands()[0]]


def test_ci_runs_the_readme_test_command_as_its_last_line() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[-1] == readme_commands()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the operator's servers bind: connections in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _ready() -> bool:
    try:
        with urllib.request.urlopen(READY_URL, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _scratch_copy(dest: Path) -> Path:
    """The repository as a clean clone has it (tracked and new files; no venv, no caches)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.mark.envtest
@pytest.mark.timeout(420)  # a fresh venv and `pip install -e .` come first
def test_the_first_command_installs_the_crd_and_starts_the_operator(
    control_plane: Any, tmp_path: Path
) -> None:
    command = readme_commands()[0]
    for port in (8080, 9090):  # the defaults the command relies on
        if not _port_free(port):
            pytest.skip(f"port {port} is in use on this machine; the command needs it")
    repo = _scratch_copy(tmp_path / "tokensync")
    env = {
        **os.environ,
        "KUBECONFIG": str(control_plane.kubeconfig),
        "PATH": f"{control_plane.bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    log = tmp_path / "command.log"
    with log.open("wb") as out:
        # A new session, so the whole tree (bash, pip, tokensync) can be stopped at once.
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: _ready() or process.poll() is not None,
            timeout=360,
            what="the README's first command to serve /readyz",
        )
        assert process.poll() is None, (
            f"the command exited {process.returncode}:\n"
            + (log.read_text(errors="replace")[-4000:])
        )
        crd = json.loads(
            control_plane.kubectl(
                "get", "crd", "oauth2credentials.tokensync.dev", "-o", "json"
            ).stdout
        )
        established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert established.get("Established") == "True"
        assert (repo / ".venv" / "bin" / "tokensync").exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
