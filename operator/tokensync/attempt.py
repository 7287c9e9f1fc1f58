"""What a credential's worker remembers of its recent attempts: one immutable record.

Every outcome (a token request sent, failed or answered, a Secret write refused or done,
a Kubernetes call failed or not) returns a new record; decisions read it (pure). Times
are on the monotonic clock: a step of the wall clock never moves a floor or a backoff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass

from tokensync.schedule import floor_wait_seconds


@dataclass(frozen=True)
class Attempts:
    last_request_at: float | None = None  # when the last token request was sent
    # The (generation, config, refresh request) a backoff applies to, and when it ends:
    # a spec or data change starts over at once.
    retry_key: Hashable | None = None
    retry_at: float | None = None
    failures_by_kind: tuple[tuple[str, int], ...] = ()  # each error class backs off alone
    write_failures: int = 0  # Secret writes refused in a row (the token is kept)
    kube_failures: int = 0  # passes that failed on the Kubernetes API in a row

    # --- decisions ----------------------------------------------------------------------

    def failures_of(self, kind: str) -> int:
        return dict(self.failures_by_kind).get(kind, 0)

    def wait_seconds(self, key: Hashable, now: float) -> float:
        """How long a token request for `key` must still wait (0: send now): the backoff
        of a failed attempt of the same key, else the 10 s floor (a retry, or a fix after
        a failure, is exempt from the floor)."""
        if self.retry_key == key and self.retry_at is not None and now < self.retry_at:
            return self.retry_at - now
        return floor_wait_seconds(self.last_request_at, now, exempt=self.retry_key is not None)

    # --- outcomes -----------------------------------------------------------------------

    def sent(self, now: float) -> Attempts:
        return dataclasses.replace(self, last_request_at=now)

    def request_failed(self, key: Hashable, kind: str) -> Attempts:
        """A token request (or discovery) failed; the backoff is set by `retry_after`."""
        counts = dict(self.failures_by_kind)
        counts[kind] = counts.get(kind, 0) + 1
        return dataclasses.replace(
            self, retry_key=key, failures_by_kind=tuple(sorted(counts.items()))
        )

    def retry_after(self, at: float) -> Attempts:
        return dataclasses.replace(self, retry_at=at)

    def answered(self) -> Attempts:
        """A token arrived: backoffs and failure counts start over."""
        return dataclasses.replace(self, retry_key=None, retry_at=None, failures_by_kind=())

    def write_failed(self) -> Attempts:
        return dataclasses.replace(self, write_failures=self.write_failures + 1)

    def written(self) -> Attempts:
        return dataclasses.replace(self, write_failures=0)

    def kube_failed(self) -> Attempts:
        return dataclasses.replace(self, kube_failures=self.kube_failures + 1)

    def kube_ok(self) -> Attempts:
        return self if not self.kube_failures else dataclasses.replace(self, kube_failures=0)
