"""`tokensync status`, `tokensync refresh --wait` and `kubectl tokensync ...` against the
real control plane and operator, with a user's kubeconfig (the admin one here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from operator_helpers import decode

pytestmark = pytest.mark.envtest

BIN = Path(sys.executable).parent


def run(cluster, *args: str, command: tuple[str, ...] = ("tokensync",), timeout: float = 90):
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.cp.kubeconfig),
        # kubectl finds plugins (kubectl-tokensync) on PATH.
        "PATH": os.pathsep.join([str(BIN), str(cluster.cp.bin_dir), os.environ["PATH"]]),
    }
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_status_lists_credentials_with_relative_times(cluster, operator, token_endpoint):
    cluster.create_credential("good", token_endpoint.add_client(lifetime=600))
    client = token_endpoint.add_client()
    cluster.source_secret("other", {"client_secret": client.secret}, labelled=False)
    cluster.create_credential("bad", client, secret_name="other", source=False)
    cluster.wait_ready("good", reason="TokenIssued")
    cluster.wait_ready("bad", status="False", reason="ReferenceNotLabeled")

    result = run(cluster, "status", "-n", cluster.ns)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "READY",
        "REASON",
        "SECRET",
        "EXPIRES",
        "IN",
        "NEXT",
        "REFRESH",
    ]
    table = {row.split()[0]: row.split() for row in rows}
    assert table["bad"][1:4] == ["False", "ReferenceNotLabeled", "bad"]
    good = table["good"]
    assert good[1:4] == ["True", "TokenIssued", "good"]
    # 600 s tokens: expires in 9m..10m, next refresh (at 2/3 of the life, minus jitter) sooner.
    assert re.fullmatch(r"(9m\d+s|10m)", good[4]), good
    assert re.fullmatch(r"\d+m\d*s?", good[5]), good

    everywhere = run(cluster, "status", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert everywhere.stdout.splitlines()[0].startswith("NAMESPACE")
    assert any(line.startswith(cluster.ns) for line in everywhere.stdout.splitlines())

    plugin = run(
        cluster,
        "tokensync",
        "status",
        "-n",
        cluster.ns,
        command=(str(cluster.cp.bin_dir / "kubectl"),),
    )
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout == result.stdout or "good" in plugin.stdout


def test_refresh_wait_returns_once_the_secret_holds_a_new_token(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("api", client)
    cluster.wait_ready("api", reason="TokenIssued")
    before = decode(cluster.secret("api"))["access_token"]

    result = run(cluster, "refresh", "api", "-n", cluster.ns, "--wait", "--timeout", "60s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "holds a new token" in result.stdout
    after = decode(cluster.secret("api"))["access_token"]
    assert after != before
    assert after == client.issued[-1].token
    assert after not in result.stdout and before not in result.stdout
    status = cluster.credential("api")["status"]
    requested = cluster.credential("api")["metadata"]["annotations"][
        "tokensync.dev/refresh-requested-at"
    ]
    assert status["lastHandledRefreshRequest"] == requested
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", requested)

    # The plugin too; a second request in a row is a new value, so it is served again.
    again = run(
        cluster, "tokensync", "refresh", "api", "-n", cluster.ns, "--wait",
        command=(str(cluster.cp.bin_dir / "kubectl"),),
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert decode(cluster.secret("api"))["access_token"] not in (before, after)


def test_refresh_wait_reports_a_failure(cluster, operator, token_endpoint):
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("flaky", client)
    cluster.wait_ready("flaky", reason="TokenIssued")
    token_endpoint.fail(client, 400)
    result = run(cluster, "refresh", "flaky", "-n", cluster.ns, "--wait", "--timeout", "40s")
    assert result.returncode == 1
    assert "refresh failed" in result.stdout


def test_refresh_of_a_missing_credential_fails_cleanly(cluster, operator):
    result = run(cluster, "refresh", "nope", "-n", cluster.ns)
    assert result.returncode == 1
    assert "404" in result.stderr and "Traceback" not in result.stderr
