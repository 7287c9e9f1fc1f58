"""The pure decisions of sharding (tokensync.shards): the hash, the share, and what a
replica takes and gives back. Replicas are simulated against one table of Leases, with
compare-and-swap writes as the API server does them, in orders Hypothesis chooses."""

from __future__ import annotations

import math
import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tokensync.shards import (
    ShardState,
    fair_share,
    live_members,
    member_lease_name,
    plan,
    shard_lease_name,
    shard_of,
    shard_of_lease,
    takeable,
    target,
)


def test_shard_of_is_stable_and_in_range():
    uid = "5f0c6e0e-8a8b-4c1e-9a53-0d6b5d0b8f21"
    assert shard_of(uid, 32) == shard_of(uid, 32)
    # Pinned: a change of the hash would move every credential at an upgrade.
    assert shard_of(uid, 32) == 7
    assert all(0 <= shard_of(str(uuid.uuid4()), 7) < 7 for _ in range(200))


def test_random_uids_spread_evenly_over_shards():
    counts = Counter(shard_of(str(uuid.uuid4()), 32) for _ in range(32_000))
    assert len(counts) == 32
    # 1,000 expected per shard; a binomial standard deviation is about 31.
    assert max(counts.values()) < 1_150 and min(counts.values()) > 850


def test_share_is_the_fair_share_plus_at_most_one():
    assert (fair_share(32, 3), target(32, 3)) == (10, 11)
    assert (fair_share(32, 2), target(32, 2)) == (16, 16)
    assert target(32, 1) == 32 and target(32, 0) == 32  # never divide by zero
    assert target(3, 5) == 1


def test_names_are_valid_and_members_never_collide():
    assert shard_lease_name("tokensync", 7) == "tokensync-shard-7"
    name = member_lease_name("tokensync", "host_0a1b2c3d")  # the default identity has a _
    assert name.startswith("tokensync-member-") and "_" not in name
    assert member_lease_name("tokensync", "a") != member_lease_name("tokensync", "b")


def test_live_members_count_this_replica_and_skip_expired_ones():
    assert live_members({}, "me") == {"me"}
    assert live_members({"me": False, "b": False, "c": True}, "me") == {"me", "b"}
    assert live_members({"b": False}, "me") == {"me", "b"}


def test_takeable_shards():
    assert takeable(None, "me", set(), 0)  # no Lease yet
    assert takeable(ShardState("", False), "me", set(), 0)  # released
    assert takeable(ShardState("b", True), "me", set(), 0)  # expired
    assert not takeable(ShardState("b", False), "me", set(), 0)  # live elsewhere
    assert not takeable(ShardState("me", False), "me", {0}, 0)  # ours: renew, not take
    # Still naming us but no longer counted as held (we paused past the deadline).
    assert takeable(ShardState("me", False), "me", set(), 0)


def test_a_new_replica_makes_the_others_give_back():
    states = {s: ShardState("a", False) for s in range(32)}
    decided = plan("a", 32, states, live={"a", "b"}, held=set(range(32)))
    assert len(decided.release) == 16 and not decided.take
    # And the newcomer takes free ones only, not a live replica's.
    assert plan("b", 32, states, live={"a", "b"}, held=set()).take == ()


def test_a_replica_at_the_fair_share_plus_one_gives_back_when_another_is_short():
    # 4 shards, 3 replicas: 2, 2, 0 must not stay so.
    states = {0: ShardState("a", False), 1: ShardState("a", False)}
    states |= {2: ShardState("b", False), 3: ShardState("b", False)}
    decided = plan("a", 4, states, live={"a", "b", "c"}, held={0, 1})
    assert len(decided.release) == 1
    # While someone is short, the others take no more than the fair share.
    states = {0: ShardState("a", False), 2: ShardState("b", False)}
    assert plan("a", 4, states, live={"a", "b", "c"}, held={0}).take == ()
    assert len(plan("c", 4, states, live={"a", "b", "c"}, held=set()).take) == 2


# --- simulation -----------------------------------------------------------------------


def settle(
    table: dict[int, str],
    replicas: list[str],
    dead: set[str],
    shards: int,
    order: list[int],
    rounds: int = 12,
) -> int:
    """Each round every live replica (in `order`'s rotation) reads the table, plans and
    writes; a take is a compare-and-swap against what it read. Returns the rounds it
    took until nobody changed anything."""
    live = [r for r in replicas if r not in dead]
    for round_ in range(rounds):
        changed = False
        turn = [live[(i + order[round_ % len(order)]) % len(live)] for i in range(len(live))]
        for replica in turn:
            read = dict(table)
            states = {s: ShardState(h, h in dead) for s, h in read.items()}
            held = {s for s, h in read.items() if h == replica}
            decided = plan(replica, shards, states, live, held)
            for s in decided.release:
                table[s] = ""
                changed = True
            for s in decided.take:
                if table.get(s) == read.get(s):  # nobody wrote since our read
                    table[s] = replica
                    changed = True
        if not changed:
            return round_
    raise AssertionError(f"no settling after {rounds} rounds: {Counter(table.values())}")


def check_balanced(table: dict[int, str], live: list[str], shards: int) -> None:
    held = Counter(table.get(s, "") for s in range(shards))
    assert held[""] == 0, "a shard is served by nobody"
    assert set(held) <= set(live), "a shard is held by a replica that is not live"
    counts = [held[r] for r in live]
    assert max(counts) <= fair_share(shards, len(live)) + 1
    assert max(counts) - min(counts) <= 1 or shards < len(live)


@settings(max_examples=200, deadline=None)
@given(
    shards=st.integers(1, 64),
    replicas=st.integers(1, 6),
    order=st.lists(st.integers(0, 5), min_size=1, max_size=6),
)
def test_replicas_starting_together_split_every_shard_fairly(shards, replicas, order):
    names = [f"replica-{i}" for i in range(replicas)]
    table: dict[int, str] = {}
    settle(table, names, set(), shards, order)
    # One holder per shard by construction (a table), so: each shard held, fairly.
    check_balanced(table, names, shards)


@settings(max_examples=200, deadline=None)
@given(
    shards=st.integers(1, 64),
    steps=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    order=st.lists(st.integers(0, 5), min_size=1, max_size=6),
)
def test_replicas_coming_and_going_keep_every_shard_served_fairly(shards, steps, order):
    """1 -> 3 -> 2 and any other sequence: replicas join (named anew, as pods are) or
    die (their Leases expire); after each change the survivors settle again."""
    table: dict[int, str] = {}
    live: list[str] = []
    dead: set[str] = set()
    born = 0
    for count in steps:
        while len(live) < count:
            live.append(f"replica-{born}")
            born += 1
        while len(live) > count:
            dead.add(live.pop(0))
        settle(table, live + sorted(dead), dead, shards, order)
        check_balanced(table, live, shards)


@given(shards=st.integers(1, 64), live=st.integers(1, 8))
def test_the_target_is_at_most_the_fair_share_plus_one_and_covers_all(shards, live):
    assert target(shards, live) <= fair_share(shards, live) + 1
    assert target(shards, live) * live >= shards
    assert math.ceil(shards / live) == target(shards, live)


def test_a_shard_lease_name_is_read_back_only_for_its_own_prefix():
    for shard in (0, 7, 31):
        assert shard_of_lease("tokensync", shard_lease_name("tokensync", shard)) == shard
    for name in (
        "tokensync-member-ab12",
        "other-shard-3",
        "tokensync-shard-",
        "tokensync-shard-03",  # not a name the operator writes
        "tokensync-shard-x",
        "team-tokensync-shard-3",
    ):
        assert shard_of_lease("tokensync", name) is None
    assert shard_of_lease("a-shard-b", "a-shard-b-shard-2") == 2
