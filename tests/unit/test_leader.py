"""Leader election: the pure decision (free, held and fresh, held and expired, ours, clock
skew), the Lease bodies, and the loop against an in-memory API with resourceVersion
semantics (two candidates, release, crash, renewal failures, a lease taken over)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokensync import leader
from tokensync.cli import build_parser
from tokensync.cli import run as cli_run
from tokensync.controller import CredentialWorker, OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.kube import KubeError
from tokensync.leader import (
    LEASE_DURATION,
    Action,
    LeaderElector,
    LeaseRecord,
    decide,
    lease_body,
    observe,
    released_body,
)

WALL = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
ME, OTHER = "tokensync-7c9f-abcde", "tokensync-7c9f-xyz12"


def record(holder: str = OTHER, renewed: datetime = WALL, **spec: Any) -> LeaseRecord:
    body = {
        "metadata": {"resourceVersion": spec.pop("rv", "100")},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": leader.micro_time(WALL - timedelta(hours=1)),
            "renewTime": leader.micro_time(renewed),
            "leaseTransitions": 3,
            **spec,
        },
    }
    return LeaseRecord.from_object(body)


# --- decide ----------------------------------------------------------------------------


def test_no_lease_is_created():
    decision = decide(None, ME, now=50.0, unchanged_since=50.0)
    assert decision.action is Action.ACQUIRE


@pytest.mark.parametrize("holder", ["", None])
def test_free_lease_is_taken_at_once(holder):
    lease = LeaseRecord.from_object({"spec": {"holderIdentity": holder, "renewTime": "x"}})
    assert lease.holder == ""
    assert decide(lease, ME, now=50.0, unchanged_since=50.0).action is Action.ACQUIRE


def test_held_and_fresh_stands_by():
    decision = decide(record(), ME, now=110.0, unchanged_since=100.0)
    assert decision.action is Action.STAND_BY
    assert decision.holder == OTHER
    assert OTHER in decision.reason


def test_held_and_expired_is_taken_only_after_the_lease_duration():
    lease = record()
    assert decide(lease, ME, now=114.9, unchanged_since=100.0).action is Action.STAND_BY
    assert decide(lease, ME, now=115.0, unchanged_since=100.0).action is Action.ACQUIRE


def test_the_holders_lease_duration_counts():
    lease = record(leaseDurationSeconds=40)
    assert decide(lease, ME, now=130.0, unchanged_since=100.0).action is Action.STAND_BY
    assert decide(lease, ME, now=140.0, unchanged_since=100.0).action is Action.ACQUIRE
    no_duration = record(leaseDurationSeconds=None)
    now = 100.0 + LEASE_DURATION
    assert decide(no_duration, ME, now=now - 0.1, unchanged_since=100.0).action is Action.STAND_BY
    assert decide(no_duration, ME, now=now, unchanged_since=100.0).action is Action.ACQUIRE


def test_ours_is_renewed_however_old():
    lease = record(holder=ME, renewed=WALL - timedelta(days=1))
    decision = decide(lease, ME, now=1000.0, unchanged_since=0.0)
    assert decision.action is Action.RENEW


def test_clock_skew_a_holder_behind_us_is_not_taken_over():
    """Our wall clock is an hour ahead of the holder's: its renewTime looks an hour old,
    but we saw it change two seconds ago. Comparing wall clocks would steal a live lease."""
    lease = record(renewed=WALL - timedelta(hours=1))
    assert decide(lease, ME, now=102.0, unchanged_since=100.0).action is Action.STAND_BY


def test_clock_skew_a_holder_ahead_of_us_still_expires():
    """The holder's clock is an hour ahead (renewTime in our future): once the record has
    not changed for the lease duration, the holder is gone; we do not wait an hour."""
    lease = record(renewed=WALL + timedelta(hours=1))
    assert decide(lease, ME, now=115.0, unchanged_since=100.0).action is Action.ACQUIRE


def test_a_renewing_holder_is_never_taken_over():
    """Each renewal changes the record and restarts our count, whatever its timestamps say."""
    observation = None
    for step in range(30):  # 60 s of looks every 2 s; the holder renews every 5 s
        now = 100.0 + 2 * step
        renewed = WALL - timedelta(hours=2) + timedelta(seconds=5 * int((now - 100) // 5))
        lease = record(renewed=renewed)
        observation = observe(observation, lease, now)
        decision = decide(lease, ME, now, observation.since)
        assert decision.action is Action.STAND_BY, step


def test_observe_restarts_only_on_a_change_of_the_record():
    first = observe(None, record(), 10.0)
    assert first.since == 10.0
    assert observe(first, record(), 20.0).since == 10.0
    # A metadata edit (new resourceVersion, same spec) is not a renewal.
    assert observe(first, record(rv="101"), 20.0).since == 10.0
    renewed = record(renewed=WALL + timedelta(seconds=5), rv="102")
    assert observe(first, renewed, 20.0).since == 20.0
    assert observe(first, None, 20.0).since == 20.0


# --- bodies ----------------------------------------------------------------------------


def lease_object(holder: str, rv: str = "7", transitions: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "tokensync",
            "namespace": "tokensync-system",
            "resourceVersion": rv,
            "uid": "u-1",
            "managedFields": [{"manager": "x"}],
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-23T09:00:00.000000Z",
            "renewTime": "2026-11-23T09:59:55.000000Z",
            "leaseTransitions": transitions,
        },
    }


def test_create_body():
    body = lease_body("tokensync", "tokensync-system", ME, WALL, None)
    assert body["metadata"] == {"name": "tokensync", "namespace": "tokensync-system"}
    assert body["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-23T10:00:00.000000Z",
        "renewTime": "2026-11-23T10:00:00.000000Z",
        "leaseTransitions": 0,
    }


def test_renew_body_keeps_acquire_time_and_carries_the_resource_version():
    body = lease_body("tokensync", "tokensync-system", ME, WALL, lease_object(ME))
    assert body["metadata"]["resourceVersion"] == "7"
    assert "managedFields" not in body["metadata"]
    assert body["spec"]["acquireTime"] == "2026-11-23T09:00:00.000000Z"
    assert body["spec"]["renewTime"] == "2026-11-23T10:00:00.000000Z"
    assert body["spec"]["leaseTransitions"] == 2


def test_takeover_body_counts_a_transition():
    body = lease_body("tokensync", "tokensync-system", ME, WALL, lease_object(OTHER))
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["spec"]["holderIdentity"] == ME
    assert body["spec"]["acquireTime"] == "2026-11-23T10:00:00.000000Z"
    assert body["spec"]["leaseTransitions"] == 3


def test_released_lease_is_free_to_take():
    body = released_body(lease_object(ME), WALL)
    assert "holderIdentity" not in body["spec"]
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["metadata"]["resourceVersion"] == "7"
    released = LeaseRecord.from_object(body)
    assert decide(released, OTHER, now=0.0, unchanged_since=0.0).action is Action.ACQUIRE


def test_a_fractional_duration_is_rounded_up():
    body = lease_body("tokensync", "tokensync-system", ME, WALL, None, duration=1.5)
    assert body["spec"]["leaseDurationSeconds"] == 2


def test_micro_time():
    moment = datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC)
    assert leader.micro_time(moment) == "2026-01-02T03:04:05.006789Z"


# --- settings --------------------------------------------------------------------------


def test_identity_is_the_pod_name_or_unique_per_process(monkeypatch):
    monkeypatch.setenv("POD_NAME", "tokensync-5d8f-q2x7w")
    assert leader.default_identity() == "tokensync-5d8f-q2x7w"
    monkeypatch.delenv("POD_NAME")
    first, second = leader.default_identity(), leader.default_identity()
    assert first != second
    assert first.rsplit("_", 1)[0] == second.rsplit("_", 1)[0]


def test_lease_namespace_default(monkeypatch, tmp_path):
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    assert leader.default_namespace() == "ops"
    monkeypatch.delenv("POD_NAMESPACE")
    monkeypatch.setattr(leader, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "missing")
    assert leader.default_namespace() == "default"
    path = tmp_path / "namespace"
    path.write_text("tokensync-system\n")
    monkeypatch.setattr(leader, "SERVICE_ACCOUNT_NAMESPACE", path)
    assert leader.default_namespace() == "tokensync-system"


@pytest.mark.parametrize(
    ("name", "valid"),
    [("tokensync", True), ("tokensync.leader", True), ("Tokensync", False), ("-x", False)],
)
def test_lease_names(name, valid):
    assert leader.valid_lease_name(name) is valid


def test_cli_flags(capsys):
    parser = build_parser()
    args = parser.parse_args(["run", "-A", "--peering", "tokensync"])
    assert args.peering == "tokensync" and args.leader_election_namespace is None
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "-A", "--peering", "x", "--priority", "5"])
    lone = parser.parse_args(["run", "-A", "--leader-election-namespace", "ops"])
    assert cli_run(lone) == 2
    assert "needs --peering" in capsys.readouterr().err
    bad = parser.parse_args(["run", "-A", "--peering", "Not_A_Name"])
    assert cli_run(bad) == 2


# --- the loop, against an in-memory API --------------------------------------------------


class FakeLeases:
    """One namespace's Leases with the API's concurrency rules: POST fails with 409 when
    the name exists, PUT with 409 when the resourceVersion is not the current one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.failing = False
        self.writes: list[tuple[str, str | None]] = []  # (verb, holder)

    def _check(self) -> None:
        if self.failing:
            raise KubeError(503, "the server is currently unable to handle the request")

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        with self.lock:
            found = self.objects.get(name)
            return copy.deepcopy(found) if found else None

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        with self.lock:
            if body["metadata"]["name"] in self.objects:
                raise KubeError(409, "already exists")
            self.writes.append(("create", body["spec"].get("holderIdentity")))
            return self._store(body)

    def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        with self.lock:
            current = self.objects.get(body["metadata"]["name"])
            if current is None:
                raise KubeError(404, "not found")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise KubeError(409, "the object has been modified")
            self.writes.append(("update", body["spec"].get("holderIdentity")))
            return self._store(body)

    def holder(self) -> str | None:
        with self.lock:
            lease = self.objects.get("tokensync")
            return (lease or {}).get("spec", {}).get("holderIdentity") if lease else None


# Short, in the production proportions (15 / 5 / 2 / 10 s), with margins that survive a
# loaded test machine.
FAST = {
    "lease_duration": 2.0,  # leaseDurationSeconds is whole seconds
    "renew_interval": 0.25,
    "retry_period": 0.1,
    "renew_deadline": 1.2,
}


def elector(api: FakeLeases, identity: str, lost: list[str]) -> LeaderElector:
    return LeaderElector(
        api,  # type: ignore[arg-type]
        "tokensync",
        "tokensync-system",
        identity,
        on_lost=lambda why: lost.append(f"{identity}: {why}"),
        **FAST,
    )


async def until(condition: Any, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_two_candidates_one_leader_and_a_fast_handover_on_release():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a, b = elector(api, "a", lost), elector(api, "b", lost)
        a.start()
        b.start()
        await until(lambda: a.is_leader.is_set() or b.is_leader.is_set())
        await asyncio.sleep(1.0)  # several renewals and looks
        assert a.is_leader.is_set() != b.is_leader.is_set()
        first, second = (a, b) if a.is_leader.is_set() else (b, a)
        assert api.holder() == first.identity
        assert {holder for _verb, holder in api.writes} == {first.identity}

        await first.stop()  # a clean shutdown hands the lease back
        assert api.holder() is None
        took = await until(second.is_leader.is_set)
        assert took < FAST["lease_duration"]  # the release, not the expiry
        assert api.holder() == second.identity
        assert api.objects["tokensync"]["spec"]["leaseTransitions"] == 1
        await second.stop()
        assert lost == []

    asyncio.run(scenario())


def test_a_crashed_leader_is_replaced_after_the_lease_duration():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a = elector(api, "a", lost)
        a.start()
        await until(a.is_leader.is_set)
        b = elector(api, "b", lost)
        b.start()
        await asyncio.sleep(0.5)
        assert not b.is_leader.is_set()
        assert a._task is not None
        a._task.cancel()  # a crash: no release
        crashed = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await a._task
        await until(b.is_leader.is_set)
        waited = time.monotonic() - crashed
        # The lease lasts from its last renewal, at most one renew interval before the crash.
        assert FAST["lease_duration"] - FAST["renew_interval"] <= waited < 10
        await b.stop()

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_before_its_lease_expires():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a = elector(api, "a", lost)
        a.start()
        await until(a.is_leader.is_set)
        api.failing = True
        failed = time.monotonic()
        await until(lambda: bool(lost))
        stopped = time.monotonic() - failed
        assert not a.is_leader.is_set()
        assert stopped < FAST["lease_duration"]  # before any standby could take over
        assert "could not renew" in lost[0]
        # Lost for good: the API is back, but this process never leads again.
        api.failing = False
        await asyncio.sleep(0.3)
        assert not a.is_leader.is_set()
        await a.stop()
        assert api.holder() == "a"  # left to expire: it is no longer ours to release

    asyncio.run(scenario())


def test_a_leader_whose_lease_was_taken_stops_at_once():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a = elector(api, "a", lost)
        a.start()
        await until(a.is_leader.is_set)
        with api.lock:
            api.objects["tokensync"]["spec"]["holderIdentity"] = "intruder"
            api.version += 1
            api.objects["tokensync"]["metadata"]["resourceVersion"] = str(api.version)
        await until(lambda: bool(lost), timeout=FAST["renew_deadline"])
        assert "intruder" in lost[0]
        assert not a.is_leader.is_set()
        await a.stop()

    asyncio.run(scenario())


def test_a_standby_keeps_trying_through_api_errors():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        api.failing = True
        a = elector(api, "a", lost)
        a.start()
        await asyncio.sleep(0.2)
        assert not a.is_leader.is_set()
        api.failing = False
        await until(a.is_leader.is_set)
        await a.stop()
        assert lost == []

    asyncio.run(scenario())


def test_wait_refuses_an_overdue_lease():
    """After a long pause of the process the loop may not have run yet: the workers' hook
    itself never lets a pass start on a lease past its renew deadline."""

    async def scenario() -> None:
        clock = [100.0]
        api, lost = FakeLeases(), []
        a = _leader_a(api, lost, clock=lambda: clock[0])
        assert await a._candidate_cycle() == a.renew_interval
        await asyncio.wait_for(a.wait(), 1)  # current: returns at once
        clock[0] += a.renew_deadline
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.wait(), 0.2)
        assert lost and not a.is_leader.is_set()

    asyncio.run(scenario())


def _leader_a(api: FakeLeases, lost: list[str], **settings: Any) -> LeaderElector:
    return LeaderElector(
        api,  # type: ignore[arg-type]
        "tokensync",
        "tokensync-system",
        "a",
        on_lost=lost.append,
        **settings,
    )


def _paused_leader(api: FakeLeases, lost: list[str]) -> tuple[LeaderElector, list[datetime]]:
    """A leader on the real monotonic clock and a wall clock the test moves (a pause of
    the machine: the wall clock jumps, the monotonic one does not)."""
    wall = [WALL]
    # No renewal but the one a pause asks for.
    settings = {**FAST, "renew_interval": 30.0}
    return _leader_a(api, lost, wall_clock=lambda: wall[0], **settings), wall


def test_after_a_pause_a_leader_writes_nothing_until_it_has_renewed():
    """The single leader's write fence judges its hold by the wall clock too: after a
    pause longer than the Lease, a standby may hold it, so queued writes must not go out
    before the leader has renewed (or found the new holder)."""

    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a, wall = _paused_leader(api, lost)
        a.start()
        await until(a.is_leader.is_set)
        assert a.holds()
        await asyncio.wait_for(a.wait(), 1)
        wall[0] += timedelta(minutes=5)  # the pause
        assert a.is_leader.is_set() and not a.holds()  # the fence is shut at once
        waiting = asyncio.ensure_future(a.wait())
        await asyncio.sleep(0.3)
        assert not waiting.done() and lost == []  # waits for the loop, does not give up
        writes = len(api.writes)
        a.look_now()  # what the wall-clock watch does
        await asyncio.wait_for(waiting, 2)
        assert a.holds() and len(api.writes) == writes + 1 and api.holder() == "a"
        await a.stop()

    asyncio.run(scenario())


def test_after_a_pause_a_leader_whose_lease_was_taken_meanwhile_never_writes_again():
    async def scenario() -> None:
        api, lost = FakeLeases(), []
        a, wall = _paused_leader(api, lost)
        a.start()
        await until(a.is_leader.is_set)
        wall[0] += timedelta(minutes=5)
        with api.lock:  # a standby waited out the Lease during the pause
            api.objects["tokensync"]["spec"]["holderIdentity"] = "b"
            api.version += 1
            api.objects["tokensync"]["metadata"]["resourceVersion"] = str(api.version)
        waiting = asyncio.ensure_future(a.wait())
        a.look_now()
        await until(lambda: bool(lost), timeout=2)
        assert "held by b" in lost[0] and not a.holds() and not waiting.done()
        waiting.cancel()
        await a.stop()

    asyncio.run(scenario())


def test_a_wall_clock_stepped_back_never_extends_a_leader_s_hold():
    async def scenario() -> None:
        clock = [100.0]
        api, lost = FakeLeases(), []
        a = _leader_a(
            api,
            lost,
            clock=lambda: clock[0],
            wall_clock=lambda: WALL - timedelta(hours=1) if clock[0] > 100 else WALL,
        )
        assert await a._candidate_cycle() == a.renew_interval
        assert a.holds()
        clock[0] += a.renew_deadline  # overdue by the monotonic clock; the wall went back
        assert not a.holds()

    asyncio.run(scenario())


# --- the workers' hook ------------------------------------------------------------------


def test_a_worker_runs_no_pass_until_leader_and_then_starts_from_the_latest_status():
    async def scenario() -> None:
        leading = asyncio.Event()
        ctx = OperatorContext(
            config=OperatorConfig(),
            kube=None,  # type: ignore[arg-type]
            kube_executor=None,  # type: ignore[arg-type]
            sources=lambda _ns: lambda _kind, _name: None,
            post_event=lambda *_: None,
            leadership=leading.wait,
        )
        body = {"metadata": {"name": "c", "namespace": "ns", "uid": "u", "generation": 1}}
        worker = CredentialWorker(ctx, body)
        passes: list[dict[str, Any]] = []

        async def reconcile() -> None:
            passes.append(dict(worker.status))
            return None

        worker.reconcile = reconcile  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run())
        worker.observe({**body, "status": {"observedGeneration": 1}})
        worker.wake()
        await asyncio.sleep(0.1)
        assert passes == []  # standing by
        leading.set()
        await until(lambda: bool(passes))
        assert passes == [{"observedGeneration": 1}]
        task.cancel()

    asyncio.run(scenario())
