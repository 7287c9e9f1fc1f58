"""Issue 18, item 7: the metrics server bounds its threads (400 idle connections started
54 threads), and unknown bearers cannot make it send a TokenReview each (200 in 0.8 s)
or evict the scrapers' cached grants (1,024 did)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from test_metrics import Reviews, _get, _serve  # type: ignore[import-not-found]

from tokensync import metrics_auth
from tokensync.metrics_auth import ReviewCache, ReviewLimiter, User, decide


def reviews() -> Reviews:
    return Reviews(
        users={"good": User("system:serviceaccount:mon:prometheus")},
        allowed={"system:serviceaccount:mon:prometheus"},
    )


def test_unknown_bearers_get_a_bounded_number_of_reviews():
    clock = [0.0]
    cache = ReviewCache(now=lambda: clock[0])
    limiter = ReviewLimiter(now=lambda: clock[0])
    api = reviews()
    assert decide("Bearer good", api, cache, limiter=limiter).status == 200
    statuses = [
        decide(f"Bearer random-{i}", api, cache, limiter=limiter).status for i in range(200)
    ]
    # The first review of "good" took one from the bucket too.
    assert api.calls.count("TokenReview") == metrics_auth.REVIEW_BURST
    assert statuses.count(429) == 200 - (metrics_auth.REVIEW_BURST - 1)
    # The scraper's grant expired mid-flood: it is reviewed again, not rate-limited.
    clock[0] = metrics_auth.ALLOW_TTL_SECONDS + 1
    limiter.tokens = 0
    limiter.stamp = clock[0]
    assert decide("Bearer good", api, cache, limiter=limiter).status == 200
    # One second later, REVIEW_RATE more unknown tokens are reviewed.
    clock[0] += 1
    before = api.calls.count("TokenReview")
    for i in range(50):
        decide(f"Bearer later-{i}", api, cache, limiter=limiter)
    assert api.calls.count("TokenReview") - before == int(metrics_auth.REVIEW_RATE_PER_SECOND)


def test_denials_do_not_evict_grants():
    cache = ReviewCache()
    api = reviews()
    assert decide("Bearer good", api, cache).status == 200
    for i in range(metrics_auth.CACHE_MAX_ENTRIES * 2):
        decide(f"Bearer random-{i}", api, cache)
    calls = len(api.calls)
    assert decide("Bearer good", api, cache).status == 200
    assert len(api.calls) == calls  # still cached
    assert len(cache.entries) <= metrics_auth.CACHE_MAX_ENTRIES


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_idle_connections_do_not_pile_up_threads():
    """The real server: 400 idle TCP connections (no TLS handshake) hold at most
    MAX_CONNECTIONS threads, and the server answers again once they go."""
    cache = ReviewCache()
    api = reviews()
    server, port = _serve(
        lambda header: decide(header, api, cache), metrics_auth.ServerCertificate(None)
    )
    idle: list[socket.socket] = []
    try:
        baseline = _threads()
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 5
        peak = 0
        while time.monotonic() < deadline:
            peak = max(peak, _threads() - baseline)
            time.sleep(0.05)
        assert peak <= metrics_auth.MAX_CONNECTIONS + 2, peak
    finally:
        for s in idle:
            s.close()
    try:
        ok = threading.Event()

        def scrape() -> None:
            for _ in range(50):
                try:
                    if _get(port, "/metrics", "good")[0] == 200:
                        ok.set()
                        return
                except OSError:
                    time.sleep(0.2)

        scrape()
        assert ok.is_set()
    finally:
        server.shutdown()
        server.server_close()
