"""A pause of the machine or its VM (suspend, snapshot, live migration) stops the
monotonic clock every timer runs on, while tokens keep expiring on the wall clock, which
the host or NTP sets right after. In CI at bd51276 a VM fork ("crng reseeded due to
virtual machine fork" in the kernel log, at the very second the check ran) left a
30 s token expired and unrenewed in test_hostile_tenant: its worker was still sleeping
out the rest of its delay. The operator now notices the wall clock moving ahead and has
every worker look again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from test_worker import NOW, credential, run, world  # noqa: F401 - the fixture

from tokensync import readiness
from tokensync.controller import CredentialWorker
from tokensync.runtime import CLOCK_JUMP_SECONDS, watch_the_wall_clock
from tokensync.sources import SourceCache
from tokensync.supervisor import Supervisor


def _jumps(readings: list[tuple[float, float]]) -> list[float]:
    """What watch_the_wall_clock reports for these (wall, monotonic) readings."""
    walls, monotonics = iter([w for w, _ in readings]), iter([m for _, m in readings])
    jumps: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(
            watch_the_wall_clock(
                jumps.append,
                wall=lambda: next(walls),
                monotonic=lambda: next(monotonics),
                interval=0,
            )
        )
        for _ in range(len(readings) * 2):
            await asyncio.sleep(0)
        task.cancel()

    with contextlib.suppress(StopIteration):  # the readings ran out: it asked for more
        run(scenario())
    return jumps


def test_a_pause_is_told_apart_from_a_busy_loop_and_a_step_back():
    readings = [
        (1000.0, 50.0),
        (1001.0, 51.0),  # one ordinary second
        (1031.0, 52.0),  # paused for 29 s: the wall clock moved on, the monotonic did not
        (1061.0, 82.0),  # a loop stalled for 30 s: both moved alike
        (1001.0, 83.0),  # the wall clock stepped back an hour-ish: nothing to wake
        (1002.0 + CLOCK_JUMP_SECONDS + 0.5, 84.0),  # just over the threshold
        (1003.0 + 2 * CLOCK_JUMP_SECONDS, 85.0),  # just under it
    ]
    jumps = _jumps(readings)
    assert [round(j, 1) for j in jumps] == [29.0, CLOCK_JUMP_SECONDS + 0.5]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)


async def _issued_and_sleeping(supervisor: Supervisor) -> CredentialWorker:
    """The worker of a new credential, once its first token is written and it sleeps."""
    supervisor.observe("LISTED", credential())
    worker = supervisor.workers["cred-uid"]
    await _until(lambda: bool(worker.status.get("expiresAt")) and worker.waiter is not None)
    return worker


def _ready(worker: CredentialWorker) -> dict[str, Any]:
    return dict(readiness.condition_of(worker.status, readiness.READY) or {})


def test_after_a_pause_a_worker_renews_and_reports_at_once(world):  # noqa: F811
    """The token is issued for an hour; the machine pauses for two (the fake wall clock
    jumps, the loop's monotonic timers do not move). Told of the jump, the supervisor has
    the worker look again: it requests a new token at once instead of sleeping out the
    40 minutes left of its delay."""
    kube, endpoint, ctx = world
    clock: list[Any] = ctx.clock  # type: ignore[attr-defined]

    async def scenario() -> None:
        supervisor = Supervisor(ctx, SourceCache())
        worker = await _issued_and_sleeping(supervisor)
        assert endpoint.requests == 1
        assert readiness.ready_until(worker.status) == NOW + timedelta(hours=1)

        clock[0] = NOW + timedelta(hours=2)  # after the pause
        supervisor.clock_jumped()
        await _until(lambda: endpoint.requests == 2 and worker.waiter is not None)
        assert endpoint.requests == 2, "the worker slept on after the pause"
        assert readiness.ready_until(worker.status) == NOW + timedelta(hours=3)
        await supervisor.stop()

    run(scenario())
    assert kube.calls.count("patch_status") >= 2


class _Closed:
    """A pass gate that admits nobody: the worker's passes look but never call out."""

    async def acquire(self) -> None:
        await asyncio.Event().wait()


def test_after_a_pause_a_stuck_worker_s_ready_is_taken_away_at_once(world):  # noqa: F811
    """Its passes wait at the pass gate after the pause (as in a mass wake-up): the
    expiry timer, set again from the wall clock, reports TokenExpired at once instead of
    an hour later. It also used to wait: a pass held the status lock while it waited at
    the gate to write Refreshing, and the expiry report needs that lock."""
    _kube, _endpoint, ctx = world
    clock: list[Any] = ctx.clock  # type: ignore[attr-defined]

    async def scenario() -> None:
        supervisor = Supervisor(ctx, SourceCache())
        worker = await _issued_and_sleeping(supervisor)
        ctx.pass_gate = _Closed()  # type: ignore[assignment]  # no pass calls out now
        clock[0] = NOW + timedelta(hours=1, minutes=5)
        supervisor.clock_jumped()
        await _until(lambda: _ready(worker).get("reason") == "TokenExpired")
        ready = _ready(worker)
        assert ready.get("status") == "False" and ready.get("reason") == "TokenExpired"
        await supervisor.stop()

    run(scenario())
