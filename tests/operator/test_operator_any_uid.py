"""The operator under an arbitrary UID with GID 0 and no passwd entry, as OpenShift's
restricted SCC runs it (e.g. 1000650000): it starts and serves a credential."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from operator_helpers import decode, wait_for
from operator_process import python_for_any_user, start_operator

pytestmark = pytest.mark.envtest

ARBITRARY_UID = 1000650000


def test_operator_serves_under_a_uid_with_no_passwd_entry(
    cluster, own_operator, operator_kubeconfig, token_endpoint
):
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process under another UID")
    if python_for_any_user() is None:
        pytest.skip("no python3 of this version that another user may run")
    with pytest.raises(KeyError):
        pwd.getpwuid(ARBITRARY_UID)  # the point of the test: no passwd entry
    # (own_operator: the shared operator is stopped for this test)
    # The control plane's state and pytest's temporary directories are root's alone
    # (0700); this user reads a copy of the kubeconfig.
    readable = Path(tempfile.mkdtemp(prefix="tokensync-any-uid-"))
    readable.chmod(0o755)
    kubeconfig = Path(shutil.copy(operator_kubeconfig, readable / "kubeconfig"))
    kubeconfig.chmod(0o644)
    log_path = readable / "operator.log"
    try:
        operator = start_operator(
            kubeconfig, log_path, "--no-deny-private-networks", run_as=(ARBITRARY_UID, 0)
        )
        try:
            client = token_endpoint.add_client(lifetime=3600)
            cluster.create_credential("any-uid", client)
            cluster.wait_ready("any-uid", reason="TokenIssued")
            secret = wait_for(lambda: cluster.secret("any-uid"), what="managed Secret")
            assert decode(secret)["access_token"] == client.issued[-1].token
            assert os.stat(f"/proc/{operator.process.pid}").st_uid == ARBITRARY_UID
        finally:
            operator.stop()
    finally:
        shutil.rmtree(readable)
