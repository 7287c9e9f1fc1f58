"""Fault injection for the operator subprocess of a test (on its PYTHONPATH only when a
test asks): widens a race so that a test can hit it every time, in the real operator
against the real control plane. Does nothing unless its variables are set."""

import os

if delay := os.environ.get("TOKENSYNC_TEST_CREDENTIAL_LIST_DELAY"):
    import importlib
    import time

    from tokensync.kube import Kube

    # The periodic sweep runs this often, and its list returns `delay` seconds after
    # the API server answered it (as a list of 10,000 credentials takes a while).
    # (runtime.py; handlers.py before it existed, so the test runs against 316f0c8 too.)
    for module in ("tokensync.runtime", "tokensync.handlers"):
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(owner, "SWEEP_INTERVAL_SECONDS"):
            owner.SWEEP_INTERVAL_SECONDS = float(os.environ["TOKENSYNC_TEST_SWEEP_INTERVAL"])
            break
    listed = Kube.credential_uids

    def slow_list(self: Kube, namespaces: list[str] | None) -> set[str]:
        uids = listed(self, namespaces)
        time.sleep(float(delay))
        return uids

    Kube.credential_uids = slow_list  # type: ignore[method-assign]

if source_delay := os.environ.get("TOKENSYNC_TEST_SOURCE_LIST_DELAY"):
    import time

    from tokensync.kube import Kube

    # The list of credentials that precedes the sources' lists at start returns that
    # many seconds late (as listing tens of thousands of objects on a busy node does):
    # the operator is not synced, so not ready to serve, for that long.
    credentials = Kube.credentials

    def slow_credentials(self: Kube, *args, **kwargs):  # type: ignore[no-untyped-def]
        items = list(credentials(self, *args, **kwargs))
        time.sleep(float(source_delay))
        return iter(items)

    Kube.credentials = slow_credentials  # type: ignore[method-assign]
