"""`tokensync status`, `tokensync refresh --wait` and `kubectl tokensync ...` against the
real control plane and operator, with a user's kubeconfig (the admin one here)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from operator_helpers import decode

pytestmark = pytest.mark.envtest

BIN = Path(sys.executable).parent


def user_env(cluster) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(cluster.cp.kubeconfig),
        # kubectl finds plugins (kubectl-tokensync) on PATH.
        "PATH": os.pathsep.join([str(BIN), str(cluster.cp.bin_dir), os.environ["PATH"]]),
    }


def run(cluster, *args: str, command: tuple[str, ...] = ("tokensync",), timeout: float = 90):
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=user_env(cluster),
        timeout=timeout,
        check=False,
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


def run_in_terminal(cluster, *args: str, timeout: float = 90) -> tuple[int, str]:
    """The command with a pseudo-terminal as stdout and stderr, as a user runs it; its
    exit status and everything it wrote there."""
    controller, terminal = pty.openpty()
    env = {**user_env(cluster), "TERM": "xterm"}
    process = subprocess.Popen(
        ["tokensync", *args], stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the other side closed (Linux: EIO)
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    code = process.wait(timeout=10)
    return code, output.decode(errors="replace")


def test_status_wide_json_and_yaml(cluster, operator, token_endpoint):
    client = token_endpoint.add_client()
    cluster.source_secret("other", {"client_secret": client.secret}, labelled=False)
    cluster.create_credential("bad", client, secret_name="other", source=False)
    ready = cluster.wait_ready("bad", status="False", reason="ReferenceNotLabeled")

    wide = run(cluster, "status", "-n", cluster.ns, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = wide.stdout.splitlines()
    assert header.split()[-1] == "MESSAGE"
    assert row.endswith(ready["message"].replace("\n", " "))

    listed = json.loads(run(cluster, "status", "-n", cluster.ns, "-o", "json").stdout)
    (item,) = listed
    status = cluster.credential("bad")["status"]
    assert item["name"] == "bad" and item["namespace"] == cluster.ns
    assert (item["ready"], item["reason"], item["message"]) == (
        "False",
        "ReferenceNotLabeled",
        ready["message"],
    )
    assert item["observedGeneration"] == status["observedGeneration"]
    assert item["pickedUp"] is True
    assert yaml.safe_load(run(cluster, "status", "-n", cluster.ns, "-o", "yaml").stdout) == [item]


def test_refresh_by_selector_and_all(cluster, operator, token_endpoint):
    for name in ("one", "two", "other"):
        client = token_endpoint.add_client(lifetime=3600)
        cluster.create_credential(name, client, secret_name=f"{name}-client")
    for name in ("one", "two", "other"):
        cluster.wait_ready(name, reason="TokenIssued")
    for name in ("one", "two"):
        cluster.patch_credential(name, {"metadata": {"labels": {"team": "billing"}}})
    before = {n: decode(cluster.secret(n))["access_token"] for n in ("one", "two", "other")}

    result = run(cluster, "refresh", "-n", cluster.ns, "-l", "team=billing", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("refresh requested at") == 2
    assert result.stdout.count("holds a new token") == 2
    after = {n: decode(cluster.secret(n))["access_token"] for n in ("one", "two", "other")}
    assert after["one"] != before["one"] and after["two"] != before["two"]
    assert after["other"] == before["other"]

    every = run(cluster, "refresh", "-n", cluster.ns, "--all")
    assert every.returncode == 0, every.stderr
    requested = [line.split(":")[0] for line in every.stdout.splitlines()]
    assert requested == [f"oauth2credential {cluster.ns}/{n}" for n in ("one", "other", "two")]


def test_a_refresh_inside_the_request_floor_shows_progress_on_a_terminal(
    cluster, operator, token_endpoint
):
    """A second refresh right after the first waits for the operator's 10 s minimum
    between token requests: on a terminal the wait says so, with a spinner."""
    cluster.create_credential("api", token_endpoint.add_client(lifetime=3600))
    cluster.wait_ready("api", reason="TokenIssued")
    first = run(cluster, "refresh", "api", "-n", cluster.ns, "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stderr == ""  # off a terminal: no progress

    code, output = run_in_terminal(cluster, "refresh", "api", "-n", cluster.ns, "--wait")
    assert code == 0, output
    assert output.count("minimum between token requests (until") == 1  # one line per state
    assert re.search(r"\r[|/\\-] \d+s ", output), output  # the spinner
    last = output.replace("\x1b[K", "").rstrip().splitlines()[-1]
    assert last.startswith(f"Secret {cluster.ns}/api holds a new token"), output


def test_without_an_operator_status_and_refresh_say_so(cluster, own_operator):
    """No operator runs (own_operator stops the shared one and starts none): `refresh
    --wait` and `status` say that nothing picked the credential up and how to check,
    on a terminal with progress, in a pipe without."""
    client_spec = {
        "tokenURL": "https://127.0.0.1:9/oauth2/token",
        "clientID": "nobody",
        "clientSecretRef": {"name": "client", "key": "client_secret"},
    }
    cluster.create_credential_object("orphan", client_spec)
    args = ("refresh", "orphan", "-n", cluster.ns, "--wait", "--timeout", "25s")
    piped = subprocess.Popen(
        ["tokensync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=user_env(cluster),
    )
    code, output = run_in_terminal(cluster, *args)
    out, err = piped.communicate(timeout=60)

    check = "kubectl -n tokensync-system get pods"
    assert code == 1
    assert "waiting for the operator to pick up the request\n" in output.replace("\r\n", "\n")
    assert "not picked up by any operator after 2" in output
    assert "timed out after 25s" in output and check in output
    assert piped.returncode == 1
    assert "not picked up by any operator" in err and check in err
    assert "\r" not in err and "waiting for the operator" not in err  # no progress
    assert "timed out after 25s" in out and "Traceback" not in out + err

    status = run(cluster, "status", "-n", cluster.ns)
    assert status.returncode == 0, status.stderr
    assert f"{cluster.ns}/orphan: no operator has picked it up: no status after" in status.stdout
    assert status.stdout.rstrip().endswith(
        f"Is the operator running? Check: {check} (or: tokensync doctor)"
    )


def test_doctor_on_deploy_s_installation(cluster):
    """deploy/ as the session installed it: CRD, RBAC and admission policy are right;
    the Deployment has no ready pod (no kubelet runs here), which doctor reports."""
    result = run(cluster, "doctor", "-n", "tokensync-system")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[ok  ] CRD oauth2credentials.tokensync.dev: v1alpha1 served")
    assert lines[1].startswith(
        "[FAIL] operator Deployment tokensync-system/tokensync: 0/1 replicas ready"
    )
    assert (
        "[ok  ] RBAC of ServiceAccount tokensync-system/tokensync: may do its job in all "
        "namespaces" in result.stdout
    )
    assert "[ok  ] admission policy: ValidatingAdmissionPolicy tokensync-operator-secrets" in (
        result.stdout
    )
    assert lines[-1] == "1 problem(s), 0 warning(s)."


def test_doctor_names_what_a_broken_installation_lacks(cluster):
    """An operator Deployment whose ServiceAccount has no RBAC, no admission policy and
    no Lease yet."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "broken",
            "labels": {
                "app.kubernetes.io/name": "tokensync",
                "app.kubernetes.io/component": "operator",
            },
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "broken"}},
            "template": {
                "metadata": {"labels": {"app": "broken"}},
                "spec": {
                    "serviceAccountName": "nobody",
                    "containers": [
                        {
                            "name": "operator",
                            "image": "tokensync:test",
                            "args": ["run", f"--namespace={cluster.ns}", "--peering=lead"],
                        }
                    ],
                },
            },
        },
    }
    cluster.cp.kubectl("apply", "-n", cluster.ns, "-f", "-", input=json.dumps(deployment))
    result = run(cluster, "doctor", "-n", cluster.ns)
    assert result.returncode == 1
    out = result.stdout
    assert f"[FAIL] Lease {cluster.ns}/lead: missing" in out
    assert (
        f"[FAIL] RBAC of ServiceAccount {cluster.ns}/nobody: may not: list "
        f"oauth2credentials.tokensync.dev in {cluster.ns}; watch oauth2credentials" in out
    )
    assert "fix: grant the operator's rules" in out
    assert (
        f"[warn] admission policy: no ValidatingAdmissionPolicy applies to "
        f"system:serviceaccount:{cluster.ns}:nobody (it is not a subject of the "
        "ClusterRoleBinding tokensync-admission-subject)" in out
    )
    assert "Traceback" not in result.stderr
