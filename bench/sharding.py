"""Sharding measured: the real operator (`tokensync run --peering tokensync --shards S`,
as ServiceAccount tokensync-system/tokensync with the RBAC of deploy/ and deploy/sharding)
against the test control plane, N credentials of short-lived tokens at an HTTPS token
endpoint that records every request (tests/operator/token_endpoint.py).

Phases, one run:
  1. one replica serves all N credentials: its CPU seconds and memory over a window;
  2. two more replicas start: the time until the shards are balanced, then the CPU and
     memory of each of the three over the same window;
  3. kill -9 of one replica: the time until its shards are held again by the others;
  4. a third replica again, then SIGSTOP of one (cut off from the API server): the time
     until its shards are held by the others; SIGCONT, and its writes checked;
  then: expired-token seconds over the whole run (from the endpoint's records: time a
  credential had no unexpired token issued), token requests versus the ideal number, and
  the API server's audit log checked for any write by a replica to a credential's Secret
  or status outside its own current shard Lease (no two replicas serving one credential).

With --profile: py-spy records replica-1 in phase 1 and replica-2 (started among the
others) in phase 2, and the run stops after phase 2 (the profiler competes for the cores,
so the later phases' timings would not be this run's to report). Each summary gives
thread-milliseconds per renewal of the whole cluster in its window: a part that stays the
same in phase 2 is paid by every replica whatever it holds.

Measures and prints; never fails. Compare ratios, not seconds (see bench/README.md).

    .venv/bin/python bench/sharding.py                       # 300 x 60 s, 32 shards
    .venv/bin/python bench/sharding.py --credentials 3000 --lifetime 300
    .venv/bin/python bench/sharding.py --credentials 3000 --lifetime 300 --window 300 --profile
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "operator"), str(REPO / "bench")]

import kubernetes  # noqa: E402
import trustme  # noqa: E402
import yaml  # noqa: E402
from refresh_at_scale import (  # noqa: E402
    OPERATOR_SA,
    Profiler,
    admin_client,
    build_binaries,
    find_py_spy,
    proc_sample,
    refresh_age,
    start_operator,
)
from token_endpoint import TokenEndpoint  # noqa: E402

from fixtures import fencing  # noqa: E402
from fixtures.controlplane import _remove_state, start_control_plane  # noqa: E402

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
SOURCE_LABEL = {"tokensync.dev/credential-source": "true"}
PREFIX, LEASE_NAMESPACE = "tokensync", "tokensync-system"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(probe, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None and value is not False:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def holders(coordination) -> dict[int, str]:
    return fencing.lease_holders(coordination, LEASE_NAMESPACE, PREFIX)


def balanced(coordination, live: set[str], shards: int) -> bool:
    table = holders(coordination)
    if len(table) != shards or not set(table.values()) <= live:
        return False
    counts = [Counter(table.values())[r] for r in live]
    return max(counts) - min(counts) <= 1


def create_credentials(api, ns: str, endpoint, ca, n: int, lifetime: int, threads: int):
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {"name": "endpoint-ca", "labels": SOURCE_LABEL},
            "data": {"ca.crt": ca.cert_pem.bytes().decode()},
        },
    )
    allowed = endpoint.url.split("/oauth2")[0] + "/"
    clients = {f"cred-{i:05d}": endpoint.add_client(lifetime) for i in range(n)}

    def create(item: tuple[str, Any]) -> None:
        name, client = item
        core.create_namespaced_secret(
            ns,
            {
                "metadata": {
                    "name": f"client-{name}",
                    "labels": SOURCE_LABEL,
                    "annotations": {"tokensync.dev/allowed-token-urls": allowed},
                },
                "stringData": {"client_secret": client.secret},
            },
        )
        spec = {
            "tokenURL": endpoint.url,
            "clientID": client.client_id,
            "clientSecretRef": {"name": f"client-{name}", "key": "client_secret"},
            "tls": {"caRef": {"kind": "ConfigMap", "name": "endpoint-ca", "key": "ca.crt"}},
        }
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OAuth2Credential"}
        body |= {"metadata": {"name": name}, "spec": spec}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, clients.items()))
    return clients


def all_issued(clients) -> bool:
    return all(c.requests for c in clients.values())


def usage(pids: dict[str, int], window: float) -> dict[str, dict[str, float]]:
    """CPU seconds and RSS of each process over `window` seconds."""
    before = {name: proc_sample(pid) for name, pid in pids.items()}
    time.sleep(window)
    result = {}
    for name, pid in pids.items():
        after, first = proc_sample(pid), before[name]
        if after is None or first is None:
            continue
        result[name] = {
            "cpu_s": after.cpu - first.cpu,
            "rss_mb": after.rss_mb,
            "peak_rss_mb": after.hwm_mb,
        }
    return result


def profiled_usage(
    profiler: Profiler | None, phase: str, pids: dict[str, int], window: float, clients
) -> tuple[dict[str, dict[str, float]], int]:
    """`usage`, and the renewals the cluster made in the window (they come in waves after
    the creation burst, so two windows of one length can differ by a fifth). With a
    profiler, py-spy records the phase's second process if there is one (replica-2 of
    three, one that started among the others), else its first."""
    names = sorted(pids)
    if profiler is not None:
        profiler.start(pids[names[1] if len(names) > 1 else names[0]], phase)
    began = time.time()
    result = usage(pids, window)
    ended = time.time()
    renewals = sum(began <= t <= ended for c in clients.values() for t in c.requests)
    if profiler is not None:
        profiler.stop(renewals)
        profiler.results[phase]["renewals"] = renewals
    return result, renewals


def expired_seconds(clients, lifetime: float, until: float) -> float:
    """Seconds from each credential's first token until `until`, summed over
    credentials, when no token requested for it was unexpired (request time + lifetime,
    as the endpoint recorded them: a little earlier than the token's own expiry)."""
    total = 0.0
    for client in clients.values():
        times = sorted(client.requests)
        if not times:
            continue
        covered_until = times[0]
        for requested in times:
            if requested > covered_until:
                total += min(requested, until) - covered_until
            covered_until = max(covered_until, requested + lifetime)
        total += max(until - covered_until, 0.0)
    return total


def early_requests(clients, lifetime: float, since: float, until: float) -> tuple[int, int]:
    """(requests in [since, until], of which before the earliest refresh point of the
    token they replaced): a handover must not make a replica request a valid token
    again. The earliest point is with the most jitter, less a second of slack."""
    earliest = refresh_age(lifetime, 1.0) - 1.0
    made = early = 0
    for client in clients.values():
        times = sorted(client.requests)
        for previous, requested in itertools.pairwise(times):
            if since <= requested <= until:
                made += 1
                early += requested - previous < earliest
    return made, early


def requests_against_secrets(
    clients, secret_writes: dict[str, list[float]], lifetime: float, since: float, until: float
) -> tuple[list[dict[str, Any]], int]:
    """(requests in [since, until] made while the token in the credential's Secret was
    not yet at its earliest refresh point, requests whose token was never written). Each
    early request is listed with its credential and times, so that a run can say why.

    `early_requests` compares a request with the one before it, which counts twice a
    token that was requested but never written (a request in flight when its shard was
    handed back: the fence refuses its write, and the new holder requests again, inside
    the renew window of the token the Secret still holds). Here a Secret write carries
    the token of the last request before it, and a request is early only against the
    token written last."""
    earliest = refresh_age(lifetime, 1.0) - 1.0
    early: list[dict[str, Any]] = []
    unwritten = 0
    for name, client in clients.items():
        requests, writes = sorted(client.requests), sorted(secret_writes.get(name, ()))
        for index, requested in enumerate(requests):
            if not since <= requested <= until:
                continue
            following = requests[index + 1] if index + 1 < len(requests) else until
            written = bisect.bisect_right(writes, requested)
            if written == len(writes) or writes[written] > following:
                unwritten += requested < until - 30  # the last one may be writing still
            if not written:
                continue  # nothing written before it: the first token
            held_since = requests[bisect.bisect_right(requests, writes[written - 1]) - 1]
            if requested - held_since < earliest and held_since != requested:
                early.append(
                    {
                        "credential": name,
                        "held_requested_at": held_since,
                        "held_written_at": writes[written - 1],
                        "requested_at": requested,
                        "age_s": round(requested - held_since, 3),
                        "earliest_s": earliest,
                    }
                )
    return early, unwritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", type=int, default=300)
    parser.add_argument("--lifetime", type=int, default=60)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--window", type=float, default=0, help="default: 2 lifetimes")
    parser.add_argument("--create-threads", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the raw results there")
    parser.add_argument(
        "--verbose", action="store_true", help="replicas log each pass's decision (DEBUG)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy on phases 1 and 2, then stop"
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        return run(args, cleanup)


def run(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    n, lifetime, shards = args.credentials, args.lifetime, args.shards
    window = args.window or 2 * lifetime
    results: dict[str, Any] = {"credentials": n, "lifetime": lifetime, "shards": shards}
    py_spy = find_py_spy() if args.profile else None  # before minutes of set-up
    cp = start_control_plane(build_binaries())
    cleanup.callback(_remove_state, cp)
    cleanup.callback(cp.stop)
    log(f"Kubernetes {cp.version} at {cp.server}")
    cp.kubectl("apply", "-k", str(REPO / "deploy"))
    cp.kubectl("wait", "--for=condition=Established", "crd/oauth2credentials.tokensync.dev")
    rendered = cp.kubectl("kustomize", str(REPO / "deploy" / "sharding")).stdout
    overlay = [
        d
        for d in yaml.safe_load_all(rendered)
        if d
        and d["metadata"]["name"] in ("tokensync-sharding", "tokensync-operator-leases")
        and d["kind"] != "Deployment"
    ]
    cp.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": overlay})
    )
    kubeconfig = cp.service_account_kubeconfig(*OPERATOR_SA)
    api = admin_client(cp, pool=args.create_threads + 4)
    coordination = kubernetes.client.CoordinationV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)

    ca = trustme.CA()
    endpoint = TokenEndpoint(ca)
    cleanup.callback(endpoint.close)
    endpoint._server.socket.listen(1024)  # see refresh_at_scale.py: no SYN drops
    logs = Path(tempfile.mkdtemp(prefix="tokensync-bench-sharding-"))
    log(f"replica logs in {logs}")
    profiler = Profiler(py_spy, args.profile_rate, logs) if py_spy else None
    replicas: dict[str, Any] = {}

    def start(name: str) -> None:
        os.environ["POD_NAME"] = name
        extra = (
            f"--peering={PREFIX}",
            f"--shards={shards}",
            f"--leader-election-namespace={LEASE_NAMESPACE}",
            "--no-deny-private-networks",
            *(["--verbose"] if args.verbose else []),
        )
        replicas[name] = start_operator(kubeconfig, logs / f"{name}.log", *extra)
        cleanup.callback(replicas[name].stop)

    since = time.time()
    start("replica-1")
    wait_for(lambda: balanced(coordination, {"replica-1"}, shards), 60, "replica-1's shards")
    ns = cp.create_namespace("bench")
    log(f"creating {n} credentials ({lifetime}s tokens)")
    clients = create_credentials(api, ns, endpoint, ca, n, lifetime, args.create_threads)
    wait_for(lambda: all_issued(clients), 600, "every first token", every=1)
    first_issue = min(min(c.requests) for c in clients.values())
    log(f"phase 1: one replica, {window:.0f}s")
    results["one_replica"], renewals_alone = profiled_usage(
        profiler, "one-replica", {"replica-1": replicas["replica-1"].process.pid}, window, clients
    )

    joined = time.monotonic()
    start("replica-2")
    start("replica-3")
    live = {"replica-1", "replica-2", "replica-3"}
    wait_for(lambda: balanced(coordination, live, shards), 120, "balance over 3")
    results["balance_1_to_3_s"] = time.monotonic() - joined
    log(f"phase 2: three replicas (balanced in {results['balance_1_to_3_s']:.1f}s), {window:.0f}s")
    pids = {name: replicas[name].process.pid for name in sorted(live)}
    results["three_replicas"], renewals_of_three = profiled_usage(
        profiler, "replica-2-of-three", pids, window, clients
    )
    results["renewals_in_window"] = {"one": renewals_alone, "three": renewals_of_three}
    results["shards_per_replica"] = dict(Counter(holders(coordination).values()))
    if profiler:
        results["profiles"] = profiler.results
        report_profiles(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0

    log("phase 3: kill -9 replica-3")
    victim = replicas["replica-3"]
    lost = sum(1 for h in holders(coordination).values() if h == "replica-3")
    victim.process.kill()
    victim.process.wait()
    killed = time.monotonic()
    live = {"replica-1", "replica-2"}
    wait_for(lambda: balanced(coordination, live, shards), 120, "takeover after kill", every=0.1)
    results["kill"] = {"shards": lost, "takeover_s": time.monotonic() - killed}

    start("replica-4")
    live = {"replica-1", "replica-2", "replica-4"}
    wait_for(lambda: balanced(coordination, live, shards), 120, "balance over 3 again")
    time.sleep(lifetime / 2)
    log("phase 4: SIGSTOP replica-4 (cut off)")
    victim = replicas["replica-4"]
    lost = sum(1 for h in holders(coordination).values() if h == "replica-4")
    os.kill(victim.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        live = {"replica-1", "replica-2"}
        wait_for(
            lambda: balanced(coordination, live, shards), 120, "takeover after SIGSTOP", every=0.1
        )
        results["cut_off"] = {"shards": lost, "takeover_s": time.monotonic() - stopped}
        time.sleep(lifetime / 2)
    finally:
        os.kill(victim.process.pid, signal.SIGCONT)
    live = {"replica-1", "replica-2", "replica-4"}
    wait_for(lambda: balanced(coordination, live, shards), 120, "rejoin after SIGCONT")
    time.sleep(5)

    log("phase 5: rolling update (a new replica first, then an old one stops)")
    rolled = time.time()
    steps = []
    for old in sorted(live):
        new = f"replica-{len(replicas) + 1}"
        step = time.monotonic()
        start(new)
        surge = live | {new}
        wait_for(lambda s=surge: balanced(coordination, s, shards), 120, f"{new} in")
        replicas[old].stop()
        live = (live - {old}) | {new}
        wait_for(lambda s=live: balanced(coordination, s, shards), 120, f"{old} out")
        steps.append(time.monotonic() - step)
    time.sleep(lifetime)  # the tokens renewed after the rollout are counted too
    made, early = early_requests(clients, lifetime, rolled, time.time())
    results["rolling_update"] = {"steps_s": steps, "requests": made, "early": early}

    until = time.time()
    results["expired_token_seconds"] = expired_seconds(clients, lifetime, until)
    made, early = early_requests(clients, lifetime, first_issue, until)
    results["token_requests"] = {"renewals": made, "early": early}
    results["requests_by_credential"] = {n: c.requests for n, c in clients.items()}
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    uid_of = {item["metadata"]["name"]: item["metadata"]["uid"] for item in listing}
    unfenced, writes = fencing.check(
        cp.audit_events(since=since),
        namespace=ns,
        uid_of=uid_of,
        shards=shards,
        prefix=PREFIX,
    )
    secret_writes: dict[str, list[float]] = {}
    for write in writes:
        if write.resource == "secrets":
            secret_writes.setdefault(write.name, []).append(write.at)
    for key, window_since in (("rolling_update", rolled), ("token_requests", first_issue)):
        early, unwritten = requests_against_secrets(
            clients, secret_writes, lifetime, window_since, until
        )
        results[key] |= {
            "early_against_secret": len(early),
            "early_cases": early,
            "unwritten": unwritten,
        }
    results["audit"] = {
        "writes": len(writes),
        "violations": len(unfenced),
        "violation_kinds": fencing.kinds(unfenced),
    }
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report_profiles(r: dict[str, Any]) -> None:
    one = r["one_replica"]["replica-1"]
    lines = [
        "",
        f"sharding --profile: {r['credentials']} credentials x {r['lifetime']} s tokens, "
        f"{r['shards']} shards",
        f"  one replica: CPU {one['cpu_s']:.1f} s",
    ]
    for name, u in r["three_replicas"].items():
        lines.append(f"  {name} of three: CPU {u['cpu_s']:.1f} s ({u['cpu_s'] / one['cpu_s']:.2f})")
    for phase, p in r["profiles"].items():
        lines += ["", f"{phase}: {p['renewals']} renewals in the cluster", p["summary"] or ""]
    print("\n".join(lines))


def report(r: dict[str, Any]) -> None:
    one = r["one_replica"]["replica-1"]
    kill, cut, t, a = r["kill"], r["cut_off"], r["token_requests"], r["audit"]
    roll = r["rolling_update"]
    lines = [
        "",
        f"sharding: {r['credentials']} credentials x {r['lifetime']} s tokens, "
        f"{r['shards']} shards",
        f"  one replica:  CPU {one['cpu_s']:.1f} s, RSS {one['rss_mb']:.0f} MB "
        f"(peak {one['peak_rss_mb']:.0f})",
    ]
    alone, of_three = r["renewals_in_window"]["one"], r["renewals_in_window"]["three"]
    per_renewal_alone = one["cpu_s"] / max(alone, 1)
    lines.append(
        f"  renewals in the window: {alone} alone, {of_three} with three replicas; "
        f"one replica {1000 * per_renewal_alone:.1f} CPU-ms per renewal"
    )
    for name, u in r["three_replicas"].items():
        per_renewal = u["cpu_s"] / max(of_three, 1)
        lines.append(
            f"  {name}:    CPU {u['cpu_s']:.1f} s ({u['cpu_s'] / one['cpu_s']:.2f} of one; "
            f"{1000 * per_renewal:.1f} ms per renewal of the cluster, "
            f"{per_renewal / per_renewal_alone:.2f} of one), "
            f"RSS {u['rss_mb']:.0f} MB ({u['rss_mb'] / one['rss_mb']:.2f} of one), "
            f"{r['shards_per_replica'].get(name, 0)} shards"
        )
    lines += [
        f"  1 -> 3 replicas balanced in {r['balance_1_to_3_s']:.1f} s",
        f"  kill -9 of 1 of 3 ({kill['shards']} shards): taken over in {kill['takeover_s']:.1f} s",
        f"  cut off 1 of 3 ({cut['shards']} shards): taken over in {cut['takeover_s']:.1f} s",
        f"  expired-token seconds: {r['expired_token_seconds']:.1f}",
        f"  rolling update, 3 steps: {', '.join(f'{s:.1f}' for s in roll['steps_s'])} s; "
        f"{roll['requests']} renewals during it and one lifetime after, "
        f"{roll['early']} before the previous request's refresh point, "
        f"{roll['early_against_secret']} before the refresh point of the token in the Secret; "
        f"{roll['unwritten']} never written",
        f"  renewals over the run: {t['renewals']}, {t['early']} before the previous request's "
        f"refresh point, {t['early_against_secret']} before the refresh point of the token "
        f"in the Secret; {t['unwritten']} never written (in flight when a shard moved)",
        f"  audit log: {a['writes']} writes by replicas, {a['violations']} outside the "
        "writer's shard Lease"
        + "".join(f"; {kind}: {n}" for kind, n in a.get("violation_kinds", {}).items()),
    ]
    for case in t.get("early_cases", [])[:10]:
        lines.append(
            f"    early: {case['credential']} requested at {stamp(case['requested_at'])}, "
            f"{case['age_s']:.2f} s after the request of the token in its Secret "
            f"({stamp(case['held_requested_at'])}, written {stamp(case['held_written_at'])}; "
            f"earliest refresh point {case['earliest_s']:.0f} s)"
        )
    print("\n".join(lines))


def stamp(at: float) -> str:
    """A wall-clock time of the run, to the millisecond, to find in the replicas' logs."""
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"


if __name__ == "__main__":
    sys.exit(main())
