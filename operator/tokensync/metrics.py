"""Prometheus metrics. Labels carry namespaces, names and result classes, never data.

Served on /metrics over HTTPS to callers the API server authenticates and authorises
(metrics_auth.py), or over plain HTTP to anyone with --metrics-insecure.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from tokensync import metrics_auth
from tokensync.metrics_auth import MetricsSecurity

log = logging.getLogger("tokensync.metrics")

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
SHARD_HELD = Gauge(
    "tokensync_shard_held",
    "1 for each shard whose Lease this replica holds and serves (with --shards); the "
    "series of a shard it gives back or loses is removed.",
    ["shard"],
)
KUBE_CALL_WAIT = Histogram(
    "tokensync_kube_call_wait_seconds",
    "Time a Kubernetes API call (a Secret or status write, a read) waited for one of the "
    "operator's API threads: seconds here mean the operator is short of CPU, or the API "
    "server is slow, and tokens reach their Secrets that much later.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
KUBE_CALLS_WAITING = Gauge(
    "tokensync_kube_calls_waiting",
    "Kubernetes API calls waiting for one of the operator's API threads.",
)
for _result in ("success", "transient", "configuration", "protocol"):
    TOKEN_REQUESTS.labels(_result)


READY_STATUSES = ("true", "false", "unknown")


@dataclass(frozen=True)
class CredentialSample:
    namespace: str
    name: str
    ready_reason: str | None
    expires_at: datetime | None
    next_refresh_at: datetime | None = None  # the scheduled refresh (status.nextRefreshTime)
    ready_status: str | None = None  # the Ready condition's status: True, False, Unknown


def sample_from_status(
    namespace: str, name: str, status: Mapping[str, Any], expires_at: datetime | None
) -> CredentialSample:
    """A sample from a credential's status as last written (Ready condition,
    nextRefreshTime) and the expiry of the token held."""
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    return CredentialSample(
        namespace=namespace,
        name=name,
        ready_reason=ready.get("reason") if ready else None,
        expires_at=expires_at,
        next_refresh_at=_parse_time(status.get("nextRefreshTime")),
        ready_status=ready.get("status") if ready else None,
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def forget(namespace: str, name: str) -> None:
    """Drop the per-credential series of a credential that is gone (the gauges computed
    at scrape time go with its worker; the failure counter must be told)."""
    REFRESH_FAILURES.remove_by_labels({"namespace": namespace, "name": name})


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
        expiration = GaugeMetricFamily(
            "tokensync_credential_expiration_timestamp_seconds",
            "Unix time at which the token held in the managed Secret expires.",
            labels=["namespace", "name"],
        )
        renewal = GaugeMetricFamily(
            "tokensync_credential_renewal_timestamp_seconds",
            "Unix time of the next scheduled token refresh.",
            labels=["namespace", "name"],
        )
        ready = GaugeMetricFamily(
            "tokensync_credential_ready",
            "1 for the current status of the credential's Ready condition, 0 for the others.",
            labels=["namespace", "name", "condition"],
        )
        reasons: Tally[str] = Tally()
        for sample in self._samples():
            key = [sample.namespace, sample.name]
            reasons[sample.ready_reason or "Unknown"] += 1
            if sample.expires_at is not None:
                seconds = (sample.expires_at - now).total_seconds()
                expiry.add_metric(key, seconds)
                expiration.add_metric(key, sample.expires_at.timestamp())
            if sample.next_refresh_at is not None:
                renewal.add_metric(key, sample.next_refresh_at.timestamp())
            current = ready_condition(sample.ready_status)
            for status in READY_STATUSES:
                ready.add_metric([*key, status], 1.0 if status == current else 0.0)
        for reason, count in sorted(reasons.items()):
            by_reason.add_metric([reason], count)
        yield expiry
        yield by_reason
        yield expiration
        yield renewal
        yield ready


def ready_condition(status: str | None) -> str:
    """The `condition` label value for a Ready status (kube-state-metrics' spelling)."""
    value = (status or "").lower()
    return value if value in READY_STATUSES else "unknown"


# --- serving /metrics ----------------------------------------------------------------------

HANDSHAKE_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 30.0


class _Handler(MetricsHandler):
    """prometheus_client's handler (content negotiation, gzip) behind the review, on
    /metrics only: the path reviewed is the path served."""

    timeout = REQUEST_TIMEOUT_SECONDS
    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != metrics_auth.METRICS_PATH:
            self._reply(404, "not found: only /metrics is served")
            return
        if self.server.authorize is not None:
            decision = self.server.authorize(self.headers.get("Authorization"))
            if decision.status != 200:
                log.debug("metrics: %s (%s)", decision.status, decision.reason)
                self._reply(decision.status, decision.reason)
                return
        super().do_GET()

    def _reply(self, status: int, text: str) -> None:
        body = f"{text}\n".encode()
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="tokensync metrics"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _MetricsServer(metrics_auth.BoundedThreads, ThreadingHTTPServer):
    """One thread per connection, at most metrics_auth.MAX_CONNECTIONS; the TLS handshake
    happens in that thread (with a deadline), so a client that connects and stalls cannot
    hold up the others."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        certificate: metrics_auth.ServerCertificate | None,
        authorize: Callable[[str | None], metrics_auth.Decision] | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.certificate = certificate
        self.authorize = authorize

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.certificate is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            tls = self.certificate.context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # not TLS, or gave up: nothing to answer
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


def serve(
    port: int,
    samples: Callable[[], Iterable[CredentialSample]],
    host: str,
    security: MetricsSecurity | None = None,
) -> None:
    """Expose /metrics on host:port (port 0 disables metrics): HTTPS for authorised
    callers unless `security.insecure`."""
    REGISTRY.register(CredentialCollector(samples))
    if not port:
        return
    security = security or MetricsSecurity()
    certificate = authorize = None
    if not security.insecure:
        certificate = metrics_auth.ServerCertificate(security.cert_dir)
        reviewer = metrics_auth.KubernetesReviewer.from_environment()
        cache = metrics_auth.ReviewCache()
        limiter = metrics_auth.ReviewLimiter()

        def authorize(header: str | None) -> metrics_auth.Decision:
            return metrics_auth.decide(header, reviewer, cache, limiter=limiter)

    server = _MetricsServer((host, port), certificate, authorize)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
