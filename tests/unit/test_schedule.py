"""Unit tests for tokensync.schedule: refresh points, backoff, rate limit, "why fetch now?".

No clock is read and nothing sleeps: every moment is a datetime passed in.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tokensync.schedule import (
    POLICIES,
    HeldToken,
    RefreshPoint,
    Trigger,
    TriggerInput,
    backoff_seconds,
    config_changed,
    floor_wait_seconds,
    generation_changed,
    next_attempt_at,
    parse_time,
    refresh_point,
    refresh_requested,
    renew_window_reached,
    renew_window_seconds,
    secret_keys_missing,
    secret_missing,
    stable_jitter,
    why_fetch_now,
)
from tokensync.spec import FIXED_SECRET_KEYS, RefreshSpec

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ALMOST_ONE = 1 - 1e-12  # jitter is a fraction in [0, 1)
DEFAULT = RefreshSpec()


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def point(lifetime: float, refresh: RefreshSpec = DEFAULT, jitter: float = 0.0) -> RefreshPoint:
    return refresh_point(T0, T0 + s(lifetime), refresh, jitter)


def seconds_after_issue(p: RefreshPoint) -> float:
    return (p.at - T0).total_seconds()


# --- default refresh point ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "window"),
    [
        (60, 30),  # max(20, min(120, 30)): half-life
        (120, 60),  # half-life
        (240, 120),  # max(80, min(120, 120))
        (300, 120),  # max(100, min(120, 150)): the kubelet's 120 s
        (360, 120),  # max(120, 120)
        (600, 200),  # a third
        (3600, 1200),  # a third
        (86400, 28800),
    ],
)
def test_default_renew_window(lifetime, window):
    assert renew_window_seconds(lifetime, DEFAULT) == pytest.approx(window)
    expected = max(lifetime / 3, min(120, lifetime / 2))
    assert renew_window_seconds(lifetime, DEFAULT) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [(60, 30), (300, 180), (3600, 2400)],
)
def test_default_refresh_point_without_jitter(lifetime, refresh_after):
    p = point(lifetime)
    assert seconds_after_issue(p) == pytest.approx(refresh_after)
    assert p.clamped is False


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [(60, 30 - 3), (300, 180 - 15), (3600, 2400 - 180)],
)
def test_default_refresh_point_with_maximal_jitter(lifetime, refresh_after):
    p = point(lifetime, jitter=ALMOST_ONE)
    assert seconds_after_issue(p) == pytest.approx(refresh_after)
    assert p.clamped is False


@pytest.mark.parametrize("lifetime", [60, 300, 3600, 86400])
@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 0.9, ALMOST_ONE])
def test_jitter_only_moves_earlier_by_at_most_five_percent(lifetime, jitter):
    base = point(lifetime).at
    jittered = point(lifetime, jitter=jitter).at
    assert base - s(0.05 * lifetime) - s(1e-6) <= jittered <= base
    assert (base - jittered).total_seconds() == pytest.approx(jitter * 0.05 * lifetime)


def test_renew_before_replaces_the_default():
    refresh = RefreshSpec(renew_before_seconds=300)
    assert renew_window_seconds(3600, refresh) == 300
    p = point(3600, refresh)
    assert seconds_after_issue(p) == pytest.approx(3300)
    assert p.clamped is False
    # jitter still applies: up to 5% of the lifetime earlier
    assert seconds_after_issue(point(3600, refresh, ALMOST_ONE)) == pytest.approx(3300 - 180)


@pytest.mark.parametrize(("percentage", "refresh_after"), [(1, 3564), (20, 2880), (50, 1800)])
def test_renew_before_percentage_replaces_the_default(percentage, refresh_after):
    refresh = RefreshSpec(renew_before_percentage=percentage)
    assert renew_window_seconds(3600, refresh) == pytest.approx(3600 * percentage / 100)
    p = point(3600, refresh)
    assert seconds_after_issue(p) == pytest.approx(refresh_after)
    assert p.clamped is False


def test_renew_before_longer_than_the_lifetime_is_clamped_to_ten_percent():
    refresh = RefreshSpec(renew_before_seconds=7200)
    p = point(3600, refresh)
    assert p == RefreshPoint(at=T0 + s(360), clamped=True)


def test_percentage_99_is_clamped_to_ten_percent():
    p = point(3600, RefreshSpec(renew_before_percentage=99))
    assert p == RefreshPoint(at=T0 + s(360), clamped=True)


def test_clamp_applies_after_jitter():
    refresh = RefreshSpec(renew_before_percentage=90)
    # Without jitter the point is exactly 10% after issue: not clamped.
    exact = point(3600, refresh)
    assert seconds_after_issue(exact) == pytest.approx(360)
    assert exact.clamped is False
    # Jitter would move it before 10%: clamped back to 10%.
    jittered = point(3600, refresh, jitter=0.5)
    assert jittered == RefreshPoint(at=T0 + s(360), clamped=True)


def test_refresh_point_is_never_before_ten_percent_of_the_lifetime():
    for refresh in (
        DEFAULT,
        RefreshSpec(renew_before_seconds=1),
        RefreshSpec(renew_before_seconds=10**6),
        RefreshSpec(renew_before_percentage=1),
        RefreshSpec(renew_before_percentage=99),
    ):
        for lifetime in (1, 10, 60, 300, 3600):
            for jitter in (0.0, 0.5, ALMOST_ONE):
                p = point(lifetime, refresh, jitter)
                assert T0 + s(0.1 * lifetime) <= p.at <= T0 + s(lifetime)


def test_refresh_point_uses_the_given_issue_time_not_a_clock():
    issued = datetime(2020, 5, 6, 7, 8, 9, tzinfo=UTC)
    p = refresh_point(issued, issued + s(3600), DEFAULT, 0.0)
    assert p.at == issued + s(2400)


def test_refresh_point_of_a_degenerate_lifetime_does_not_crash():
    assert refresh_point(T0, T0, DEFAULT, 0.5).at == T0
    backwards = refresh_point(T0, T0 - s(10), DEFAULT, 0.5)
    assert backwards.at <= T0


# --- stable jitter --------------------------------------------------------------------


def test_stable_jitter_is_deterministic_and_in_range():
    values = [stable_jitter("uid-1", f"2026-01-02T03:04:{i:02d}Z") for i in range(60)]
    assert values == [stable_jitter("uid-1", f"2026-01-02T03:04:{i:02d}Z") for i in range(60)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == len(values)
    # spread over the range, not clustered
    assert min(values) < 0.25 and max(values) > 0.75


def test_stable_jitter_depends_on_every_part_and_their_boundaries():
    assert stable_jitter("uid-1", "t") != stable_jitter("uid-2", "t")
    assert stable_jitter("uid-1", "t") != stable_jitter("uid-1", "u")
    assert stable_jitter("ab", "c") != stable_jitter("a", "bc")


# --- backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (8, 128), (9, 256), (10, 300), (11, 300)],
)
def test_transient_backoff_doubles_from_one_second_to_five_minutes(failures, delay):
    assert backoff_seconds("transient", failures, jitter=0.0) == delay


@pytest.mark.parametrize("kind", ["configuration", "protocol"])
@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 60), (2, 120), (3, 240), (4, 480), (5, 960), (6, 1800), (7, 1800), (50, 1800)],
)
def test_configuration_and_protocol_backoff_doubles_from_one_to_thirty_minutes(
    kind, failures, delay
):
    assert backoff_seconds(kind, failures, jitter=0.0) == delay


@pytest.mark.parametrize(
    ("kind", "first", "cap"),
    [("transient", 1, 300), ("configuration", 60, 1800), ("protocol", 60, 1800)],
)
def test_backoff_jitter_bounds(kind, first, cap):
    assert backoff_seconds(kind, 1, jitter=0.0) == first
    assert backoff_seconds(kind, 1, jitter=ALMOST_ONE) == pytest.approx(0.75 * first)
    assert backoff_seconds(kind, 1000, jitter=0.0) == cap
    assert backoff_seconds(kind, 1000, jitter=ALMOST_ONE) == pytest.approx(0.75 * cap)
    for failures in range(1, 40):
        for jitter in (0.0, 0.3, 0.7, ALMOST_ONE):
            delay = backoff_seconds(kind, failures, jitter)
            assert 0.75 * first <= delay + 1e-9
            assert delay <= cap


def test_backoff_is_monotonic_in_failures():
    for kind in ("transient", "configuration", "protocol"):
        delays = [backoff_seconds(kind, n, 0.0) for n in range(1, 30)]
        assert delays == sorted(delays)


def test_backoff_with_zero_or_huge_failure_counts():
    assert backoff_seconds("transient", 0, 0.0) == 1
    assert backoff_seconds("transient", -3, 0.0) == 1
    assert backoff_seconds("transient", 10**9, 0.0) == 300


def test_retry_after_is_a_floor():
    assert backoff_seconds("transient", 1, 0.0, retry_after=30) == 30
    assert backoff_seconds("transient", 9, 0.0, retry_after=30) == 256
    assert backoff_seconds("transient", 1, ALMOST_ONE, retry_after=1) == 1
    assert backoff_seconds("transient", 1, 0.0, retry_after=None) == 1
    assert backoff_seconds("transient", 1, 0.0, retry_after=0) == 1
    # A floor even above the cap: the server asked for it.
    assert backoff_seconds("transient", 20, 0.0, retry_after=900) == 900
    assert backoff_seconds("configuration", 1, 0.0, retry_after=120) == 120


def test_unknown_error_class_is_an_error():
    with pytest.raises(KeyError):
        backoff_seconds("weird", 1, 0.0)


# --- next attempt and rate limit ------------------------------------------------------


def test_next_attempt_without_a_token_is_now_plus_delay():
    assert next_attempt_at(T0, 60, None) == T0 + s(60)


def test_next_attempt_never_sleeps_past_the_held_tokens_expiry():
    expiry = T0 + s(30)
    assert next_attempt_at(T0, 300, expiry) == expiry


def test_next_attempt_before_expiry_is_unchanged():
    assert next_attempt_at(T0, 10, T0 + s(30)) == T0 + s(10)
    assert next_attempt_at(T0, 30, T0 + s(30)) == T0 + s(30)


def test_next_attempt_with_an_already_expired_token_is_now_plus_delay():
    assert next_attempt_at(T0, 60, T0 - s(1)) == T0 + s(60)
    assert next_attempt_at(T0, 60, T0) == T0 + s(60)


def test_rate_limit_allows_the_first_request_at_once():
    assert floor_wait_seconds(None, 100.0) == 0.0


def test_rate_limit_is_ten_seconds_after_the_last_request():
    assert floor_wait_seconds(100.0, 100.0) == 10.0
    assert floor_wait_seconds(100.0, 104.0) == 6.0
    assert floor_wait_seconds(100.0, 111.0) == 0.0


# --- "why fetch now?" -----------------------------------------------------------------

HASH = "sha256:" + "a" * 32


def held(**fields) -> HeldToken:
    values = {
        "keys": frozenset(FIXED_SECRET_KEYS),
        "issued_at": T0,
        "expires_at": T0 + s(3600),
        "config_hash": HASH,
    }
    values.update(fields)
    return HeldToken(**values)


def quiet(**fields) -> TriggerInput:
    """An input where nothing calls for a token: 10 minutes into a 1 h token."""
    values = {
        "now": T0 + s(600),
        "held": held(),
        "generation": 3,
        "served_generation": 3,
        "config_hash": HASH,
        "refresh_requested": None,
        "last_handled_refresh_request": None,
        "refresh": DEFAULT,
        "jitter": 0.0,
    }
    values.update(fields)
    return TriggerInput(**values)


def test_nothing_to_do():
    assert why_fetch_now(quiet()) is None
    for policy in POLICIES:
        assert policy(quiet()) is None


def test_restart_with_matching_hash_outside_the_renew_window_fetches_nothing():
    # What a restarted operator sees: same generation served, same hash, token young.
    assert why_fetch_now(quiet(now=T0 + s(2399))) is None
    # An already handled refresh request does not fire again.
    handled = quiet(refresh_requested="2026-01-02T03:00:00Z")
    handled = dataclasses.replace(handled, last_handled_refresh_request="2026-01-02T03:00:00Z")
    assert why_fetch_now(handled) is None


def test_secret_missing():
    trigger = secret_missing(quiet(held=None))
    assert trigger is not None and trigger.reason == "SecretMissing"
    assert secret_missing(quiet()) is None


@pytest.mark.parametrize("key", FIXED_SECRET_KEYS)
def test_secret_keys_missing_each_fixed_key(key):
    trigger = secret_keys_missing(quiet(held=held(keys=frozenset(FIXED_SECRET_KEYS) - {key})))
    assert trigger is not None and trigger.reason == "SecretKeysMissing"
    assert key in trigger.message


def test_secret_keys_missing_lists_all_missing_keys():
    trigger = secret_keys_missing(quiet(held=held(keys=frozenset({"token_type"}))))
    assert trigger is not None
    assert trigger.message.endswith("access_token, authorization, expires_at")


def test_extra_template_keys_do_not_matter():
    keys = frozenset(FIXED_SECRET_KEYS) | {"config.json"}
    assert secret_keys_missing(quiet(held=held(keys=keys))) is None


@pytest.mark.parametrize("field", ["issued_at", "expires_at"])
def test_secret_keys_missing_when_times_unreadable(field):
    trigger = secret_keys_missing(quiet(held=held(**{field: None})))
    assert trigger is not None and trigger.reason == "SecretKeysMissing"


@pytest.mark.parametrize("served", [None, 2, 4])
def test_generation_changed(served):
    trigger = generation_changed(quiet(served_generation=served))
    assert trigger is not None and trigger.reason == "GenerationChanged"
    assert "3" in trigger.message
    assert generation_changed(quiet()) is None


def test_config_changed():
    trigger = config_changed(quiet(config_hash="sha256:" + "b" * 32))
    assert trigger is not None and trigger.reason == "ConfigChanged"
    assert config_changed(quiet(held=held(config_hash=None))) is not None
    assert config_changed(quiet()) is None


def test_refresh_requested():
    at = "2026-01-02T03:10:00Z"
    trigger = refresh_requested(quiet(refresh_requested=at))
    assert trigger is not None and trigger.reason == "RefreshRequested"
    assert at in trigger.message
    newer = quiet(refresh_requested="b", last_handled_refresh_request="a")
    assert refresh_requested(newer) is not None
    same = quiet(refresh_requested=at, last_handled_refresh_request=at)
    assert refresh_requested(same) is None
    assert refresh_requested(quiet(refresh_requested=None, last_handled_refresh_request=at)) is None
    assert refresh_requested(quiet(refresh_requested="")) is None


def test_renew_window_reached():
    # default for 1 h: refresh 2400 s after issue
    assert renew_window_reached(quiet(now=T0 + s(2399))) is None
    at_point = renew_window_reached(quiet(now=T0 + s(2400)))
    assert at_point is not None and at_point.reason == "RenewWindow"
    late = renew_window_reached(quiet(now=T0 + s(3599)))
    assert late is not None and late.reason == "RenewWindow"


def test_renew_window_uses_jitter_and_the_refresh_settings():
    assert renew_window_reached(quiet(now=T0 + s(2300))) is None
    assert renew_window_reached(quiet(now=T0 + s(2300), jitter=ALMOST_ONE)) is not None
    five_minutes = RefreshSpec(renew_before_seconds=300)
    assert renew_window_reached(quiet(now=T0 + s(3000), refresh=five_minutes)) is None
    assert renew_window_reached(quiet(now=T0 + s(3300), refresh=five_minutes)) is not None


def test_expired_token_is_reported_as_such():
    for now in (T0 + s(3600), T0 + s(86400)):
        trigger = renew_window_reached(quiet(now=now))
        assert trigger is not None and trigger.reason == "TokenExpired"


def everything_fires() -> TriggerInput:
    return quiet(
        now=T0 + s(7200),
        held=held(keys=frozenset({"access_token"})),
        served_generation=2,
        config_hash="sha256:" + "c" * 32,
        refresh_requested="2026-01-02T05:00:00Z",
    )


def test_chain_order_first_that_holds_wins():
    order = [
        "SecretMissing",
        "SecretKeysMissing",
        "GenerationChanged",
        "ConfigChanged",
        "RefreshRequested",
        "TokenExpired",
    ]
    i = everything_fires()
    assert why_fetch_now(dataclasses.replace(i, held=None)).reason == order[0]
    assert why_fetch_now(i).reason == order[1]
    i = dataclasses.replace(i, held=held(config_hash=HASH, expires_at=T0 + s(3600)))
    i = dataclasses.replace(i, config_hash="sha256:" + "c" * 32)
    assert why_fetch_now(i).reason == order[2]
    i = dataclasses.replace(i, served_generation=3)
    assert why_fetch_now(i).reason == order[3]
    i = dataclasses.replace(i, config_hash=HASH)
    assert why_fetch_now(i).reason == order[4]
    i = dataclasses.replace(i, last_handled_refresh_request=i.refresh_requested)
    assert why_fetch_now(i).reason == order[5]
    i = dataclasses.replace(i, now=T0 + s(600))
    assert why_fetch_now(i) is None


def test_policies_are_in_the_documented_order():
    assert (
        secret_missing,
        secret_keys_missing,
        generation_changed,
        config_changed,
        refresh_requested,
        renew_window_reached,
    ) == POLICIES


def test_a_missing_secret_short_circuits_policies_that_need_one():
    # Later policies assume a Secret; the chain must stop at the first answer.
    assert why_fetch_now(quiet(held=None, served_generation=None)).reason == "SecretMissing"


def test_custom_policy_list():
    always = lambda i: Trigger("Always", "always")  # noqa: E731
    never = lambda i: None  # noqa: E731
    assert why_fetch_now(quiet(), (never, always)).reason == "Always"
    assert why_fetch_now(quiet(), (never,)) is None
    assert why_fetch_now(quiet(), ()) is None


# --- parse_time -----------------------------------------------------------------------


def test_parse_time():
    assert parse_time("2026-01-02T03:04:05Z") == T0
    assert parse_time("2026-01-02T05:04:05+02:00") == T0
    parsed = parse_time("2026-01-02T03:04:05Z")
    assert parsed is not None and parsed.utcoffset() == timedelta(0)
    assert parse_time("2026-01-02T04:04:05+01:00").tzinfo == timezone(timedelta(hours=1))


@pytest.mark.parametrize("value", [None, "", "yesterday", "2026-13-02T03:04:05Z", "1767323045"])
def test_parse_time_rejects_garbage(value):
    assert parse_time(value) is None


def test_parse_time_rejects_naive_times():
    assert parse_time("2026-01-02T03:04:05") is None


def test_every_scheduled_request_obeys_the_ten_second_floor():
    # 0.1 made renewals and expiries exempt: a 1 s token meant a request every second.
    assert floor_wait_seconds(100.0, 100.0, exempt=False) == 10.0


def test_backoff_retries_and_fixes_after_a_failure_are_exempt():
    assert floor_wait_seconds(100.0, 100.0, exempt=True) == 0.0


def test_refresh_request_values_are_bounded():
    from tokensync.schedule import valid_refresh_request

    assert valid_refresh_request("2026-11-30T10:00:00Z") == "2026-11-30T10:00:00Z"
    assert valid_refresh_request("x" * 65) is None
    assert valid_refresh_request("") is None


def test_short_lifetimes_are_warned_about():
    from tokensync.schedule import lifetime_warnings

    assert lifetime_warnings(held(issued_at=T0, expires_at=T0 + s(5)))
    assert not lifetime_warnings(held(issued_at=T0, expires_at=T0 + s(300)))
    assert not lifetime_warnings(None)


def test_kube_backoff_doubles_to_a_minute_with_jitter():
    from tokensync.schedule import kube_backoff_seconds

    assert kube_backoff_seconds(1, 1.0) == 1.0
    assert kube_backoff_seconds(3, 1.0) == 4.0
    assert kube_backoff_seconds(30, 1.0) == 60.0
    assert kube_backoff_seconds(30, 0.0) == 30.0


def test_a_capped_lifetime_is_warned_about_from_the_held_token_alone():
    from tokensync.schedule import lifetime_warnings

    year = held(issued_at=T0, expires_at=T0 + s(365 * 24 * 3600))
    assert "capped at one year" in lifetime_warnings(year)[0]
