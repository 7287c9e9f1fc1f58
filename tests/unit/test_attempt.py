"""The attempt record: immutable, and the floor/backoff decisions read from it (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from tokensync.attempt import Attempts


def test_outcomes_return_new_records():
    first = Attempts()
    sent = first.sent(100.0)
    assert first.last_request_at is None and sent.last_request_at == 100.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        sent.retry_at = 1.0  # type: ignore[misc]


def test_the_floor_applies_until_a_failure_then_the_backoff_does():
    a = Attempts().sent(100.0)
    assert a.wait_seconds("k1", 100.0) == 10.0  # the 10 s floor
    a = a.request_failed("k1", "transient").retry_after(130.0)
    assert a.wait_seconds("k1", 110.0) == 20.0  # the backoff of this very attempt
    assert a.wait_seconds("k2", 101.0) == 0.0  # a fix after a failure goes at once
    assert a.failures_of("transient") == 1 and a.failures_of("configuration") == 0
    a = a.answered()
    assert (a.retry_key, a.retry_at, a.failures_by_kind) == (None, None, ())


def test_each_class_counts_alone_and_writes_and_api_failures_have_their_own_counts():
    a = Attempts().request_failed("k", "transient").request_failed("k", "transient")
    a = a.request_failed("k", "configuration")
    assert (a.failures_of("transient"), a.failures_of("configuration")) == (2, 1)
    a = a.write_failed().write_failed().kube_failed()
    assert (a.write_failures, a.kube_failures) == (2, 1)
    assert a.written().write_failures == 0 and a.kube_ok().kube_failures == 0
