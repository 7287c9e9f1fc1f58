"""Fixtures for the operator tests: the real operator (`tokensync run` as a subprocess)
against the real control plane, authenticated as the ServiceAccount that deploy/ installs
with exactly the RBAC deploy/ grants, talking to a scriptable HTTPS token endpoint."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
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
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/oauth2credentials.tokensync.dev"
    )
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

    def start(self, *extra: str, kubeconfig: Path | None = None) -> Operator:
        log_path = self.tmp.mktemp("operator") / "operator.log"
        operator = start_operator(kubeconfig or self.kubeconfig, log_path, *extra)
        self.started.append(operator)
        return operator

    def get_shared(self) -> Operator:
        if self.shared is None or self.shared.process.poll() is not None:
            self.shared = self.start("--no-deny-private-networks")
        return self.shared

    def stop_shared(self) -> None:
        if self.shared is not None:
            self.shared.stop()
            self.shared = None

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

    def start(*extra: str, kubeconfig: Path | None = None) -> Operator:
        operator = operators.start(*extra, kubeconfig=kubeconfig)
        mine.append(operator)
        return operator

    yield start
    for operator in mine:
        operator.stop()


@pytest.fixture(scope="session")
def admin_api(installed: Any) -> kubernetes.client.ApiClient:
    return installed.api_client()


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
