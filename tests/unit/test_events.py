"""events.py (the Event body, action, reporting instance, the non-blocking recorder) and
the text log format of `tokensync run`."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tokensync import events
from tokensync.cli import configure_logging
from tokensync.kube import Kube

NOW = datetime(2026, 11, 30, 12, 0, 1, 234567, tzinfo=UTC)
CREDENTIAL = {
    "apiVersion": "tokensync.dev/v1alpha1",
    "kind": "OAuth2Credential",
    "metadata": {"name": "lms", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7"},
}


def test_event_body_names_controller_instance_and_action() -> None:
    body = events.event_body(
        CREDENTIAL, "Warning", "ReferenceNotLabeled", "m" * 2000, now=NOW, instance="pod-1"
    )
    assert body["reportingComponent"] == "tokensync.dev/operator"
    assert body["reportingInstance"] == "pod-1"
    assert body["action"] == "Validate"
    assert body["involvedObject"] == {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "name": "lms",
        "namespace": "team-a",
        "uid": "u-1",
        "resourceVersion": "7",
    }
    assert body["metadata"] == {"generateName": "lms.", "namespace": "team-a"}
    assert body["eventTime"] == "2026-11-30T12:00:01.234567Z"
    assert len(body["message"]) == 1024


@pytest.mark.parametrize(
    ("reason", "action"),
    [
        ("TokenIssued", "Refresh"),
        ("TokenRequestFailed", "Refresh"),
        ("InvalidSpec", "Validate"),
        ("InsecureSetting", "Validate"),
        ("SecretConflict", "WriteSecret"),
        ("Suspended", "Suspend"),
        ("SomethingNew", "Reconcile"),
    ],
)
def test_actions(reason: str, action: str) -> None:
    assert events.action_for(reason) == action


def test_reporting_instance_is_the_pod_name_else_the_host_name() -> None:
    assert events.reporting_instance({"POD_NAME": "tokensync-5d9f-abcde"}) == "tokensync-5d9f-abcde"
    assert events.reporting_instance({}) not in ("", "dev")


def test_recorder_posts_on_its_own_thread_and_survives_failures() -> None:
    sent: list[tuple[str, dict[str, Any], str]] = []
    caller = threading.current_thread().name

    def create(namespace: str, body: dict[str, Any]) -> None:
        if body["reason"] == "Boom":
            raise RuntimeError("api down")
        sent.append((namespace, body, threading.current_thread().name))

    recorder = events.Recorder(create, instance="pod-1", now=lambda: NOW)
    recorder.post(CREDENTIAL, "Warning", "Boom", "first")
    recorder.post(CREDENTIAL, "Normal", "TokenIssued", "second")
    recorder.flush()
    assert [(ns, b["reason"]) for ns, b, _ in sent] == [("team-a", "TokenIssued")]
    assert sent[0][2] != caller


def test_a_full_backlog_drops_events_with_one_warning_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A creation burst of 10,000 credentials overflowed the backlog and logged one
    warning per dropped event (thousands of lines in the 10,000-credential bench)."""
    release, clock = threading.Event(), [0.0]
    recorder = events.Recorder(
        lambda _ns, _body: release.wait(10),
        instance="pod-1",
        now=lambda: NOW,
        clock=lambda: clock[0],
    )
    caplog.set_level(logging.WARNING, "tokensync.events")
    try:
        for _ in range(events.MAX_BACKLOG + 500):  # the first blocks the thread
            recorder.post(CREDENTIAL, "Normal", "TokenIssued", "issued")
        clock[0] += events.SUMMARY_SECONDS
        recorder.post(CREDENTIAL, "Warning", "TokenRequestFailed", "failed")
    finally:
        release.set()
    recorder.flush()
    drops = [r.getMessage() for r in caplog.records if "backlog full" in r.getMessage()]
    assert len(drops) == 2, drops
    assert "dropped 1 event(s), the last a TokenIssued" in drops[0]
    assert "dropped 500 event(s), the last a TokenRequestFailed" in drops[1]
    # Drained: the next drop is logged at once again.
    release.clear()
    try:
        for _ in range(events.MAX_BACKLOG + 1):
            recorder.post(CREDENTIAL, "Normal", "TokenIssued", "issued")
    finally:
        release.set()
    recorder.flush()
    assert sum("backlog full" in r.getMessage() for r in caplog.records) == 3


def test_text_logs_carry_a_utc_timestamp_and_the_level(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("text")
    logging.getLogger("tokensync.test").warning("hello %s", "there")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING tokensync\.test: hello there", line
    ), line


def test_json_logs_are_kopfs(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    logging.getLogger("tokensync.test").warning("hello")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert '"message": "hello"' in line and '"severity": "warn"' in line


@contextlib.contextmanager
def _event_server(status: int, answer: bytes) -> Iterator[tuple[Kube, list[object], list[str]]]:
    """A keep-alive HTTP server answering every POST with `status` and `answer`, and a
    Kube pointed at it; yields (kube, connections accepted, paths posted to)."""
    connections: list[object] = []
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as kube-apiserver

        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = kubernetes.client.Configuration()
        config.host = f"http://127.0.0.1:{server.server_address[1]}"
        yield Kube(config), connections, paths
    finally:
        server.shutdown()
        server.server_close()


def test_posting_events_reuses_one_connection() -> None:
    # The 10,000-credential profile: the events thread opened a new TLS connection for
    # every event, because the unread answer (`_preload_content=False`) never gave its
    # connection back to the pool.
    body = events.event_body(
        {"metadata": {"name": "c", "namespace": "ns"}},
        "Normal",
        "TokenIssued",
        "token valid until later",
        now=datetime.now(UTC),
        instance="test",
    )
    with _event_server(201, b'{"kind": "Event", "metadata": {"name": "e"}}') as served:
        kube, connections, paths = served
        for _ in range(5):
            kube.create_event("ns", body)
    assert paths == ["/api/v1/namespaces/ns/events"] * 5
    assert len(connections) == 1, f"{len(connections)} connections for 5 events"


def test_a_refused_event_is_logged_with_the_status_message_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusal = json.dumps(
        {
            "kind": "Status",
            "message": 'events is forbidden: User "tokensync" cannot create resource "events"',
            "details": {"causes": [{"message": "echoed-request-body-field"}]},
        }
    ).encode()
    caplog.set_level(logging.WARNING, "tokensync.events")
    with _event_server(403, refusal) as (kube, _, _):
        recorder = events.Recorder(kube.create_event, instance="pod-1", now=lambda: NOW)
        recorder.post(CREDENTIAL, "Normal", "TokenIssued", "issued")
        recorder.flush()
    logged = [r.getMessage() for r in caplog.records]
    assert any(
        'Kubernetes API 403: events is forbidden: User "tokensync"' in line for line in logged
    ), logged
    assert not any("echoed-request-body-field" in line for line in logged), logged


def test_posting_an_event_loads_none_of_the_clients_models() -> None:
    """The events thread used the client's CoreV1Api: its module imports hundreds of the
    client's pydantic models (about 18 MB of RSS at 250 of them) that tokensync never
    uses. In a fresh interpreter, since other tests may have loaded them here."""
    script = textwrap.dedent(
        """
        import sys
        sys.path[:0] = [sys.argv[1]]
        from test_events import _event_server
        with _event_server(201, b"{}") as (kube, _, paths):
            kube.create_event("ns", {"kind": "Event", "metadata": {"namespace": "ns"}})
        assert paths == ["/api/v1/namespaces/ns/events"], paths
        print([m for m in sys.modules if m.startswith(("kubernetes.client.api.",
                                                       "kubernetes.client.models."))])
        """
    )
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", script, here], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
