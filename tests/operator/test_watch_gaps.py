"""The label-selected watches (watches.py) through API server outages, against the real
control plane: after a gap they report exactly what changed (mark and sweep), never
spin, and log one line per attempt without a traceback (issue 8, items 9 and 11)."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from fixtures.polling import wait_for
from tokensync import watches
from tokensync.watches import LabelledWatch, WatchTarget

pytestmark = pytest.mark.envtest

SELECTOR = "tokensync.dev/credential-source=true"


def _labelled(core: client.CoreV1Api, namespace: str, name: str) -> None:
    body = {"metadata": {"name": name, "labels": {SELECTOR.split("=")[0]: "true"}}}
    core.create_namespaced_secret(namespace, {**body, "stringData": {"k": name}})


def _drain(events: queue.Queue, until: tuple[str, str], timeout: float = 60) -> list:
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while until not in got:
        got.append(events.get(timeout=max(0.1, deadline - time.monotonic())))
    return got


def test_a_relist_after_a_gap_reports_only_what_changed(control_plane, namespace, caplog):
    cp = control_plane
    core = client.CoreV1Api(cp.api_client())
    for name in ("kept", "gone", "last"):
        _labelled(core, namespace, name)
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    relisted = threading.Event()

    def record(event_type: str, body: dict[str, Any]) -> None:
        events.put((event_type, body["metadata"]["name"]))

    caplog.set_level(logging.INFO)
    watch = LabelledWatch(
        cp.api_client(), WatchTarget("secrets", SELECTOR), [namespace], record, relisted.set
    )
    watch.start()
    try:
        assert watch.synced.wait(30)
        assert sorted(_drain(events, ("LISTED", "last"), 10)) == [
            ("LISTED", "gone"),
            ("LISTED", "kept"),
            ("LISTED", "last"),
        ]
        caplog.clear()

        def delete_unseen_and_compact() -> None:
            assert cp.etcd_delete("secrets", namespace, "gone") == 1
            cp.compact()  # the watch's resourceVersion is gone: 410, list again
            time.sleep(3)  # an outage of a few seconds: the watch retries meanwhile

        cp.restart_apiserver(while_down=delete_unseen_and_compact)
        assert relisted.wait(60), "no re-list after the outage"
        _labelled(core, namespace, "after")  # the watch resumed after the re-list
        # Only the deletion nobody saw, then the new object: "kept" and "last" are
        # unchanged, so they are not reported again (no RESET, no re-ADDED).
        assert _drain(events, ("ADDED", "after")) == [("DELETED", "gone"), ("ADDED", "after")]
    finally:
        watch.stop()

    ours = [r for r in caplog.records if r.name.startswith(("tokensync", "urllib3"))]
    assert not [r for r in ours if r.exc_info], "a traceback was logged"
    assert not [r for r in ours if r.name.startswith("urllib3")], "urllib3 retried on its own"
    failures = [r for r in ours if r.name == "tokensync.watches"]
    assert 1 <= len(failures) <= 6, [r.getMessage() for r in failures]


def test_watches_that_end_at_once_back_off(control_plane, namespace, monkeypatch):
    """A server that closes every watch at once (here: after 1 s, with no event) gets
    fewer and fewer reconnects, not one per second."""
    monkeypatch.setattr(watches, "WATCH_SECONDS", 1)
    watch = LabelledWatch(
        control_plane.api_client(),
        WatchTarget("secrets", SELECTOR),
        [namespace],
        lambda *_: None,
    )
    started: list[float] = []
    request = watch._request

    def counting(namespace: str | None, **query: str) -> Any:
        if "watch" in query:
            started.append(time.monotonic())
        return request(namespace, **query)

    watch._request = counting  # type: ignore[method-assign]
    watch.start()
    try:
        wait_for(lambda: started, 30, "the first watch")
        time.sleep(9)  # counting reconnects over an interval is the point here
    finally:
        watch.stop()
    # 1 s watches with 1, 2, 4 s pauses: 3 or 4 watches in 9 s (9 without the pauses)
    assert len(started) <= 4, f"{len(started)} watches in 9 s"
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert gaps == sorted(gaps), gaps


def test_a_list_whose_continue_token_expired_starts_over(control_plane, namespace, monkeypatch):
    core = client.CoreV1Api(control_plane.api_client())
    for name in ("p1", "p2", "p3"):
        _labelled(core, namespace, name)
    monkeypatch.setattr(watches, "PAGE_SIZE", 1)
    watch = LabelledWatch(
        control_plane.api_client(), WatchTarget("secrets", SELECTOR), [namespace], print
    )
    pages: list[list[str] | None] = []
    for page in watch._pages(namespace):
        pages.append(page and [i["metadata"]["name"] for i in page["items"]])
        if len(pages) == 1:  # the continue token's snapshot is gone from etcd and cache
            core.create_namespaced_config_map(namespace, {"metadata": {"name": "later"}})
            control_plane.restart_apiserver(while_down=control_plane.compact)
    assert pages[:2] == [["p1"], None], pages  # 410: the list started over
    assert pages[2:] == [["p1"], ["p2"], ["p3"]]
