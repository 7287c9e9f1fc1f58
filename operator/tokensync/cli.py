"""`tokensync run | check | status | refresh | doctor | version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
import warnings
from collections.abc import Sequence

from tokensync import __version__, doctor, statuscmd
from tokensync.limits import DEFAULT_MAX_REQUESTS, DEFAULT_MAX_REQUESTS_PER_HOST


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch the whole cluster"
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help="honour allowInsecureHTTP and tls.insecureSkipVerify in specs",
    )
    parser.add_argument(
        "--allowed-token-hosts",
        action="append",
        default=[],
        metavar="PATTERNS",
        help="comma-separated host patterns (fnmatch, e.g. '*.okta.com') token URLs must "
        "match; repeatable; default: any host",
    )
    parser.add_argument(
        "--deny-private-networks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse token endpoints on loopback, link-local and cloud metadata addresses, "
        "checked on the address actually connected (default: on)",
    )
    parser.add_argument(
        "--deny-cidrs",
        action="append",
        default=[],
        metavar="CIDRS",
        help="comma-separated IP networks token requests may never reach, in addition to "
        "the private-network guard (e.g. 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7); "
        "checked like it, also through a proxy; repeatable",
    )
    parser.add_argument(
        "--enable-workload-identity",
        action="store_true",
        help="allow clientAuthentication: workload_identity, which mints ServiceAccount "
        "tokens (needs the deploy/workload-identity RBAC overlay; see "
        "docs/guides/workload-identity.md)",
    )
    parser.add_argument(
        "--enable-rollout-restart",
        action="store_true",
        help="restart the workloads of spec.rolloutRestart after each new token (each "
        "namespace grants patch on them; the deploy/rollout-restart overlay sets this)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address /metrics listens on")
    parser.add_argument(
        "--metrics-insecure",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="serve /metrics over plain HTTP to anyone (default: HTTPS, only to callers whose "
        "bearer token passes a TokenReview and a SubjectAccessReview for get on /metrics)",
    )
    parser.add_argument(
        "--metrics-cert-dir",
        metavar="DIR",
        help="directory with tls.crt and tls.key for /metrics, reloaded when they change "
        "(default: a self-signed certificate generated at start)",
    )
    parser.add_argument(
        "--health-port", type=int, default=8080, help="/healthz and /readyz; 0 disables"
    )
    parser.add_argument("--health-host", default="0.0.0.0", help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run several replicas: leader election on the coordination.k8s.io Lease NAME; "
        "only its holder requests tokens and writes Secrets and status, the others stand "
        "by and take over when it releases the Lease (clean shutdown) or stops renewing "
        "it (15 s) (default: standalone, one replica)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="namespace of the --peering Lease (default: $POD_NAMESPACE, else the pod's "
        "own namespace, else 'default')",
    )
    parser.add_argument(
        "--shards",
        type=_positive,
        metavar="N",
        help="with --peering NAME: every replica serves credentials, split into N shards "
        "(a stable hash of the UID) on the Leases NAME-shard-0..N-1, balanced across the "
        "live replicas and taken over when a replica stops renewing (15 s); 32 is a good "
        "start (default: one leader serves everything)",
    )
    parser.add_argument(
        "--max-requests",
        "--workers",  # its 0.1 name
        dest="max_requests",
        type=_positive,
        default=DEFAULT_MAX_REQUESTS,
        metavar="N",
        help="token requests in flight at most, over all endpoints (default: %(default)s)",
    )
    parser.add_argument(
        "--max-requests-per-host",
        type=_positive,
        default=DEFAULT_MAX_REQUESTS_PER_HOST,
        metavar="N",
        help="token requests in flight at most per token endpoint (scheme, host and port), "
        "so one slow endpoint cannot hold every slot (default: %(default)s)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


# Text logs: UTC timestamp (RFC 3339, milliseconds), level, logger, message. JSON logs are
# kopf's own (timestamp and level are fields there).
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(log_format: str, *, verbose: bool = False) -> None:
    import kopf

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else TEXT_LOG_FORMAT,
    )
    if log_format == "json":
        return
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.formatter.converter = time.gmtime
            handler.formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
            handler.formatter.default_msec_format = "%s.%03dZ"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokensync",
        description="Keeps OAuth2 client-credentials access tokens fresh in Kubernetes Secrets.",
        epilog="Start with `tokensync doctor` (is the installation healthy?), `tokensync "
        "status -A` (what do the credentials say?) or `tokensync check -f credential.yaml` "
        "(does this credential work, before applying it?).",
    )
    parser.add_argument("--version", action="version", version=f"tokensync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_arguments(
        commands.add_parser("run", help="run the operator against the current kubeconfig")
    )
    try:
        from tokensync import check
    except ImportError:  # pragma: no cover - check.py is optional while it is being built
        check = None  # type: ignore[assignment]
    if check is not None:
        check.add_arguments(
            commands.add_parser("check", help="request one token as a credential would")
        )
    statuscmd.add_arguments(commands)
    doctor.add_arguments(
        commands.add_parser(
            "doctor",
            help="check the installation: CRD, operator Deployment and Lease, RBAC, "
            "admission policy",
        )
    )
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `tokensync`: what it can do, not a usage error
        parser.print_help()
        return 0
    if args.command == "version":
        print(f"tokensync {__version__}")
        return 0
    if args.command == "check":
        from tokensync import check

        return check.run(args)
    if args.command in ("status", "refresh"):
        return statuscmd.run(args)
    if args.command == "doctor":
        return doctor.run(args)
    return run(args)


# Go's JSON decoder in the API server accepts objects nested up to 10,000 levels, and
# anyone who may update an object can nest its metadata.managedFields (fieldsV1) that deep.
# Python's decoder stops at the recursion limit (1,000): one such credential made kopf's
# list call raise RecursionError and stopped the operator for the whole cluster.
API_OBJECT_MAX_DEPTH = 10_000


def allow_deep_api_objects() -> None:
    """Room to decode (and copy) any object the API server stores, on this thread and on
    every thread started afterwards (executor threads decode watch events)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * API_OBJECT_MAX_DEPTH))
    threading.stack_size(max(threading.stack_size(), 64 * 1024 * 1024))


def startup_banner(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The start-up log line (version, scope, settings) and one warning per guard that is
    off, from the parsed `run` flags (pure)."""
    scope = "all namespaces" if args.all_namespaces else "namespaces " + ",".join(args.namespace)
    hosts = [h.strip() for v in args.allowed_token_hosts for h in v.split(",") if h.strip()]
    cidrs = [c.strip() for v in args.deny_cidrs for c in v.split(",") if c.strip()]
    if args.metrics_port == 0:
        metrics = "off"
    elif args.metrics_insecure:
        metrics = f"http :{args.metrics_port} (no authentication)"
    else:
        metrics = f"https :{args.metrics_port}"
    parts = [
        f"tokensync {__version__} starting",
        f"scope: {scope}",
        f"replicas: {_replicas(args)}",
        f"token hosts: {','.join(hosts) if hosts else 'any'}",
        f"private networks: {'denied' if args.deny_private_networks else 'ALLOWED'}",
        f"denied CIDRs: {','.join(cidrs) if cidrs else 'none'}",
        f"insecure specs: {'honoured' if args.allow_insecure else 'refused'}",
        f"workload identity: {'on' if args.enable_workload_identity else 'off'}",
        f"rollout restart: {'on' if args.enable_rollout_restart else 'off'}",
        f"metrics: {metrics}",
        f"max requests: {args.max_requests} ({args.max_requests_per_host} per host)",
    ]
    warnings_ = []
    if not args.deny_private_networks:
        warnings_.append(
            "--no-deny-private-networks: token endpoints on loopback, link-local and cloud "
            "metadata addresses are allowed; any credential author can make the operator "
            "call them"
        )
    if args.allow_insecure:
        warnings_.append("--allow-insecure: specs may disable TLS verification or use plain http")
    if args.metrics_port and args.metrics_insecure:
        warnings_.append("--metrics-insecure: /metrics is served over plain HTTP to anyone")
    return "; ".join(parts), warnings_


# glibc's mallopt parameter for the number of malloc arenas (malloc.h).
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before any thread starts. Each thread that allocates gets
    an arena of its own (up to 8 per core), and what a thread freed stays in its arena:
    with dozens of token and Kubernetes threads parsing tenant input of up to 1 MiB, the
    operator's RSS kept ~90 MiB after 50 one-MiB discovery documents with the default, ~30
    with 2 (tests/operator/test_tenant_memory.py). MALLOC_ARENA_MAX, if set, wins. False
    where there is no glibc (the call is then not made)."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    return bool(mallopt and mallopt(M_ARENA_MAX, arenas) == 1)


def _replicas(args: argparse.Namespace) -> str:
    if not args.peering:
        return "standalone"
    if getattr(args, "shards", None):
        return f"{args.shards} shards on Leases {args.peering}-shard-*"
    return f"leader election on Lease {args.peering}"


def run(args: argparse.Namespace) -> int:
    import kopf
    import urllib3

    limit_malloc_arenas()

    from tokensync import (
        handlers,  # noqa: F401 - registers the kopf handlers
        leader,
        shards,
    )
    from tokensync.gates import OperatorConfig
    from tokensync.metrics_auth import MetricsSecurity, cert_dir_problem
    from tokensync.runtime import Options
    from tokensync.transport import parse_cidrs

    if not args.namespace and not args.all_namespaces:
        print(
            "tokensync run: pass --namespace NS (repeatable) or --all-namespaces", file=sys.stderr
        )
        return 2
    try:
        deny_cidrs = parse_cidrs(args.deny_cidrs)
    except ValueError as error:
        print(f"tokensync run: --deny-cidrs: {error}", file=sys.stderr)
        return 2
    # Our own identity for kopf too: kopf's default asks getpass.getuser(), which fails
    # under a UID with no passwd entry (OpenShift's restricted SCC assigns arbitrary ones).
    identity = leader.default_identity()
    leader_election = None
    if args.peering is not None:
        namespace = args.leader_election_namespace or leader.default_namespace()
        for what, value in (("--peering", args.peering), ("the Lease namespace", namespace)):
            if not leader.valid_lease_name(value):
                print(f"tokensync run: {what} {value!r} is not a valid name", file=sys.stderr)
                return 2
        leader_election = (args.peering, namespace, identity)
        if args.shards is not None and not shards.valid_prefix(args.peering, args.shards):
            print(
                f"tokensync run: --shards {args.shards} with --peering {args.peering!r}: at "
                f"most {shards.MAX_SHARDS} shards, and NAME at most {shards.MAX_PREFIX} "
                "characters of a label value",
                file=sys.stderr,
            )
            return 2
    elif args.shards is not None:
        print("tokensync run: --shards needs --peering NAME (the Leases' prefix)", file=sys.stderr)
        return 2
    elif args.leader_election_namespace:
        print("tokensync run: --leader-election-namespace needs --peering", file=sys.stderr)
        return 2
    if args.metrics_insecure and args.metrics_cert_dir:
        print(
            "tokensync run: --metrics-cert-dir is for HTTPS, not --metrics-insecure",
            file=sys.stderr,
        )
        return 2
    if args.metrics_cert_dir and (problem := cert_dir_problem(args.metrics_cert_dir)):
        print(f"tokensync run: --metrics-cert-dir {problem}", file=sys.stderr)
        return 2
    configure_logging(args.log_format, verbose=args.verbose)
    hosts = tuple(
        h.strip() for value in args.allowed_token_hosts for h in value.split(",") if h.strip()
    )
    ready_flag = asyncio.Event()
    options = Options(
        config=OperatorConfig(
            allow_insecure=args.allow_insecure,
            deny_private_networks=args.deny_private_networks,
            allowed_token_hosts=hosts,
            deny_cidrs=deny_cidrs,
            enable_workload_identity=args.enable_workload_identity,
            enable_rollout_restart=args.enable_rollout_restart,
        ),
        namespaces=args.namespace or None,
        max_requests=args.max_requests,
        max_requests_per_host=args.max_requests_per_host,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_security=MetricsSecurity(
            insecure=args.metrics_insecure, cert_dir=args.metrics_cert_dir
        ),
        health_port=args.health_port,
        health_host=args.health_host,
        leader_election=leader_election,  # (lease name, namespace, identity) or None
        shards=args.shards,
    )
    # kopf gives every credential a shallow copy of this memo: keep it to two entries.
    memo = kopf.Memo(options=options, ready_flag=ready_flag)
    if not args.verbose:
        # kopf reports every handled event at INFO; at a thousand credentials that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # An insecureSkipVerify the admin allowed is reported per credential (status, Warning
    # event); urllib3's warning on every request would only repeat it.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    banner, guards_off = startup_banner(args)
    logger = logging.getLogger("tokensync")
    logger.info(banner)
    for warning in guards_off:
        logger.warning(warning)
    allow_deep_api_objects()
    asyncio.run(
        kopf.operator(
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            # kopf's peering pauses its watchers but not our workers, and needs its own
            # CRDs; replicas coordinate through tokensync.leader instead (--peering).
            standalone=True,
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            ready_flag=ready_flag,
            memo=memo,
        )
    )
    return 0
