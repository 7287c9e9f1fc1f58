"""Events name their reporter and action (events.k8s.io/v1 view), and the operator's text
log lines carry a timestamp and a level."""

from __future__ import annotations

import re

import kubernetes
import pytest
from operator_helpers import wait_for

pytestmark = pytest.mark.envtest


def test_events_carry_controller_instance_and_action(
    cluster, own_operator, token_endpoint, monkeypatch
):
    monkeypatch.setenv("POD_NAME", "tokensync-7d9c5-x2k4q")
    operator = own_operator("--no-deny-private-networks")
    client = token_endpoint.add_client(lifetime=3600)
    cluster.create_credential("api", client)
    cluster.wait_ready("api", reason="TokenIssued")
    cluster.source_secret("other", {"client_secret": "x"}, labelled=False)
    cluster.create_credential("bad", client, secret_name="other", source=False)
    cluster.wait_ready("bad", status="False", reason="ReferenceNotLabeled")

    events_api = kubernetes.client.EventsV1Api(cluster.core.api_client)

    def ours():
        items = events_api.list_namespaced_event(cluster.ns).items
        found = {e.reason: e for e in items if e.reporting_controller == "tokensync.dev/operator"}
        return found if {"TokenIssued", "ReferenceNotLabeled"} <= set(found) else None

    found = wait_for(ours, 20, "events from tokensync.dev/operator")
    issued, unlabelled = found["TokenIssued"], found["ReferenceNotLabeled"]
    assert (issued.action, issued.type) == ("Refresh", "Normal")
    assert (unlabelled.action, unlabelled.type) == ("Validate", "Warning")
    for event in (issued, unlabelled):
        assert event.reporting_instance == "tokensync-7d9c5-x2k4q"
        assert event.regarding.kind == "OAuth2Credential"
        assert event.event_time is not None
    # The core/v1 view that `kubectl describe` shows.
    (core,) = [e for e in cluster.events("api") if e["reason"] == "TokenIssued"]
    assert core["source"]["component"] == "tokensync"
    assert core["reportingComponent"] == "tokensync.dev/operator"

    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR)\s+\S+: ")
    log_lines = [x for x in operator.log().splitlines() if x.strip()]
    assert log_lines and line.match(log_lines[0]), log_lines[:3]
    (warning,) = [x for x in log_lines if "bad: ReferenceNotLabeled" in x]
    assert line.match(warning) and " WARNING " in warning, warning
