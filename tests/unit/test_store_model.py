"""A model-based test of the one store of workers (supervisor.Supervisor): random
interleavings of creations, edits, deletions and re-creations of credentials, watch
events delivered late or lost in a gap, re-lists (the watch's mark and sweep, as
watches.py reports it), periodic lists that run while events arrive, and leader changes,
against the invariant: exactly one worker per existing credential UID, none for deleted
ones, once the watch has caught up; and never two workers for one name."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from tokensync.controller import OperatorContext
from tokensync.gates import OperatorConfig
from tokensync.sources import SourceCache
from tokensync.supervisor import Supervisor

NAMES = st.sampled_from(["a", "b", "c"])
SPEC = {
    "tokenURL": "https://idp.example/token",
    "clientID": "app",
    "clientSecretRef": {"name": "client", "key": "client_secret"},
}


@dataclass
class Stored:
    uid: str
    version: int


@dataclass
class PendingList:
    """A periodic list of credential UIDs: begun at `began`, its result taken then."""

    began: int
    uids: set[str]


@dataclass
class Watch:
    """What watches.LabelledWatch does: a connection that delivers events in order (or
    loses those not yet delivered when it breaks), and after a gap a re-list that reports
    DELETED (name only) for what is gone and ADDED/MODIFIED for what changed."""

    connected: bool = True
    caught_up: bool = True  # no gap since the last re-list
    queue: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)  # name -> version last reported


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.leading = True
        self.ctx = OperatorContext(
            config=OperatorConfig(),
            kube=None,  # type: ignore[arg-type]
            kube_executor=None,  # type: ignore[arg-type]
            sources=lambda _ns: lambda _kind, _name: None,
            post_event=lambda *_: None,
            sources_synced=asyncio.Event().wait,  # workers idle: only the store is tested
            is_leading=lambda: self.leading,
        )
        self.supervisor = Supervisor(self.ctx, SourceCache(), serving=lambda: self.leading)
        self.cluster: dict[str, Stored] = {}
        self.uids = itertools.count()
        self.versions = itertools.count(1)
        self.watch = Watch()
        self.lists: list[PendingList] = []

    def teardown(self) -> None:
        self._on_loop(self.supervisor.stop())
        self.loop.close()

    def _on_loop(self, coro: Any) -> Any:
        async def step() -> Any:
            result = await coro
            await asyncio.sleep(0)  # let cancelled workers end
            return result

        return self.loop.run_until_complete(step())

    def _apply(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return self._on_loop(call())

    @staticmethod
    def _body(name: str, stored: Stored) -> dict[str, Any]:
        metadata = {
            "namespace": "ns",
            "name": name,
            "uid": stored.uid,
            "generation": 1,
            "resourceVersion": str(stored.version),
        }
        return {"metadata": metadata, "spec": SPEC, "status": {}}

    def _emit(self, event_type: str, name: str, stored: Stored) -> None:
        if self.watch.connected:
            self.watch.queue.append((event_type, self._body(name, stored)))

    # --- the cluster ------------------------------------------------------------------

    @rule(name=NAMES)
    def create(self, name: str) -> None:
        if name in self.cluster:
            return
        stored = Stored(f"uid-{next(self.uids)}", next(self.versions))
        self.cluster[name] = stored
        self._emit("ADDED", name, stored)

    @rule(name=NAMES)
    def edit(self, name: str) -> None:
        if name in self.cluster:
            self.cluster[name].version = next(self.versions)
            self._emit("MODIFIED", name, self.cluster[name])

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        if name in self.cluster:
            stored = self.cluster.pop(name)
            self._emit("DELETED", name, stored)

    # --- the watch ----------------------------------------------------------------------

    @precondition(lambda self: self.watch.queue)
    @rule()
    def deliver(self) -> None:
        event_type, body = self.watch.queue.pop(0)
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.watch.known.pop(name, None)
        else:
            self.watch.known[name] = int(body["metadata"]["resourceVersion"])
        self._apply(self.supervisor.observe, event_type, body)

    @precondition(lambda self: self.watch.connected)
    @rule()
    def connection_breaks(self) -> None:
        self.watch.connected = False
        self.watch.caught_up = False
        self.watch.queue.clear()  # undelivered events are lost with the connection

    @precondition(lambda self: not self.watch.connected)
    @rule()
    def relist(self) -> None:
        """The watch lists again: only changes are reported, deletions by name only."""
        events: list[tuple[str, dict[str, Any]]] = []
        for name in [n for n in self.watch.known if n not in self.cluster]:
            del self.watch.known[name]
            events.append(("DELETED", {"metadata": {"namespace": "ns", "name": name}}))
        for name, stored in self.cluster.items():
            before = self.watch.known.get(name)
            if before != stored.version:
                kind = "ADDED" if before is None else "MODIFIED"
                events.append((kind, self._body(name, stored)))
                self.watch.known[name] = stored.version
        for event_type, body in events:
            self._apply(self.supervisor.observe, event_type, body)
        self.watch.connected = True
        self.watch.caught_up = True
        # on_relisted: a periodic-style list is started too
        self.begin_list()

    # --- the periodic list (the sweep) ---------------------------------------------------

    @rule()
    def begin_list(self) -> None:
        """The list begins (in a thread) and sees the cluster as it is now."""
        began = self._apply(self.supervisor.list_began)
        self.lists.append(PendingList(began, {s.uid for s in self.cluster.values()}))

    @precondition(lambda self: self.lists)
    @rule(data=st.data())
    def finish_list(self, data: st.DataObject) -> None:
        """Any list in flight may finish now, while events went on meanwhile."""
        index = data.draw(st.integers(0, len(self.lists) - 1))
        pending = self.lists.pop(index)
        self._apply(self.supervisor.sweep, pending.uids, pending.began)

    # --- leadership ------------------------------------------------------------------------

    @rule()
    def leadership_changes(self) -> None:
        self.leading = not self.leading

    # --- the invariants ----------------------------------------------------------------------

    @invariant()
    def one_worker_per_name(self) -> None:
        names = [
            (w.owner.namespace, w.owner.name)
            for w in self.supervisor.workers.values()
            if w.task is not None and not w.task.done()
        ]
        assert len(names) == len(set(names)), names
        assert len(names) == len(self.supervisor.workers)

    @invariant()
    def exactly_the_existing_credentials_once_caught_up(self) -> None:
        if self.watch.queue or not self.watch.caught_up:
            return  # events still to come: the store may lag, never err after
        existing = {s.uid for s in self.cluster.values()}
        assert set(self.supervisor.workers) == existing


StoreModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, derandomize=True
)
test_the_store_keeps_exactly_one_worker_per_existing_credential = StoreModel.TestCase
