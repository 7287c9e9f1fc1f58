"""The decisions of the label-selected watches: retry pacing and the sweep after a
re-list (the list+watch itself runs against the real API server in tests/operator)."""

from __future__ import annotations

from tokensync.watches import (
    FIRST_RETRY_SECONDS,
    HEALTHY_SECONDS,
    MAX_RETRY_SECONDS,
    Known,
    WatchTarget,
    next_delay,
    sweep,
)


def test_rounds_that_end_at_once_back_off_doubling_to_the_cap():
    delay, waits = FIRST_RETRY_SECONDS, []
    for _ in range(8):
        wait, delay = next_delay(delay, lasted=0.0)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert MAX_RETRY_SECONDS == 30


def test_a_round_that_lasted_a_while_resumes_at_once_and_resets_the_delay():
    assert next_delay(16.0, lasted=HEALTHY_SECONDS) == (0.0, FIRST_RETRY_SECONDS)
    assert next_delay(16.0, lasted=HEALTHY_SECONDS - 1) == (16.0, 30.0)


def test_sweep_reports_only_objects_gone_since_the_last_list():
    known = {
        ("a", "kept"): Known("5", {}),
        ("a", "gone"): Known("7", {"tokensync.dev/credential": "cred"}),
    }
    gone = sweep(known, seen={("a", "kept"), ("a", "new")})
    assert gone == [
        {
            "metadata": {
                "namespace": "a",
                "name": "gone",
                "resourceVersion": "7",
                "labels": {"tokensync.dev/credential": "cred"},
            }
        }
    ]
    assert set(known) == {("a", "kept")}


def test_pages_are_small_for_full_secrets_and_large_for_metadata():
    assert WatchTarget("secrets", "x").page_size == 20
    assert WatchTarget("secrets", "x", metadata_only=True).page_size == 500
    assert WatchTarget("configmaps", "x").path("ns") == "/api/v1/namespaces/ns/configmaps"
    assert WatchTarget("configmaps", "x").path(None) == "/api/v1/configmaps"


def test_a_silent_watch_connection_is_noticed_and_listed_again(monkeypatch):
    """A watch whose connection went silent (dropped by a NAT without a reset) is given
    up after READ_SECONDS, at most 90 s (the server ends a healthy watch every
    WATCH_SECONDS, and sends bookmarks meanwhile), and the objects are listed again."""
    import http.server
    import threading
    import time

    import kubernetes

    from tokensync import watches
    from tokensync.watches import READ_SECONDS, WATCH_SECONDS, LabelledWatch

    assert WATCH_SECONDS < READ_SECONDS <= 90
    lists: list[float] = []
    hold = threading.Event()

    class Silent(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            if "watch=true" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                hold.wait(30)  # never a byte more
                return
            lists.append(time.monotonic())
            body = b'{"kind":"SecretList","metadata":{"resourceVersion":"5"},"items":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(watches, "READ_SECONDS", 1.0)  # the same rule, in test time
    monkeypatch.setattr(watches, "FIRST_RETRY_SECONDS", 0.1)
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api = kubernetes.client.ApiClient(configuration)
    watch = LabelledWatch(api, WatchTarget("secrets", "x=y"), ["ns"], lambda *_: None)
    watch.start()
    try:
        deadline = time.monotonic() + 10
        while len(lists) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watch.stop()
        hold.set()
        server.shutdown()
    assert len(lists) >= 2, "the silent watch was never given up"
    assert lists[1] - lists[0] < 3
