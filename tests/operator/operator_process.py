"""The real operator as a subprocess (`tokensync run`), and what tests check in its
output. A module of its own, not conftest.py: several test directories have a conftest,
and `from operator_process import ...` would find whichever was imported first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from token_endpoint import TokenEndpoint

from tokensync.redact import secret_variants

REPO = Path(__file__).resolve().parents[2]
OPERATOR_SA = ("tokensync-system", "tokensync")
OPERATOR_USER = "system:serviceaccount:tokensync-system:tokensync"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Operator:
    """A running `tokensync run`; its whole output goes to a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/readyz", timeout=1
            ) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def stop(self, grace: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after `grace` seconds (as the kubelet does after
        terminationGracePeriodSeconds); whether it had to be killed."""
        if self.process.poll() is not None:
            return False
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return True
        return False


HOOKS = Path(__file__).resolve().parent / "hooks"  # sitecustomize.py: fault injection
SYSTEM_PYTHON = Path("/usr/bin/python3")


def python_for_any_user() -> list[str] | None:
    """A command starting this environment's Python that any user may run: the test's own
    interpreter may live where only root can enter (pyenv under /root), so the system
    python3 of the same version, with this environment's site-packages. None if there
    is no such interpreter."""
    try:
        version = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    if version != str(sys.version_info[:2]):
        return None
    site = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    boot = f"import site; site.addsitedir({site!r}); import runpy; "
    boot += "runpy.run_module('tokensync', run_name='__main__', alter_sys=True)"
    return [str(SYSTEM_PYTHON), "-c", boot]


def start_operator(
    kubeconfig: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    run_as: tuple[int, int] | None = None,
    ready_timeout: float = 60.0,
) -> Operator:
    """`tokensync run` with `extra` arguments; `env` adds variables (and puts the fault
    injection hooks on its path); ``run_as=(uid, gid)`` drops a root test run to that user
    and group with no supplementary groups (the files it reads must allow it)."""
    health, metrics = _free_port(), _free_port()
    python = [sys.executable, "-m", "tokensync"]
    if run_as is not None:
        python = python_for_any_user() or python
    args = [
        *python,
        "run",
        "--health-host=127.0.0.1",
        f"--health-port={health}",
        f"--metrics-port={metrics}",
        # Plain HTTP for Operator.metrics(); tests of the secure default pass
        # --no-metrics-insecure (the later flag wins).
        "--metrics-insecure",
        *extra,
    ]
    if not any(a.startswith(("--namespace", "-n", "--all-namespaces")) for a in extra):
        args.append("--all-namespaces")
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    environment.pop("REQUESTS_CA_BUNDLE", None)
    if env:
        path = environment.get("PYTHONPATH")
        environment.update(env, PYTHONPATH=f"{HOOKS}{os.pathsep}{path}" if path else str(HOOKS))
    log = log_path.open("ab")
    ids = {} if run_as is None else {"user": run_as[0], "group": run_as[1], "extra_groups": []}
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=environment, **ids)
    operator = Operator(process, log_path, health, metrics)
    deadline = time.monotonic() + ready_timeout
    while not operator.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            operator.stop()
            raise AssertionError("operator did not become ready:\n" + operator.log()[-4000:])
        time.sleep(0.2)
    return operator


def find_secrets(text: str, endpoint: TokenEndpoint) -> list[str]:
    """Every secret spelling (raw, base64, URL-encoded, base64 of id:secret) in text."""
    found = []
    for client in list(endpoint.clients.values()):
        for secret in client.all_secrets:
            found += [v for v in secret_variants(secret, client_id=client.client_id) if v in text]
    for token in endpoint.all_tokens():
        found += [v for v in secret_variants(token) if v in text]
    return found
