"""Label-selected list+watch of Secrets and ConfigMaps, outside kopf.

Two things are watched this way, each with its label selector sent to the API server:
- sources (`tokensync.dev/credential-source=true`), full objects, into a cache;
- managed Secrets (`tokensync.dev/credential`), metadata only (PartialObjectMetadata, so
  no token ever crosses the wire for it), to notice deletes and edits by others.

Why not kopf: kopf's server-side selector is one per resource, and "source OR managed"
is not expressible; and kopf indices hold every handler until all objects are indexed,
with a cost that grew with the square of the object count in the benchmark.

Each watch runs in a thread that lists, reports every object, signals `synced`, then
watches from the list's resourceVersion, resuming after disconnects and re-listing after
410 Gone. Events are handed over as (type, object); the receiver runs them on the event
loop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3

from tokensync.kube import METADATA_ACCEPT, METADATA_USER_AGENT

METADATA_LIST_ACCEPT = METADATA_ACCEPT.replace("PartialObjectMetadata", "PartialObjectMetadataList")

log = logging.getLogger("tokensync.watches")

WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version
MAX_RETRY_SECONDS = 30.0
LISTED = "LISTED"  # event type for objects of the initial list (and of a re-list)
RESET = "RESET"  # before a (re-)list: forget what was known of this namespace (or all)

# (event type, object); called from the watch thread
WatchEvent = Callable[[str, dict[str, Any]], None]


class Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class WatchFailed(Exception):
    """An HTTP status we did not expect; its text is ours, safe to log."""


@dataclass(frozen=True)
class WatchTarget:
    plural: str  # "secrets" | "configmaps"
    label_selector: str
    metadata_only: bool = False

    def path(self, namespace: str | None) -> str:
        if namespace:
            return f"/api/v1/namespaces/{namespace}/{self.plural}"
        return f"/api/v1/{self.plural}"


class LabelledWatch:
    """List+watch one target in the given namespaces (None: cluster-wide)."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        target: WatchTarget,
        namespaces: list[str] | None,
        on_event: WatchEvent,
    ) -> None:
        self._api = api
        self._target = target
        self._namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._on_event = on_event
        self._stop = threading.Event()
        self._pending_sync = len(self._namespaces)
        self._lock = threading.Lock()
        self.synced = threading.Event()

    def start(self) -> None:
        for namespace in self._namespaces:
            threading.Thread(
                target=self._run,
                args=(namespace,),
                name=f"watch-{self._target.plural}",
                daemon=True,
            ).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, namespace: str | None) -> None:
        delay = 1.0
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(namespace)
                for event_type, obj in self._watch(namespace, version):
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event_type != "BOOKMARK":
                        self._on_event(event_type, obj)
                delay = 1.0
            except Gone:
                version = None
            except Exception as error:  # network trouble: retry, never crash the operator
                what = str(error) if isinstance(error, WatchFailed) else type(error).__name__
                log.warning(
                    "watch of %s (%s) failed (%s); retrying in %.0fs",
                    self._target.plural,
                    self._target.label_selector,
                    what,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _mark_synced(self) -> None:
        with self._lock:
            self._pending_sync -= 1
            if self._pending_sync <= 0:
                self.synced.set()

    def _request(self, namespace: str | None, **query: str) -> urllib3.BaseHTTPResponse:
        params = [("labelSelector", self._target.label_selector), *query.items()]
        accept = "application/json"
        if self._target.metadata_only:  # a list wants the List kind, a watch the item kind
            accept = METADATA_ACCEPT if "watch" in query else METADATA_LIST_ACCEPT
        method, url, headers, _, _ = self._api.param_serialize(
            "GET",
            self._target.path(namespace),
            query_params=params,
            header_params={"Accept": accept},
            auth_settings=["BearerToken"],
        )
        if self._target.metadata_only:
            headers["User-Agent"] = METADATA_USER_AGENT
        return self._api.rest_client.pool_manager.request(
            method,
            url,
            headers=headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=WATCH_SECONDS + 30),
        )

    def _list(self, namespace: str | None) -> str:
        response = self._request(namespace)
        try:
            status, data = response.status, response.read()
        finally:
            response.release_conn()
        if status != 200:
            raise WatchFailed(f"list: HTTP {status}")
        body = json.loads(data)
        self._on_event(RESET, {"metadata": {"namespace": namespace}})
        for item in body.get("items") or []:
            self._on_event(LISTED, item)
        if not self.synced.is_set():
            self._mark_synced()
        return body["metadata"]["resourceVersion"]

    def _watch(self, namespace: str | None, version: str) -> Iterator[tuple[str, dict[str, Any]]]:
        response = self._request(
            namespace,
            watch="true",
            resourceVersion=version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(WATCH_SECONDS),
        )
        try:
            if response.status == 410:
                raise Gone()
            if response.status != 200:
                raise WatchFailed(f"watch: HTTP {response.status}")
            for event in _json_lines(response, self._stop):
                if event.get("type") == "ERROR":
                    if (event.get("object") or {}).get("code") == 410:
                        raise Gone()
                    raise WatchFailed("watch: error event")
                yield event["type"], event.get("object") or {}
        finally:
            response.release_conn()


def _json_lines(
    response: urllib3.BaseHTTPResponse, stop: threading.Event
) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in response.stream(64 * 1024):
        if stop.is_set():
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
