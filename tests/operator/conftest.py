"""Fixtures for the operator tests: the real operator (`tokensync run` as a subprocess)
against the real control plane, authenticated as the ServiceAccount that deploy/ installs
with exactly the RBAC deploy/ grants, talking to a scriptable HTTPS token endpoint."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import trustme
from operator_helpers import Cluster
from operator_process import (  # noqa: F401 - re-exported for fixtures' users
    OPERATOR_SA,
    OPERATOR_USER,
    REPO,
    Operator,
    find_secrets,
    start_operator,
)
from token_endpoint import TokenEndpoint

from fixtures.pauses import MachinePauses


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def token_endpoint(ca: trustme.CA) -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(ca)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="session")
def installed(control_plane: Any) -> Any:
    """tokensync installed from deploy/ (CRD, RBAC, ServiceAccount; no pods run here)."""
    control_plane.kubectl("apply", "-k", str(REPO / "deploy"))
    control_plane.wait_established("oauth2credentials.tokensync.dev")
    return control_plane


@pytest.fixture(scope="session")
def operator_kubeconfig(installed: Any) -> Path:
    return installed.service_account_kubeconfig(*OPERATOR_SA)


class OperatorPool:
    """The shared operator (all namespaces, private-network guard off for the loopback
    token endpoint) plus operators that tests start for themselves. Two operators must
    never serve the same namespace, so a test that starts its own stops the shared one
    first; the next test that needs it restarts it."""

    def __init__(self, kubeconfig: Path, tmp: pytest.TempPathFactory) -> None:
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.shared: Operator | None = None
        self.started: list[Operator] = []
        self.changed_at = time.monotonic()  # an operator started or stopped

    def start(
        self, *extra: str, kubeconfig: Path | None = None, env: dict[str, str] | None = None
    ) -> Operator:
        log_path = self.tmp.mktemp("operator") / "operator.log"
        self.changed_at = time.monotonic()
        operator = start_operator(kubeconfig or self.kubeconfig, log_path, *extra, env=env)
        self.started.append(operator)
        self.changed_at = time.monotonic()
        return operator

    def running(self) -> bool:
        return any(o.process.poll() is None for o in self.started)

    def get_shared(self) -> Operator:
        if self.shared is None or self.shared.process.poll() is not None:
            self.shared = self.start("--no-deny-private-networks")
        return self.shared

    def stop_shared(self) -> None:
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
            self.changed_at = time.monotonic()

    def logs(self) -> str:
        return "\n".join(o.log() for o in self.started)

    def stop_all(self) -> None:
        for operator in self.started:
            operator.stop()


@pytest.fixture(scope="session")
def operators(
    operator_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
    token_endpoint: TokenEndpoint,
) -> Iterator[OperatorPool]:
    pool = OperatorPool(operator_kubeconfig, tmp_path_factory)
    yield pool
    pool.stop_all()
    # Redaction, over every line any operator wrote in the whole session: no client
    # secret and no token, in any encoding, ever.
    leaked = find_secrets(pool.logs(), token_endpoint)
    assert not leaked, f"operator logs contain {len(leaked)} secret or token spellings"


@pytest.fixture
def operator(operators: OperatorPool) -> Operator:
    return operators.get_shared()


@pytest.fixture
def own_operator(operators: OperatorPool) -> Iterator[Callable[..., Operator]]:
    """Start operators for this test alone (the shared one is stopped meanwhile)."""
    operators.stop_shared()
    mine: list[Operator] = []

    def start(
        *extra: str, kubeconfig: Path | None = None, env: dict[str, str] | None = None
    ) -> Operator:
        operator = operators.start(*extra, kubeconfig=kubeconfig, env=env)
        mine.append(operator)
        return operator

    yield start
    for operator in mine:
        operator.stop()
    operators.changed_at = time.monotonic()


@pytest.fixture(scope="session")
def admin_api(installed: Any) -> kubernetes.client.ApiClient:
    return installed.api_client()


# The invariant every operator test keeps: no credential says Ready=True about a token
# that expired more than this long ago (issue 17). Not judged while no operator runs,
# nor for a while after one started or stopped, or after the API server was unreachable
# or the machine paused (fixtures/pauses.py).
EXPIRED_READY_TOLERANCE_SECONDS = 5.0
SETTLE_SECONDS = 20.0


def expired_ready(
    items: list[dict[str, Any]], now: datetime, ended: frozenset[str] = frozenset()
) -> list[str]:
    """Credentials whose status says Ready=True past expiresAt + tolerance, except in the
    `ended` namespaces (being deleted after their test: no operator serves them any more)."""
    found = []
    for item in items:
        if item["metadata"]["namespace"] in ended:
            continue
        status = item.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        expires = status.get("expiresAt")
        if not ready or ready.get("status") != "True" or not expires:
            continue
        late = (now - datetime.fromisoformat(expires.replace("Z", "+00:00"))).total_seconds()
        if late > EXPIRED_READY_TOLERANCE_SECONDS:
            meta = item["metadata"]
            found.append(f"{meta['namespace']}/{meta['name']} Ready=True {late:.0f}s after expiry")
    return found


@pytest.fixture(autouse=True)
def no_ready_after_expiry(request: pytest.FixtureRequest) -> Iterator[None]:
    """Samples every credential each second while an operator test runs; fails the test
    if one shows Ready=True with an expired token (checked only while an operator runs)."""
    if not {"operator", "operators", "own_operator"} & set(request.fixturenames):
        yield
        return
    pool: OperatorPool = request.getfixturevalue("operators")
    api = request.getfixturevalue("admin_api")
    custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)
    stop = threading.Event()
    violations: list[str] = []
    quiet_until = [time.monotonic() + SETTLE_SECONDS]
    pauses = MachinePauses()

    def sample() -> None:
        while not stop.wait(1.0):
            if pauses.settling():  # the machine was paused: the operator catches up
                continue
            now = time.monotonic()
            if not pool.running() or now - pool.changed_at < SETTLE_SECONDS:
                continue
            try:
                items = custom.list_cluster_custom_object(
                    "tokensync.dev", "v1alpha1", "oauth2credentials", _request_timeout=5
                )["items"]
                # A test's namespace is deleted when it ends, and its credentials go
                # when the namespace controller gets to them (later after an outage).
                ended = frozenset(
                    ns.metadata.name
                    for ns in core.list_namespace(_request_timeout=5).items
                    if ns.status.phase == "Terminating"
                )
            except Exception:  # the API server is down on purpose in some tests
                quiet_until[0] = now + SETTLE_SECONDS + 60  # the operator's backoff
                continue
            if now >= quiet_until[0]:
                violations.extend(expired_ready(items, datetime.now(UTC), ended))

    thread = threading.Thread(target=sample, name="ready-invariant", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
    assert not violations, f"Ready=True outlived the token: {sorted(set(violations))[:10]}"


@pytest.fixture
def cluster(
    installed: Any,
    admin_api: kubernetes.client.ApiClient,
    namespace: str,
    ca: trustme.CA,
    token_endpoint: TokenEndpoint,
) -> Cluster:
    return Cluster(installed, admin_api, namespace, ca, token_endpoint)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
