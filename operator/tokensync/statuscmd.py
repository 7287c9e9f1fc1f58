"""`tokensync status` and `tokensync refresh` (also `kubectl tokensync ...`).

Both act with the user's kubeconfig and permissions only: `status` lists credentials,
`refresh` sets the tokensync.dev/refresh-requested-at annotation and, with --wait, waits
until the operator has served that request (status.lastHandledRefreshRequest, Ready=True)
and the Secret holds a new token (its tokensync.dev/issued-at changed). No token is ever
read: the Secret is read as metadata only. Both say when no operator has picked a
credential up, and how to check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from tokensync.secret import ANNOTATION_ISSUED, ANNOTATION_REFRESH_REQUESTED

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
POLL_SECONDS = 1.0
# The operator requests at most one token per credential per 10 s (API "What triggers a
# token request"): a refresh asked for sooner is served when that floor ends.
REQUEST_FLOOR_SECONDS = 10.0
# How long a credential may wait for an operator before we say that none picked it up:
# the operator writes status within a second or two of any change it sees.
PICKUP_GRACE_SECONDS = 20.0
# Where the chart and deploy/ put the operator.
OPERATOR_NAMESPACE = "tokensync-system"
CHECK_OPERATOR = f"kubectl -n {OPERATOR_NAMESPACE} get pods (or: tokensync doctor)"

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


def last_spec_change(metadata: Mapping[str, Any]) -> datetime | None:
    """When the object itself (not its status) was last written: the newest managedFields
    entry outside the status subresource, else its creation."""
    times = [
        parse_time(entry.get("time"))
        for entry in metadata.get("managedFields") or []
        if not entry.get("subresource")
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else parse_time(metadata.get("creationTimestamp"))


def not_picked_up(
    credential: Mapping[str, Any], now: datetime, grace: float = PICKUP_GRACE_SECONDS
) -> str | None:
    """Why no operator seems to serve this credential (status missing, or written for an
    older generation, for longer than `grace`), or None."""
    metadata = credential.get("metadata") or {}
    status = credential.get("status") or {}
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if observed is not None and (generation is None or observed >= generation):
        return None
    # No status from an operator (the CRD defaults observedGeneration to 0, which no
    # generation is): never seen since its creation. A status for an older generation:
    # not seen since the last write of the object (a lower bound, since annotation
    # writes count too).
    never = not observed
    changed = parse_time(metadata.get("creationTimestamp")) if never else last_spec_change(metadata)
    if changed is None or (now - changed).total_seconds() < grace:
        return None
    waited = format_duration((now - changed).total_seconds())
    if never:
        return f"no operator has picked it up: no status after {waited}"
    return (
        f"no operator has picked it up: status.observedGeneration is {observed}, "
        f"the credential's generation {generation}, for {waited}"
    )


def status_item(credential: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """`status -o json|yaml`: the credential's own field names (metadata, the Ready
    condition, status fields), plus `pickedUp`, so scripts read what the API says."""
    metadata = credential.get("metadata") or {}
    status = credential.get("status") or {}
    ready = condition(status, "Ready")
    problem = not_picked_up(credential, now)
    item: dict[str, Any] = {
        "namespace": metadata.get("namespace", ""),
        "name": metadata.get("name", ""),
        "generation": metadata.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason"),
        "message": ready.get("message"),
        "secretName": status_row(credential, now)["SECRET"],
    }
    for key in (
        "expiresAt",
        "lastRefreshTime",
        "nextRefreshTime",
        "consecutiveFailures",
        "lastHandledRefreshRequest",
        "tokenURL",
        "warnings",
    ):
        item[key] = status.get(key)
    item["pickedUp"] = problem is None
    if problem:
        item["problem"] = problem
    return item


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


def refresh_state(
    credential: Mapping[str, Any],
    requested: str,
    issued_before: str | None,
    issued_now: str | None,
    now: datetime,
) -> str:
    """What a pending refresh is waiting for, in words (pure; shown as progress)."""
    status = credential.get("status") or {}
    if status.get("lastHandledRefreshRequest") == requested:
        if issued_now is not None and issued_now != issued_before:
            return "new token issued; waiting for Ready"
        return "request served; waiting for the Secret"
    refreshing = condition(status, "Refreshing")
    if refreshing.get("status") == "True":
        return f"token request in progress ({refreshing.get('reason', 'Refreshing')})"
    floor_ends = floor_end(status)
    if floor_ends is not None and floor_ends > now:
        return (
            f"waiting for the operator's {REQUEST_FLOOR_SECONDS:g}s minimum between token "
            f"requests (until {floor_ends.astimezone(UTC):%H:%M:%S})"
        )
    return "waiting for the operator to pick up the request"


def floor_end(status: Mapping[str, Any]) -> datetime | None:
    last = parse_time(status.get("lastRefreshTime"))
    return None if last is None else last + timedelta(seconds=REQUEST_FLOOR_SECONDS)


def unacknowledged(
    credential: Mapping[str, Any],
    requested: str,
    now: datetime,
    waited: float,
    grace: float = PICKUP_GRACE_SECONDS,
) -> str | None:
    """Why we think no operator saw this refresh request, or None: `grace` seconds past
    the request and past the request floor, and still no sign of it in status."""
    status = credential.get("status") or {}
    if status.get("lastHandledRefreshRequest") == requested:
        return None
    if condition(status, "Refreshing").get("status") == "True":
        return None
    floor_ends = floor_end(status)
    extra = max(0.0, (floor_ends - now).total_seconds()) if floor_ends else 0.0
    if waited < grace + extra:
        return None
    handled = status.get("lastHandledRefreshRequest")
    return (
        f"the refresh request was not picked up by any operator after "
        f"{format_duration(waited)} (status.lastHandledRefreshRequest is "
        f"{handled or 'unset'}): is the operator running? Check: {CHECK_OPERATOR}"
    )


# --- progress ---------------------------------------------------------------------------


class Progress:
    """Progress of a wait on a terminal: nothing for the first `after` seconds, then a
    line per state change and a spinner with the elapsed time on the last line. Off the
    terminal (pipes, CI logs) it prints nothing: the command's result says it all."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, *, enabled: bool | None = None, after: float = 2.0):
        self.stream = stream
        self.enabled = _isatty(stream) if enabled is None else enabled
        self.after = after
        self.state: str | None = None
        self.shown: str | None = None
        self.ticks = 0
        self.spinning = False

    def update(self, state: str, elapsed: float) -> None:
        self.state = state
        if not self.enabled or elapsed < self.after:
            return
        if state != self.shown:
            self._clear()
            self.stream.write(f"{state}\n")
            self.shown = state
        self.ticks += 1
        frame = self.FRAMES[self.ticks % len(self.FRAMES)]
        self.stream.write(f"\r{frame} {format_duration(elapsed)} ")
        self.stream.flush()
        self.spinning = True

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.spinning:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.spinning = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- the commands ---------------------------------------------------------------------


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    status = commands.add_parser(
        "status", help="list credentials: Ready, reason, Secret, expiry, next refresh"
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="only these credentials")
    _add_scope(status, all_namespaces=True)
    status.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector")
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json", "yaml"),
        default="table",
        help="table (default), wide (adds the Ready message), or json/yaml with the API's "
        "field names",
    )
    refresh = commands.add_parser(
        "refresh", help="ask the operator for a new token now (refresh-requested-at)"
    )
    refresh.add_argument("names", nargs="*", metavar="NAME", help="the credentials to refresh")
    _add_scope(refresh, all_namespaces=True)
    which = refresh.add_mutually_exclusive_group()
    which.add_argument(
        "-l", "--selector", metavar="SELECTOR", help="refresh the credentials with these labels"
    )
    which.add_argument(
        "--all", action="store_true", help="refresh every credential of the namespace (or -A)"
    )
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
    add_connection_arguments(parser)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
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


class ConnectionProblem(Exception):
    """No usable kubeconfig, or the API server cannot be reached: one line for the user."""


def load_kubeconfig(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """(client configuration, the context's namespace); ConnectionProblem when the
    kubeconfig is missing or unusable."""
    import os

    import kubernetes
    import yaml

    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (
        kubernetes.config.ConfigException,
        OSError,
        TypeError,
        ValueError,
        yaml.YAMLError,
    ) as error:
        raise ConnectionProblem(kubeconfig_problem(path, error)) from None
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    configuration.retries = False
    return configuration, namespace


def kubeconfig_problem(path: str, error: BaseException) -> str:
    """One line for an unusable kubeconfig, naming the file (several when KUBECONFIG is
    a list) and what is wrong, never a traceback."""
    import os

    import yaml

    files = [p for p in path.split(os.pathsep) if p]
    missing = [p for p in files if not os.path.exists(os.path.expanduser(p))]
    if missing and len(missing) == len(files):
        what = "no kubeconfig at " + ", ".join(missing)
    elif isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        what = f"the kubeconfig {path} is not valid YAML" + (
            f" (line {mark.line + 1})" if mark else ""
        )
    else:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        what = f"the kubeconfig {path} is not usable: {detail}"
    return f"{what} (set KUBECONFIG or pass --kubeconfig)"


class _Api:
    """The few calls these commands make, with the user's kubeconfig."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        import kubernetes

        from tokensync.kube import Kube

        configuration, self.default_namespace = load_kubeconfig(kubeconfig, context)
        self.host = configuration.host
        self.kube = Kube(configuration)  # its metadata-only read, for the Secret
        self.custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))

    def credentials(
        self, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        extra = {"label_selector": selector} if selector else {}
        if namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **extra)
        else:
            result = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **extra
            )
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


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    return guarded(args.command, lambda: _run(args, out, err), err)


def guarded(command: str, body: Callable[[], int], err: TextIO) -> int:
    """Run a command, turning API and connection errors into one line on stderr."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    from tokensync.kube import KubeError

    try:
        return body()
    except ConnectionProblem as error:
        print(f"tokensync {command}: {error}", file=err)
    except ApiException as error:
        print(f"tokensync {command}: {_api_message(error)}", file=err)
    except KubeError as error:
        print(f"tokensync {command}: {error}", file=err)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        print(f"tokensync {command}: cannot reach the Kubernetes API ({_reason(error)})", file=err)
    return 1


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection error, without the URL's query or a traceback."""
    inner = getattr(error, "reason", None) or error
    text = str(inner)
    if ": " in text and "Connection" in type(inner).__name__:
        text = text.split(": ", 1)[1]
    return text.splitlines()[0][:200] if text else type(inner).__name__


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "refresh" and (problem := refresh_arguments_problem(args)):
        print(f"tokensync refresh: {problem}", file=err)
        return 2
    api = _Api(args.kubeconfig, args.context)
    if args.command == "status":
        return _status(api, args, out)
    return _refresh(api, args, out, err)


def _api_message(error: Any) -> str:
    try:
        message = json.loads(error.body or b"{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"Kubernetes API {error.status}: {message or error.reason}{_missing_crd_hint(error)}"


def _missing_crd_hint(error: Any) -> str:
    """A 404 for the resource type itself (not for one credential) means no CRD."""
    try:
        details = json.loads(error.body or b"{}").get("details") or {}
    except (ValueError, AttributeError):
        details = {}
    if error.status == 404 and not details.get("name"):
        return " (is the OAuth2Credential CRD installed? `tokensync doctor` checks)"
    return ""


def _status(api: _Api, args: argparse.Namespace, out: TextIO) -> int:
    namespace = None if args.all_namespaces else (args.namespace or api.default_namespace)
    items = api.credentials(namespace, args.selector)
    if args.names:
        items = [c for c in items if c["metadata"]["name"] in args.names]
    items.sort(key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))
    now = datetime.now(UTC)
    if args.output in ("json", "yaml"):
        listed = [status_item(c, now) for c in items]
        if args.output == "json":
            print(json.dumps(listed, indent=2), file=out)
        else:
            import yaml

            print(yaml.safe_dump(listed, sort_keys=False).rstrip(), file=out)
        return 0
    rows = [status_row(c, now) for c in items]
    if not rows:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No OAuth2Credentials found in {where}.", file=out)
        return 0
    columns = ["NAME", "READY", "REASON", "SECRET", "EXPIRES IN", "NEXT REFRESH"]
    if args.output == "wide":
        for row, credential in zip(rows, items, strict=True):
            message = condition(credential.get("status") or {}, "Ready").get("message")
            row["MESSAGE"] = (message or "-").replace("\n", " ")
        columns.append("MESSAGE")
    if namespace is None:
        columns.insert(0, "NAMESPACE")
    print(render_table(rows, columns), file=out)
    stale = [(c, p) for c in items if (p := not_picked_up(c, now))]
    for credential, problem in stale:
        meta = credential["metadata"]
        print(f"\n{meta['namespace']}/{meta['name']}: {problem}.", file=out, end="")
    if stale:
        print(f"\nIs the operator running? Check: {CHECK_OPERATOR}", file=out)
    return 0


def refresh_arguments_problem(args: argparse.Namespace) -> str | None:
    if args.names and (args.selector or args.all):
        return "give NAME..., -l SELECTOR or --all, not several"
    if not args.names and not (args.selector or args.all):
        return "which credentials? give NAME..., -l SELECTOR or --all"
    if args.all_namespaces and args.names:
        return "-A goes with --all or -l SELECTOR, not with names"
    return None


def _targets(api: _Api, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The credentials to refresh: by name, by selector, or all (of -n or -A)."""
    namespace = None if args.all_namespaces else (args.namespace or api.default_namespace)
    if args.names:
        assert namespace is not None
        return [api.credential(namespace, name) for name in args.names]
    found = api.credentials(namespace, args.selector)
    return sorted(found, key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))


class _Pending:
    """One refresh request being waited for."""

    def __init__(self, credential: dict[str, Any], requested: str, issued_before: str | None):
        self.namespace = credential["metadata"]["namespace"]
        self.name = credential["metadata"]["name"]
        self.requested = requested
        self.issued_before = issued_before
        self.credential = credential
        self.issued_now: str | None = None

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


def _refresh(
    api: _Api,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    targets = _targets(api, args)
    if not targets:
        print("No OAuth2Credentials matched; nothing to refresh.", file=out)
        return 0
    pending = []
    for credential in targets:
        metadata = credential["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        previous = (metadata.get("annotations") or {}).get(ANNOTATION_REFRESH_REQUESTED)
        requested = rfc3339_now(datetime.now(UTC), previous)
        secret = status_row(credential, datetime.now(UTC))["SECRET"]
        issued_before = api.secret_issued_at(namespace, secret) if args.wait else None
        api.annotate(namespace, name, ANNOTATION_REFRESH_REQUESTED, requested)
        print(f"oauth2credential {namespace}/{name}: refresh requested at {requested}", file=out)
        if problem := not_picked_up(credential, datetime.now(UTC)):
            print(f"{namespace}/{name}: {problem}; check: {CHECK_OPERATOR}", file=err)
        pending.append(_Pending(credential, requested, issued_before))
    if not args.wait:
        return 0
    return _wait(api, pending, args.timeout, out, Progress(err), clock)


def _wait(
    api: _Api,
    pending: list[_Pending],
    timeout: float,
    out: TextIO,
    progress: Progress,
    clock: Callable[[], float],
) -> int:
    started = clock()
    failed = 0
    warned: set[str] = set()
    while pending:
        elapsed = clock() - started
        now = datetime.now(UTC)
        states = []
        for item in list(pending):
            item.credential = api.credential(item.namespace, item.name)
            secret = status_row(item.credential, now)["SECRET"]
            item.issued_now = api.secret_issued_at(item.namespace, secret)
            done, failure = refresh_outcome(
                item.credential, item.requested, item.issued_before, item.issued_now
            )
            if done or failure:
                progress.done()
                pending.remove(item)
            if done:
                row = status_row(item.credential, datetime.now(UTC))
                print(
                    f"Secret {item.namespace}/{secret} holds a new token (issued "
                    f"{item.issued_now}, expires in {row['EXPIRES IN']})",
                    file=out,
                )
            elif failure:
                failed += 1
                print(f"{item.label}: refresh failed: {failure}", file=out)
            else:
                state = refresh_state(
                    item.credential, item.requested, item.issued_before, item.issued_now, now
                )
                problem = unacknowledged(item.credential, item.requested, now, elapsed)
                if problem and item.label not in warned:
                    warned.add(item.label)
                    progress.done()
                    progress.shown = None
                    print(f"{item.label}: {problem}", file=progress.stream)
                states.append(state if len(pending) == 1 else f"{item.label}: {state}")
        if not pending:
            break
        if elapsed > timeout:
            progress.done()
            for item in pending:
                print(_timeout_message(item, timeout, now, elapsed), file=out)
            return 1
        progress.update("; ".join(states), elapsed)
        time.sleep(POLL_SECONDS)
    progress.done()
    return 1 if failed else 0


def _timeout_message(item: _Pending, timeout: float, now: datetime, waited: float) -> str:
    status = item.credential.get("status") or {}
    ready = condition(status, "Ready")
    text = (
        f"{item.label}: timed out after {format_duration(timeout)}; "
        f"Ready={ready.get('status', 'Unknown')} {ready.get('reason', '')}: "
        f"{ready.get('message', '')}".rstrip(": ")
    )
    problem = unacknowledged(item.credential, item.requested, now, waited, grace=0.0)
    if problem is not None:
        return f"{text}; {problem}"
    state = refresh_state(item.credential, item.requested, item.issued_before, item.issued_now, now)
    return f"{text}; {state}"


def plugin_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl tokensync status|refresh ...` (the kubectl-tokensync executable)."""
    parser = argparse.ArgumentParser(
        prog="kubectl tokensync", description="tokensync credentials: status and refresh."
    )
    add_arguments(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
