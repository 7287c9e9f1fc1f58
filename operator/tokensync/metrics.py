"""Prometheus metrics. Labels carry namespaces, names and result classes, never data."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

TOKEN_REQUESTS = Counter(
    "tokensync_token_requests",
    "Token requests sent, by result: success, or the error class (transient, "
    "configuration, protocol).",
    ["result"],
)
TOKEN_REQUEST_DURATION = Histogram(
    "tokensync_token_request_duration_seconds",
    "Duration of token requests, connect to last byte.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REFRESH_FAILURES = Counter(
    "tokensync_refresh_failures",
    "Failed token refreshes per credential, by error class.",
    ["namespace", "name", "kind"],
)
LEADER = Gauge(
    "tokensync_leader",
    "1 while this replica serves credentials (always, without --peering); 0 while it "
    "stands by for the leader-election Lease.",
)
for _result in ("success", "transient", "configuration", "protocol"):
    TOKEN_REQUESTS.labels(_result)


@dataclass(frozen=True)
class CredentialSample:
    namespace: str
    name: str
    ready_reason: str | None
    expires_at: datetime | None


class CredentialCollector(Collector):
    """Per-credential gauges computed at scrape time from the operator's memory, so
    seconds-until-expiry is exact without a timer per credential."""

    def __init__(
        self,
        samples: Callable[[], Iterable[CredentialSample]],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._samples = samples
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._now()
        expiry = GaugeMetricFamily(
            "tokensync_token_expiry_seconds",
            "Seconds until the token held in the managed Secret expires (negative: expired).",
            labels=["namespace", "name"],
        )
        by_reason = GaugeMetricFamily(
            "tokensync_credentials",
            "Credentials by the reason of their Ready condition.",
            labels=["reason"],
        )
        reasons: Tally[str] = Tally()
        for sample in self._samples():
            reasons[sample.ready_reason or "Unknown"] += 1
            if sample.expires_at is not None:
                seconds = (sample.expires_at - now).total_seconds()
                expiry.add_metric([sample.namespace, sample.name], seconds)
        for reason, count in sorted(reasons.items()):
            by_reason.add_metric([reason], count)
        yield expiry
        yield by_reason


def serve(port: int, samples: Callable[[], Iterable[CredentialSample]], host: str) -> None:
    """Expose /metrics on host:port (port 0 disables metrics)."""
    REGISTRY.register(CredentialCollector(samples))
    if port:
        start_http_server(port, addr=host)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted credential's own series, so they do not pile up."""
    for kind in ("transient", "configuration", "protocol"):
        with contextlib.suppress(KeyError):
            REFRESH_FAILURES.remove(namespace, name, kind)
