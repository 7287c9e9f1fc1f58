"""hack/demo.sh: no cluster, no Docker; at least two rotations; Ctrl-C stops everything."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fixtures.controlplane import in_ci

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.envtest


def _descendants(root: int) -> set[int]:
    """Every process below `root`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(400)
def test_demo_shows_rotations_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    build = subprocess.run(
        ["bash", str(REPO / "tests" / "envtest" / "build.sh")], capture_output=True, check=False
    )
    if build.returncode == 3 and not in_ci():
        pytest.skip("the demo's control plane needs Go >= 1.24 (or KUBEBUILDER_ASSETS)")
    env = {**os.environ, "TOKENSYNC_DEMO_LIFETIME": "20"}
    process = subprocess.Popen(
        ["bash", str(REPO / "hack" / "demo.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout or []], daemon=True
    ).start()
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while sum("rotated" in line for line in seen) < 2:
            assert process.poll() is None, "demo exited:\n" + "".join(seen)
            assert time.monotonic() < deadline, "no two rotations:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        started = _descendants(process.pid)
        assert len(started) >= 4  # etcd, kube-apiserver, kube-controller-manager, operator
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert process.wait(timeout=90) == 0, "".join(seen)
    time.sleep(0.5)
    assert [pid for pid in started if _alive(pid)] == []

    output = "".join(seen)
    fingerprints = re.findall(r"access_token (sha256:[0-9a-f]{12})", output)
    assert len(set(fingerprints)) == len(fingerprints) >= 3
    assert re.search(r"expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+s\)", output)
    assert "tok-" not in output  # fingerprints only, never a token
