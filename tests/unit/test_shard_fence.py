"""Sharding without a cluster: a worker writes nothing for a credential whose shard
this replica no longer holds, checked after the token request and again on the thread
that sends each write; the keeper's hold ends at the renew deadline on its own clock,
whatever its loop is doing; the supervisor runs workers only for held shards. The
end-to-end proofs (audit log, kill -9, SIGSTOP) are in
tests/operator/test_operator_sharding.py."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_leader import FAST, FakeLeases, until
from test_worker import FakeKube, credential, world  # noqa: F401 - the fixture

from tokensync import oauth2, shardkeeper
from tokensync.cli import build_parser
from tokensync.cli import run as cli_run
from tokensync.controller import CredentialWorker, OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.kube import KubeError
from tokensync.leader import LeaseRecord, Observation
from tokensync.shardkeeper import ShardKeeper
from tokensync.shards import NotHolding, shard_of
from tokensync.sources import SourceCache
from tokensync.supervisor import Supervisor


def test_a_token_that_arrives_after_the_shard_was_lost_is_not_written(world, monkeypatch):  # noqa: F811
    kube, endpoint, ctx = world
    holding = [True]
    ctx.holds = lambda uid: holding[0]

    def lose_the_shard_meanwhile(request: oauth2.TokenRequest, **kw: Any) -> oauth2.Token:
        holding[0] = False
        return endpoint(request, **kw)

    monkeypatch.setattr(oauth2, "fetch_token", lose_the_shard_meanwhile)
    worker = CredentialWorker(ctx, credential())
    with pytest.raises(NotHolding):
        asyncio.run(worker.reconcile())
    assert endpoint.requests == 1
    assert "create_secret" not in kube.calls


def test_the_write_fence_refuses_on_the_sending_thread(world):  # noqa: F811
    """`holds` said yes when the pass looked; the fence, entered right before the call,
    says no: the Secret is not created."""
    kube, _endpoint, ctx = world

    def refuse(uid: str) -> Any:
        raise NotHolding(uid)

    ctx.writing = refuse
    worker = CredentialWorker(ctx, credential())
    with pytest.raises(NotHolding):
        asyncio.run(worker.reconcile())
    assert "create_secret" not in kube.calls


def _lone_keeper(
    clock: Callable[[], float], wall_clock: Callable[[], datetime] | None = None
) -> ShardKeeper:
    """A keeper of 8 shards on these clocks, for checks that make no API call."""
    return ShardKeeper(
        None,  # type: ignore[arg-type]
        "tokensync",
        "ns",
        "me",
        8,
        on_change=lambda: None,
        clock=clock,
        **({"wall_clock": wall_clock} if wall_clock else {}),
    )


def test_a_held_shard_ends_at_the_renew_deadline_on_the_keeper_s_own_clock():
    clock = [100.0]
    keeper = _lone_keeper(lambda: clock[0])
    uid = "cred-uid"
    shard = shard_of(uid, 8)
    assert not keeper.holds_uid(uid)
    keeper._held[shard] = 100.0  # as a successful renewal sent at 100 s records it
    with keeper.writing(uid):
        assert keeper._in_flight[shard] == 1  # counted: a hand-back waits for it
    assert keeper._in_flight[shard] == 0
    clock[0] = 100.0 + keeper.renew_deadline - 0.1
    assert keeper.holds_uid(uid)
    clock[0] = 100.0 + keeper.renew_deadline  # no renewal since: the loop may be stalled
    assert not keeper.holds_uid(uid)
    with pytest.raises(NotHolding), keeper.writing(uid):
        pass
    assert keeper.renew_deadline < keeper.lease_duration  # before anyone may take it


def test_cli_shards_flag(capsys):
    parser = build_parser()
    args = parser.parse_args(["run", "-A", "--peering", "tokensync", "--shards", "32"])
    assert args.shards == 32
    assert parser.parse_args(["run", "-A"]).shards is None  # default: unchanged
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "-A", "--peering", "tokensync", "--shards", "0"])
    assert cli_run(parser.parse_args(["run", "-A", "--shards", "8"])) == 2
    assert "--shards needs --peering" in capsys.readouterr().err
    too_many = parser.parse_args(["run", "-A", "--peering", "tokensync", "--shards", "5000"])
    assert cli_run(too_many) == 2
    assert "at most 1024 shards" in capsys.readouterr().err


def _idle_context() -> OperatorContext:
    """Workers never get past sources_synced: only the store is exercised."""
    return OperatorContext(
        config=OperatorConfig(),
        kube=None,  # type: ignore[arg-type]
        kube_executor=None,  # type: ignore[arg-type]
        sources=lambda _ns: lambda _kind, _name: None,
        post_event=lambda *_: None,
        sources_synced=asyncio.Event().wait,
    )


def _body(uid: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = credential()
    body["metadata"].update(uid=uid, name=uid, namespace="ns")
    body["status"] = status or {}
    return body


def test_the_supervisor_runs_workers_only_for_the_shards_it_holds():
    async def scenario() -> None:
        owned = {"a"}
        sources = SourceCache()
        supervisor = Supervisor(_idle_context(), sources, owns=lambda uid: uid in owned)
        supervisor.observe("LISTED", _body("a"))
        supervisor.observe("LISTED", _body("b", {"expiresAt": "old"}))
        assert set(supervisor.workers) == {"a"} and set(supervisor.parked) == {"b"}
        assert set(sources._references) == {"a"}  # source values for served ones only
        # The other replica writes b's status: the parked body follows.
        supervisor.observe("MODIFIED", _body("b", {"expiresAt": "new"}))

        # A view of b's Secret from before b was known (the managed Secrets are listed
        # first): not kept, and never the basis of b's first pass once b is gained.
        supervisor.ctx.managed_secrets[("ns", "a")] = "view of a"  # type: ignore[assignment]
        supervisor.ctx.managed_secrets[("ns", "b")] = "stale view"  # type: ignore[assignment]
        supervisor.observe("MODIFIED", _body("b", {"expiresAt": "new"}))
        assert ("ns", "b") not in supervisor.ctx.managed_secrets

        owned.clear()
        owned.add("b")  # shards moved: a given away, b gained
        supervisor.ctx.managed_secrets[("ns", "b")] = "stale view"  # type: ignore[assignment]
        supervisor.rebalance()
        assert ("ns", "b") not in supervisor.ctx.managed_secrets  # read fresh by its worker
        assert ("ns", "a") not in supervisor.ctx.managed_secrets  # a's view left with it
        assert set(supervisor.workers) == {"b"} and set(supervisor.parked) == {"a"}
        assert supervisor.workers["b"].status == {"expiresAt": "new"}
        assert set(sources._references) == {"b"}
        assert supervisor.by_name == {("ns", "a"): "a", ("ns", "b"): "b"}
        assert [s.name for s in supervisor.samples()] == ["b"]  # metrics of served ones

        supervisor.observe("DELETED", _body("a"))  # gone while parked: forgotten
        assert "a" not in supervisor.parked and ("ns", "a") not in supervisor.by_name
        began = supervisor.list_began()
        supervisor.observe("LISTED", _body("c"))  # not owned: parked
        assert supervisor.sweep({"b"}, began) == 0  # c's event is newer than the list
        assert "c" in supervisor.parked
        assert supervisor.sweep({"b"}, supervisor.list_began()) == 0
        assert "c" not in supervisor.parked  # a parked credential missed by a list: gone
        await supervisor.stop()

    asyncio.run(scenario())


class FakeShardLeases(FakeLeases):
    """FakeLeases with the list (by one `key=value` label) and delete the keeper uses."""

    def list_leases(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        key, value = selector.split("=")
        with self.lock:
            return [
                copy.deepcopy(o)
                for o in self.objects.values()
                if (o["metadata"].get("labels") or {}).get(key) == value
            ]

    def delete_lease(self, namespace: str, name: str, resource_version: str) -> None:
        """The API's DELETE with a resourceVersion precondition: 409 if it moved on."""
        self._check()
        with self.lock:
            current = self.objects.get(name)
            if current is None:
                return
            if current["metadata"]["resourceVersion"] != resource_version:
                raise KubeError(409, "the object has been modified")
            del self.objects[name]


def test_a_membership_lease_renewed_since_it_was_listed_is_not_collected():
    """A replica deletes the membership Lease of one gone for MEMBER_GARBAGE_SECONDS,
    but only the version it judged: one that came back and renewed it meanwhile keeps
    its Lease (the DELETE's precondition fails with 409, and nothing is logged as
    deleted)."""
    api = FakeShardLeases()
    keeper = _fast_keeper(api, "replica-a", 4)
    name = "tokensync-member-replica-b"
    spec = {"holderIdentity": "replica-b", "leaseDurationSeconds": 1}
    listed = api.create_lease("tokensync-system", {"metadata": {"name": name}, "spec": spec})
    keeper._observations[name] = Observation(LeaseRecord.from_object(listed), since=0.0)
    renewed = api.replace_lease(
        "tokensync-system", {**listed, "spec": {**spec, "renewTime": "2026-12-07T23:00:00.000000Z"}}
    )
    long_after = shardkeeper.MEMBER_GARBAGE_SECONDS + 1

    asyncio.run(keeper._collect_garbage(name, listed, long_after))
    assert (
        api.objects[name]["metadata"]["resourceVersion"] == renewed["metadata"]["resourceVersion"]
    )
    asyncio.run(keeper._collect_garbage(name, renewed, long_after))  # gone for long, as listed
    assert name not in api.objects


def _fast_keeper(api: FakeLeases, identity: str, shards: int) -> ShardKeeper:
    """A keeper of `shards` on these fake Leases, with short timings."""
    return ShardKeeper(
        api,  # type: ignore[arg-type]
        "tokensync",
        "tokensync-system",
        identity,
        shards,
        on_change=lambda: None,
        **FAST,
    )


def _two_keepers(shards: int) -> tuple[ShardKeeper, ShardKeeper]:
    """replica-a and replica-b on one set of fake Leases, with short timings."""
    api = FakeShardLeases()
    return _fast_keeper(api, "replica-a", shards), _fast_keeper(api, "replica-b", shards)


def test_a_hand_back_waiting_for_writes_never_costs_the_shards_kept(monkeypatch):
    """A replica gives shards back only after their writes in flight returned (up to
    DRAIN_SECONDS). That wait used to hold the keeper's cycle, so the shards it kept were
    not renewed meanwhile and passed their renew deadline: on a loaded 3 x 3,000 bench
    node a replica that gave back 16 shards lost the 16 it kept 5 s later, and restarted
    their 1,400 workers (bench/README.md). Now the hand-back runs beside the cycle."""
    monkeypatch.setattr(shardkeeper, "DRAIN_SECONDS", 3.0)  # > the renew deadline

    async def scenario() -> None:
        first, second = _two_keepers(4)
        first.start()
        await until(lambda: first.held() == {0, 1, 2, 3})
        for shard in range(4):
            first._in_flight[shard] = 1  # writes that never return: each drain times out
        second.start()
        await until(lambda: len(first.held()) == 2)
        fewest = 2
        for _ in range(50):  # 2.5 s: past the renew deadline (1.2 s), inside the drain
            fewest = min(fewest, len(first.held()))
            await asyncio.sleep(0.05)
        assert fewest == 2, "a shard kept was dropped while another was handed back"
        first._in_flight.clear()
        await until(lambda: len(second.held()) == 2)
        await asyncio.gather(first.stop(), second.stop())

    asyncio.run(scenario())


def _uid_in(shard: int, shards: int) -> str:
    return next(u for i in range(10_000) if shard_of(u := f"cred-{i}", shards) == shard)


def test_a_shard_handed_back_writes_the_tokens_already_requested_first(monkeypatch):
    """A token request sent just before its shard was handed back used to be thrown
    away: the fence refused its write and the next holder asked again (about 25 per
    bench run of 3 x 3,000, bench/README.md). Now the shard stays held, its Lease
    renewed and its fence open, while no new request starts for it; it is given back
    once the requests in flight ended (their tokens written)."""
    monkeypatch.setattr(shardkeeper, "DRAIN_SECONDS", 30.0)  # only the requests end it
    uids = {shard: _uid_in(shard, 4) for shard in range(4)}

    async def scenario() -> None:
        first, second = _two_keepers(4)
        requesting = set(uids.values())  # one request in flight in every shard
        first.requesting = lambda: requesting
        first.start()
        await until(lambda: first.held() == {0, 1, 2, 3})
        assert all(first.may_request(uid) for uid in uids.values())
        second.start()
        await until(lambda: len(first._leaving) == 2)
        leaving = set(first._leaving)
        for _ in range(40):  # 2 s: past the renew deadline (1.2 s) of what is leaving
            assert first.held() == {0, 1, 2, 3}, "a leaving shard was dropped"
            assert second.held() == set(), "a leaving shard was taken"
            await asyncio.sleep(0.05)
        for shard in range(4):
            assert first.may_request(uids[shard]) == (shard not in leaving)
            with first.writing(uids[shard]):  # the fence still lets writes through
                pass
        requesting.clear()  # answered and written
        await until(lambda: second.held() == leaving)
        assert first.held() == {0, 1, 2, 3} - leaving
        await asyncio.gather(first.stop(), second.stop())

    asyncio.run(scenario())


def test_a_request_that_never_ends_delays_a_hand_back_only_a_bounded_time(monkeypatch, caplog):
    monkeypatch.setattr(shardkeeper, "DRAIN_SECONDS", 0.5)
    uid = _uid_in(0, 2)

    async def scenario() -> None:
        first, second = _two_keepers(2)
        first.requesting = lambda: [uid, _uid_in(1, 2)]  # never answered
        first.start()
        await until(lambda: first.held() == {0, 1})
        second.start()
        await until(lambda: len(second.held()) == 1)
        assert len(first.held()) == 1
        await asyncio.gather(first.stop(), second.stop())

    asyncio.run(scenario())
    assert "token requests still in flight after 0.5s" in caplog.text


class _RenewalAnswersLate(FakeShardLeases):
    """A renewal of the holder's Lease is applied at once, and its answer comes back
    only when the test says so (a slow API server, a loaded node)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_renewals = False
        self.answer = threading.Event()

    def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = super().replace_lease(namespace, body)
        if self.hold_renewals and body["spec"].get("holderIdentity"):
            self.answer.wait(5)
        return stored


def test_a_renewal_answered_after_its_shard_was_handed_back_does_not_take_it_again():
    """A renewal sent just before a hand-back dropped its shard came back after the drop
    and recorded the shard as held again ("took shard"), while the hand-back released
    its Lease: another replica took it, and this one's fence let writes through for
    the shard until its next cycle. Two holders at once. Now a shard dropped for its
    hand-back stays dropped."""
    api = _RenewalAnswersLate()

    async def scenario() -> None:
        keeper = _fast_keeper(api, "replica-a", 1)
        await keeper.cycle()
        assert keeper.held() == {0}
        lease = api.read_lease("tokensync-system", "tokensync-shard-0")
        api.hold_renewals = True
        renewal = asyncio.create_task(keeper._acquire(0, lease))
        await asyncio.sleep(0.1)  # applied; its answer is on its way
        keeper._hand_back_in_background(0, "given back to balance the replicas")
        await until(lambda: not keeper.holds(0))  # dropped: its release follows
        await until(
            lambda: (
                not api.read_lease("tokensync-system", "tokensync-shard-0")["spec"].get(
                    "holderIdentity"
                )
            )
        )
        api.answer.set()
        await renewal
        assert not keeper.holds(0), "a released shard is held again"
        await keeper.stop()

    asyncio.run(scenario())


def test_no_token_request_starts_while_its_shard_is_handed_back(world):  # noqa: F811
    kube, endpoint, ctx = world
    ctx.may_request = lambda uid: False
    worker = CredentialWorker(ctx, credential())
    wake_at = asyncio.run(worker.reconcile())
    assert endpoint.requests == 0
    assert "create_secret" not in kube.calls
    assert wake_at is not None  # waits for its shard (or to be parked), not for an event


def test_a_paused_machine_s_hold_ends_by_the_wall_clock_too():
    """While the machine or its VM is paused the monotonic clock stands still; the
    others' clocks do not, and after LEASE_DURATION one of them takes the shard. Once
    resumed, the wall clock (set by the host or NTP) says how long it was: past the
    renew deadline, nothing more is written for the shard."""
    clock, wall = [100.0], [datetime(2026, 12, 7, 12, 0, tzinfo=UTC)]
    keeper = _lone_keeper(lambda: clock[0], lambda: wall[0])
    uid = "cred-uid"
    shard = shard_of(uid, 8)
    keeper._held[shard] = 100.0  # as a successful renewal sent at 100 s records it
    keeper._held_wall[shard] = wall[0].timestamp()
    clock[0] += 1.0
    wall[0] += timedelta(seconds=1)
    assert keeper.holds_uid(uid)
    wall[0] += timedelta(seconds=keeper.lease_duration)  # paused: only the wall clock moved
    assert not keeper.holds_uid(uid)
    with pytest.raises(NotHolding), keeper.writing(uid):
        pass
    wall[0] -= timedelta(hours=1)  # a wall clock stepped back extends nothing
    clock[0] = 100.0 + keeper.renew_deadline
    assert not keeper.holds_uid(uid)


def test_a_request_still_queued_when_its_shard_starts_leaving_is_never_sent(world):  # noqa: F811
    """The bench at 0cf8f0f: two shards handed back in a burst of renewals each had 20-29
    requests queued for the endpoint; the hand-back waited 5 s for them, then stopped
    their workers, and the ones sent meanwhile were never written. Now a request checks,
    on the thread about to send it, that its shard is not leaving; and the hand-back
    waits only for requests already sent."""
    kube, endpoint, ctx = world
    answers = iter([True, False])  # may start; by the time it leaves the queue: leaving
    ctx.may_request = lambda uid: next(answers)
    worker = CredentialWorker(ctx, credential())
    with pytest.raises(NotHolding):
        asyncio.run(worker.reconcile())
    assert endpoint.requests == 0
    assert "create_secret" not in kube.calls
    assert ctx.requests_in_flight == {} and ctx.requests_sent == {}
