"""One credential's worker with the token request and the Kubernetes API replaced by
recording fakes: the sequencing rules that 0.1 got wrong (issue 8, items 7, 9, 10),
checked without a cluster. The same behaviours run against the real control plane in
tests/operator/test_isolation.py."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import gc
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokensync import controller, oauth2
from tokensync.controller import CredentialGone, CredentialWorker, OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.kube import KubeError
from tokensync.limits import PassGate, RequestLimits
from tokensync.managed import FIELD_MANAGER
from tokensync.secret import ANNOTATION_REFRESH_REQUESTED
from tokensync.sources import Source, SourceCache
from tokensync.supervisor import Supervisor

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
SECRET = "sec-" + secrets.token_urlsafe(16)


class FakeKube:
    """Records every call; Secrets get managedFields as the API server would add them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.version = 100
        self.refuse_writes: KubeError | None = None
        self.status_error: KubeError | None = None
        self.status_error_when: str | None = None  # only for patches setting this field
        self.credential_exists = True
        self.refused_types: set[str] = set()

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        meta = body["metadata"]
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("uid", "secret-uid")
        meta["managedFields"] = [
            {
                "manager": FIELD_MANAGER,
                "operation": "Update",
                "fieldsV1": {
                    "f:data": {f"f:{k}": {} for k, v in body["data"].items() if v is not None},
                    "f:metadata": {
                        "f:labels": {f"f:{k}": {} for k in meta.get("labels") or {}},
                        "f:annotations": {f"f:{k}": {} for k in meta.get("annotations") or {}},
                    },
                },
            }
        ]
        return body

    def create_secret(
        self, namespace: str, body: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        self.calls.append("create_secret" + (" (dry run)" if dry_run else ""))
        if self.refuse_writes:
            raise self.refuse_writes
        if body["type"] in self.refused_types:  # an admission policy, before the name check
            raise KubeError(403, f"type {body['type']} denied by admission policy")
        if body["metadata"]["name"] in self.secrets:
            raise KubeError(409, "already exists")
        stored = {
            "metadata": dict(body["metadata"]),
            "data": dict(body["data"]),
            "type": body["type"],
        }
        if dry_run:
            return stored
        self.secrets[body["metadata"]["name"]] = self._stamp(stored)
        return stored

    def delete_secret(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        self.calls.append("delete_secret")
        current = self.secrets[name]["metadata"]
        assert (current["uid"], current["resourceVersion"]) == (uid, resource_version)
        del self.secrets[name]

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch_secret")
        if self.refuse_writes:
            raise self.refuse_writes
        current = self.secrets[name]
        if patch["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "conflict")
        for where in ("labels", "annotations"):
            merged = {**current["metadata"].get(where, {}), **patch["metadata"][where]}
            current["metadata"][where] = {k: v for k, v in merged.items() if v is not None}
        if patch.get("type", current["type"]) != current["type"]:
            raise KubeError(422, "type: Invalid value: field is immutable")
        merged = {**current["data"], **patch["data"]}
        current["data"] = {k: v for k, v in merged.items() if v is not None}
        return self._stamp(current)

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read_secret")
        return self.secrets.get(name)

    def credential_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("credential_metadata")
        return {"uid": "cred-uid"} if self.credential_exists else None

    def patch_credential_status(
        self, namespace: str, name: str, uid: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("patch_status")
        if self.status_error and (
            self.status_error_when is None or self.status_error_when in patch
        ):
            raise self.status_error
        self.status = dict(patch)  # the whole status, as the JSON patch sets it
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}

    def object_metadata(self, *_: Any) -> None:
        self.calls.append("object_metadata")
        return None


class FakeEndpoint:
    def __init__(self, clock: list[datetime]) -> None:
        self.requests = 0
        self.failures: list[oauth2.TokenError] = []
        self.clock = clock  # tokens are issued at the worker's "now"

    def __call__(self, request: oauth2.TokenRequest, **_: Any) -> oauth2.Token:
        self.requests += 1
        if self.failures:
            raise self.failures.pop(0)
        return oauth2.Token(
            access_token="tok-" + secrets.token_urlsafe(16),
            token_type="Bearer",
            issued_at=self.clock[0],
            expires_at=self.clock[0] + timedelta(hours=1),
            scope=None,
            lifetime_source="expires_in",
            http_status=200,
        )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeKube, FakeEndpoint, OperatorContext]:
    clock = [NOW]
    kube, endpoint = FakeKube(), FakeEndpoint(clock)
    monkeypatch.setattr(oauth2, "fetch_token", endpoint)
    source = Source(kind="Secret", name="client", data={"client_secret": SECRET.encode()})
    ctx = OperatorContext(
        config=OperatorConfig(),
        kube=kube,  # type: ignore[arg-type]
        kube_executor=ThreadPoolExecutor(2),
        sources=lambda _ns: lambda kind, name: source if name == "client" else None,
        post_event=lambda *_: None,
        now=lambda: clock[0],
        monotonic=lambda: clock[0].timestamp(),  # the fake clock never steps
    )
    ctx.clock = clock  # type: ignore[attr-defined]
    return kube, endpoint, ctx


def credential(generation: int = 1, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "uid": "cred-uid",
            "generation": generation,
            "annotations": annotations,
        },
        "spec": {
            "tokenURL": "https://login.example/token",
            "clientID": "acme",
            "clientSecretRef": {"name": "client", "key": "client_secret"},
        },
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_refused_secret_write_keeps_the_token_and_retries_only_the_write(world):
    kube, endpoint, ctx = world
    worker = CredentialWorker(ctx, credential())
    kube.refuse_writes = KubeError(403, 'secrets "c" is forbidden: exceeded quota')
    retry_at = run(worker.reconcile())
    assert endpoint.requests == 1
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretWriteFailed")
    assert retry_at <= NOW + timedelta(seconds=1)
    for _ in range(3):  # retries: write only
        run(worker.reconcile())
    assert endpoint.requests == 1
    kube.refuse_writes = None
    run(worker.reconcile())
    assert endpoint.requests == 1
    assert kube.calls.count("create_secret") == 5
    token = base64.b64decode(kube.secrets["c"]["data"]["access_token"]).decode()
    assert token.startswith("tok-")
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TokenIssued"


def test_a_failing_status_patch_never_causes_another_token_request(world):
    kube, endpoint, ctx = world
    worker = CredentialWorker(ctx, credential(generation=3))
    kube.status_error = KubeError(422, "status.lastHandledRefreshRequest: Too long")
    kube.status_error_when = "tokenGeneration"  # the patch after the Secret write
    with pytest.raises(KubeError):
        run(worker.reconcile())
    assert endpoint.requests == 1 and "c" in kube.secrets
    for _ in range(3):
        with pytest.raises(KubeError):
            run(worker.reconcile())
    assert endpoint.requests == 1  # the Secret serves generation 3 already


def test_a_deleted_or_replaced_credential_stops_its_worker(world):
    kube, _endpoint, ctx = world
    worker = CredentialWorker(ctx, credential())
    kube.status_error = KubeError(404, "not found")
    with pytest.raises(CredentialGone):
        run(worker.reconcile())
    kube.status_error = KubeError(422, "the server rejected our request")
    with pytest.raises(KubeError):  # invalid status of this very credential: retried
        run(CredentialWorker(ctx, credential()).reconcile())
    kube.credential_exists = False  # replaced by a same-named object: the UID test failed
    with pytest.raises(CredentialGone):
        run(CredentialWorker(ctx, credential()).reconcile())


def test_no_secret_is_created_for_a_credential_that_is_gone_or_being_deleted(world):
    kube, endpoint, ctx = world
    kube.credential_exists = False
    with pytest.raises(CredentialGone):
        run(CredentialWorker(ctx, credential()).reconcile())
    assert "create_secret" not in kube.calls
    body = credential()
    body["metadata"]["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    with pytest.raises(CredentialGone):
        run(CredentialWorker(ctx, body).reconcile())
    assert endpoint.requests == 0


def test_each_error_class_backs_off_on_its_own_count(world):
    _kube, endpoint, ctx = world
    worker = CredentialWorker(ctx, credential())
    timeout = oauth2.TransientError("timed out", reason="Timeout")
    for _ in range(5):
        endpoint.failures.append(timeout)
        worker.attempts = dataclasses.replace(worker.attempts, last_request_at=None, retry_at=None)
        run(worker.reconcile())
    assert worker.attempts.failures_of("transient") == 5
    endpoint.failures.append(
        oauth2.ConfigurationError("refused", reason="HTTPError", http_status=401)
    )
    worker.attempts = dataclasses.replace(worker.attempts, retry_at=None)
    retry_at = run(worker.reconcile())
    # a first configuration failure: about a minute, not 2**5 minutes
    assert timedelta(seconds=40) <= retry_at - NOW <= timedelta(seconds=60)


def test_a_spec_edit_during_a_pass_is_not_recorded_as_served(world):
    kube, endpoint, ctx = world
    worker = CredentialWorker(ctx, credential(generation=1))
    original = endpoint.__call__

    def edit_while_fetching(request: oauth2.TokenRequest, **kw: Any) -> oauth2.Token:
        worker.body = credential(generation=2)  # arrives while the request is in flight
        return original(request, **kw)

    import tokensync.oauth2 as module

    module.fetch_token = edit_while_fetching  # type: ignore[assignment]
    run(worker.reconcile())
    assert kube.status["observedGeneration"] == 1
    assert {c["observedGeneration"] for c in kube.status["conditions"]} == {1}


def _never_leading_context() -> OperatorContext:
    """A standby's context: workers wait for leadership forever, so no pass runs."""
    return OperatorContext(
        config=OperatorConfig(),
        kube=None,  # type: ignore[arg-type]
        kube_executor=None,  # type: ignore[arg-type]
        sources=lambda _ns: lambda _kind, _name: None,
        post_event=lambda *_: None,
        leadership=asyncio.Event().wait,
    )


def test_a_standby_ignores_managed_secret_events_without_errors():
    # 0.1: each managed-Secret event on a standby raised AttributeError (the worker's
    # secret_version was set only by a pass, which a standby never runs).
    async def scenario() -> None:
        ctx = _never_leading_context()
        supervisor = Supervisor(ctx, SourceCache())
        supervisor.observe("ADDED", credential())
        secret = {
            "metadata": {
                "name": "c",
                "namespace": "ns",
                "uid": "s",
                "resourceVersion": "7",
                "labels": {"tokensync.dev/credential": "c"},
            }
        }
        supervisor.managed_secret_event("MODIFIED", secret)
        await asyncio.sleep(1.2)  # past the own-write settle delay
        assert ctx.managed_secrets["ns", "c"].resource_version == "7"
        await supervisor.stop()

    run(scenario())


def test_a_template_that_would_render_too_large_is_an_invalid_spec(world):
    kube, endpoint, ctx = world
    body = credential()
    body["spec"]["secret"] = {"template": {"amplified": "${access_token}" * 270}}
    original = endpoint.__call__

    def long_token(request: oauth2.TokenRequest, **kw: Any) -> oauth2.Token:
        import dataclasses

        return dataclasses.replace(original(request, **kw), access_token="t" * 1024)

    oauth2.fetch_token = long_token  # type: ignore[assignment]
    assert run(CredentialWorker(ctx, body).reconcile()) is None
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "256 KiB" in ready["message"] or "KiB" in ready["message"]
    assert "create_secret" not in kube.calls


def _renew_while_the_endpoint_is_busy(
    ctx: OperatorContext, worker: CredentialWorker, busy_seconds: float
) -> None:
    """Hold the endpoint's only slot for `busy_seconds` while a routine renewal starts."""

    async def scenario() -> None:
        async with ctx.limits.slot(credential()["spec"]["tokenURL"]):
            renewal = asyncio.ensure_future(worker.reconcile())
            await asyncio.sleep(busy_seconds)
        await renewal

    run(scenario())


def test_a_renewal_queued_behind_its_endpoint_writes_no_refreshing_status(world):
    # Issue 10: the 2 s before Refreshing=True counted from the start of the pass, so
    # renewals queued for one of an endpoint's slots cost a third write (2.2 per renewal
    # at 1,000 credentials). The request answers at once when sent: two writes.
    kube, _endpoint, ctx = world
    ctx.limits = RequestLimits(max_in_flight=4, max_per_host=1)
    worker = CredentialWorker(ctx, credential())
    run(worker.reconcile())
    ctx.clock[0] = NOW + timedelta(minutes=50)  # inside the renew window: routine
    kube.calls.clear()
    _renew_while_the_endpoint_is_busy(ctx, worker, busy_seconds=2.6)
    assert kube.calls == ["patch_secret", "patch_status"]


def test_a_renewal_queued_too_long_reports_refreshing(world, monkeypatch):
    # ...but a renewal stuck in the queue (an endpoint's slots all held by slow requests)
    # is visible: Refreshing=True once it has waited QUEUED_REPORT_DELAY_SECONDS.
    kube, _endpoint, ctx = world
    monkeypatch.setattr(controller, "QUEUED_REPORT_DELAY_SECONDS", 0.5)
    ctx.limits = RequestLimits(max_in_flight=4, max_per_host=1)
    worker = CredentialWorker(ctx, credential())
    run(worker.reconcile())
    ctx.clock[0] = NOW + timedelta(minutes=50)
    kube.calls.clear()
    statuses: list[dict[str, Any]] = []
    patch_status = kube.patch_credential_status

    def record(namespace: str, name: str, uid: str, patch: dict[str, Any]) -> dict[str, Any]:
        statuses.append(patch)
        return patch_status(namespace, name, uid, patch)

    kube.patch_credential_status = record  # type: ignore[method-assign]
    _renew_while_the_endpoint_is_busy(ctx, worker, busy_seconds=1.0)
    assert kube.calls == ["patch_status", "patch_secret", "patch_status"]
    refreshing = next(c for c in statuses[0]["conditions"] if c["type"] == "Refreshing")
    assert (refreshing["status"], refreshing["reason"]) == ("True", "RenewWindow")


def test_a_deletion_found_by_a_relist_stops_the_worker_by_name():
    # The credential watch's sweep after a re-list reports DELETED with the namespace and
    # name only (it keeps no bodies): the worker is found through its name.
    async def scenario() -> None:
        ctx = _never_leading_context()
        supervisor = Supervisor(ctx, SourceCache())
        supervisor.observe("LISTED", credential())
        worker = supervisor.workers["cred-uid"]
        supervisor.observe("DELETED", {"metadata": {"namespace": "ns", "name": "other"}})
        assert "cred-uid" in supervisor.workers
        supervisor.observe("DELETED", {"metadata": {"namespace": "ns", "name": "c"}})
        assert supervisor.workers == {} and supervisor.by_name == {}
        await asyncio.sleep(0)
        assert worker.task is not None and worker.task.cancelled()
        await supervisor.stop()

    run(scenario())


class _KopfCause:
    """Stands in for what kopf puts in a context variable while a handler runs."""


_CAUSE: contextvars.ContextVar[_KopfCause] = contextvars.ContextVar("cause")


def test_a_worker_started_from_a_handler_does_not_keep_the_handlers_context():
    # Issue 17, memory at 10,000: a worker task created inside kopf's event handler
    # copied the handler's context, in which kopf keeps the cause (the decoded event
    # with managedFields, its patch, logger and memo): one full event alive per
    # credential for as long as it lived.
    async def scenario() -> None:
        ctx = _never_leading_context()
        supervisor = Supervisor(ctx, SourceCache())
        causes = [_KopfCause()]
        held = weakref.ref(causes[0])

        def handler() -> None:
            _CAUSE.set(causes[0])
            supervisor.observe("ADDED", credential())

        contextvars.copy_context().run(handler)
        causes.clear()  # kopf is done with the event
        await asyncio.sleep(0)
        gc.collect()
        assert held() is None
        worker = supervisor.workers["cred-uid"]
        assert worker.task is not None and not worker.task.done()
        await supervisor.stop()

    run(scenario())


def test_looking_at_a_valid_token_does_not_wait_for_the_pass_gate(world):
    # Issue 10, restart at 10,000 credentials: every pass waited for the pass gate (500/s),
    # so a restarted operator took 20 s to look at every Secret and the renewals that fell
    # due meanwhile were up to 20 s late. A pass that calls nothing (token valid, status
    # current) does not count against the gate now; one that calls out still does.
    kube, endpoint, ctx = world
    ctx.pass_gate = PassGate(rate=0.001, burst=1)  # one pass with calls, then none for ages

    async def scenario() -> None:
        first = CredentialWorker(ctx, credential())
        first.task = asyncio.create_task(first.run())
        while first.expires_at is None:
            await asyncio.sleep(0.01)
        first.task.cancel()
        calls = len(kube.calls)
        # The restarted operator's worker: same Secret, status as the first one left it.
        restarted_body = {**credential(), "status": dict(kube.status)}
        restarted = CredentialWorker(ctx, restarted_body)
        restarted.task = asyncio.create_task(restarted.run())
        await asyncio.sleep(0.5)
        assert restarted.expires_at == first.expires_at  # looked at, without the gate
        assert len(kube.calls) == calls and endpoint.requests == 1
        # A refresh request makes the next pass call out: that one waits for the gate.
        restarted.body = credential(**{ANNOTATION_REFRESH_REQUESTED: "2026-11-30T12:00:00Z"})
        restarted.body["status"] = dict(kube.status)
        restarted.wake()
        await asyncio.sleep(0.5)
        assert endpoint.requests == 1 and len(kube.calls) == calls
        restarted.task.cancel()

    run(scenario())


DOCKER_SECRET = {
    "type": "kubernetes.io/dockerconfigjson",
    "dockerConfig": {"registries": ["europe-docker.pkg.dev"]},
}


def test_a_type_change_is_checked_by_a_dry_run_before_the_old_secret_is_deleted(world):
    """A Secret's type cannot change in place, so it is deleted and created again; a
    new type that admission refuses must not cost the Secret holding a valid token."""
    kube, _endpoint, ctx = world
    worker = CredentialWorker(ctx, credential())
    run(worker.reconcile())
    ctx.clock[0] += timedelta(seconds=30)  # past the request floor
    old_token = kube.secrets["c"]["data"]["access_token"]
    changed = credential(generation=2)
    changed["spec"]["secret"] = DOCKER_SECRET
    worker.observe(changed)

    kube.refused_types.add("kubernetes.io/dockerconfigjson")
    kube.calls.clear()
    run(worker.reconcile())
    assert "delete_secret" not in kube.calls
    assert "create_secret (dry run)" in kube.calls
    assert kube.secrets["c"]["data"]["access_token"] == old_token
    assert kube.secrets["c"]["type"] == "Opaque"
    reasons = {c["reason"] for c in kube.status["conditions"]}
    assert "SecretWriteFailed" in reasons

    kube.refused_types.clear()
    kube.calls.clear()
    ctx.clock[0] += timedelta(seconds=30)
    run(worker.reconcile())
    writes = [c for c in kube.calls if c.endswith("_secret") or "dry run" in c]
    assert writes == ["create_secret (dry run)", "delete_secret", "create_secret"]
    assert kube.secrets["c"]["type"] == "kubernetes.io/dockerconfigjson"
    assert ".dockerconfigjson" in kube.secrets["c"]["data"]


def test_a_type_known_only_from_metadata_is_replaced_after_the_api_server_refuses(world):
    kube, _endpoint, ctx = world
    worker = CredentialWorker(ctx, credential())
    run(worker.reconcile())
    ctx.clock[0] += timedelta(seconds=30)  # past the request floor
    # What the metadata-only watch delivers after a restart: no type.
    key = ("ns", "c")
    ctx.managed_secrets[key] = dataclasses.replace(ctx.managed_secrets[key], secret_type=None)
    changed = credential(generation=2)
    changed["spec"]["secret"] = DOCKER_SECRET
    worker.observe(changed)
    kube.calls.clear()
    run(worker.reconcile())
    writes = [c for c in kube.calls if "secret" in c]
    assert writes == [
        "patch_secret",  # 422: the type is immutable
        "read_secret",
        "create_secret (dry run)",
        "delete_secret",
        "create_secret",
    ]
    assert kube.secrets["c"]["type"] == "kubernetes.io/dockerconfigjson"


def _answer_when_told(
    monkeypatch: pytest.MonkeyPatch, endpoint: FakeEndpoint
) -> tuple[threading.Event, threading.Event]:
    """The endpoint sets `asked` when a request reaches it and answers once `answer` is
    set (at most 10 s later)."""
    asked, answer = threading.Event(), threading.Event()

    def slow_endpoint(request: oauth2.TokenRequest, **kwargs: Any) -> oauth2.Token:
        asked.set()
        answer.wait(10)
        return endpoint(request, **kwargs)

    monkeypatch.setattr(oauth2, "fetch_token", slow_endpoint)
    return asked, answer


def _stop_while_a_request_is_in_flight(
    world: Any,
    monkeypatch: pytest.MonkeyPatch,
    *,
    answer_after: float,
    grace: float,
    before_stop: Callable[[Supervisor], Awaitable[None]] | None = None,
) -> float:
    """Start a credential's first token request, stop the supervisor while the endpoint
    has not answered yet (it answers `answer_after` seconds into the stop); the time the
    stop took. `before_stop` runs once the request reached the endpoint."""
    _kube, endpoint, ctx = world
    asked, answer = _answer_when_told(monkeypatch, endpoint)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        supervisor = Supervisor(ctx, SourceCache())
        supervisor.observe("LISTED", credential())
        await loop.run_in_executor(None, asked.wait, 5)
        if before_stop is not None:
            await before_stop(supervisor)
        loop.call_later(answer_after, answer.set)
        began = time.monotonic()
        await supervisor.stop(requests_grace=grace)
        return time.monotonic() - began

    try:
        return run(scenario())
    finally:
        answer.set()


def test_a_clean_stop_writes_the_token_of_a_request_in_flight(world, monkeypatch):
    # Issue 22's rolling update: a token request cancelled at stop threw away the token
    # the endpoint had issued, and the next replica asked again ahead of the window.
    kube, endpoint, _ctx = world
    took = _stop_while_a_request_is_in_flight(world, monkeypatch, answer_after=0.3, grace=5)
    assert endpoint.requests == 1
    assert "create_secret" in kube.calls and kube.calls[-1] == "patch_status"
    assert took < 3  # it waited for the answer and its writes, not for the grace


def test_a_stop_waits_for_a_request_in_flight_no_longer_than_its_grace(world, monkeypatch):
    kube, _endpoint, _ctx = world
    took = _stop_while_a_request_is_in_flight(world, monkeypatch, answer_after=3, grace=0.3)
    assert took < 2
    assert "create_secret" not in kube.calls  # cancelled: nothing written after the stop


def test_a_request_still_queued_at_a_clean_stop_is_never_sent(world, monkeypatch):
    """A shard's hand-back rule at a clean stop too: the stop waits for the request
    already sent (its token is written), and the one queued behind it for the same
    endpoint is never sent. Sent during the grace and cancelled at its end, its token
    would be thrown away, and the next replica would ask again ahead of the window."""
    kube, endpoint, ctx = world
    ctx.limits = RequestLimits(max_per_host=1)
    uids = {"c": "cred-uid", "queued": "queued-uid"}
    kube.credential_metadata = lambda _ns, name: {"uid": uids[name]}  # type: ignore[method-assign]

    async def queue_a_second_request(supervisor: Supervisor) -> None:
        queued = credential()
        queued["metadata"].update(uid="queued-uid", name="queued")
        supervisor.observe("LISTED", queued)
        for _ in range(500):
            if "queued-uid" in ctx.requests_in_flight:
                break
            await asyncio.sleep(0.01)
        assert not ctx.requests_sent["queued-uid"].is_set()  # behind the first

    took = _stop_while_a_request_is_in_flight(
        world, monkeypatch, answer_after=0.3, grace=5, before_stop=queue_a_second_request
    )
    assert endpoint.requests == 1  # the queued one never reached the endpoint
    assert "create_secret" in kube.calls  # the one sent was written
    assert took < 3


def test_a_token_that_expires_during_a_clean_stop_is_still_reported(world, monkeypatch):
    # The stop waits for a renewal in flight; its token expires meanwhile. Ready=True must
    # not outlive it while the stop waits (the expiry timer stayed armed).
    kube, _endpoint, ctx = world
    asked = threading.Event()

    def renewal_hangs(request: oauth2.TokenRequest, **_: Any) -> oauth2.Token:
        asked.set()
        time.sleep(4)  # past the stop's grace: nothing the pass writes decides the test
        raise oauth2.TransientError("timed out", reason="Timeout")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        supervisor = Supervisor(ctx, SourceCache())
        supervisor.observe("LISTED", credential())
        while (kube.status.get("conditions") or [{}])[0].get("reason") != "TokenIssued":
            await asyncio.sleep(0.01)
        worker = next(iter(supervisor.workers.values()))
        monkeypatch.setattr(oauth2, "fetch_token", renewal_hangs)
        ctx.clock[0] = NOW + timedelta(minutes=59, seconds=59)  # type: ignore[attr-defined]
        worker.arm_expiry()  # due in one second of the loop's clock
        refresh = credential(**{ANNOTATION_REFRESH_REQUESTED: "2026-11-30T12:59:59Z"})
        refresh["status"] = dict(kube.status)
        supervisor.observe("MODIFIED", refresh)  # a renewal that serves the token meanwhile
        await loop.run_in_executor(None, asked.wait, 5)
        assert ctx.requests_in_flight

        def token_expires() -> None:
            ctx.clock[0] = NOW + timedelta(hours=1, seconds=1)  # type: ignore[attr-defined]

        loop.call_later(0.5, token_expires)
        await supervisor.stop(requests_grace=2)

    run(scenario())
    ready = kube.status["conditions"][0]
    # TokenExpired from the timer, and from the renewal's own report after it (judged at
    # the time of the report, not at the start of its pass).
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "TokenExpired")
