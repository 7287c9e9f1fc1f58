"""The decisions of the label-selected watches: retry pacing and the sweep after a
re-list (the list+watch itself runs against the real API server in tests/operator)."""

from __future__ import annotations

from tokensync.watches import (
    FIRST_RETRY_SECONDS,
    HEALTHY_SECONDS,
    MAX_RETRY_SECONDS,
    Known,
    WatchTarget,
    next_delay,
    sweep,
)


def test_rounds_that_end_at_once_back_off_doubling_to_the_cap():
    delay, waits = FIRST_RETRY_SECONDS, []
    for _ in range(8):
        wait, delay = next_delay(delay, lasted=0.0)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert MAX_RETRY_SECONDS == 30


def test_a_round_that_lasted_a_while_resumes_at_once_and_resets_the_delay():
    assert next_delay(16.0, lasted=HEALTHY_SECONDS) == (0.0, FIRST_RETRY_SECONDS)
    assert next_delay(16.0, lasted=HEALTHY_SECONDS - 1) == (16.0, 30.0)


def test_sweep_reports_only_objects_gone_since_the_last_list():
    known = {
        ("a", "kept"): Known("5", {}),
        ("a", "gone"): Known("7", {"tokensync.dev/credential": "cred"}),
    }
    gone = sweep(known, seen={("a", "kept"), ("a", "new")})
    assert gone == [
        {
            "metadata": {
                "namespace": "a",
                "name": "gone",
                "resourceVersion": "7",
                "labels": {"tokensync.dev/credential": "cred"},
            }
        }
    ]
    assert set(known) == {("a", "kept")}


def test_pages_are_small_for_full_secrets_and_large_for_metadata_and_credentials():
    assert WatchTarget("secrets", "x").page_size == 20
    assert WatchTarget("secrets", "x", metadata_only=True).page_size == 500
    assert WatchTarget("oauth2credentials", "", api="/apis/g/v", small=True).page_size == 100
    assert WatchTarget("oauth2credentials", "", api="/apis/g/v").path("ns") == (
        "/apis/g/v/namespaces/ns/oauth2credentials"
    )
