"""`tokensync status` and `tokensync refresh` (also `kubectl tokensync ...`).

Both act with the user's kubeconfig and permissions only: `status` lists credentials,
`refresh` sets the tokensync.dev/refresh-requested-at annotation and, with --wait, waits
until the operator has served that request (status.lastHandledRefreshRequest, Ready=True)
and the Secret holds a new token (its tokensync.dev/issued-at changed). No token is ever
read: the Secret is read as metadata only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from tokensync.secret import ANNOTATION_ISSUED, ANNOTATION_REFRESH_REQUESTED

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
POLL_SECONDS = 1.0

# --- pure helpers ---------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """42s, 4m12s, 3h5m, 2d4h: the two largest units, like kubectl's ages."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def relative(when: datetime | None, now: datetime) -> str:
    """'4m12s' ahead, '3m2s ago' past, '-' unknown."""
    if when is None:
        return "-"
    delta = (when - now).total_seconds()
    return format_duration(delta) if delta >= 0 else f"{format_duration(-delta)} ago"


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c
    return {}


def status_row(credential: Mapping[str, Any], now: datetime) -> dict[str, str]:
    metadata = credential.get("metadata") or {}
    status = credential.get("status") or {}
    ready = condition(status, "Ready")
    spec_secret = ((credential.get("spec") or {}).get("secret") or {}).get("name")
    return {
        "NAMESPACE": metadata.get("namespace", ""),
        "NAME": metadata.get("name", ""),
        "READY": ready.get("status", "Unknown"),
        "REASON": ready.get("reason", "-"),
        "SECRET": status.get("secretName") or spec_secret or metadata.get("name", ""),
        "EXPIRES IN": relative(parse_time(status.get("expiresAt")), now),
        "NEXT REFRESH": relative(parse_time(status.get("nextRefreshTime")), now),
    }


def render_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["   ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["   ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def rfc3339_now(now: datetime, previous: str | None) -> str:
    """The annotation value: now to the second, or to the microsecond when the second
    equals the previous request (a new value is what asks for a refresh)."""
    value = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if value == previous:
        value = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def refresh_outcome(
    credential: Mapping[str, Any],
    requested: str,
    issued_before: str | None,
    issued_now: str | None,
) -> tuple[bool, str | None]:
    """(done, failure): done once the request is served, Ready is True and the Secret's
    issued-at moved; a failure message when a token request after ours failed."""
    status = credential.get("status") or {}
    ready = condition(status, "Ready")
    if (
        status.get("lastHandledRefreshRequest") == requested
        and ready.get("status") == "True"
        and issued_now is not None
        and issued_now != issued_before
    ):
        return True, None
    failure = status.get("lastFailure") or {}
    failed_at, asked_at = parse_time(failure.get("time")), parse_time(requested)
    if failed_at and asked_at and failed_at >= asked_at.replace(microsecond=0):
        refreshing = condition(status, "Refreshing")
        return False, refreshing.get("message") or failure.get("message") or "refresh failed"
    return False, None


# --- the commands ---------------------------------------------------------------------


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    status = commands.add_parser(
        "status", help="list credentials: Ready, reason, Secret, expiry, next refresh"
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="only these credentials")
    _add_scope(status, all_namespaces=True)
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    refresh = commands.add_parser(
        "refresh", help="ask the operator for a new token now (refresh-requested-at)"
    )
    refresh.add_argument("name", metavar="NAME")
    _add_scope(refresh, all_namespaces=False)
    refresh.add_argument(
        "--wait", action="store_true", help="wait until the new token is in the Secret"
    )
    refresh.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="DURATION",
        help="how long --wait waits, e.g. 90s or 2m (default 60s)",
    )


def _add_scope(parser: argparse.ArgumentParser, *, all_namespaces: bool) -> None:
    if all_namespaces:
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("-n", "--namespace", metavar="NS")
        scope.add_argument(
            "-A", "--all-namespaces", action="store_true", help="credentials of all namespaces"
        )
    else:
        parser.add_argument("-n", "--namespace", metavar="NS")
    parser.add_argument("--kubeconfig", help="path of the kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context to use")


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None


class _Api:
    """The few calls these commands make, with the user's kubeconfig."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        import kubernetes

        from tokensync.kube import Kube

        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        self.kube = Kube(configuration)  # its metadata-only read, for the Secret
        self.custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else current
        self.default_namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"

    def credentials(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(result.get("items") or [])

    def credential(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        patch = {"metadata": {"annotations": {key: value}}}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def secret_issued_at(self, namespace: str, name: str) -> str | None:
        """The Secret's issued-at annotation, read as metadata only (never its data)."""
        found = self.kube.object_metadata("Secret", namespace, name)
        metadata = (found or {}).get("metadata") or {}
        return (metadata.get("annotations") or {}).get(ANNOTATION_ISSUED)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from kubernetes.client.exceptions import ApiException

    from tokensync.kube import KubeError

    out = out or sys.stdout
    try:
        api = _Api(args.kubeconfig, args.context)
        if args.command == "status":
            return _status(api, args, out)
        return _refresh(api, args, out)
    except ApiException as error:
        print(f"tokensync {args.command}: {_api_message(error)}", file=sys.stderr)
        return 1
    except KubeError as error:
        print(f"tokensync {args.command}: {error}", file=sys.stderr)
        return 1


def _api_message(error: Any) -> str:
    try:
        message = json.loads(error.body or b"{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"Kubernetes API {error.status}: {message or error.reason}"


def _status(api: _Api, args: argparse.Namespace, out: TextIO) -> int:
    namespace = None if args.all_namespaces else (args.namespace or api.default_namespace)
    items = api.credentials(namespace)
    if args.names:
        items = [c for c in items if c["metadata"]["name"] in args.names]
    items.sort(key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))
    now = datetime.now(UTC)
    rows = [status_row(c, now) for c in items]
    if args.output == "json":
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not rows:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No OAuth2Credentials found in {where}.", file=out)
        return 0
    columns = ["NAME", "READY", "REASON", "SECRET", "EXPIRES IN", "NEXT REFRESH"]
    if namespace is None:
        columns.insert(0, "NAMESPACE")
    print(render_table(rows, columns), file=out)
    return 0


def _refresh(
    api: _Api,
    args: argparse.Namespace,
    out: TextIO,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    namespace = args.namespace or api.default_namespace
    credential = api.credential(namespace, args.name)
    previous = (credential["metadata"].get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)
    requested = rfc3339_now(datetime.now(UTC), previous)
    secret = status_row(credential, datetime.now(UTC))["SECRET"]
    issued_before = api.secret_issued_at(namespace, secret) if args.wait else None
    api.annotate(namespace, args.name, ANNOTATION_REFRESH_REQUESTED, requested)
    print(f"oauth2credential {namespace}/{args.name}: refresh requested at {requested}", file=out)
    if not args.wait:
        return 0
    deadline = clock() + args.timeout
    while True:
        credential = api.credential(namespace, args.name)
        secret = status_row(credential, datetime.now(UTC))["SECRET"]
        issued_now = api.secret_issued_at(namespace, secret)
        done, failure = refresh_outcome(credential, requested, issued_before, issued_now)
        if done:
            row = status_row(credential, datetime.now(UTC))
            print(
                f"Secret {namespace}/{secret} holds a new token (issued {issued_now}, "
                f"expires in {row['EXPIRES IN']})",
                file=out,
            )
            return 0
        if failure:
            print(f"refresh failed: {failure}", file=out)
            return 1
        if clock() > deadline:
            ready = condition(credential.get("status") or {}, "Ready")
            print(
                f"timed out after {format_duration(args.timeout)}; Ready={ready.get('status')} "
                f"{ready.get('reason', '')}: {ready.get('message', '')}",
                file=out,
            )
            return 1
        time.sleep(POLL_SECONDS)


def plugin_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl tokensync status|refresh ...` (the kubectl-tokensync executable)."""
    parser = argparse.ArgumentParser(
        prog="kubectl tokensync", description="tokensync credentials: status and refresh."
    )
    add_arguments(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
