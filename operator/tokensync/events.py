"""Kubernetes Events about credentials, posted by tokensync itself.

kopf.event() cannot set the fields `kubectl events` and event pipelines group by, so
tokensync posts core/v1 Events (RBAC: `create` on core `events`, as before) carrying
reportingComponent `tokensync.dev/operator` (shown as `reportingController` through the
events.k8s.io/v1 API), reportingInstance (the pod name) and an action.

Posting never blocks the event loop and never waits behind token requests: events go to
one thread of their own, with a bounded backlog (events are best effort; status is the
record).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("tokensync.events")

REPORTING_CONTROLLER = "tokensync.dev/operator"
SOURCE_COMPONENT = "tokensync"  # the legacy `source.component`, shown by kubectl describe
MAX_MESSAGE = 1024  # the API's limit for an event's message (note)
MAX_FIELD = 128  # reason, action and reportingInstance
MAX_BACKLOG = 1000
SUMMARY_SECONDS = 60.0  # failures and drops after the first are logged once a minute

# What tokensync was doing when it reported the event, by reason.
ACTIONS: Mapping[str, str] = {
    "TokenIssued": "Refresh",
    "TokenRequestFailed": "Refresh",
    "TokenExpired": "Refresh",
    "DiscoveryFailed": "Refresh",
    "InvalidSpec": "Validate",
    "InsecureSetting": "Validate",
    "ReferenceNotFound": "Validate",
    "ReferenceNotLabeled": "Validate",
    "ReferenceKeyMissing": "Validate",
    "ReferenceInvalid": "Validate",
    "TokenURLNotAllowed": "Validate",
    "SecretConflict": "WriteSecret",
    "SecretWriteFailed": "WriteSecret",
    "Suspended": "Suspend",
}
DEFAULT_ACTION = "Reconcile"


def reporting_instance(env: Mapping[str, str] | None = None) -> str:
    """The pod's name (POD_NAME, from the downward API), else the host name."""
    env = os.environ if env is None else env
    return (env.get("POD_NAME") or socket.gethostname() or "tokensync")[:MAX_FIELD]


def action_for(reason: str) -> str:
    return ACTIONS.get(reason, DEFAULT_ACTION)


def _micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    regarding: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    *,
    now: datetime,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event about `regarding` (a credential's body)."""
    metadata = regarding.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    involved = {
        "apiVersion": regarding.get("apiVersion"),
        "kind": regarding.get("kind"),
        "name": metadata.get("name"),
        "namespace": namespace,
        "uid": metadata.get("uid"),
    }
    if metadata.get("resourceVersion"):
        involved["resourceVersion"] = metadata["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{metadata.get('name', 'credential')}.",
            "namespace": namespace,
        },
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": type_,
        "reason": reason[:MAX_FIELD],
        "message": message[:MAX_MESSAGE],
        "action": action_for(reason),
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": instance[:MAX_FIELD],
        "source": {"component": SOURCE_COMPONENT},
        "eventTime": _micro_time(now),
        "firstTimestamp": _time(now),
        "lastTimestamp": _time(now),
        "count": 1,
    }


class Recorder:
    """Posts events on its own thread; `post` returns at once."""

    def __init__(
        self,
        create: Callable[[str, dict[str, Any]], None],
        instance: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._create = create  # (namespace, body) -> None; raises on failure
        self._instance = instance or reporting_instance()
        self._now = now
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokensync-events")
        self._pending = 0
        self._lock = threading.Lock()
        # Failures are logged once, then summarised at most once a minute: during an API
        # server outage every event fails, and one line each would flood the log.
        self._failed = 0
        self._failure_logged_at: float | None = None
        # The same for events dropped on a full backlog: a creation burst of 10,000
        # credentials dropped thousands, one warning line each.
        self._dropped = 0
        self._drop_logged_at: float | None = None

    def post(self, regarding: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        body = event_body(
            regarding, type_, reason, message, now=self._now(), instance=self._instance
        )
        with self._lock:
            if self._pending >= MAX_BACKLOG:
                self._drop(reason)
                return
            self._pending += 1
            if self._pending == 1:
                self._drop_logged_at = None  # drained: the next drop is news again
        self._executor.submit(self._send, body)

    def _drop(self, reason: str) -> None:
        """Count a dropped event; log the first of a burst, then a summary a minute."""
        self._dropped += 1
        now = self._clock()
        if self._drop_logged_at is None or now - self._drop_logged_at >= SUMMARY_SECONDS:
            log.warning(
                "event backlog full (%d waiting): dropped %d event(s), the last a %s event; "
                "status conditions still say everything",
                MAX_BACKLOG,
                self._dropped,
                reason,
            )
            self._dropped, self._drop_logged_at = 0, now

    def _send(self, body: dict[str, Any]) -> None:
        try:
            self._create(body["metadata"]["namespace"], body)
        except Exception as error:  # best effort; its text is the API's Status message only
            self._failed += 1
            now = self._clock()
            if self._failure_logged_at is None or now - self._failure_logged_at >= SUMMARY_SECONDS:
                log.warning(
                    "could not post %d event(s), the last a %s event: %s",
                    self._failed,
                    body["reason"],
                    _describe(error),
                )
                self._failed, self._failure_logged_at = 0, now
        else:
            self._failure_logged_at = None  # the next failure is news again
        finally:
            with self._lock:
                self._pending -= 1

    def flush(self, timeout: float = 5) -> None:
        """Wait (briefly) for posted events to be sent; for shutdown and tests."""
        self._executor.submit(lambda: None).result(timeout)


def _describe(error: Exception) -> str:
    """A KubeError's text (the API's Status message only), else the exception's type."""
    from tokensync.kube import KubeError

    return str(error) if isinstance(error, KubeError) else type(error).__name__


def _default_creator() -> Callable[[str, dict[str, Any]], None]:
    """Built on the events thread at the first event, from the same configuration as every
    other API call (in-cluster, else the kubeconfig): reading it never blocks the loop.
    Events go through `Kube.create_event`, the client's generic call like every other
    write: the client's API classes (CoreV1Api) would import hundreds of its pydantic
    models, about 18 MB the operator never uses."""
    create: Callable[[str, dict[str, Any]], None] | None = None

    def lazy(namespace: str, body: dict[str, Any]) -> None:
        nonlocal create
        if create is None:
            from tokensync.kube import Kube, load_configuration

            create = Kube(load_configuration(connection_pool_size=2)).create_event
        create(namespace, body)

    return lazy


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def post(regarding: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """The operator's event hook (runtime._post_event): post through the process-wide
    recorder."""
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            _recorder = Recorder(_default_creator())
    _recorder.post(regarding, type_, reason, message)
