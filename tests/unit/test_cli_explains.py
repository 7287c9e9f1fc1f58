"""The CLI explains itself: the pure parts of `status`, `refresh --wait`, `doctor`, the
start-up banner, `check`'s unknown fields, and the entry points' behaviour without a
cluster (bare `tokensync`, --version, a bad kubeconfig)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokensync import cli, crd, doctor
from tokensync.check import NEWLINE_HINT, newline_hint
from tokensync.statuscmd import (
    Progress,
    kubeconfig_problem,
    not_picked_up,
    refresh_state,
    status_item,
    unacknowledged,
)

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def credential(status: dict[str, Any] | None, *, generation: int = 1, age: float = 60) -> dict:
    created = iso(NOW - timedelta(seconds=age))
    metadata = {
        "namespace": "a",
        "name": "lms",
        "generation": generation,
        "creationTimestamp": created,
        "managedFields": [{"manager": "kubectl", "operation": "Update", "time": created}],
    }
    body: dict[str, Any] = {"metadata": metadata, "spec": {}}
    if status is not None:
        body["status"] = status
    return body


READY = {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "token issued"}


# -- status: who picked it up ----------------------------------------------------------


def test_a_served_credential_is_picked_up() -> None:
    assert not_picked_up(credential({"observedGeneration": 1, "conditions": [READY]}), NOW) is None


def test_no_status_after_the_grace_period_says_no_operator() -> None:
    problem = not_picked_up(credential(None, age=45), NOW)
    assert problem == "no operator has picked it up: no status after 45s"
    # A credential created a moment ago is not blamed yet.
    assert not_picked_up(credential(None, age=3), NOW) is None
    # Defaults of the CRD's status schema are no operator's status.
    assert not_picked_up(credential({"observedGeneration": 0}, age=45), NOW) == problem
    # An annotation written since (e.g. by `refresh`) does not restart the clock.
    annotated = credential(None, age=45)
    annotated["metadata"]["managedFields"].append({"operation": "Update", "time": iso(NOW)})
    assert not_picked_up(annotated, NOW) == problem


def test_an_old_observed_generation_says_no_operator() -> None:
    stale = credential({"observedGeneration": 1, "conditions": [READY]}, generation=2, age=120)
    problem = not_picked_up(stale, NOW)
    assert problem is not None
    assert "status.observedGeneration is 1, the credential's generation 2, for 2m" in problem


def test_the_newest_spec_write_counts_not_a_status_write() -> None:
    body = credential({"observedGeneration": 1}, generation=2, age=600)
    body["metadata"]["managedFields"] += [
        {"manager": "kubectl", "operation": "Update", "time": iso(NOW - timedelta(seconds=5))},
        {"manager": "tokensync", "subresource": "status", "time": iso(NOW)},
    ]
    assert not_picked_up(body, NOW) is None  # the spec changed 5 s ago


def test_json_and_yaml_items_use_the_api_field_names() -> None:
    status = {
        "observedGeneration": 1,
        "conditions": [READY],
        "secretName": "lms-token",
        "expiresAt": "2026-11-30T12:10:00Z",
        "nextRefreshTime": "2026-11-30T12:06:40Z",
        "lastRefreshTime": "2026-11-30T11:59:00Z",
    }
    item = status_item(credential(status), NOW)
    assert item["secretName"] == "lms-token"
    assert item["expiresAt"] == "2026-11-30T12:10:00Z"
    assert item["nextRefreshTime"] == "2026-11-30T12:06:40Z"
    assert (item["ready"], item["reason"], item["message"]) == (
        "True",
        "TokenIssued",
        "token issued",
    )
    assert item["pickedUp"] is True and "problem" not in item
    assert not [k for k in item if " " in k or k.isupper()]
    lost = status_item(credential(None, age=60), NOW)
    assert lost["pickedUp"] is False and "no operator" in lost["problem"]


# -- refresh --wait: what it waits for -------------------------------------------------------


def test_refresh_states() -> None:
    requested = iso(NOW)
    waiting = credential({"observedGeneration": 1, "conditions": [READY]})
    assert refresh_state(waiting, requested, "t0", "t0", NOW) == (
        "waiting for the operator to pick up the request"
    )
    floor = credential({"conditions": [READY], "lastRefreshTime": iso(NOW - timedelta(seconds=3))})
    assert refresh_state(floor, requested, "t0", "t0", NOW) == (
        "waiting for the operator's 10s minimum between token requests (until 12:00:07)"
    )
    busy = credential(
        {"conditions": [READY, {"type": "Refreshing", "status": "True", "reason": "Pending"}]}
    )
    assert refresh_state(busy, requested, "t0", "t0", NOW) == "token request in progress (Pending)"
    served = credential({"conditions": [READY], "lastHandledRefreshRequest": requested})
    assert refresh_state(served, requested, "t0", "t0", NOW) == (
        "request served; waiting for the Secret"
    )


def test_an_unacknowledged_request_names_the_check() -> None:
    requested = iso(NOW)
    ignored = credential({"conditions": [READY], "lastHandledRefreshRequest": "earlier"})
    assert unacknowledged(ignored, requested, NOW, waited=5) is None
    problem = unacknowledged(ignored, requested, NOW, waited=25)
    assert problem is not None
    assert "not picked up by any operator after 25s" in problem
    assert "status.lastHandledRefreshRequest is earlier" in problem
    assert "kubectl -n tokensync-system get pods" in problem
    # Inside the 10 s floor the operator may not act yet: the grace starts after it.
    floored = credential({"lastRefreshTime": iso(NOW + timedelta(seconds=5))})
    assert unacknowledged(floored, requested, NOW, waited=21) is None
    served = credential({"lastHandledRefreshRequest": requested})
    assert unacknowledged(served, requested, NOW, waited=100) is None


def test_progress_is_quiet_off_a_terminal_and_for_short_waits() -> None:
    stream = io.StringIO()
    quiet = Progress(stream)  # StringIO is no terminal
    quiet.update("waiting", 5)
    quiet.done()
    assert stream.getvalue() == ""
    shown = io.StringIO()
    progress = Progress(shown, enabled=True)
    progress.update("waiting for the operator", 1.0)
    assert shown.getvalue() == ""  # under 2 s: nothing
    progress.update("waiting for the operator", 2.5)
    progress.update("waiting for the operator", 3.5)
    progress.update("token request in progress", 4.5)
    progress.done()
    text = shown.getvalue()
    assert text.count("waiting for the operator\n") == 1  # a line per state change
    assert "token request in progress\n" in text
    assert "\r/ 2s " in text and "\r- 3s " in text  # the spinner and elapsed time
    assert text.endswith("\r\033[K")  # cleared when done


def test_kubeconfig_problems_are_one_line() -> None:
    missing = kubeconfig_problem("/nonexistent", FileNotFoundError("x"))
    assert missing == "no kubeconfig at /nonexistent (set KUBECONFIG or pass --kubeconfig)"


# -- the entry points, as a user runs them -------------------------------------------------


def tokensync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokensync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_version_and_bare_tokensync_help() -> None:
    from tokensync import __version__

    version = tokensync("--version")
    assert (version.returncode, version.stdout) == (0, f"tokensync {__version__}\n")
    bare = tokensync()
    assert bare.returncode == 0, bare.stderr
    for command in ("run", "check", "status", "refresh", "doctor", "version"):
        assert f"\n    {command} " in bare.stdout, command
    assert "tokensync doctor" in bare.stdout


@pytest.mark.parametrize("command", [["status"], ["refresh", "x"], ["doctor"]])
def test_a_missing_kubeconfig_is_one_clean_line(command: list[str]) -> None:
    result = tokensync(*command, env={"KUBECONFIG": "/nonexistent"})
    assert result.returncode == 1
    assert result.stderr == (
        f"tokensync {command[0]}: no kubeconfig at /nonexistent "
        "(set KUBECONFIG or pass --kubeconfig)\n"
    )


def test_a_broken_kubeconfig_is_one_clean_line(tmp_path: Path) -> None:
    broken = tmp_path / "config"
    broken.write_text("clusters: [\n")
    result = tokensync("status", env={"KUBECONFIG": str(broken)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"tokensync status: the kubeconfig {broken} is not valid YAML")


def test_an_unreachable_api_server_is_one_clean_line(tmp_path: Path) -> None:
    from servers.quirky import free_port

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    result = tokensync("status", env={"KUBECONFIG": str(path)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("tokensync status: cannot reach the Kubernetes API (")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["refresh"], "which credentials? give NAME..., -l SELECTOR or --all"),
        (["refresh", "a", "--all"], "give NAME..., -l SELECTOR or --all, not several"),
        (["refresh", "a", "-A"], "-A goes with --all or -l SELECTOR, not with names"),
    ],
)
def test_refresh_needs_one_way_of_choosing(args: list[str], problem: str) -> None:
    result = tokensync(*args, env={"KUBECONFIG": "/nonexistent"})
    assert (result.returncode, result.stderr) == (2, f"tokensync refresh: {problem}\n")


def test_refresh_selector_and_all_parse() -> None:
    parsed = cli.build_parser().parse_args(["refresh", "-l", "team=a", "-A", "--wait"])
    assert (parsed.selector, parsed.all_namespaces, parsed.names) == ("team=a", True, [])
    assert cli.build_parser().parse_args(["refresh", "--all", "-n", "x"]).all
    assert cli.build_parser().parse_args(["status", "-o", "yaml"]).output == "yaml"


# -- the start-up banner -------------------------------------------------------------------


def run_args(*argv: str) -> Any:
    return cli.build_parser().parse_args(["run", *argv])


def test_banner_names_version_scope_and_settings() -> None:
    from tokensync import __version__

    banner, warnings = cli.startup_banner(run_args("-A"))
    assert banner.startswith(f"tokensync {__version__} starting; scope: all namespaces; ")
    assert "private networks: denied" in banner
    assert "insecure specs: refused" in banner
    assert "metrics: https :9090" in banner
    assert warnings == []
    banner, _ = cli.startup_banner(run_args("-n", "a", "-n", "b", "--peering", "lease"))
    assert "scope: namespaces a,b" in banner
    assert "replicas: leader election on Lease lease" in banner


def test_banner_warns_for_every_guard_that_is_off() -> None:
    banner, warnings = cli.startup_banner(
        run_args("-A", "--no-deny-private-networks", "--allow-insecure", "--metrics-insecure")
    )
    assert "private networks: ALLOWED" in banner
    assert [w.split(":")[0] for w in warnings] == [
        "--no-deny-private-networks",
        "--allow-insecure",
        "--metrics-insecure",
    ]


# -- check: unknown fields, the newline hint -------------------------------------------------


def test_unknown_fields_are_named_as_the_api_server_names_them() -> None:
    body = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "x", "anything": "goes"},
        "spec": {
            "tokenURL": "https://idp.example/token",
            "clientId": "x",
            "clientSecretRef": {"name": "s", "key": "k", "nmae": "typo"},
            "secret": {"labels": {"free": "form"}},
            "scopeObject": {"free": ["form"]},
        },
    }
    assert crd.unknown_fields(body, crd.schema()) == [
        "unknown field \"spec.clientId\" (did you mean 'clientID'?)",
        "unknown field \"spec.clientSecretRef.nmae\" (did you mean 'name'?)",
    ]


def test_check_reports_a_misspelt_field_before_anything_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "x"},
        "spec": {"tokenURL": "https://idp.example/token", "clientId": "x"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code = cli.main(["check", "-f", str(path)])
    out = capsys.readouterr().out
    assert code == 2
    assert "unknown field \"spec.clientId\" (did you mean 'clientID'?)" in out
    assert "exactly one of clientID and clientIDRef" not in out


def test_the_newline_hint_replaces_the_auth_hint() -> None:
    refused = {"ok": False, "httpStatus": 401, "hint": "try clientAuthentication: body"}
    hinted = newline_hint(refused, "client secret")
    assert hinted["hint"] == NEWLINE_HINT.format(what="client secret")
    assert "clientAuthentication" not in hinted["hint"]
    assert newline_hint(refused, None) is refused
    tls = {"ok": False, "httpStatus": None, "hint": "set tls.caRef"}
    assert newline_hint(tls, "client secret") is tls


# -- doctor ------------------------------------------------------------------------------


def installed_crd(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(crd.packaged()))
    body["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    version = body["spec"]["versions"][0]
    version.update(changes)
    return body


def test_doctor_crd() -> None:
    ours = crd.packaged()
    assert doctor.check_crd(installed_crd(), ours).level == doctor.OK
    missing = doctor.check_crd(None, ours)
    assert (missing.level, missing.detail) == (doctor.FAIL, "not installed")
    old = installed_crd(additionalPrinterColumns=[])
    finding = doctor.check_crd(old, ours)
    assert finding.level == doctor.WARN and "additionalPrinterColumns differ" in finding.detail
    other = installed_crd(name="v1beta9")
    assert doctor.check_crd(other, ours).level == doctor.FAIL
    assert "does not serve v1alpha1 (serves v1beta9)" in doctor.check_crd(other, ours).detail


def deployment(ready: int = 1, args: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "tokensync-system", "name": "tokensync"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "tokensync"}},
            "template": {
                "spec": {
                    "serviceAccountName": "tokensync",
                    "containers": [{"image": "img:1", "args": args or ["run", "-A"]}],
                }
            },
        },
        "status": {"readyReplicas": ready},
    }


def test_doctor_deployment() -> None:
    assert doctor.check_deployment([deployment()], [], "x").level == doctor.OK
    none = doctor.check_deployment([], [], "in tokensync-system")
    assert none.level == doctor.FAIL and none.detail.startswith("none found in tokensync-system")
    pod = {
        "metadata": {"name": "tokensync-abc"},
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
    }
    down = doctor.check_deployment([deployment(ready=0)], [pod], "x")
    assert down.level == doctor.FAIL
    assert down.detail == "0/1 replicas ready: pod tokensync-abc: ImagePullBackOff"


def test_doctor_reads_the_operator_s_flags() -> None:
    args = ["run", "--namespace=a", "--namespace", "b", "--peering=lead"]
    operator = doctor.operator_of(deployment(args=args))
    assert (operator.all_namespaces, operator.namespaces, operator.lease) == (
        False,
        ("a", "b"),
        "lead",
    )
    reviews = doctor.access_reviews(operator)
    spaces = {r["spec"]["resourceAttributes"].get("namespace") for r in reviews}
    assert spaces == {"a", "b", "tokensync-system"}  # the Lease's namespace too
    allowed = [True] * len(reviews)
    assert doctor.check_rbac(operator, reviews, allowed).level == doctor.OK
    allowed[2] = False  # patch oauth2credentials/status in a
    finding = doctor.check_rbac(operator, reviews, allowed)
    assert finding.level == doctor.FAIL
    assert finding.detail == "may not: patch oauth2credentials/status.tokensync.dev in a"


def test_doctor_lease() -> None:
    operator = doctor.operator_of(deployment(args=["run", "-A", "--peering=lead"]))
    assert doctor.check_lease(doctor.operator_of(deployment()), None, NOW) is None  # standalone
    assert doctor.check_lease(operator, None, NOW).level == doctor.FAIL
    fresh = {"spec": {"holderIdentity": "pod-1", "renewTime": iso(NOW), "leaseDurationSeconds": 15}}
    assert doctor.check_lease(operator, fresh, NOW).level == doctor.OK
    stale_time = iso(NOW - timedelta(minutes=5))
    stale = {"spec": {"holderIdentity": "pod-1", "renewTime": stale_time}}
    finding = doctor.check_lease(operator, stale, NOW)
    assert finding.level == doctor.FAIL and "not renewed (last 5m ago)" in finding.detail


def test_doctor_shards() -> None:
    """With --shards there is no Lease named --peering: every shard Lease is checked."""
    operator = doctor.operator_of(deployment(args=["run", "-A", "--peering=lead", "--shards=3"]))
    assert operator.shards == 3

    def shard(n: int, holder: str, renewed: datetime = NOW) -> dict:
        spec = {"holderIdentity": holder, "renewTime": iso(renewed), "leaseDurationSeconds": 15}
        return {"metadata": {"name": f"lead-shard-{n}"}, "spec": spec}

    ok = doctor.check_shards(operator, [shard(0, "a"), shard(1, "b"), shard(2, "a")], NOW)
    assert (ok.level, ok.detail) == (doctor.OK, "all held by 2 replicas (a: 2, b: 1)")
    stale = shard(2, "c", NOW - timedelta(minutes=1))
    bad = doctor.check_shards(operator, [shard(0, "a"), stale], NOW)
    assert bad.level == doctor.FAIL
    assert bad.detail.startswith("2 of 3 not held or not renewed (shards 1, 2)")
    assert doctor.check_shards(doctor.operator_of(deployment()), [], NOW) is None
    leases = [
        r["spec"]["resourceAttributes"]
        for r in doctor.access_reviews(operator)
        if r["spec"]["resourceAttributes"]["resource"] == "leases"
    ]
    assert [a["verb"] for a in leases] == ["get", "list", "create", "update"]
    assert not any("name" in a for a in leases)


def test_doctor_admission_policy() -> None:
    operator = doctor.operator_of(deployment())
    user = "system:serviceaccount:tokensync-system:tokensync"
    policy = {
        "metadata": {"name": "p"},
        "spec": {"matchConditions": [{"expression": f"request.userInfo.username == '{user}'"}]},
    }
    binding = {"spec": {"policyName": "p"}}
    assert doctor.check_admission_policy(operator, [policy], [binding]).level == doctor.OK
    assert doctor.check_admission_policy(operator, [policy], []).level == doctor.FAIL
    assert doctor.check_admission_policy(operator, [], []).level == doctor.WARN
    assert doctor.check_admission_policy(operator, None, None).level == doctor.WARN
    # deploy/'s policies match the holders of the marker permission, not a username.
    marked = {
        "metadata": {"name": "m"},
        "spec": {
            "matchConditions": [
                {
                    "expression": "authorizer.group('tokensync.dev').resource('admissionpolicies')"
                    ".name('operator').check('subject').allowed() && !authorizer.group("
                    "'tokensync.dev').resource('admissionpolicies').name('operator')"
                    ".check('exempt').allowed()"
                }
            ]
        },
    }
    bound = {"spec": {"policyName": "m"}}
    check = doctor.check_admission_policy
    assert check(operator, [marked], [bound], (True, False)).level == doctor.OK
    not_subject = check(operator, [marked], [bound], (False, False))
    assert not_subject.level == doctor.WARN and "tokensync-admission-subject" in not_subject.detail
    exempted = check(operator, [marked], [bound], (True, True))
    assert exempted.level == doctor.WARN and "wildcard role" in exempted.detail
    assert check(operator, [marked], [], (True, False)).level == doctor.FAIL


def test_doctor_output() -> None:
    out = io.StringIO()
    doctor.render(
        [
            doctor.Finding(doctor.OK, "CRD x", "fine", "never shown"),
            doctor.Finding(doctor.FAIL, "operator Deployment a/b", "0/1 ready", "look at it"),
        ],
        out,
    )
    assert out.getvalue() == (
        "[ok  ] CRD x: fine\n"
        "[FAIL] operator Deployment a/b: 0/1 ready\n"
        "       fix: look at it\n"
        "1 problem(s), 0 warning(s).\n"
    )


class _ApiError:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body, self.reason = status, json.dumps(body), "Not Found"


def test_a_missing_crd_is_named_but_a_missing_credential_is_not() -> None:
    from tokensync.statuscmd import _api_message

    no_type = _ApiError(404, {"message": "the server could not find the requested resource"})
    assert _api_message(no_type) == (
        "Kubernetes API 404: the server could not find the requested resource "
        "(is the OAuth2Credential CRD installed? `tokensync doctor` checks)"
    )
    gone = {"message": 'oauth2credentials "x" not found', "details": {"name": "x"}}
    assert _api_message(_ApiError(404, gone)) == (
        'Kubernetes API 404: oauth2credentials "x" not found'
    )
