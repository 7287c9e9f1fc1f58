"""When to fetch a token: refresh points, retry backoff, and "why fetch now?" (pure).

Nothing here reads a clock or a random source: callers pass `now` and a jitter fraction,
so every decision is reproducible in a unit test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tokensync.spec import FIXED_SECRET_KEYS, RefreshSpec

# Kubelet sync period plus its Secret cache TTL: a refreshed token needs about this long
# to reach a mounted volume, so the default refresh point leaves at least this much.
KUBELET_PROPAGATION_SECONDS = 120.0
JITTER_SHARE = 0.05  # refresh points move earlier by up to 5% of the lifetime
MIN_AGE_SHARE = 0.10  # ...but never sooner than 10% of the lifetime after issue
MIN_REQUEST_INTERVAL = timedelta(seconds=10)  # at most one request per credential per 10 s


@dataclass(frozen=True)
class RefreshPoint:
    at: datetime
    clamped: bool  # moved later to 10% of the lifetime; status warns about it


def renew_window_seconds(lifetime: float, refresh: RefreshSpec) -> float:
    """How long before expiry a token is refreshed, before jitter."""
    if refresh.renew_before_seconds is not None:
        return refresh.renew_before_seconds
    if refresh.renew_before_percentage is not None:
        return lifetime * refresh.renew_before_percentage / 100
    return max(lifetime / 3, min(KUBELET_PROPAGATION_SECONDS, lifetime / 2))


def refresh_point(
    issued_at: datetime, expires_at: datetime, refresh: RefreshSpec, jitter: float
) -> RefreshPoint:
    """The moment to refresh a token; `jitter` is a fraction in [0, 1)."""
    lifetime = max((expires_at - issued_at).total_seconds(), 0.0)
    window = renew_window_seconds(lifetime, refresh) + jitter * JITTER_SHARE * lifetime
    earliest = issued_at + timedelta(seconds=MIN_AGE_SHARE * lifetime)
    point = expires_at - timedelta(seconds=window)
    if point < earliest:
        return RefreshPoint(at=earliest, clamped=True)
    return RefreshPoint(at=point, clamped=False)


def stable_jitter(*parts: str) -> float:
    """A jitter fraction in [0, 1) derived from the token's identity (credential UID and
    issue time), so a restarted operator computes the same refresh point."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# Retry policy per error class of oauth2.TokenError.kind: (first delay, cap), in seconds.
BACKOFF = {
    "transient": (1.0, 300.0),
    "configuration": (60.0, 1800.0),
    "protocol": (60.0, 1800.0),
}


def backoff_seconds(
    kind: str, consecutive_failures: int, jitter: float, retry_after: float | None = None
) -> float:
    """Delay before the next attempt after `consecutive_failures` (>= 1) failures in a row.

    Doubling from the class's first delay to its cap; jitter spreads retries over
    [75%, 100%] of that delay so many credentials failing together don't retry together.
    A server's Retry-After is a floor.
    """
    first, cap = BACKOFF[kind]
    exponent = min(max(consecutive_failures, 1) - 1, 32)
    delay = min(first * 2**exponent, cap) * (1 - 0.25 * jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def next_attempt_at(
    now: datetime, delay_seconds: float, token_expires_at: datetime | None
) -> datetime:
    """A backoff never sleeps past the held token's expiry: wake then to report it."""
    at = now + timedelta(seconds=delay_seconds)
    if token_expires_at is not None and now < token_expires_at < at:
        return token_expires_at
    return at


def floor_wait_seconds(last_request: float | None, now: float, exempt: bool = False) -> float:
    """Rate limit: at most one token request per credential per 10 s, whatever the
    trigger or the token's lifetime; seconds to wait (0: now), on a monotonic clock (an
    NTP step must not defer a request). Exempt: the first request, backoff retries (they
    have their own schedule) and the first request after a spec or data change that
    follows a failure (a fix is served at once)."""
    if last_request is None or exempt:
        return 0.0
    return max(last_request + MIN_REQUEST_INTERVAL.total_seconds() - now, 0.0)


# Kubernetes API errors (unreachable, 5xx, a write that keeps being refused): per-worker
# backoff with jitter, so thousands of workers don't retry in step when the API returns.
KUBE_BACKOFF = (1.0, 60.0)


def kube_backoff_seconds(consecutive_failures: int, jitter: float) -> float:
    first, cap = KUBE_BACKOFF
    exponent = min(max(consecutive_failures, 1) - 1, 32)
    return min(first * 2**exponent, cap) * (0.5 + 0.5 * jitter)


# The annotation is a user's opaque "refresh now" value (kubectl annotate ... =$(date));
# longer values are ignored rather than echoed into status, whose schema bounds them.
MAX_REFRESH_REQUEST_LENGTH = 64


def valid_refresh_request(value: str | None) -> str | None:
    if value and len(value) <= MAX_REFRESH_REQUEST_LENGTH:
        return value
    return None


SHORT_LIFETIME_SECONDS = 30.0
MAX_LIFETIME_SECONDS = 365 * 24 * 3600.0  # = oauth2.MAX_LIFETIME_SECONDS (the cap)


def lifetime_warnings(held: HeldToken | None) -> list[str]:
    """Status warnings about the held token's lifetime itself."""
    if held is None or held.issued_at is None or held.expires_at is None:
        return []
    lifetime = (held.expires_at - held.issued_at).total_seconds()
    if lifetime >= MAX_LIFETIME_SECONDS:
        return ["the endpoint's expires_in was capped at one year"]
    if lifetime < SHORT_LIFETIME_SECONDS:
        return [
            f"the token lives {lifetime:.0f}s: requests are at most one per 10 s and a "
            "mounted Secret cannot keep a token living under 30 s fresh"
        ]
    return []


# --- "why fetch now?" ---------------------------------------------------------------


@dataclass(frozen=True)
class HeldToken:
    """What the managed Secret says about the token it holds."""

    keys: frozenset[str]
    issued_at: datetime | None
    expires_at: datetime | None
    config_hash: str | None


@dataclass(frozen=True)
class TriggerInput:
    now: datetime
    held: HeldToken | None  # None: the managed Secret does not exist
    generation: int
    served_generation: int | None  # status.observedGeneration: the generation the Secret serves
    config_hash: str  # of the current spec and referenced data
    refresh_requested: str | None  # the credential's refresh-requested-at annotation
    last_handled_refresh_request: str | None
    refresh: RefreshSpec
    jitter: float


@dataclass(frozen=True)
class Trigger:
    reason: str  # CamelCase; becomes the Refreshing condition's reason
    message: str


Policy = Callable[[TriggerInput], Trigger | None]


def secret_missing(i: TriggerInput) -> Trigger | None:
    if i.held is None:
        return Trigger("SecretMissing", "the managed Secret does not exist")
    return None


def secret_keys_missing(i: TriggerInput) -> Trigger | None:
    assert i.held is not None
    missing = sorted(set(FIXED_SECRET_KEYS) - i.held.keys)
    if missing:
        return Trigger("SecretKeysMissing", "the managed Secret lacks " + ", ".join(missing))
    if i.held.issued_at is None or i.held.expires_at is None:
        return Trigger("SecretKeysMissing", "the managed Secret lacks its issue or expiry time")
    return None


def generation_changed(i: TriggerInput) -> Trigger | None:
    if i.served_generation != i.generation:
        return Trigger(
            "GenerationChanged",
            f"spec generation {i.generation} is not yet served "
            f"(the Secret serves {i.served_generation or 'none'})",
        )
    return None


def config_changed(i: TriggerInput) -> Trigger | None:
    assert i.held is not None
    if i.held.config_hash != i.config_hash:
        return Trigger(
            "ConfigChanged", "the token request or the referenced data changed since issue"
        )
    return None


def refresh_requested(i: TriggerInput) -> Trigger | None:
    if i.refresh_requested and i.refresh_requested != i.last_handled_refresh_request:
        return Trigger("RefreshRequested", f"refresh requested at {i.refresh_requested}")
    return None


def renew_window_reached(i: TriggerInput) -> Trigger | None:
    assert i.held is not None and i.held.issued_at and i.held.expires_at
    point = refresh_point(i.held.issued_at, i.held.expires_at, i.refresh, i.jitter)
    if i.now >= point.at:
        if i.now >= i.held.expires_at:
            return Trigger("TokenExpired", "the token expired")
        return Trigger("RenewWindow", "the token is inside its renew window")
    return None


# The order matters: the first that fires names the reason users see.
POLICIES: tuple[Policy, ...] = (
    secret_missing,
    secret_keys_missing,
    generation_changed,
    config_changed,
    refresh_requested,
    renew_window_reached,
)


def why_fetch_now(i: TriggerInput, policies: tuple[Policy, ...] = POLICIES) -> Trigger | None:
    """The reason to request a token now, or None when the held token is good."""
    for policy in policies:
        trigger = policy(i)
        if trigger is not None:
            return trigger
    return None


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 UTC (`2026-01-02T03:04:05Z`) -> aware datetime; None if absent or bad."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
