"""Which replica serves which credentials, with `tokensync run --peering NAME --shards N`:
the pure decisions. The loop that reads and writes the Leases is `shardkeeper.py`.

Credentials fall into N shards by a stable hash of their UID. Each shard is a
coordination.k8s.io/v1 Lease `NAME-shard-<n>`; a replica serves the credentials of the
shards whose Lease it holds. Each replica also holds a membership Lease
`NAME-member-<hash of its identity>`, so that replicas can count each other and each one
knows its share.

Why the UID and not the namespace: UIDs are random, so N shards get nearly equal numbers
of credentials whatever the tenants do; namespaces are lumpy (one namespace with 2,000
credentials would be one shard, served by one replica, and the other replicas would idle).
Every replica watches all namespaces anyway, so keeping a namespace on one replica would
save no watch.

The share: with L live replicas, the fair share is floor(N / L). A replica takes free or
expired shards up to its fair share, one more (ceil(N / L), at most its fair share plus
one) when no other replica is short, and gives back the shards beyond that, so a replica
that starts gets shards from the others at once; L replicas at ceil(N / L) hold at least
N shards between them, so no shard is left unserved once they settle, and no two
replicas differ by more than one. Which shards a replica takes first (and gives back last)
is its rendezvous-hash order, different for each replica, so that replicas looking at the
same free shards at the same time mostly pick different ones (a tie is settled by the
API server: the second write gets 409).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

DEFAULT_SHARDS = 32
MAX_SHARDS = 1024  # a Lease each: more would be API load without benefit
MAX_PREFIX = 63  # the prefix is also a label value (LABEL_SET)
LABEL_SET = "tokensync.dev/lease-set"  # the --peering NAME: every Lease of one deployment
LABEL_ROLE = "tokensync.dev/lease-role"  # "shard" or "member"
# The number of shards the writer hashes with: replicas that differ (a rolling update
# that changes --shards) would map one credential to different shards, so a replica
# takes no shard while a live replica counts differently.
LABEL_SHARDS = "tokensync.dev/shards"
ROLE_SHARD, ROLE_MEMBER = "shard", "member"


class NotHolding(Exception):
    """This replica does not hold (or no longer holds) the credential's shard: write
    nothing for it."""


def _digest(text: str) -> int:
    # sha256, not hash(): the same on every replica and every Python process.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def shard_of(uid: str, shards: int) -> int:
    """The shard of the credential with this UID, in 0..shards-1; never changes for a
    credential (the UID is immutable)."""
    return _digest(uid) % shards


def fair_share(shards: int, live: int) -> int:
    """floor(shards / live): what each replica would hold with a perfect split."""
    return shards // max(live, 1)


def target(shards: int, live: int) -> int:
    """How many shards a replica takes, and keeps: ceil(shards / live), at most its fair
    share plus one."""
    return math.ceil(shards / max(live, 1))


def preference(identity: str, shard: int) -> int:
    """Rendezvous weight: a replica takes its highest-weighted free shards first and gives
    back its lowest-weighted ones first."""
    return _digest(f"{identity}/{shard}")


def valid_prefix(prefix: str, shards: int) -> bool:
    """The --peering NAME is the Leases' prefix and a label value; names stay short."""
    return 1 <= shards <= MAX_SHARDS and len(prefix) <= MAX_PREFIX and prefix[-1].isalnum()


def shard_lease_name(prefix: str, shard: int) -> str:
    return f"{prefix}-shard-{shard}"


def shard_of_lease(prefix: str, name: str) -> int | None:
    """The shard whose Lease `name` is (shard_lease_name's inverse), or None."""
    head, _, number = name.rpartition("-shard-")
    if head != prefix or not number.isdigit() or shard_lease_name(prefix, int(number)) != name:
        return None
    return int(number)


def member_lease_name(prefix: str, identity: str) -> str:
    """The identity may not be a valid object name (the default has an underscore): a
    hash of it, long enough that two replicas never collide."""
    return f"{prefix}-member-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class ShardState:
    """A shard's Lease as this replica judges it."""

    holder: str  # "" when free (released, or never created)
    expired: bool  # someone else's, not renewed for its duration (as measured here)


@dataclass(frozen=True)
class Plan:
    take: tuple[int, ...]  # free or expired shards to acquire, best first
    release: tuple[int, ...]  # held shards to give back


def takeable(state: ShardState | None, identity: str, held: Collection[int], shard: int) -> bool:
    """Free, expired, or still naming us although we no longer count it as held (after
    a pause longer than the renew deadline: its workers were stopped; the PUT carrying
    the resourceVersion read fails if anyone took it meanwhile)."""
    if state is None or not state.holder or state.expired:
        return True
    return state.holder == identity and shard not in held


def plan(
    identity: str,
    shards: int,
    states: Mapping[int, ShardState],
    live: Collection[str],
    held: Collection[int],
) -> Plan:
    """What to take and what to give back, given every shard's Lease state (a missing
    entry: no Lease yet), the live replicas (by identity; this one is counted anyway) and
    the shards this replica holds now.

    Up to floor(N / L) a replica takes whatever is free; the last shard (up to
    ceil(N / L)) only when no other live replica is short of floor(N / L); and a replica
    above floor(N / L) gives shards back when another one is short and nothing is free.
    Without the middle rule the first replicas to look would each take ceil(N / L) and
    leave the last one short (4 shards, 3 replicas: 2, 2, 0)."""
    replicas = set(live) | {identity}
    floor, ceil = fair_share(shards, len(replicas)), target(shards, len(replicas))
    counts = dict.fromkeys(replicas, 0)
    for state in states.values():
        if state.holder in counts and not state.expired and state.holder != identity:
            counts[state.holder] += 1
    short = any(n < floor for replica, n in counts.items() if replica != identity)
    free = [s for s in range(shards) if takeable(states.get(s), identity, held, s)]
    worst_first = sorted(held, key=lambda s: preference(identity, s))
    if len(held) > ceil:
        return Plan(take=(), release=tuple(worst_first[: len(held) - ceil]))
    if short and len(held) > floor and not free:
        return Plan(take=(), release=tuple(worst_first[: len(held) - floor]))
    limit = floor if short else ceil
    best_first = sorted(free, key=lambda s: preference(identity, s), reverse=True)
    return Plan(take=tuple(best_first[: max(limit - len(held), 0)]), release=())


def live_members(members: Mapping[str, bool], identity: str) -> set[str]:
    """Replicas whose membership Lease is current (holder -> expired?), this one always
    included (its own Lease may not be written yet)."""
    return {holder for holder, expired in members.items() if not expired} | {identity}
