"""The core loop's invariants (issue 17), without a cluster: the one store of workers,
the expiry timer, the conflict check before any token request, discovery in the issuer's
slot, leadership before writes, the ordered stop. The end-to-end proofs are in
tests/operator/test_core_loop.py."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from test_worker import NOW, FakeKube, credential, world  # noqa: F401 - the fixture

from tokensync import discovery, identity, metrics, oauth2, readiness
from tokensync.controller import CredentialWorker, NotLeading, OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.limits import Coalescer, RequestLimits
from tokensync.managed import managed_state
from tokensync.readiness import expired_report, refreshing_report, while_refreshing
from tokensync.runtime import Runtime, stop_in_order, supervised
from tokensync.schedule import HeldToken, Trigger
from tokensync.secret import ANNOTATION_EXPIRES, ANNOTATION_ISSUED, LABEL_CREDENTIAL, format_time
from tokensync.sources import SourceCache
from tokensync.status import Condition, apply_patch, status_patch
from tokensync.supervisor import Supervisor


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


def _body(uid: str, name: str = "c", namespace: str = "ns") -> dict[str, Any]:
    body = credential()
    body["metadata"].update(uid=uid, name=name, namespace=namespace)
    return body


# --- bug 2: a periodic list stops only workers older than the list ------------------------


def test_a_sweep_never_stops_a_worker_whose_credential_was_created_during_its_list():
    async def scenario() -> None:
        supervisor = Supervisor(_idle_context(), SourceCache())
        supervisor.observe("LISTED", _body("old", "old"))
        began = supervisor.list_began()
        listed = {"old"}  # the list ran in a thread, while ...
        supervisor.observe("ADDED", _body("new", "new"))  # ... this event was applied
        assert supervisor.sweep(listed, began) == 0
        assert set(supervisor.workers) == {"old", "new"}
        # The next list, begun after the event, does decide: gone ones stop.
        began = supervisor.list_began()
        assert supervisor.sweep({"new"}, began) == 1
        assert set(supervisor.workers) == {"new"}
        await supervisor.stop()

    asyncio.run(scenario())


# --- bug 3: a re-created name -----------------------------------------------------------


def test_a_recreated_name_stops_the_old_worker_and_keeps_the_new_series():
    async def scenario() -> None:
        supervisor = Supervisor(_idle_context(), SourceCache())
        supervisor.observe("ADDED", _body("uid-1"))
        old = supervisor.workers["uid-1"]
        # Deleted and created again during a watch gap: the re-list reports the new one.
        supervisor.observe("MODIFIED", _body("uid-2"))
        metrics.REFRESH_FAILURES.labels("ns", "c", "transient").inc()
        await asyncio.sleep(0)
        assert set(supervisor.workers) == {"uid-2"}
        assert old.task is not None and old.task.cancelled()
        # The old object's cleanup (here: a sweep) leaves the new one's series alone.
        supervisor.stop_worker("uid-1")
        supervisor.sweep({"uid-2"}, supervisor.list_began())
        sample = metrics.REFRESH_FAILURES.labels("ns", "c", "transient")._value.get()
        assert sample == 1
        assert supervisor.by_name == {("ns", "c"): "uid-2"}
        supervisor.observe("DELETED", _body("uid-2"))
        await supervisor.stop()

    asyncio.run(scenario())


# --- bug 1: the expiry timer ------------------------------------------------------------


def _ready_status(expires: str) -> dict[str, Any]:
    return {
        "expiresAt": expires,
        "secretName": "c",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "ok"},
            {"type": "Refreshing", "status": "True", "reason": "RenewWindow", "message": "due"},
        ],
    }


def test_expired_report_is_pure():
    status = _ready_status(format_time(NOW))
    assert expired_report(status, NOW - timedelta(seconds=1)) is None
    report = expired_report(status, NOW)
    assert report is not None
    assert (report.ready.status, report.ready.reason) == ("False", "TokenExpired")
    assert report.refreshing is not None and report.refreshing.reason == "RenewWindow"
    assert expired_report({"expiresAt": format_time(NOW)}, NOW) is None  # not Ready=True


def test_an_expired_status_over_a_newer_valid_token_in_the_secret_is_not_reported():
    """Status may name an older token than the Secret holds: on a saturated operator its
    write is still queued, or a restart came between the Secret's write and status's.
    The pods read a valid token then, and the pass writes its status."""
    status = _ready_status(format_time(NOW - timedelta(minutes=1)))
    assert expired_report(status, NOW, NOW + timedelta(minutes=4)) is None
    for secret_until in (None, NOW, NOW - timedelta(minutes=1)):  # gone, or expired too
        report = expired_report(status, NOW, secret_until)
        assert report is not None and report.ready.reason == "TokenExpired"


def _lagging_start(ctx: OperatorContext, secret_until: Any) -> CredentialWorker:
    """A worker started from a Ready=True status whose token expired a minute ago, and
    a view of its Secret holding a token valid until `secret_until`."""
    body = credential()
    body["status"] = _ready_status(format_time(NOW - timedelta(minutes=1)))
    worker = CredentialWorker(ctx, body)
    ctx.managed_secrets[("ns", "c")] = managed_state(
        {
            "metadata": {
                "namespace": "ns",
                "name": "c",
                "uid": "secret-uid",
                "resourceVersion": "7",
                "labels": {LABEL_CREDENTIAL: "c"},
                "annotations": {
                    ANNOTATION_ISSUED: format_time(NOW - timedelta(minutes=2)),
                    ANNOTATION_EXPIRES: format_time(secret_until),
                },
                "ownerReferences": [
                    {"kind": "OAuth2Credential", "name": "c", "uid": "cred-uid", "controller": True}
                ],
            }
        }
    )
    return worker


def test_the_expiry_timer_looks_at_the_secret_after_the_first_list(world):  # noqa: F811
    """A restarted operator's timers fire at once for statuses that lagged behind their
    Secrets (7,755 of 10,000 in the saturated run of 2026-12-07: each a false
    TokenExpired write, written while the operator still listed). The timer waits for
    the managed Secrets' list, finds the newer token, writes nothing, and moves to that
    token's expiry; a token that really expired is reported as soon as the list is in."""
    kube, _endpoint, ctx = world
    listed = asyncio.Event()
    ctx.managed_secrets_listed = listed.wait

    async def scenario() -> None:
        lagging = _lagging_start(ctx, NOW + timedelta(seconds=1))
        lagging.arm_expiry()  # due at once: status says the token expired a minute ago
        await asyncio.sleep(0.1)
        assert "patch_status" not in kube.calls  # waits for the list
        listed.set()
        await asyncio.sleep(0.1)
        assert "patch_status" not in kube.calls  # the Secret's token is valid
        ctx.clock[0] = NOW + timedelta(seconds=1)  # type: ignore[attr-defined]
        await asyncio.sleep(1.1)  # the timer moved to the Secret token's expiry
        ready = kube.status["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "TokenExpired")
        lagging.stop_expiry_reports()

    asyncio.run(scenario())


def test_a_token_expired_in_its_secret_too_is_reported_once_listed(world):  # noqa: F811
    kube, _endpoint, ctx = world

    async def scenario() -> None:
        worker = _lagging_start(ctx, NOW - timedelta(minutes=1))
        worker.arm_expiry()
        await asyncio.sleep(0.1)
        ready = kube.status["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "TokenExpired")

    asyncio.run(scenario())


def test_ready_true_is_taken_away_at_expiry_while_the_pass_is_stuck(world):  # noqa: F811
    kube, endpoint, ctx = world
    stuck = threading.Event()

    def never_answers(request: oauth2.TokenRequest, **_: Any) -> oauth2.Token:
        stuck.wait(10)
        raise oauth2.TransientError("timed out", reason="Timeout")

    async def scenario() -> None:
        worker = CredentialWorker(ctx, credential())
        await worker.reconcile()  # the first token
        assert kube.status["conditions"][0]["reason"] == "TokenIssued"
        # An hour later the renewal hangs; the clock passes the token's expiry.
        ctx.clock[0] = NOW + timedelta(minutes=59, seconds=59)  # type: ignore[attr-defined]
        import tokensync.oauth2 as module

        module.fetch_token = never_answers  # type: ignore[assignment]
        worker.arm_expiry()  # the timer is armed on the (monotonic) loop clock
        pass_ = asyncio.create_task(worker.reconcile())
        await asyncio.sleep(0.1)  # the pass is in its token request now
        ctx.clock[0] = NOW + timedelta(hours=1)  # type: ignore[attr-defined]
        await asyncio.sleep(1.2)
        ready = kube.status["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "TokenExpired")
        assert not pass_.done()
        stuck.set()
        await pass_

    try:
        asyncio.run(scenario())
    finally:
        stuck.set()
    assert endpoint.requests == 1


def test_a_standby_never_reports_an_expiry(world):  # noqa: F811
    kube, _endpoint, ctx = world
    ctx.is_leading = lambda: False

    async def scenario() -> None:
        body = credential()
        body["status"] = _ready_status(format_time(NOW - timedelta(seconds=1)))
        worker = CredentialWorker(ctx, body)
        worker.arm_expiry()
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert "patch_status" not in kube.calls


# --- bug 4: a conflict is found before any token request and clears ---------------------


def test_a_foreign_secret_is_found_before_the_token_request_and_its_deletion_clears_it(
    world,  # noqa: F811
):
    kube, endpoint, ctx = world
    kube.secrets["c"] = {"metadata": {"name": "c", "namespace": "ns", "uid": "x"}, "data": {}}
    worker = CredentialWorker(ctx, credential())
    recheck = asyncio.run(worker.reconcile())
    assert endpoint.requests == 0
    ready = kube.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "SecretConflict")
    assert recheck is not None and recheck - NOW <= timedelta(seconds=60)
    assert ("ns", "c") not in ctx.managed_secrets  # a foreign Secret is never a view
    del kube.secrets["c"]  # the user follows the message
    asyncio.run(worker.reconcile())
    assert endpoint.requests == 1
    assert kube.status["conditions"][0]["reason"] == "TokenIssued"
    # A routine renewal has a view: two writes, no read.
    ctx.clock[0] = NOW + timedelta(minutes=55)  # type: ignore[attr-defined]
    kube.calls.clear()
    asyncio.run(worker.reconcile())
    assert endpoint.requests == 2
    assert kube.calls == ["patch_secret", "patch_status"], kube.calls


# --- bug 5: leadership before writes; the ordered stop ----------------------------------


def test_a_token_that_arrives_after_leadership_was_lost_is_not_written(world):  # noqa: F811
    kube, endpoint, ctx = world
    leading = [True]
    ctx.is_leading = lambda: leading[0]
    original = endpoint.__call__

    def lose_leadership_meanwhile(request: oauth2.TokenRequest, **kw: Any) -> oauth2.Token:
        leading[0] = False
        return original(request, **kw)

    import tokensync.oauth2 as module

    module.fetch_token = lose_leadership_meanwhile  # type: ignore[assignment]
    worker = CredentialWorker(ctx, credential())
    with pytest.raises(NotLeading):
        asyncio.run(worker.reconcile())
    assert endpoint.requests == 1
    assert "create_secret" not in kube.calls


class _RecordingElector:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def stop(self) -> None:
        self.log.append("lease released")


def test_the_lease_is_released_only_after_in_flight_writes_finished():
    log: list[str] = []

    async def scenario() -> None:
        kube_executor = ThreadPoolExecutor(2)
        started = threading.Event()

        def slow_write() -> None:
            started.set()
            time.sleep(0.5)
            log.append("write finished")

        supervisor = Supervisor(_idle_context(), SourceCache())

        async def worker_pass() -> None:
            await asyncio.get_running_loop().run_in_executor(kube_executor, slow_write)

        task = asyncio.create_task(worker_pass())
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        await stop_in_order(
            watches=[],
            supervisor=supervisor,
            kube_executor=kube_executor,
            elector=_RecordingElector(log),  # type: ignore[arg-type]
            background=[task],  # cancelled first, its write still running
        )

    asyncio.run(scenario())
    assert log == ["write finished", "lease released"]


def test_a_lease_is_kept_when_writes_do_not_finish_in_time():
    log: list[str] = []
    release = threading.Event()

    async def scenario() -> None:
        kube_executor = ThreadPoolExecutor(1)
        kube_executor.submit(release.wait, 5)
        await stop_in_order(
            watches=[],
            supervisor=None,
            kube_executor=kube_executor,
            elector=_RecordingElector(log),  # type: ignore[arg-type]
            background=[],
            writes_timeout=0.2,
        )

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert log == []  # the Lease expires by itself; no standby starts before that


# --- bug 6: discovery in the issuer's slot, coalesced, transient backoff ----------------


def test_concurrent_discoveries_of_one_issuer_share_one_fetch_in_its_slot(
    world,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    _kube, _endpoint, ctx = world
    fetches: list[str] = []
    threads: list[str] = []

    def fetch(spec: Any, resolved: Any, config: Any, cache: Any = None) -> Any:
        fetches.append(spec.issuer_url)
        threads.append(threading.current_thread().name)
        time.sleep(0.3)
        raise discovery.DiscoveryFailed(spec.issuer_url, "timed out", transient=True)

    monkeypatch.setattr(identity, "discover", fetch)

    def issuer_credential(uid: str) -> dict[str, Any]:
        body = credential()
        body["metadata"]["name"] = uid  # FakeKube knows one UID
        del body["spec"]["tokenURL"]
        body["spec"]["issuerURL"] = "https://idp.example"
        return body

    async def scenario() -> list[Any]:
        ctx.limits = RequestLimits(64, 8)
        workers = [CredentialWorker(ctx, issuer_credential(f"c{i}")) for i in range(5)]
        return await asyncio.gather(*(w.reconcile() for w in workers))

    retries = asyncio.run(scenario())
    assert fetches == ["https://idp.example"]  # one fetch for five credentials
    assert threads[0].startswith("tokensync-token")  # the endpoint's threads
    # A transient failure takes the transient backoff (1 s first), not a 30 s recheck.
    assert all(r is not None and r - NOW <= timedelta(seconds=2) for r in retries)


def test_a_slow_endpoint_holds_only_its_own_threads():
    async def scenario() -> float:
        limits = RequestLimits(max_in_flight=64, max_per_host=2)
        release = threading.Event()
        slow = [
            asyncio.ensure_future(limits.run("https://slow.example/t", lambda: release.wait(5)))
            for _ in range(10)
        ]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await limits.run("https://fast.example/t", lambda: None)
        took = time.monotonic() - started
        release.set()
        await asyncio.gather(*slow)
        limits.close()
        return took

    assert asyncio.run(scenario()) < 0.5


def test_a_coalescer_shares_one_call_and_survives_a_cancelled_caller():
    async def scenario() -> None:
        calls = []

        async def make() -> int:
            calls.append(1)
            await asyncio.sleep(0.05)
            return 7

        coalescer = Coalescer()
        first = asyncio.ensure_future(coalescer.run("k", make))
        second = asyncio.ensure_future(coalescer.run("k", make))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == 7
        assert calls == [1]
        assert coalescer.in_flight() == 0

    asyncio.run(scenario())


# --- item 7: background tasks are supervised --------------------------------------------


def test_a_background_task_that_fails_is_logged_and_restarted(caplog):
    async def scenario() -> int:
        runs = []

        async def flaky() -> None:
            runs.append(1)
            if len(runs) < 3:
                raise RuntimeError("secret-looking text that must not be logged")
            await asyncio.sleep(3600)

        task = supervised("test task", flaky, restart_after=0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return len(runs)

    assert asyncio.run(scenario()) == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "tokensync"]
    assert len(messages) == 2 and all("RuntimeError" in m for m in messages)
    assert not any("must not be logged" in m for m in messages)


# --- item 7: the floor and backoffs on the monotonic clock --------------------------------


def test_a_wall_clock_step_back_never_defers_a_spec_edit(world):  # noqa: F811
    _kube, endpoint, ctx = world
    monotonic = [1000.0]
    ctx.monotonic = lambda: monotonic[0]
    worker = CredentialWorker(ctx, credential(generation=1))
    asyncio.run(worker.reconcile())
    ctx.clock[0] = NOW - timedelta(hours=1)  # type: ignore[attr-defined]  # an NTP step
    monotonic[0] += 11  # while 11 s really passed
    worker.body = credential(generation=2)
    asyncio.run(worker.reconcile())
    assert endpoint.requests == 2


def test_a_backoff_is_measured_on_the_monotonic_clock(world):  # noqa: F811
    _kube, endpoint, ctx = world
    monotonic = [1000.0]
    ctx.monotonic = lambda: monotonic[0]
    endpoint.failures.append(oauth2.TransientError("timed out", reason="Timeout"))
    worker = CredentialWorker(ctx, credential())
    retry = asyncio.run(worker.reconcile())
    assert retry is not None and retry - NOW <= timedelta(seconds=1)
    ctx.clock[0] = NOW - timedelta(hours=1)  # type: ignore[attr-defined]
    monotonic[0] += 2  # the backoff (at most 1 s) is over
    asyncio.run(worker.reconcile())
    assert endpoint.requests == 2


# --- item 7: the own-echo race ------------------------------------------------------------


def test_a_status_echo_that_arrives_before_the_write_returned_is_recognised():
    async def scenario() -> None:
        supervisor = Supervisor(_idle_context(), SourceCache())
        supervisor.observe("ADDED", _body("uid-1"))
        worker = supervisor.workers["uid-1"]
        written = {"observedGeneration": 1, "conditions": []}
        worker.status_in_flight = written  # the patch is on the wire
        echo = _body("uid-1")
        echo["metadata"]["resourceVersion"] = "9"
        echo["status"] = dict(written)
        assert supervisor.is_own_echo(echo)
        edited = _body("uid-1")
        edited["metadata"].update(resourceVersion="10", generation=2)
        edited["status"] = dict(written)
        assert not supervisor.is_own_echo(edited)  # a spec edit is never an echo
        worker.status_in_flight = None
        assert not supervisor.is_own_echo(echo)
        await supervisor.stop()

    asyncio.run(scenario())


# --- kopf's events into the store -----------------------------------------------------------


def _store_only_runtime(supervisor: Supervisor) -> Runtime:
    return Runtime(
        options=None,  # type: ignore[arg-type]
        kube=None,  # type: ignore[arg-type]
        kube_executor=None,  # type: ignore[arg-type]
        limits=None,  # type: ignore[arg-type]
        supervisor=supervisor,
        elector=None,
        synced=asyncio.Event(),
    )


def test_kopf_listing_a_known_credential_again_asks_for_a_sweep():
    """kopf lists again after 410 Gone and reports no DELETED for what went meanwhile: a
    listed event (type None) for a credential the store already knew means a re-list,
    and the store compares its workers with a complete list. The first listing does not;
    neither does a listed credential that is new."""

    async def scenario() -> None:
        supervisor = Supervisor(_idle_context(), SourceCache())
        runtime = _store_only_runtime(supervisor)
        runtime.credential_event(None, _body("uid-1", "a"))  # kopf's first listing ...
        runtime.synced.set()  # ... may still run when the sources are synced
        runtime.credential_event(None, _body("uid-2", "b"))
        assert not runtime.sweep_now.is_set()
        assert set(supervisor.workers) == {"uid-1", "uid-2"}
        runtime.credential_event("MODIFIED", _body("uid-1", "a"))
        assert not runtime.sweep_now.is_set()
        runtime.credential_event(None, _body("uid-1", "a"))  # listed again: a gap
        assert runtime.sweep_now.is_set()
        runtime.credential_event("DELETED", _body("uid-2", "b"))
        assert set(supervisor.workers) == {"uid-1"}
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_malformed_credential_event_is_skipped_without_stopping_the_others(caplog):
    async def scenario() -> None:
        supervisor = Supervisor(_idle_context(), SourceCache())
        runtime = _store_only_runtime(supervisor)
        runtime.credential_event("ADDED", {"metadata": {"name": "no-uid", "namespace": "ns"}})
        runtime.credential_event("ADDED", _body("uid-1", "a"))
        assert set(supervisor.workers) == {"uid-1"}
        await supervisor.stop()

    asyncio.run(scenario())
    assert "credential ns/no-uid skipped: unexpected KeyError" in caplog.text


def test_a_refresh_of_an_expired_token_says_token_expired_not_pending():
    """After a pause or a long outage the pass that asks again must not call an expired
    token Pending: the pods read an expired token, and Ready says so."""
    held = HeldToken(frozenset({"access_token"}), NOW - timedelta(hours=1), NOW, "h")
    status = _ready_status(format_time(NOW))
    expired = Trigger("TokenExpired", "the token expired")
    ready = while_refreshing(status, held, expired, NOW, "c")
    assert (ready.status, ready.reason) == ("False", "TokenExpired")
    assert ready.message == "the token expired; a new one is being requested"
    changed = Trigger("GenerationChanged", "spec generation 3 is not yet served")
    ready = while_refreshing(status, held, changed, NOW + timedelta(seconds=1), "c")
    assert (ready.reason, ready.message) == (
        "TokenExpired",
        "the token expired; a new one is being requested (spec generation 3 is not yet served)",
    )
    # Still valid: a renewal keeps Ready as written; no token yet: Pending.
    renew = Trigger("RenewWindow", "the token is inside its renew window")
    assert while_refreshing(status, held, renew, NOW - timedelta(seconds=1), "c").status == "True"
    assert while_refreshing({}, None, renew, NOW, "c").reason == "Pending"


def test_a_renewal_of_a_valid_token_says_ready_even_after_a_stale_expiry_report():
    """The 10,000-credential restart: status writes lagged the Secret writes by a minute,
    the restarted operator's expiry timers reported TokenExpired from those statuses, and
    the slow renewals that followed wrote Pending over tokens the Secrets still held
    valid. A held token that serves the current spec is Ready, whatever status said."""
    held = HeldToken(frozenset({"access_token"}), NOW - timedelta(minutes=3), NOW, "h")
    stale = {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "TokenExpired", "message": "x"}
        ]
    }
    renew = Trigger("RenewWindow", "the token is inside its renew window")
    ready = while_refreshing(stale, held, renew, NOW - timedelta(minutes=1), "c")
    assert (ready.status, ready.reason) == ("True", "TokenIssued")
    assert ready.message == f"Secret 'c' holds a token valid until {format_time(NOW)}"


def test_a_slow_renewal_over_a_status_that_lagged_its_secret_names_the_held_token():
    """A restart over a status that lagged its Secret (Ready=True, expiresAt a minute
    ago, the Secret holding the next token), then a renewal on a slow endpoint: the
    Refreshing=True report kept that Ready=True and its past expiresAt until the new
    token was written. It now names the token the pods read."""
    held = HeldToken(frozenset({"access_token"}), NOW - timedelta(minutes=3), NOW, "h")
    lagging = _ready_status(format_time(NOW - timedelta(minutes=5)))
    renew = Trigger("RenewWindow", "the token is inside its renew window")
    refreshing = Condition("True", renew.reason, renew.message)
    at = NOW - timedelta(seconds=30)
    report = refreshing_report(lagging, held, renew, at, "c", refreshing)
    assert (report.ready.status, report.ready.reason) == ("True", "TokenIssued")
    assert report.ready.message == f"Secret 'c' holds a token valid until {format_time(NOW)}"
    assert report.fields == {"expiresAt": format_time(NOW)}
    assert report.refreshing == refreshing
    written = apply_patch(lagging, status_patch(lagging, report, 1, at) or {})
    assert expired_report(written, at) is None  # nothing for the watchdog to call out
    assert readiness.ready_until(written) == NOW
    # A status that names the held token keeps its Ready as written.
    current = _ready_status(format_time(NOW))
    report = refreshing_report(current, held, renew, at, "c", refreshing)
    assert (report.ready.reason, report.ready.message) == ("TokenIssued", "ok")
    # Not Ready: no expiresAt to claim.
    report = refreshing_report(current, held, renew, NOW, "c", refreshing)
    assert (report.ready.status, report.fields) == ("False", {})
