"""Metrics without a cluster: the per-credential alerting gauges computed at scrape time,
the failure counter forgotten with its credential, the /metrics access decision
(bearer token -> review -> cache), and the HTTPS server itself on loopback with a
self-signed certificate. The reviews against a real API server: tests/operator/
test_metrics_auth.py."""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest

from tokensync import metrics, metrics_auth
from tokensync.cli import build_parser
from tokensync.metrics_auth import Decision, ReviewCache, ReviewUnavailable, User, decide

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def scrape(samples: list[metrics.CredentialSample]) -> str:
    registry = CollectorRegistry()
    registry.register(metrics.CredentialCollector(lambda: samples, now=lambda: NOW))
    return generate_latest(registry).decode()


def series(text: str, name: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


# --- alerting gauges ------------------------------------------------------------------------


def test_expiration_and_renewal_timestamps() -> None:
    sample = metrics.CredentialSample(
        "team-a",
        "lms",
        "TokenIssued",
        expires_at=NOW + timedelta(hours=1),
        next_refresh_at=NOW + timedelta(minutes=40),
        ready_status="True",
    )
    text = scrape([sample])
    expiration = series(text, "tokensync_credential_expiration_timestamp_seconds")
    renewal = series(text, "tokensync_credential_renewal_timestamp_seconds")
    labels = '{name="lms",namespace="team-a"}'
    assert expiration == {
        f"tokensync_credential_expiration_timestamp_seconds{labels}": NOW.timestamp() + 3600
    }
    assert renewal == {
        f"tokensync_credential_renewal_timestamp_seconds{labels}": NOW.timestamp() + 2400
    }
    # The existing relative gauge is unchanged.
    assert series(text, "tokensync_token_expiry_seconds") == {
        f"tokensync_token_expiry_seconds{labels}": 3600.0
    }


@pytest.mark.parametrize(
    ("status", "current"),
    [("True", "true"), ("False", "false"), ("Unknown", "unknown"), (None, "unknown")],
)
def test_ready_is_one_hot_by_condition_status(status: str | None, current: str) -> None:
    sample = metrics.CredentialSample("ns", "c", "X", None, ready_status=status)
    ready = series(scrape([sample]), "tokensync_credential_ready")
    assert ready == {
        f'tokensync_credential_ready{{condition="{c}",name="c",namespace="ns"}}': (
            1.0 if c == current else 0.0
        )
        for c in ("true", "false", "unknown")
    }


def test_no_token_and_no_schedule_means_no_timestamp_series() -> None:
    text = scrape([metrics.CredentialSample("ns", "new", None, None)])
    assert not series(text, "tokensync_credential_expiration_timestamp_seconds")
    assert not series(text, "tokensync_credential_renewal_timestamp_seconds")
    assert len(series(text, "tokensync_credential_ready")) == 3


def test_a_credential_that_is_gone_has_no_series() -> None:
    """Computed from the workers at scrape time: no worker, no series."""
    samples = [metrics.CredentialSample("ns", "c", "TokenIssued", NOW, NOW, "True")]
    assert 'name="c"' in scrape(samples)
    samples.clear()
    assert 'name="c"' not in scrape(samples)


def test_sample_from_status() -> None:
    status = {
        "conditions": [
            {"type": "Other", "status": "False", "reason": "Nope"},
            {"type": "Ready", "status": "True", "reason": "TokenIssued"},
        ],
        "nextRefreshTime": "2026-01-01T12:40:00Z",
    }
    sample = metrics.sample_from_status("ns", "c", status, NOW)
    assert sample == metrics.CredentialSample(
        "ns", "c", "TokenIssued", NOW, NOW + timedelta(minutes=40), "True"
    )
    empty = metrics.sample_from_status("ns", "c", {"nextRefreshTime": "garbage"}, None)
    assert (empty.ready_reason, empty.ready_status, empty.next_refresh_at) == (None, None, None)


def test_forget_removes_the_failure_counter_series_of_one_credential() -> None:
    for kind in ("transient", "configuration"):
        metrics.REFRESH_FAILURES.labels("forget-ns", "gone", kind).inc()
    metrics.REFRESH_FAILURES.labels("forget-ns", "stays", "transient").inc()
    metrics.forget("forget-ns", "gone")
    text = generate_latest(metrics.REGISTRY).decode()
    remaining = series(text, "tokensync_refresh_failures_total")
    assert not [k for k in remaining if 'name="gone"' in k and "forget-ns" in k]
    assert [k for k in remaining if 'name="stays"' in k and "forget-ns" in k]


# --- who may read /metrics --------------------------------------------------------------------


@dataclass
class Reviews:
    """A reviewer answering from tables, counting the reviews it was asked for."""

    users: dict[str, User] = field(default_factory=dict)
    allowed: set[str] = field(default_factory=set)
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def authenticate(self, token: str) -> User | None:
        self.calls.append("TokenReview")
        if self.down:
            raise ReviewUnavailable("Kubernetes API 500")
        return self.users.get(token)

    def authorize(self, user: User, path: str, verb: str) -> bool:
        self.calls.append("SubjectAccessReview")
        return (path, verb) == ("/metrics", "get") and user.username in self.allowed


@pytest.fixture
def reviews() -> Reviews:
    return Reviews(
        users={"good": User("system:serviceaccount:mon:prometheus"), "other": User("alice")},
        allowed={"system:serviceaccount:mon:prometheus"},
    )


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer a b", "Token good"],
)
def test_no_bearer_token_is_401_without_asking(reviews: Reviews, header: str | None) -> None:
    assert decide(header, reviews, ReviewCache()).status == 401
    assert reviews.calls == []


def test_unknown_token_401_unauthorised_403_authorised_200(reviews: Reviews) -> None:
    cache = ReviewCache()
    assert decide("Bearer nobody", reviews, cache).status == 401
    assert decide("Bearer other", reviews, cache).status == 403
    assert decide("Bearer good", reviews, cache).status == 200
    assert decide("bearer   good", reviews, cache).status == 200  # scheme is case-insensitive


def test_decisions_are_cached_briefly_and_never_hold_the_token(reviews: Reviews) -> None:
    clock = [0.0]
    cache = ReviewCache(now=lambda: clock[0])
    decide("Bearer good", reviews, cache)
    decide("Bearer other", reviews, cache)
    asked = len(reviews.calls)
    decide("Bearer good", reviews, cache)
    decide("Bearer other", reviews, cache)
    assert len(reviews.calls) == asked  # both from the cache
    assert "good" not in repr(cache.entries) and "other" not in repr(cache.entries)
    clock[0] = metrics_auth.DENY_TTL_SECONDS + 1  # the denial expired, the grant did not
    decide("Bearer good", reviews, cache)
    decide("Bearer other", reviews, cache)
    assert reviews.calls[asked:] == ["TokenReview", "SubjectAccessReview"]
    clock[0] = metrics_auth.ALLOW_TTL_SECONDS + 1
    decide("Bearer good", reviews, cache)
    assert len(reviews.calls) == asked + 4


def test_an_unavailable_api_server_is_503_and_not_cached(reviews: Reviews) -> None:
    cache = ReviewCache()
    reviews.down = True
    assert decide("Bearer good", reviews, cache).status == 503
    reviews.down = False
    assert decide("Bearer good", reviews, cache).status == 200


def test_cache_is_bounded() -> None:
    cache = ReviewCache()
    for i in range(metrics_auth.CACHE_MAX_ENTRIES + 10):
        cache.put(str(i), Decision(200, "ok"))
    assert len(cache.entries) == metrics_auth.CACHE_MAX_ENTRIES
    assert cache.get("0") is None and cache.get(str(metrics_auth.CACHE_MAX_ENTRIES + 9))


# --- the server, on loopback ------------------------------------------------------------------


def test_self_signed_certificate_names_the_hosts() -> None:
    cert_pem, key_pem = metrics_auth.self_signed_certificate(["tokensync-metrics", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["tokensync-metrics"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert b"PRIVATE KEY" in key_pem


def _serve(authorize: Any, certificate: Any) -> tuple[metrics._MetricsServer, int]:
    server = metrics._MetricsServer(("127.0.0.1", 0), certificate, authorize)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _get(port: int, path: str, token: str | None = None, tls: bool = True) -> tuple[int, str]:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed; its names are checked above
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context, timeout=5
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_https_server_answers_by_the_decision(reviews: Reviews) -> None:
    cache = ReviewCache()
    server, port = _serve(
        lambda header: decide(header, reviews, cache), metrics_auth.ServerCertificate(None)
    )
    try:
        assert _get(port, "/metrics")[0] == 401
        assert _get(port, "/metrics", "other")[0] == 403
        status, body = _get(port, "/metrics", "good")
        assert status == 200 and "tokensync_leader" in body
        assert _get(port, "/", "good")[0] == 404
        with pytest.raises((http.client.HTTPException, OSError)):
            _get(port, "/metrics", "good", tls=False)  # plain HTTP gets no answer
    finally:
        server.shutdown()
        server.server_close()


def test_insecure_server_is_plain_http_for_anyone() -> None:
    server, port = _serve(None, None)
    try:
        status, body = _get(port, "/metrics", tls=False)
        assert status == 200 and "tokensync_token_requests_total" in body
    finally:
        server.shutdown()
        server.server_close()


def test_flags() -> None:
    parser = build_parser()
    default = parser.parse_args(["run", "-A"])
    assert (default.metrics_insecure, default.metrics_cert_dir) == (False, None)
    insecure = parser.parse_args(["run", "-A", "--metrics-insecure"])
    assert insecure.metrics_insecure is True
    # A later --no-metrics-insecure wins (the operator tests rely on it).
    again = parser.parse_args(["run", "-A", "--metrics-insecure", "--no-metrics-insecure"])
    assert again.metrics_insecure is False


def test_a_wrong_cert_dir_stops_the_operator_before_it_starts(tmp_path, capsys) -> None:
    from tokensync.cli import run

    assert run(build_parser().parse_args(["run", "-A", f"--metrics-cert-dir={tmp_path}"])) == 2
    assert "tls.crt" in capsys.readouterr().err
    both = ["run", "-A", "--metrics-insecure", f"--metrics-cert-dir={tmp_path}"]
    assert run(build_parser().parse_args(both)) == 2


def test_cert_dir_problem_accepts_a_matching_pair(tmp_path) -> None:
    cert, key = metrics_auth.self_signed_certificate(["localhost"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    assert metrics_auth.cert_dir_problem(str(tmp_path)) is None
    _, other_key = metrics_auth.self_signed_certificate(["localhost"])
    (tmp_path / "tls.key").write_bytes(other_key)
    assert metrics_auth.cert_dir_problem(str(tmp_path))
