"""Fair shares of the operator for every tenant: token-request concurrency per endpoint and
in all, and a rate limit on how many credential passes start per second.

Why: token requests block a thread for up to `timeoutSeconds`. Without a per-endpoint
cap, 70 credentials pointing at an endpoint that answers after 100 s held every thread
and delayed an unrelated namespace's first token by 91 s. And when thousands of workers
wake together (start-up, leadership regained, the API server back after an outage), the
pass gate spreads them out instead of sending every request at once.

Both live on the event loop (asyncio primitives, no threads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

DEFAULT_MAX_REQUESTS = 64
DEFAULT_MAX_REQUESTS_PER_HOST = 8


def endpoint_key(url: str) -> str:
    """scheme://host:port of a token URL: what "one endpoint" means for the limits."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').rstrip('.')}:{port}"


class RequestLimits:
    """At most `max_per_host` token requests in flight per endpoint (host and port) and
    `max_in_flight` in all. A request waits for its endpoint's slot before it takes a
    global one, so a slow endpoint's queue never holds global slots."""

    def __init__(
        self,
        max_in_flight: int = DEFAULT_MAX_REQUESTS,
        max_per_host: int = DEFAULT_MAX_REQUESTS_PER_HOST,
    ) -> None:
        if max_in_flight < 1 or max_per_host < 1:
            raise ValueError("request limits must be at least 1")
        self.max_per_host = max_per_host
        self._global = asyncio.Semaphore(max_in_flight)
        self._per_host: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # waiting or running, so idle hosts are forgotten

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        key = endpoint_key(url)
        host = self._per_host.setdefault(key, asyncio.Semaphore(self.max_per_host))
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with host, self._global:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._per_host[key]

    def in_use(self) -> int:
        """Endpoints with requests waiting or in flight (for tests and metrics)."""
        return len(self._per_host)


class PassGate:
    """A token bucket: at most `rate` credential passes start per second, `burst` at once.
    Every pass goes through it; in steady state (a renewal every few milliseconds) it
    never waits, after a mass wake-up it paces the catch-up."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1
