"""Fair shares of the operator for every tenant: token-request concurrency per endpoint and
in all, and a rate limit on how many credential passes start per second.

Why: token requests block a thread for up to `timeoutSeconds`. Without a per-endpoint
cap, 70 credentials pointing at an endpoint that answers after 100 s held every thread
and delayed an unrelated namespace's first token by 91 s. So queueing is per endpoint all
the way down: each endpoint has its own slots and its own threads (token requests,
discovery and assertion minting for it), and a slow endpoint fills only its own. And
when thousands of workers wake together (start-up, leadership regained, the API server
back after an outage), the pass gate spreads them out instead of sending every request
at once.

The limits live on the event loop (asyncio primitives); only the blocking calls run in
the endpoints' threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

DEFAULT_MAX_REQUESTS = 64
DEFAULT_MAX_REQUESTS_PER_HOST = 8
# An endpoint's threads are kept this long after its last request (renewals to one
# endpoint come every few seconds at scale; new threads for each would be waste).
IDLE_ENDPOINT_SECONDS = 120.0
T = TypeVar("T")


def endpoint_key(url: str) -> str:
    """scheme://host:port of a token URL: what "one endpoint" means for the limits."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').rstrip('.')}:{port}"


@dataclass
class _Endpoint:
    slots: asyncio.Semaphore
    threads: ThreadPoolExecutor
    users: int = 0  # waiting or running
    idle_since: float = field(default=0.0)


class RequestLimits:
    """At most `max_per_host` token-side calls in flight per endpoint (host and port),
    each on that endpoint's own threads, and `max_in_flight` in all. A call waits for its
    endpoint's slot before it takes a global one, so a slow endpoint's queue never holds
    global slots, and its threads are its own, so it never holds anyone else's."""

    def __init__(
        self,
        max_in_flight: int = DEFAULT_MAX_REQUESTS,
        max_per_host: int = DEFAULT_MAX_REQUESTS_PER_HOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1 or max_per_host < 1:
            raise ValueError("request limits must be at least 1")
        self.max_per_host = max_per_host
        self._global = asyncio.Semaphore(max_in_flight)
        self._endpoints: dict[str, _Endpoint] = {}
        self._clock = clock
        self._reaped_at = clock()

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[ThreadPoolExecutor]:
        """The endpoint's slot and a global one; yields the endpoint's threads."""
        key = endpoint_key(url)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = _Endpoint(
                asyncio.Semaphore(self.max_per_host),
                ThreadPoolExecutor(self.max_per_host, thread_name_prefix="tokensync-token"),
            )
            self._endpoints[key] = endpoint
        endpoint.users += 1
        try:
            async with endpoint.slots, self._global:
                yield endpoint.threads
        finally:
            endpoint.users -= 1
            endpoint.idle_since = self._clock()
            self._reap()

    async def run(self, url: str, fn: Callable[[], T], sent: asyncio.Event | None = None) -> T:
        """fn() on the threads of `url`'s endpoint, inside its limits; `sent` is set
        when it leaves the queue."""
        async with self.slot(url) as threads:
            if sent is not None:
                sent.set()
            return await asyncio.get_running_loop().run_in_executor(threads, fn)

    def _reap(self) -> None:
        """Drop endpoints idle for IDLE_ENDPOINT_SECONDS (looked at every 10 s at most)."""
        now = self._clock()
        if now - self._reaped_at < 10.0:
            return
        self._reaped_at = now
        for key, endpoint in list(self._endpoints.items()):
            if not endpoint.users and now - endpoint.idle_since >= IDLE_ENDPOINT_SECONDS:
                del self._endpoints[key]
                endpoint.threads.shutdown(wait=False)

    def in_use(self) -> int:
        """Endpoints with calls waiting or in flight (for tests and metrics)."""
        return sum(1 for endpoint in self._endpoints.values() if endpoint.users)

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.threads.shutdown(wait=False, cancel_futures=True)
        self._endpoints.clear()


class Coalescer:
    """One call in flight per key: concurrent callers with the same key share its
    outcome (discovery of one issuer for many credentials). A caller's cancellation
    never cancels the shared call."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[object]] = {}

    async def run(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(make())
            self._running[key] = future
            future.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(future)  # type: ignore[return-value]

    def in_flight(self) -> int:
        return len(self._running)


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


class QueueTimedExecutor(ThreadPoolExecutor):
    """A thread pool that reports how long each call waited for a thread: the Kubernetes
    calls' pool. When the operator is short of CPU, status and Secret writes queue here
    (a minute at 10,000 credentials on a saturated 2-core machine) and tokens reach
    their Secrets late; the wait is what says so before a token expires."""

    def __init__(
        self,
        max_workers: int,
        thread_name_prefix: str,
        on_wait: Callable[[float], None],
        on_depth: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._on_wait, self._on_depth, self._clock = on_wait, on_depth, clock
        self._waiting = 0
        self._count_lock = threading.Lock()

    def _count(self, change: int) -> None:
        with self._count_lock:
            self._waiting += change
            self._on_depth(self._waiting)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        queued = self._clock()
        started = False

        def timed() -> T:
            nonlocal started
            started = True
            self._count(-1)
            self._on_wait(self._clock() - queued)
            return fn(*args, **kwargs)

        self._count(+1)
        future = super().submit(timed)

        def never_started(done: Future[T]) -> None:  # cancelled while queued (shutdown)
            if not started:
                self._count(-1)

        future.add_done_callback(never_started)
        return future
