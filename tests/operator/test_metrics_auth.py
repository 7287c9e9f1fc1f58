"""/metrics of the real operator, running as deploy/'s ServiceAccount against the real API
server: HTTPS, and only for bearer tokens that pass a TokenReview and a
SubjectAccessReview for `get` on /metrics (issue 9 item 8); and the per-credential
alerting gauges it serves (issue 13 item 2).

Before the change, /metrics answered anyone over plain HTTP, with every credential's
namespace and name."""

from __future__ import annotations

import datetime
import http.client
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from operator_helpers import wait_for
from operator_process import OPERATOR_USER

from tokensync import metrics_auth

pytestmark = pytest.mark.envtest

READER_ROLE = "tokensync-metrics-reader"


def _token(cp: Any, namespace: str, name: str) -> str:
    cp.kubectl("create", "serviceaccount", name, "-n", namespace)
    return cp.kubectl("create", "token", name, "-n", namespace).stdout.strip()


def _scrape(port: int, token: str | None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed by default
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _value(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def _timestamp(value: str) -> float:
    return datetime.datetime.fromisoformat(value).timestamp()


@pytest.fixture
def reader(cluster: Any, installed: Any) -> Any:
    """A ServiceAccount bound to tokensync-metrics-reader (cluster-wide: non-resource
    URLs exist only there); the binding is removed afterwards."""
    binding = f"metrics-reader-{cluster.ns}"
    token = _token(installed, cluster.ns, "scraper")
    installed.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        f"--clusterrole={READER_ROLE}",
        f"--serviceaccount={cluster.ns}:scraper",
    )
    yield token
    installed.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")


def test_metrics_need_an_authorised_token(cluster, own_operator, token_endpoint, installed, reader):
    since = time.time()
    operator = own_operator(
        "--no-metrics-insecure", "--metrics-host=127.0.0.1", "--no-deny-private-networks"
    )
    stranger = _token(installed, cluster.ns, "stranger")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("watched", client)
    cluster.wait_ready("watched", reason="TokenIssued")

    status, body = _scrape(operator.metrics_port, None)
    assert status == 401 and "watched" not in body
    assert _scrape(operator.metrics_port, "not-a-token")[0] == 401
    status, body = _scrape(operator.metrics_port, stranger)
    assert status == 403 and "watched" not in body
    status, body = wait_for(
        lambda: (r := _scrape(operator.metrics_port, reader))[0] == 200 and r,
        timeout=20,
        what="the reader's scrape to be allowed",
    )
    assert f'namespace="{cluster.ns}"' in body
    # Plain HTTP gets no metrics.
    conn = http.client.HTTPConnection("127.0.0.1", operator.metrics_port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/metrics")
        conn.getresponse().read()
    conn.close()

    # The operator asked exactly the two reviews deploy/base/rbac-metrics.yaml grants, and
    # was allowed to (a 403 there would have answered the scrapers 503).
    reviews = {
        (
            e["objectRef"]["apiGroup"],
            e["objectRef"]["resource"],
            e["verb"],
            e["responseStatus"]["code"],
        )
        for e in installed.audit_events(user=OPERATOR_USER, since=since - 1)
        if e.get("objectRef", {}).get("resource") in ("tokenreviews", "subjectaccessreviews")
    }
    assert reviews == {
        ("authentication.k8s.io", "tokenreviews", "create", 201),
        ("authorization.k8s.io", "subjectaccessreviews", "create", 201),
    }


def test_alerting_gauges_of_a_credential(cluster, own_operator, token_endpoint, reader):
    """The timestamps are those of status (expiresAt, nextRefreshTime), Ready is one-hot,
    and every series goes with the credential."""
    operator = own_operator(
        "--no-metrics-insecure", "--metrics-host=127.0.0.1", "--no-deny-private-networks"
    )
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("alerting", client)
    cluster.wait_ready("alerting", reason="TokenIssued")
    status = cluster.credential("alerting")["status"]
    labels = f'name="alerting",namespace="{cluster.ns}"'

    def scraped() -> str | None:
        code, text = _scrape(operator.metrics_port, reader)
        return text if code == 200 and f"{{{labels}}}" in text else None

    text = wait_for(scraped, timeout=20, what="the credential's series")
    expiration = _value(text, f"tokensync_credential_expiration_timestamp_seconds{{{labels}}}")
    renewal = _value(text, f"tokensync_credential_renewal_timestamp_seconds{{{labels}}}")
    assert expiration == pytest.approx(_timestamp(status["expiresAt"]), abs=1)
    assert renewal == pytest.approx(_timestamp(status["nextRefreshTime"]), abs=1)
    assert renewal < expiration
    for condition, value in (("true", 1.0), ("false", 0.0), ("unknown", 0.0)):
        series = f'tokensync_credential_ready{{condition="{condition}",{labels}}}'
        assert _value(text, series) == value, series

    # A failing credential: Ready false, and a failure counter series of its own.
    failing = token_endpoint.add_client(lifetime=3600)
    token_endpoint.fail(failing, 400)
    cluster.create_credential("failing", failing, secret_name="failing-client")
    cluster.wait_ready("failing", "False")
    failing_labels = f'name="failing",namespace="{cluster.ns}"'

    def failures_counted() -> str | None:
        text = _scrape(operator.metrics_port, reader)[1]
        counted = [
            line
            for line in text.splitlines()
            if line.startswith("tokensync_refresh_failures_total{")
            and f'namespace="{cluster.ns}"' in line
            and 'name="failing"' in line
        ]
        return text if counted else None

    text = wait_for(failures_counted, timeout=20, what="the failing credential's counter")
    series = f'tokensync_credential_ready{{condition="false",{failing_labels}}}'
    assert _value(text, series) == 1.0

    # Every series goes with its credential, the failure counter included.
    cluster.delete_credential("alerting")
    cluster.delete_credential("failing")
    wait_for(
        lambda: (
            not any(
                f'name="{n}"' in _scrape(operator.metrics_port, reader)[1]
                for n in ("alerting", "failing")
            )
        ),
        timeout=20,
        what="the series to go with the credentials",
    )


def test_certificate_from_cert_dir_is_used_and_reloaded(own_operator, reader, tmp_path: Path):
    def issue() -> trustme.CA:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        # Written as a Secret volume would be: both files replaced.
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
        return ca

    def verified_by(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    first = issue()
    operator = own_operator(
        "--no-metrics-insecure", "--metrics-host=127.0.0.1", f"--metrics-cert-dir={tmp_path}"
    )
    assert _scrape(operator.metrics_port, reader, verified_by(first))[0] == 200
    second = issue()
    assert _scrape(operator.metrics_port, reader, verified_by(second))[0] == 200
    with pytest.raises(ssl.SSLError):
        _scrape(operator.metrics_port, reader, verified_by(first))


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _token_reviews(installed: Any, since: float) -> int:
    return sum(
        1
        for e in installed.audit_events(user=OPERATOR_USER, since=since)
        if e.get("objectRef", {}).get("resource") == "tokenreviews"
    )


def test_idle_connections_and_unknown_bearers_are_bounded(own_operator, installed, reader):
    """The attack on the real operator: 400 idle connections to the metrics port started
    a thread each (54 seen), and every unknown bearer cost a TokenReview (200 in 0.8 s),
    which could also push the scrapers' cached grants out. Now the threads stay within
    MAX_CONNECTIONS, unknown bearers get at most the review budget, and the scraper is
    still answered from its cached grant."""
    operator = own_operator(
        "--no-metrics-insecure", "--metrics-host=127.0.0.1", "--no-deny-private-networks"
    )
    pid = operator.process.pid
    wait_for(
        lambda: _scrape(operator.metrics_port, reader)[0] == 200,
        timeout=20,
        what="the reader's scrape to be allowed",
    )
    granted_at = time.monotonic()

    baseline = _threads(pid)
    idle = [socket.create_connection(("127.0.0.1", operator.metrics_port)) for _ in range(400)]
    try:
        peak = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            peak = max(peak, _threads(pid) - baseline)
            time.sleep(0.05)
    finally:
        for connection in idle:
            connection.close()
    assert peak <= metrics_auth.MAX_CONNECTIONS + 2, peak

    # The connections are gone (or time out in their handshake): scrapes are served again.
    wait_for(
        lambda: _scrape(operator.metrics_port, reader)[0] == 200,
        timeout=metrics_auth.REVIEW_TIMEOUT[1] + 20,
        what="the metrics port to serve again after the idle connections",
    )

    since = time.time() - 0.5
    started = time.monotonic()
    statuses = [_scrape(operator.metrics_port, secrets.token_urlsafe(24))[0] for _ in range(300)]
    elapsed = time.monotonic() - started
    assert set(statuses) <= {401, 429}, set(statuses)
    assert statuses.count(429) > 0
    reviews = _token_reviews(installed, since)
    budget = metrics_auth.REVIEW_BURST + metrics_auth.REVIEW_RATE_PER_SECOND * elapsed + 1
    assert reviews <= budget, (reviews, budget, elapsed)

    # The scraper's grant was not pushed out by the flood: answered without a review.
    assert time.monotonic() - granted_at < metrics_auth.ALLOW_TTL_SECONDS - 5
    before = _token_reviews(installed, since)
    assert _scrape(operator.metrics_port, reader)[0] == 200
    assert _token_reviews(installed, since) == before
