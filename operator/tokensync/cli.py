"""`tokensync run | check | version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from collections.abc import Sequence

from tokensync import __version__

DEFAULT_WORKERS = 64


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
        "--enable-workload-identity",
        action="store_true",
        help="allow clientAuthentication: workload_identity, which mints ServiceAccount "
        "tokens (needs the deploy/workload-identity RBAC overlay; see README)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address /metrics listens on")
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
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="threads for token requests and API writes (default: %(default)s)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokensync",
        description="Keeps OAuth2 client-credentials access tokens fresh in Kubernetes Secrets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"tokensync {__version__}")
        return 0
    if args.command == "check":
        from tokensync import check

        return check.run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    import kopf
    import urllib3

    from tokensync import (
        handlers,  # noqa: F401 - registers the kopf handlers
        leader,
    )
    from tokensync.gates import OperatorConfig

    if not args.namespace and not args.all_namespaces:
        print(
            "tokensync run: pass --namespace NS (repeatable) or --all-namespaces", file=sys.stderr
        )
        return 2
    leader_election = None
    if args.peering is not None:
        namespace = args.leader_election_namespace or leader.default_namespace()
        for what, value in (("--peering", args.peering), ("the Lease namespace", namespace)):
            if not leader.valid_lease_name(value):
                print(f"tokensync run: {what} {value!r} is not a valid name", file=sys.stderr)
                return 2
        leader_election = (args.peering, namespace, leader.default_identity())
    elif args.leader_election_namespace:
        print("tokensync run: --leader-election-namespace needs --peering", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    hosts = tuple(
        h.strip() for value in args.allowed_token_hosts for h in value.split(",") if h.strip()
    )
    ready_flag = asyncio.Event()
    memo = kopf.Memo(
        config=OperatorConfig(
            allow_insecure=args.allow_insecure,
            deny_private_networks=args.deny_private_networks,
            allowed_token_hosts=hosts,
            enable_workload_identity=args.enable_workload_identity,
        ),
        workers=args.workers,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        health_host=args.health_host,
        ready_flag=ready_flag,
        namespaces=args.namespace or None,
        metrics_host=args.metrics_host,
        leader_election=leader_election,  # (lease name, namespace, identity) or None
    )
    if not args.verbose:
        # kopf reports every handled event at INFO; at a thousand credentials that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # An insecureSkipVerify the admin allowed is reported per credential (status, Warning
    # event); urllib3's warning on every request would only repeat it.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    if args.allow_insecure:
        logging.getLogger("tokensync").warning(
            "--allow-insecure: specs may disable TLS verification or use plain http"
        )
    asyncio.run(
        kopf.operator(
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            # kopf's peering pauses its watchers but not our workers, and needs its own
            # CRDs; replicas coordinate through tokensync.leader instead (--peering).
            standalone=True,
            ready_flag=ready_flag,
            memo=memo,
        )
    )
    return 0
