"""List+watch of label-selected Secrets and ConfigMaps, outside kopf (kopf watches the
credentials: handlers.py).

Two things are watched this way, with their label selector sent to the API server:
- sources (`tokensync.dev/credential-source=true`), full objects, into a cache;
- managed Secrets (`tokensync.dev/credential`), metadata only (PartialObjectMetadata, so
  no token ever crosses the wire for it), to notice deletes and edits by others.

Why not kopf: kopf sends no server-side label selector (it would receive every Secret
and ConfigMap of the cluster), "source OR managed" is not one selector anyway, and kopf
indices hold every handler until all objects are indexed, with a cost that grew with the
square of the object count in the benchmark.

Each watch runs in a thread per namespace (one for all namespaces): it lists, page by
page, reports every object, signals `synced`, then watches from the list's
resourceVersion, resuming after the server ends a watch and listing again after 410
Gone or a failure. A re-list is a mark and sweep against what the thread knew: DELETED
for objects that are gone, ADDED/MODIFIED only for objects whose resourceVersion
differs, nothing for the rest, so a gap wakes only what changed; `on_relisted` then lets
the owner reconcile its own state.
A watch that ends quickly, or fails, is retried after a jittered delay (1 s doubling to
30 s), so a server that closes watches at once or is down is not hammered, and its log
gets one warning line per attempt. Events are handed over as (type, object) on the
watch's thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3

from tokensync.kube import METADATA_ACCEPT, METADATA_LIST_ACCEPT, METADATA_USER_AGENT

log = logging.getLogger("tokensync.watches")

# The server ends each watch after WATCH_SECONDS (we resume from the last version) and
# sends a bookmark about every minute meanwhile: a connection silent for READ_SECONDS is
# dead (a NAT or load balancer dropped it without a reset), and is listed again.
WATCH_SECONDS = 60
READ_SECONDS = 90
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
# A list+watch round that lasted this long was healthy: the next one starts at once and
# the retry delay starts over.
HEALTHY_SECONDS = 10.0
# Objects per list page. Full objects (Secrets up to 1 MiB each) in small pages, so one
# page held in memory while it is parsed stays around 20 MiB; metadata in large ones.
PAGE_SIZE = 20
METADATA_PAGE_SIZE = 500
LISTED = "LISTED"  # event type for objects of the first list
# Labels a DELETED event after a re-list carries (the last ones seen): enough to find a
# managed Secret's credential, without keeping whole objects.
KEPT_LABEL_PREFIX = "tokensync.dev/"

# (event type, object); called from the watch thread
WatchEvent = Callable[[str, dict[str, Any]], None]


class Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class WatchFailed(Exception):
    """An HTTP status we did not expect; its text is ours, safe to log."""


@dataclass(frozen=True)
class WatchTarget:
    plural: str  # "secrets" | "configmaps" (core API)
    label_selector: str
    metadata_only: bool = False

    @property
    def page_size(self) -> int:
        return METADATA_PAGE_SIZE if self.metadata_only else PAGE_SIZE

    def path(self, namespace: str | None) -> str:
        if namespace:
            return f"/api/v1/namespaces/{namespace}/{self.plural}"
        return f"/api/v1/{self.plural}"


@dataclass(frozen=True)
class Known:
    """What a watch thread remembers of an object, to sweep after a re-list."""

    resource_version: str
    labels: dict[str, str]


ObjectName = tuple[str, str]  # (namespace, name)


def next_delay(delay: float, lasted: float) -> tuple[float, float]:
    """(seconds to wait before the next list/watch, the delay after that), given the
    current delay and how long the round that just ended lasted."""
    if lasted >= HEALTHY_SECONDS:
        return 0.0, FIRST_RETRY_SECONDS
    return delay, min(delay * 2, MAX_RETRY_SECONDS)


def sweep(known: dict[ObjectName, Known], seen: set[ObjectName]) -> list[dict[str, Any]]:
    """Objects known before a re-list and absent from it, as DELETED event bodies
    (removed from `known`)."""
    gone = []
    for namespace, name in [k for k in known if k not in seen]:
        last = known.pop((namespace, name))
        metadata = {
            "namespace": namespace,
            "name": name,
            "resourceVersion": last.resource_version,
            "labels": last.labels,
        }
        gone.append({"metadata": metadata})
    return gone


def _describe(error: Exception) -> str:
    """Safe, short text for a failure: ours, or the exception's class (never a body)."""
    if isinstance(error, WatchFailed):
        return str(error)
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return "cannot connect to the API server"
    return type(error).__name__


class LabelledWatch:
    """List+watch one target in the given namespaces (None: cluster-wide)."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        target: WatchTarget,
        namespaces: list[str] | None,
        on_event: WatchEvent,
        on_relisted: Callable[[], None] | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self._api = api
        self._target = target
        self._namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._on_event = on_event
        # Called (from the watch thread) after every list but the first, i.e. after a gap
        # (410 Gone, or a failure): whoever else lists (kopf) may have missed deletions
        # that no event will report.
        self._on_relisted = on_relisted
        self._on_synced = on_synced  # called once, from a watch thread, with `synced`
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
        known: dict[ObjectName, Known] = {}
        delay = FIRST_RETRY_SECONDS
        version: str | None = None
        listed = False
        while not self._stop.is_set():
            started = time.monotonic()
            failure: Exception | None = None
            try:
                if version is None:
                    version = self._list(namespace, known, first=not listed)
                    relisted, listed = listed, True
                    if relisted and self._on_relisted is not None:
                        self._on_relisted()
                for event_type, obj in self._watch(namespace, version):
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event_type != "BOOKMARK":
                        self._remember(known, event_type, obj)
                        self._on_event(event_type, obj)
            except Gone:
                version = None
            except Exception as error:  # network trouble: retry, never crash the operator
                # List again rather than resume: the mark and sweep then reports what the
                # gap hid, and on_relisted tells the owner.
                failure, version = error, None
            wait, delay = next_delay(delay, time.monotonic() - started)
            wait *= 1 - 0.25 * random.random()  # replicas and threads do not retry in step
            if failure is not None:
                log.warning(
                    "watch of %s (%s) failed (%s); retrying in %.0fs",
                    self._target.plural,
                    self._target.label_selector,
                    _describe(failure),
                    wait,
                )
            if wait:
                self._stop.wait(wait)

    @staticmethod
    def _remember(known: dict[ObjectName, Known], event_type: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        name = (metadata.get("namespace", ""), metadata.get("name", ""))
        if event_type == "DELETED":
            known.pop(name, None)
            return
        labels = {
            k: v
            for k, v in (metadata.get("labels") or {}).items()
            if k.startswith(KEPT_LABEL_PREFIX)
        }
        known[name] = Known(metadata.get("resourceVersion", ""), labels)

    def _mark_synced(self) -> None:
        with self._lock:
            self._pending_sync -= 1
            if self._pending_sync <= 0 and not self.synced.is_set():
                self.synced.set()
                if self._on_synced is not None:
                    self._on_synced()

    def _request(self, namespace: str | None, **query: str) -> urllib3.BaseHTTPResponse:
        selector = [("labelSelector", self._target.label_selector)]
        params = [*(selector if self._target.label_selector else []), *query.items()]
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
            # Ours is the retry loop: urllib3's own retries would log a warning each.
            retries=False,
            timeout=urllib3.Timeout(connect=10, read=READ_SECONDS),
        )

    def _pages(self, namespace: str | None) -> Iterator[dict[str, Any] | None]:
        """The pages of one list; None when it started over (a 410 on a continue token:
        the pages before are from an older snapshot)."""
        limit = self._target.page_size
        token = ""
        while True:
            query = {"limit": str(limit)} | ({"continue": token} if token else {})
            response = self._request(namespace, **query)
            try:
                status, data = response.status, response.read()
            finally:
                response.release_conn()
            if status == 410 and token:
                token = ""
                yield None
                continue
            if status != 200:
                raise WatchFailed(f"list: HTTP {status}")
            page = json.loads(data)
            del data  # the raw page is as large as the parsed one
            token = page["metadata"].get("continue") or ""
            yield page
            if not token:
                return

    def _list(self, namespace: str | None, known: dict[ObjectName, Known], first: bool) -> str:
        """List page by page; report what is new or changed (every object the first
        time), then DELETED for what is gone. The list's resourceVersion."""
        seen: set[ObjectName] = set()
        version = ""
        for page in self._pages(namespace):
            if page is None:
                seen.clear()
                continue
            version = page["metadata"]["resourceVersion"]
            items = page.pop("items", None) or []
            items.reverse()  # pop from the end: each object is freed once reported
            while items:
                self._report(items.pop(), known, seen, first)
        for body in sweep(known, seen):
            self._on_event("DELETED", body)
        if not self.synced.is_set():
            self._mark_synced()
        return version

    def _report(
        self,
        item: dict[str, Any],
        known: dict[ObjectName, Known],
        seen: set[ObjectName],
        first: bool,
    ) -> None:
        metadata = item.get("metadata") or {}
        name = (metadata.get("namespace", ""), metadata.get("name", ""))
        seen.add(name)
        before = known.get(name)
        if before is not None and before.resource_version == metadata.get("resourceVersion"):
            return  # unchanged since we last saw it
        event_type = LISTED if first else "ADDED" if before is None else "MODIFIED"
        self._remember(known, event_type, item)
        self._on_event(event_type, item)

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
    buffer = bytearray()
    for chunk in response.stream(64 * 1024):
        if stop.is_set():
            return
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield json.loads(line)
