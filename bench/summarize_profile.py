#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (`py-spy record --format raw`): where the samples go.

Prints, as shares of all samples:
- buckets (TLS, json, Kubernetes client, kopf, asyncio, logging, HTTP client, tokensync,
  other): "self" by the leaf-most frame that belongs to a named bucket (so a lock wait
  inside urllib3 counts as HTTP client), "inclusive" by any frame of the stack;
- TLS split into context creation (trust store loading), handshake and the rest;
- the top functions and files by self and by cumulative share;
- threads grouped by name (digits removed), with `py-spy record --threads`.

With --per N (operations in the recording, e.g. renewals) and --rate (py-spy's, 100 by
default), each bucket also gets thread-milliseconds per operation.

py-spy samples only threads that are running or runnable (no `--idle`), including time in
C code such as OpenSSL (the Python frame that called it is the leaf). Runnable includes
waiting for a core: on a saturated machine the samples overstate CPU, evenly or not, so
compare shares within a run and milliseconds only between runs on a quiet machine.

    .venv/bin/python bench/summarize_profile.py profile-steady.raw [--per N] [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?:: ?(?P<name>.*))?$")
PROCESS = re.compile(r"^process \d+:")

# Checked in this order against each frame's file (and, for TLS, its function).
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS (ssl: contexts, handshakes, I/O)", ("ssl.py", "ssl_.py", "ssltransport.py")),
    ("json", ("json/",)),
    ("Kubernetes client", ("kubernetes/",)),
    ("kopf", ("kopf/",)),
    ("logging", ("logging/",)),
    ("HTTP client (requests, urllib3, http.client)", ("requests/", "urllib3/", "http/client")),
    ("tokensync", ("tokensync/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("asyncio", ("asyncio/", "selectors.py")),
    ("threads, executors, queues", ("threading.py", "concurrent/futures/", "queue.py")),
)
OTHER = "other"
TLS_CONTEXT_FUNCS = (
    "create_default_context",
    "load_default_certs",
    "load_verify_locations",
    "set_default_verify_paths",
    "SSLContext.__new__",
    "create_urllib3_context",
    "load_cert_chain",
)
TLS_HANDSHAKE_FUNCS = ("do_handshake", "wrap_socket", "_create", "ssl_wrap_socket")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str

    @property
    def label(self) -> str:
        return f"{self.func} ({self.file})"


@dataclass
class Profile:
    total: int = 0
    stacks: list[tuple[str, tuple[Frame, ...], int]] = field(default_factory=list)


def parse_frame(text: str) -> Frame:
    match = FRAME.match(text.strip())
    if not match:
        return Frame(text.strip(), "?")
    return Frame(match["func"], match["file"])


def parse_lines(lines: Iterable[str]) -> Profile:
    """Collapsed stacks: `frame;frame;...;leaf count`, root first. With --threads the
    first frame is `thread (id): name`; with --subprocesses `process N:"cmd"` before it."""
    profile = Profile()
    for raw in lines:
        line = raw.rstrip("\n")
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = "all threads"
        while parts and PROCESS.match(parts[0]):
            parts = parts[1:]
        if parts and (m := THREAD.match(parts[0])):
            thread = thread_group(m["name"] or m["tid"])
            parts = parts[1:]
        frames = tuple(parse_frame(p) for p in parts if p)
        profile.stacks.append((thread, frames, count))
        profile.total += count
    return profile


def thread_group(name: str) -> str:
    """ThreadPoolExecutor-0_12 and ThreadPoolExecutor-0_3 are one group."""
    return re.sub(r"\d+", "N", name.strip().strip('"')) or "?"


def bucket_of(frame: Frame) -> str:
    path = frame.file.replace("\\", "/")
    for name, needles in BUCKETS:
        if any(n in path for n in needles):
            return name
    return OTHER


def self_bucket(frames: tuple[Frame, ...]) -> str:
    """The leaf-most frame with a named bucket: a lock wait or socket call made by
    urllib3 or kopf counts for them, a `copy` or `re` call made by tokensync for tokensync,
    the event loop's own select for asyncio."""
    for frame in reversed(frames):
        bucket = bucket_of(frame)
        if bucket != OTHER:
            return bucket
    return OTHER


def tls_part(frames: tuple[Frame, ...]) -> str | None:
    """For a sample inside ssl: trust store / context creation, handshake, or I/O."""
    in_tls = False
    for frame in frames:
        if bucket_of(frame).startswith("TLS"):
            in_tls = True
        if any(f in frame.func for f in TLS_CONTEXT_FUNCS):
            return "SSL context creation (trust store loading)"
        if in_tls and any(f in frame.func for f in TLS_HANDSHAKE_FUNCS):
            return "TLS handshake"
    return "TLS I/O and the rest" if in_tls else None


@dataclass
class Summary:
    total: int
    self_buckets: Counter[str]
    inclusive_buckets: Counter[str]
    tls: Counter[str]
    self_funcs: Counter[str]
    cum_funcs: Counter[str]
    self_files: Counter[str]
    cum_files: Counter[str]
    threads: Counter[str]


def summarize(profile: Profile) -> Summary:
    s = Summary(profile.total, *(Counter() for _ in range(8)))
    for thread, frames, count in profile.stacks:
        s.threads[thread] += count
        s.self_buckets[self_bucket(frames)] += count
        for bucket in {bucket_of(f) for f in frames}:
            s.inclusive_buckets[bucket] += count
        part = tls_part(frames)
        if part:
            s.tls[part] += count
        if frames:
            s.self_funcs[frames[-1].label] += count
            s.self_files[frames[-1].file] += count
        # Cumulative: once per sample, however often a function recurses.
        for label in {f.label for f in frames}:
            s.cum_funcs[label] += count
        for file in {f.file for f in frames}:
            s.cum_files[file] += count
    return s


def format_summary(
    s: Summary, top: int = 20, title: str = "", rate: float | None = None, per: int | None = None
) -> str:
    """With the sampling rate and a count of operations (e.g. renewals), each bucket also
    gets thread-milliseconds per operation, comparable between runs of different sizes."""
    out: list[str] = []
    w = out.append
    if s.total == 0:
        return f"{title}: no samples" if title else "no samples"

    def share(n: int) -> str:
        return f"{100 * n / s.total:5.1f}%"

    def each(n: int) -> str:
        return f"{1000 * n / rate / per:9.2f}" if rate and per else ""

    if title:
        w(title)
    w(f"  {s.total} samples (threads running or runnable: waiting for a core counts too)")
    unit = f"  ms per op ({per} ops)" if rate and per else ""
    w(f"  buckets                                           self  inclusive{unit}")
    for name in [*(b for b, _ in BUCKETS), OTHER]:
        if s.self_buckets[name] or s.inclusive_buckets[name]:
            w(
                f"    {name:<46}{share(s.self_buckets[name])}  "
                f"{share(s.inclusive_buckets[name])}{each(s.self_buckets[name])}"
            )
    if rate and per:
        w(f"    {'all samples':<46}{share(s.total)}  {'':>6}{each(s.total)}")
    if s.tls:
        w("  TLS, by what the ssl module was doing")
        for part, n in s.tls.most_common():
            w(f"    {part:<46}{share(n)}  {'':>6}{each(n)}")
    if len(s.threads) > 1 or "all threads" not in s.threads:
        w("  threads (grouped by name)")
        for name, n in s.threads.most_common(8):
            w(f"    {name[:46]:<46}{share(n)}")
    for heading, counter in (
        ("top functions by self share", s.self_funcs),
        ("top functions by cumulative share", s.cum_funcs),
        ("top files by self share", s.self_files),
        ("top files by cumulative share", s.cum_files),
    ):
        w(f"  {heading}")
        for label, n in counter.most_common(top):
            w(f"    {share(n)}  {label[:110]}")
    return "\n".join(out)


def read_profiles(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        with path.open(errors="replace") as handle:
            yield from handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, nargs="+", help="py-spy --format raw output file(s)")
    parser.add_argument("--top", type=int, default=20, help="rows per top list (default 20)")
    parser.add_argument("--rate", type=float, help="py-spy --rate of the recording (100)")
    parser.add_argument(
        "--per", type=int, metavar="N", help="operations in the recording (e.g. renewals)"
    )
    args = parser.parse_args(argv)
    summary = summarize(parse_lines(read_profiles(args.raw)))
    title = ", ".join(str(p) for p in args.raw)
    print(format_summary(summary, args.top, title, args.rate or 100.0, args.per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
