"""The sharding fencing check (fixtures/fencing.py) on hand-written audit entries: each
kind of unfenced write is found, and the order of the log does not matter (the entries
on both sides of a log rotation can be read in either order)."""

from __future__ import annotations

from datetime import UTC, datetime

from fixtures import fencing

NAMESPACE = "team-a"
UID_OF = {"orders": "uid-orders"}  # one shard: every credential is in shard 0


def _at(second: float) -> str:
    return datetime.fromtimestamp(1_800_000_000 + second, UTC).isoformat()


def _lease(second: float, replica: str, code: int = 200) -> dict:
    return {
        "verb": "update",
        "objectRef": {"resource": "leases", "name": "tokensync-shard-0"},
        "userAgent": f"tokensync/0.2 replica/{replica}",
        "requestReceivedTimestamp": _at(second),
        "responseStatus": {"code": code},
    }


def _patch(second: float, replica: str, resource: str = "secrets") -> dict:
    return {
        "verb": "patch",
        "objectRef": {"resource": resource, "namespace": NAMESPACE, "name": "orders"},
        "userAgent": f"tokensync/0.2 replica/{replica}",
        "requestReceivedTimestamp": _at(second),
        "responseStatus": {"code": 200},
    }


def _check(events: list[dict]) -> tuple[list[fencing.Unfenced], list[fencing.Write]]:
    return fencing.check(events, namespace=NAMESPACE, uid_of=UID_OF, shards=1, prefix="tokensync")


def test_a_write_under_the_writers_own_fresh_lease_is_fenced():
    unfenced, writes = _check([_lease(0, "a"), _patch(3, "a"), _patch(4, "a", "oauth2credentials")])
    assert unfenced == [] and [w.verb for w in writes] == ["patch", "patch"]


def test_the_last_lease_write_is_found_by_time_not_by_its_place_in_the_log():
    # A rotation read in the other order: b's older renewal comes after a's newer one.
    events = [_lease(20, "a"), _lease(10, "b"), _patch(25, "a")]
    unfenced, _ = _check(events)
    assert unfenced == []
    # The same entries, read in time order, give the same answer for b's write.
    assert [u.kind for u in _check([*events, _patch(15, "b")])[0]] == []
    assert [u.kind for u in _check([*events, _patch(22, "b")])[0]] == ["another replica's Lease"]


def test_each_kind_of_unfenced_write_is_named():
    never, _ = _check([_patch(1, "a")])
    assert [str(u) for u in never] == ["a patch orders: shard 0 never acquired"]
    taken, _ = _check([_lease(0, "a"), _lease(5, "b"), _patch(6, "a")])
    assert [str(u) for u in taken] == ["a patch orders while b held shard 0"]
    stale, _ = _check([_lease(0, "a"), _patch(fencing.LEASE_DURATION + 1, "a")])
    assert [u.kind for u in stale] == [f"own Lease older than {fencing.LEASE_DURATION:.0f} s"]
    assert fencing.kinds([*never, *taken, *stale]) == {
        "no Lease write before it": 1,
        "another replica's Lease": 1,
        f"own Lease older than {fencing.LEASE_DURATION:.0f} s": 1,
    }


def test_failed_lease_writes_and_other_objects_do_not_count():
    conflict = _lease(0, "a", code=409)  # lost the race: not held
    other = {**_patch(2, "a"), "objectRef": {"resource": "secrets", "namespace": "x", "name": "o"}}
    unfenced, writes = _check([conflict, other, _patch(3, "a")])
    assert [str(u) for u in unfenced] == ["a patch orders: shard 0 never acquired"]
    assert len(writes) == 1
