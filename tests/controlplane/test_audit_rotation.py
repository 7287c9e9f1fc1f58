"""The fixture's audit reader follows kube-apiserver's log rotation (every 100 MB the log is
renamed to audit-<time>.log and a new one started): no entry is lost or read twice, in the
order they were written. Long test sessions and the benchmarks rotate the log; before this
reader, everything after the first rotation was missing, and a sharding benchmark counted
writes whose shard Lease renewals were in the rotated file as unfenced."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.controlplane import ControlPlane


def _entry(n: int) -> str:
    stamp = f"2026-12-06T08:00:{n:02d}.000000Z"
    return json.dumps({"n": n, "verb": "update", "requestReceivedTimestamp": stamp}) + "\n"


def _plane(tmp_path: Path) -> ControlPlane:
    return ControlPlane(
        kubeconfig=tmp_path / "kubeconfig",
        audit_log=tmp_path / "audit.log",
        bin_dir=tmp_path,
        server="https://127.0.0.1:1",
        state_dir=tmp_path,
    )


def test_entries_on_both_sides_of_a_rotation_are_read_once_in_order(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    log = plane.audit_log
    log.write_text(_entry(1) + _entry(2))
    assert [e["n"] for e in plane.audit_events()] == [1, 2]

    # Written after that read, then rotated away before the next one.
    with log.open("a") as f:
        f.write(_entry(3))
    log.rename(tmp_path / "audit-2026-12-06T08-00-03.000.log")
    log.write_text(_entry(4) + _entry(5) + '{"n": 6, "partial')  # a line being written
    assert [e["n"] for e in plane.audit_events()] == [1, 2, 3, 4, 5]

    # A second rotation; the partial line completed first.
    with log.open("a") as f:
        f.write('": 1}\n' + _entry(7))
    log.rename(tmp_path / "audit-2026-12-06T08-00-07.000.log")
    log.write_text(_entry(8))
    assert [e["n"] for e in plane.audit_events()] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e["n"] for e in plane.audit_events()] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_fresh_reader_reads_the_rotated_files_first(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    (tmp_path / "audit-2026-12-06T08-00-01.000.log").write_text(_entry(1))
    (tmp_path / "audit-2026-12-06T08-00-02.000.log").write_text(_entry(2))
    plane.audit_log.write_text(_entry(3))
    assert [e["n"] for e in plane.audit_events()] == [1, 2, 3]
