"""spec.rolloutRestart: the spec rules and the pure decisions of tokensync.rollout."""

from __future__ import annotations

from typing import Any

import pytest

from tokensync import rollout
from tokensync.secret import config_hash
from tokensync.spec import ResolvedValues, SpecError, WorkloadRef, parse_spec

BASE: dict[str, Any] = {
    "tokenURL": "https://idp.example.com/oauth2/token",
    "clientID": "c",
    "clientSecretRef": {"name": "client", "key": "secret"},
}


def spec_with(items: Any) -> dict[str, Any]:
    return {**BASE, "rolloutRestart": items}


def test_workloads_are_parsed():
    spec = parse_spec(
        spec_with([{"kind": "Deployment", "name": "a"}, {"kind": "StatefulSet", "name": "a"}]),
        name="x",
    )
    assert spec.rollout_restart == (WorkloadRef("Deployment", "a"), WorkloadRef("StatefulSet", "a"))
    assert parse_spec(BASE, name="x").rollout_restart == ()


@pytest.mark.parametrize(
    ("items", "path"),
    [
        ([{"kind": "Pod", "name": "a"}], "spec.rolloutRestart[0].kind"),
        ([{"kind": "Deployment"}], "spec.rolloutRestart[0].name"),
        ([{"kind": "Deployment", "name": "Not_A_Name"}], "spec.rolloutRestart[0].name"),
        ([{"kind": "Deployment", "name": "a"}] * 2, "spec.rolloutRestart[1]"),
        ([{"kind": "DaemonSet", "name": f"d{i}"} for i in range(17)], "spec.rolloutRestart"),
        ({"kind": "Deployment", "name": "a"}, "spec.rolloutRestart"),
    ],
)
def test_spec_rules(items, path):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(items), name="x")
    assert any(p.startswith(path + ":") for p in info.value.problems), info.value.problems


def test_only_with_the_flag():
    spec = parse_spec(spec_with([{"kind": "Deployment", "name": "a"}]), name="x")
    assert rollout.targets(spec, enabled=False) == ()
    assert rollout.targets(spec, enabled=True) == (WorkloadRef("Deployment", "a"),)
    warning = rollout.disabled_warning(spec, enabled=False)
    assert warning is not None and "--enable-rollout-restart" in warning
    assert rollout.disabled_warning(spec, enabled=True) is None
    assert rollout.disabled_warning(parse_spec(BASE, name="x"), enabled=False) is None


def test_messages_say_how_to_grant():
    refused = rollout.Outcome(WorkloadRef("StatefulSet", "db"), 403)
    message = rollout.failure_message("team-a", refused)
    assert "--resource=statefulsets.apps --resource-name=db" in message
    assert "--serviceaccount=<operator namespace>:<operator ServiceAccount>" in message
    missing = rollout.Outcome(WorkloadRef("Deployment", "gone"), 404)
    assert "does not exist" in rollout.failure_message("team-a", missing)
    done = [rollout.Outcome(WorkloadRef("Deployment", "a"), None), refused]
    assert rollout.summary(done) == "restarted after the new token: Deployment a"
    assert rollout.summary([refused]) is None


def test_the_list_does_not_shape_the_token_request():
    values = ResolvedValues(client_id="c", client_secret="s")
    plain = config_hash(parse_spec(BASE, name="x"), values)
    listed = parse_spec(spec_with([{"kind": "Deployment", "name": "a"}]), name="x")
    assert config_hash(listed, values) == plain
