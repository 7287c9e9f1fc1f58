#!/usr/bin/env python3
"""Refresh at scale: the real operator, N credentials with short-lived tokens, several lifetimes.

Starts the test control plane (etcd, kube-apiserver, kube-controller-manager from
tests/envtest), an HTTPS client-credentials endpoint that logs every issued token, installs
tokensync from deploy/, runs `tokensync run` as ServiceAccount tokensync-system/tokensync,
creates N OAuth2Credentials (one OAuth2 client each, so every credential has its own token
history) and observes them for K token lifetimes after the last managed Secret appeared.
By default (--system-trust) credentials have no tls.caRef and the operator trusts the
endpoint through SSL_CERT_FILE = the system CA bundle plus the endpoint's CA, as it trusts
a public identity provider in production; --ca-ref is the older one-CA setup.

It measures and prints (never asserts; see ENGINEERING.md "Benchmarks"):
- time until all managed Secrets exist, and create-to-Secret latency per credential;
- token requests made versus the ideal count of API.md's refresh schedule, and lateness;
- seconds during which a managed Secret held an expired token, from the endpoint's
  issuance log and the Secret update times seen by a watch started before the creates;
- CPU (per refresh, cores), run-queue wait, RSS (and bytes per credential) of the operator,
  kube-apiserver, etcd, kube-controller-manager and this script, from /proc; the
  operator's Kubernetes API calls per renewal and per creation from the audit log;
- with --restart: when every worker ran its first pass, requests outside the renew window;
- with --profile: a py-spy profile of the steady state, summarised (summarize_profile.py).

Everything listens on 127.0.0.1 only (the operator's metrics server, which would bind every
interface, is disabled, or on 127.0.0.1 after --restart). Everything started is stopped on
exit, error, Ctrl-C or SIGTERM. See bench/README.md for how each number is obtained.

    .venv/bin/python bench/refresh_at_scale.py                      # 500 x 60 s x 3
    .venv/bin/python bench/refresh_at_scale.py --credentials 20 --lifetime 30 --lifetimes 2
    .venv/bin/python bench/refresh_at_scale.py --credentials 10000 --lifetime 300 --restart
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "operator"), str(REPO / "bench")]

import kubernetes  # noqa: E402
import trustme  # noqa: E402
from summarize_profile import format_summary, parse_lines, read_profiles, summarize  # noqa: E402
from token_endpoint import Client, Issue, TokenEndpoint  # noqa: E402

from fixtures.controlplane import (  # noqa: E402
    ControlPlane,
    _remove_state,
    audit_files,
    start_control_plane,
)


def _load_operator_conftest() -> Any:
    """tests/operator/conftest.py under a private name (`conftest` is ambiguous here)."""
    path = REPO / "tests" / "operator" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tokensync_bench_operator_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_operator_fixtures = _load_operator_conftest()
start_operator = _operator_fixtures.start_operator
OPERATOR_SA: tuple[str, str] = _operator_fixtures.OPERATOR_SA
OPERATOR_USER: str = _operator_fixtures.OPERATOR_USER

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
SOURCE_LABEL = {"tokensync.dev/credential-source": "true"}
MANAGED_LABEL = "tokensync.dev/credential"  # on every managed Secret (API.md)
ISSUED_ANNOTATION = "tokensync.dev/issued-at"
# The operator schedules from its own issued-at (taken before it sends the request, then
# truncated to the second) and the lifetime between the two annotations: a refresh is
# "before the renew window" by its own view when the request reaches the endpoint this much
# before the earliest refresh point counted from that annotation.
OPERATOR_VIEW_TOLERANCE = 0.5

# API.md, "Default refresh point".
KUBELET_PROPAGATION = 120.0
JITTER_SHARE = 0.05
MIN_AGE_SHARE = 0.10
CLK_TCK = os.sysconf("SC_CLK_TCK")
ENDPOINT_BACKLOG = 1024
RESTART_READY_S = 300.0  # how long a restarted operator may take to report ready
# SIGTERM, then SIGKILL after this long: terminationGracePeriodSeconds of deploy/base and
# the chart, so a restart is measured as a rolling update runs it.
TERMINATION_GRACE_S = 30.0
ENDPOINT_IDLE_TIMEOUT = 60.0  # keep-alive: an idle connection is closed after this long
LOG_PROBLEM_WORDS = ("error", "fail", "retry", "traceback", "unexpected")
# The Secret's issued-at/expires-at annotations have second precision, so an operator that
# reads them back (after a restart) may refresh up to 1 s before the exact refresh point.
EARLY_TOLERANCE = 1.0


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the schedule API.md promises ------------------------------------------------------


def renew_before(lifetime: float) -> float:
    """Refresh when this much of the token's life remains (before jitter)."""
    return max(lifetime / 3, min(KUBELET_PROPAGATION, lifetime / 2))


def refresh_age(lifetime: float, jitter: float) -> float:
    """Token age at its refresh point for a jitter fraction in [0, 1], with the 10% clamp."""
    age = lifetime - renew_before(lifetime) - jitter * JITTER_SHARE * lifetime
    return max(age, MIN_AGE_SHARE * lifetime)


def ideal_tokens(window: float, lifetime: float, jitter: float) -> int:
    """Tokens one credential needs over `window` seconds after its first issue: the first
    one plus one per refresh point inside the window."""
    if window < 0:
        return 0
    return 1 + math.floor(window / refresh_age(lifetime, jitter))


# --- /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    cpu: float  # user + system seconds since the process started
    rss_mb: float
    hwm_mb: float  # peak RSS (VmHWM)
    threads: int
    # Seconds its live threads spent runnable but waiting for a CPU (schedstat), and the
    # times they were put on a CPU: contention for the cores, not work done.
    wait_s: float = 0.0
    slices: int = 0


def proc_sample(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    values = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        values[key] = value.split()
    wait_ns = slices = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                _run, wait, count = (task / "schedstat").read_text().split()[:3]
                wait_ns += int(wait)
                slices += int(count)
    return ProcSample(
        cpu=cpu,
        rss_mb=int(values.get("VmRSS", ["0"])[0]) / 1024,
        hwm_mb=int(values.get("VmHWM", ["0"])[0]) / 1024,
        threads=int(values.get("Threads", ["0"])[0]),
        wait_s=wait_ns / 1e9,
        slices=slices,
    )


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    idle = ticks[3] + ticks[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class Snapshot:
    at: float
    procs: dict[str, ProcSample | None]
    machine: tuple[float, float]


class Processes:
    """The processes whose cost is reported, by display name."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def snapshot(self) -> Snapshot:
        return Snapshot(
            time.time(), {name: proc_sample(pid) for name, pid in self.pids.items()}, machine_cpu()
        )


# --- the watch on managed Secrets ----------------------------------------------------------


@dataclass
class SecretEvent:
    at: float  # time.time() when the watch delivered it
    type: str  # ADDED, MODIFIED, DELETED, or RELIST after a lost watch
    namespace: str
    name: str
    token: str | None
    issued_at: float | None = None  # the operator's issued-at annotation (second precision)


class SecretWatch(threading.Thread):
    """Records every change of a managed Secret with its arrival time and the token it holds.

    A raw watch (list, then watch from its resourceVersion, resumed on timeouts) with
    bookmarks; a 410 Gone relists and records the listed state as RELIST events.
    """

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        super().__init__(name="secret-watch", daemon=True)
        self.core = kubernetes.client.CoreV1Api(api)
        self.events: list[SecretEvent] = []
        self.first_seen: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started_ok = threading.Event()
        self.relists = 0
        self.reconnects = 0
        self.error: str | None = None
        self._response: Any = None
        self._rv = ""

    def _record(self, etype: str, obj: dict[str, Any], at: float) -> None:
        meta = obj.get("metadata") or {}
        raw = (obj.get("data") or {}).get("access_token")
        token = base64.b64decode(raw).decode() if raw else None
        issued = (meta.get("annotations") or {}).get(ISSUED_ANNOTATION)
        event = SecretEvent(
            at, etype, meta.get("namespace", ""), meta.get("name", ""), token, parse_time(issued)
        )
        with self.lock:
            self.events.append(event)
            self.first_seen.setdefault((event.namespace, event.name), at)

    def _list(self, record: bool) -> None:
        listed = self.core.list_secret_for_all_namespaces(
            label_selector=MANAGED_LABEL, _preload_content=False
        )
        body = json.loads(listed.data)
        self._rv = body["metadata"]["resourceVersion"]
        now = time.time()
        for item in body.get("items") or []:
            if record:
                self._record("RELIST", item, now)

    def run(self) -> None:
        try:
            self._list(record=False)
            self.started_ok.set()
            failures = 0
            while not self.stopping.is_set():
                try:
                    self._watch_once()
                    failures = 0
                except Exception:
                    # A dropped connection: resume from the last resourceVersion (nothing is
                    # lost); give up after a few failures in a row.
                    failures += 1
                    if failures > 5 or self.stopping.is_set():
                        raise
                    self.reconnects += 1
                    time.sleep(1)
        except Exception as error:  # reported, never raised into the benchmark
            if not self.stopping.is_set():
                self.error = f"{type(error).__name__}: {error}"
        finally:
            self.started_ok.set()

    def _watch_once(self) -> None:
        response = self.core.list_secret_for_all_namespaces(
            label_selector=MANAGED_LABEL,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self._rv,
            timeout_seconds=300,
            _preload_content=False,
            _request_timeout=(10, 330),
        )
        self._response = response
        buffer = b""
        try:
            for chunk in response.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._handle(json.loads(line), time.time())
        except Exception:
            if self.stopping.is_set():
                return
            raise
        finally:
            with contextlib.suppress(Exception):
                response.release_conn()
        self.reconnects += 1

    def _handle(self, event: dict[str, Any], at: float) -> None:
        etype, obj = event.get("type", ""), event.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:  # resourceVersion too old: relist
                self.relists += 1
                self._list(record=True)
                return
            raise RuntimeError(f"watch error: {obj.get('message')}")
        self._rv = (obj.get("metadata") or {}).get("resourceVersion", self._rv)
        if etype != "BOOKMARK":
            self._record(etype, obj, at)

    def stop(self) -> None:
        self.stopping.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # interrupts a blocking read (urllib3 >= 2.3)
            with contextlib.suppress(Exception):
                response.close()
        self.join(timeout=10)

    def count_seen(self) -> int:
        with self.lock:
            return len(self.first_seen)


# --- setup ---------------------------------------------------------------------------------


def build_binaries() -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "tests" / "envtest" / "build.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"tests/envtest/build.sh failed (exit {result.returncode})")
    return Path(lines[-1])


def admin_client(cp: ControlPlane, pool: int) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(cp.kubeconfig), client_configuration=configuration
    )
    configuration.connection_pool_maxsize = pool
    return kubernetes.client.ApiClient(configuration)


# --- the trust the operator pays for -----------------------------------------------------

# Run by the operator's Python with the operator's environment: what ssl.create_default_
# context() (the operator's context when a credential has no tls.caRef) trusts there, and
# what building one costs.
TRUST_PROBE = r"""
import json, os, socket, ssl, sys, time
host, port, ca_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def handshake():
    context = ssl.create_default_context()
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return "accepted"
    except ssl.SSLCertVerificationError as error:
        return "rejected (" + str(error.verify_message) + ")"
def cpu_ms(make, rounds=20):
    start = time.process_time()
    for _ in range(rounds):
        make()
    return (time.process_time() - start) / rounds * 1000
ca = open(ca_file).read()
print(json.dumps({
    "ssl_cert_file": os.environ.get("SSL_CERT_FILE"),
    "cas_loaded": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "handshake": handshake(),
    "default_context_ms": cpu_ms(ssl.create_default_context),
    "ca_ref_context_ms": cpu_ms(lambda: ssl.create_default_context(cadata=ca)),
}))
"""


@dataclass
class Trust:
    """How the operator verifies the token endpoint in this run."""

    system: bool  # True: system store + bench CA via SSL_CERT_FILE, no caRef
    bundle: Path | None = None  # the SSL_CERT_FILE given to the operator
    source: Path | None = None  # the system bundle it copies
    source_cas: int = 0
    probe: dict[str, Any] = field(default_factory=dict)  # with the operator's environment
    control: dict[str, Any] = field(default_factory=dict)  # without SSL_CERT_FILE

    def operator_env(self) -> dict[str, str]:
        return {"SSL_CERT_FILE": str(self.bundle)} if self.bundle else {}


def system_bundle() -> Path:
    """The CA file ssl.create_default_context() loads in this environment: $SSL_CERT_FILE
    if set, else OpenSSL's default file (Debian: /usr/lib/ssl/cert.pem, a link to
    /etc/ssl/certs/ca-certificates.crt). certifi's bundle is not used by the operator: it
    hands requests its own SSLContext."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise SystemExit(
        "no system CA bundle (ssl.get_default_verify_paths() names none that exists): "
        "install ca-certificates or set SSL_CERT_FILE, or run with --ca-ref"
    )


def prepare_trust(system: bool, ca: trustme.CA, directory: Path, url: str) -> Trust:
    ca_file = directory / "bench-ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    trust = Trust(system=system)
    if system:
        trust.source = system_bundle()
        text = trust.source.read_text()
        trust.source_cas = text.count("-----BEGIN CERTIFICATE-----")
        trust.bundle = directory / "system-cas-plus-bench-ca.pem"
        trust.bundle.write_text(text.rstrip("\n") + "\n" + ca.cert_pem.bytes().decode())
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    trust.probe = trust_probe(trust.operator_env(), host, int(port), ca_file)
    trust.control = trust_probe({}, host, int(port), ca_file)
    if system and not trust.probe["handshake"].startswith("accepted"):
        raise SystemExit(
            f"with SSL_CERT_FILE={trust.bundle}, ssl.create_default_context() does not trust "
            f"the token endpoint: {trust.probe['handshake']}"
        )
    return trust


def trust_probe(env: dict[str, str], host: str, port: int, ca_file: Path) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    result = subprocess.run(
        [sys.executable, "-c", TRUST_PROBE, host, str(port), str(ca_file)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` while the block runs (the operator inherits it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def count_connections(
    endpoint: TokenEndpoint, keep_alive: bool, idle_timeout: float
) -> list[float]:
    """Make the endpoint's handler record each accepted TLS connection; with keep_alive
    it speaks HTTP/1.1 (as identity providers do), so a client that pools connections
    sends several requests over one, each idle connection closed after idle_timeout."""
    accepted: list[float] = []
    base = endpoint._server.RequestHandlerClass

    class Counting(base):  # type: ignore[misc,valid-type]
        if keep_alive:
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout

        def setup(self) -> None:
            accepted.append(time.time())
            super().setup()

    endpoint._server.RequestHandlerClass = Counting
    return accepted


# --- the profiler -------------------------------------------------------------------------


def find_py_spy() -> Path:
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("--profile needs py-spy: .venv/bin/pip install -r bench/requirements.txt")


class Profiler:
    """`py-spy record --pid` on one phase: raw collapsed stacks, every thread, without
    pausing the operator (--nonblocking); stopped by SIGINT, which makes it write."""

    def __init__(self, exe: Path, rate: int, directory: Path) -> None:
        self.exe, self.rate, self.directory = exe, rate, directory
        self.process: subprocess.Popen[bytes] | None = None
        self.phase = ""
        self.results: dict[str, dict[str, Any]] = {}

    def start(self, pid: int, phase: str) -> None:
        self.phase = phase
        output = self.directory / f"profile-{phase}.raw"
        log_file = (self.directory / f"py-spy-{phase}.log").open("wb")
        command = [str(self.exe), "record", "--pid", str(pid), "--rate", str(self.rate)]
        command += ["--format", "raw", "--nonblocking", "--threads", "--output", str(output)]
        self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        time.sleep(2)
        if self.process.poll() is not None:
            text = (self.directory / f"py-spy-{phase}.log").read_text(errors="replace")
            self.process = None
            raise SystemExit(
                f"py-spy could not attach to the operator (pid {pid}):\n{text[-2000:]}\n"
                "(ptrace refused? needs CAP_SYS_PTRACE or kernel.yama.ptrace_scope 0)"
            )
        log(f"py-spy recording the {phase} phase ({self.rate} Hz) into {output}")

    def stop(self, operations: int | None = None) -> dict[str, Any] | None:
        """Stop recording; `operations` (renewals in the phase) adds ms per renewal."""
        process, phase = self.process, self.phase
        if process is None:
            return None
        self.process = None
        cost = proc_sample(process.pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = (self.directory / f"py-spy-{phase}.log").read_text(errors="replace")
        match = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        raw = self.directory / f"profile-{phase}.raw"
        summary = None
        if raw.is_file():
            summary = format_summary(
                summarize(parse_lines(read_profiles([raw]))),
                15,
                f"py-spy profile, {phase} phase",
                self.rate,
                operations,
            )
            (self.directory / f"profile-{phase}.txt").write_text(summary + "\n")
        result = {
            "raw": str(raw),
            "samples": int(match[1]) if match else None,
            "errors": int(match[2]) if match else None,
            "py_spy_cpu_s": cost.cpu if cost else None,
            "summary": summary,
        }
        self.results[phase] = result
        return result


# --- after a restart: when every worker ran its first pass --------------------------------

EXPIRY_SERIES = re.compile(
    r'^tokensync_token_expiry_seconds\{(?=[^}]*namespace="(?P<ns>[^"]*)")'
    r'(?=[^}]*name="(?P<name>[^"]*)")'
)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only


class FirstPassScraper(threading.Thread):
    """Scrapes the restarted operator's /metrics until every credential has a
    tokensync_token_expiry_seconds series. That series exists once the credential's worker
    has run a pass that read the held token (a new worker starts without it), so its first
    appearance is when the worker "looked at" the Secret, to within one scrape interval."""

    def __init__(self, url: str, expected: set[tuple[str, str]], interval: float) -> None:
        super().__init__(name="first-pass-scraper", daemon=True)
        self.url, self.expected, self.interval = url, expected, interval
        self.first_seen: dict[tuple[str, str], float] = {}
        self.scrape_seconds: list[float] = []
        self.present_at_first_scrape = 0
        self.error: str | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.first_seen) < len(self.expected):
            started = time.time()
            try:
                with NO_PROXY.open(self.url, timeout=60) as response:
                    text = response.read().decode()
            except OSError as error:
                self.error = f"{type(error).__name__}: {error}"
                self.stopping.wait(self.interval)
                continue
            done = time.time()
            self.scrape_seconds.append(done - started)
            for line in text.splitlines():
                match = EXPIRY_SERIES.match(line)
                if match:
                    self.first_seen.setdefault((match["ns"], match["name"]), started)
            if len(self.scrape_seconds) == 1:
                self.present_at_first_scrape = len(self.first_seen)
            self.stopping.wait(max(self.interval - (done - started), 0.0))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=70)


def metrics_flags() -> list[str]:
    """Flags for a plain-HTTP /metrics on 127.0.0.1 with this operator version (later
    versions serve HTTPS with a TokenReview unless --metrics-insecure)."""
    usage = subprocess.run(
        [sys.executable, "-m", "tokensync", "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    flags = ["--metrics-host=127.0.0.1"]
    if "--metrics-insecure" in usage:
        flags.append("--metrics-insecure")
    return flags


@dataclass
class Credential:
    namespace: str
    name: str
    client: Client
    create_sent: float = 0.0
    created: float = 0.0  # the create call returned: the object exists


@dataclass
class Timeline:
    first_create: float = 0.0
    last_created: float = 0.0
    all_exist: float | None = None
    end: float = 0.0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)


def create_sources(
    core: kubernetes.client.CoreV1Api,
    namespaces: list[str],
    credentials: list[Credential],
    ca: trustme.CA,
    allowed_urls: str,
    concurrency: int,
    ca_ref: bool,
) -> None:
    for ns in namespaces if ca_ref else ():
        core.create_namespaced_config_map(
            ns,
            {
                "metadata": {"name": "token-endpoint-ca", "labels": dict(SOURCE_LABEL)},
                "data": {"ca.crt": ca.cert_pem.bytes().decode()},
            },
        )

    def source(cred: Credential) -> None:
        core.create_namespaced_secret(
            cred.namespace,
            {
                "metadata": {
                    "name": f"client-{cred.name}",
                    "labels": dict(SOURCE_LABEL),
                    "annotations": {"tokensync.dev/allowed-token-urls": allowed_urls},
                },
                "stringData": {"client_secret": cred.client.secret},
            },
        )

    run_all(source, credentials, concurrency)


def credential_body(cred: Credential, token_url: str, ca_ref: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tokenURL": token_url,
        "clientID": cred.client.client_id,
        "clientSecretRef": {"name": f"client-{cred.name}", "key": "client_secret"},
    }
    if ca_ref:  # otherwise the default trust store, as for a public identity provider
        spec["tls"] = {"caRef": {"kind": "ConfigMap", "name": "token-endpoint-ca", "key": "ca.crt"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OAuth2Credential",
        "metadata": {"name": cred.name},
        "spec": spec,
    }


def run_all(fn: Callable[[Credential], None], items: list[Credential], concurrency: int) -> None:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


# --- analysis ------------------------------------------------------------------------------


def pct(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def dist(values: list[float], unit: str = "s", digits: int = 2) -> str:
    if not values:
        return "n/a"
    f = f"{{:.{digits}f}}{unit}"
    return (
        f"min {f.format(min(values))}  p50 {f.format(pct(values, 50))}  "
        f"p95 {f.format(pct(values, 95))}  max {f.format(max(values))}"
    )


def merged_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


@dataclass
class SecretHistory:
    expired_seconds: float = 0.0
    expired_intervals: list[tuple[float, float]] = field(default_factory=list)
    unknown_tokens: int = 0
    headroom: list[float] = field(default_factory=list)  # life left when replaced
    issue_to_secret: list[float] = field(default_factory=list)
    changes: int = 0


def secret_history(
    events: list[SecretEvent], issues: dict[str, Issue], end: float
) -> SecretHistory:
    """What one managed Secret held, and when, from its watch events up to `end`."""
    h = SecretHistory()
    states = [(e.at, e.token) for e in events if e.at <= end and e.type != "DELETED"]
    previous: str | None = None
    for i, (at, token) in enumerate(states):
        stop = states[i + 1][0] if i + 1 < len(states) else end
        issue = issues.get(token or "")
        if token != previous:
            h.changes += 1
            if issue is not None:
                h.issue_to_secret.append(at - issue.issued_at)
            old = issues.get(previous or "")
            if old is not None:
                h.headroom.append(old.expires_at - at)
        previous = token
        if issue is None:
            h.unknown_tokens += 1
            continue
        expired_from = max(at, issue.expires_at)
        if stop > expired_from:
            h.expired_seconds += stop - expired_from
            h.expired_intervals.append((expired_from, stop))
    return h


def audit_lines(path: Path) -> Iterator[str]:
    for file in audit_files(path):
        try:
            with file.open() as handle:
                yield from handle
        except OSError:
            continue


# A credential's first two status writes (Ready=False Pending, then its first
# TokenIssued) belong to its creation wherever they fall: on a saturated machine the
# second lands up to half a minute after the Secret, inside the steady window.
CREATION_STATUS_WRITES = 2
CREATION_STATUS = "patch oauth2credentials/status (creation)"


def audit_counts(path: Path, windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Requests per user (all) and per verb/resource (operator), per window; one pass."""
    by_user: dict[str, Counter[str]] = {w: Counter() for w in windows}
    operator: dict[str, Counter[str]] = {w: Counter() for w in windows}
    seen: set[str] = set()
    status_writes: Counter[tuple[str, str]] = Counter()  # per credential, in log order
    for line in audit_lines(path):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        audit_id = entry.get("auditID")
        if audit_id in seen:
            continue  # a watch logs ResponseStarted and ResponseComplete
        seen.add(audit_id)
        received = datetime.datetime.fromisoformat(entry["requestReceivedTimestamp"]).timestamp()
        user = entry.get("user", {}).get("username", "?")
        ref = entry.get("objectRef") or {}
        what = entry.get("verb", "?") + " " + ref.get("resource", entry.get("requestURI", ""))
        if ref.get("subresource"):
            what += "/" + ref["subresource"]
        if what == "patch oauth2credentials/status" and user == OPERATOR_USER:
            credential = (ref.get("namespace", ""), ref.get("name", ""))
            status_writes[credential] += 1
            if status_writes[credential] <= CREATION_STATUS_WRITES:
                what = CREATION_STATUS
        for window, (start, stop) in windows.items():
            if start <= received < stop:
                by_user[window][user] += 1
                if user == OPERATOR_USER:
                    operator[window][what] += 1
    return {"by_user": by_user, "operator": operator}


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager")


def api_classes(by_what: Counter[str]) -> dict[str, int]:
    """The operator's requests ("verb resource[/subresource]") by what they are for."""
    classes: Counter[str] = Counter()
    for what, count in by_what.items():
        verb, _, resource = what.partition(" ")
        if verb == "watch":
            name = "watch"
        elif what == CREATION_STATUS:
            name = "creation"
        elif resource == "oauth2credentials/status" and verb in ("patch", "update"):
            name = "status writes"
        elif resource == "secrets" and verb in ("create", "patch", "update"):
            name = "Secret writes"
        elif verb in ("get", "list"):
            name = "reads"
        elif resource == "events":
            name = "events"
        elif resource == "leases":
            name = "leases"
        else:
            name = "other"
        classes[name] += count
    return dict(classes)


def writes_per_renewal_over_run(
    operator: dict[str, Counter[str]], renewals: int, unwritten: int
) -> dict[str, float]:
    """The operator's renewal writes per renewal from the first create to the end of the
    steady state (ramp and steady windows together). A window that starts inside the
    creation burst counts writes whose tokens came before it (they land up to half a
    minute late there); this span starts with no token at all, so only its end has an
    edge: the `unwritten` tokens not yet in their Secret, whose writes would come after.
    "bound" counts two writes for each of those. Creation's writes (the Secret's create
    and a credential's first two status writes) are not renewal writes."""
    both = Counter[str]()
    for window in ("ramp", "steady"):
        both.update(operator.get(window, Counter()))
    classes = api_classes(both)
    secret = classes.get("Secret writes", 0) - both.get("create secrets", 0)
    status = classes.get("status writes", 0)
    per = max(renewals, 1)
    return {
        "renewals": renewals,
        "events": classes.get("events", 0),
        "secret": secret / per,
        "status": status / per,
        "writes": (secret + status) / per,
        "unwritten": unwritten,
        "bound": (secret + status + 2 * unwritten) / per,
    }


def trust_line(trust: Trust) -> str:
    return trust_line_of(dataclasses.asdict(trust))


def trust_line_of(t: dict[str, Any]) -> str:
    if not t["system"]:
        return "trust: tls.caRef on every credential (the endpoint's CA only; --ca-ref)"
    return (
        f"trust: system store, as for a public identity provider: no tls.caRef; the operator's "
        f"SSL_CERT_FILE is a copy of {t['source']} ({t['source_cas']} CAs) plus the endpoint's CA"
    )


def trust_details(t: dict[str, Any]) -> list[str]:
    probe, control = t["probe"], t["control"]
    if not t["system"]:
        return [
            f"CPU to build one SSLContext here: {probe['ca_ref_context_ms']:.2f} ms with "
            f"tls.caRef's one CA ({probe['default_context_ms']:.2f} ms with the default "
            "trust store, which this run does not use)"
        ]
    lines = [
        f"ssl.create_default_context() in the operator's environment: {probe['cas_loaded']} CAs "
        f"loaded, endpoint certificate {probe['handshake']}; without SSL_CERT_FILE: "
        f"{control['cas_loaded']} CAs, {control['handshake']}",
        f"CPU to build one SSLContext here: {probe['default_context_ms']:.2f} ms with the "
        f"default trust store, {probe['ca_ref_context_ms']:.2f} ms with tls.caRef's one CA",
    ]
    return lines


def short_user(user: str) -> str:
    if user == OPERATOR_USER:
        return "operator (tokensync SA)"
    return {
        "envtest-admin": "bench (admin: creates, watch)",
        "envtest-kube-controller-manager": "kube-controller-manager",
    }.get(user, user)


# --- the run ---------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_leftover_children() -> None:
    """Direct children of this process still alive after cleanup (e.g. an operator whose
    startup was interrupted before start_operator returned): SIGTERM, then SIGKILL."""
    me = os.getpid()
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me and fields[0] != "Z":
            children.append(int(entry.name))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in children:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", type=int, default=500, metavar="N")
    parser.add_argument("--lifetime", type=int, default=60, metavar="SECONDS")
    parser.add_argument(
        "--lifetimes",
        type=int,
        default=3,
        metavar="K",
        help="lifetimes to observe after the last managed Secret appeared",
    )
    parser.add_argument("--namespaces", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, help="pass --workers to tokensync run (default: its own)"
    )
    parser.add_argument(
        "--create-concurrency", type=int, default=4, help="parallel create calls (default 4)"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        help="give up waiting for all Secrets after this many seconds "
        "(default: 120 + 0.5 s per credential)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="afterwards restart the operator (tokens in place) and observe one more lifetime",
    )
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="create the credentials right after /readyz instead of once the operator is "
        "idle (measures a cold start, when kopf is still processing the listed sources)",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--system-trust",
        dest="ca_ref",
        action="store_false",
        help="(default) credentials without tls.caRef; the operator gets SSL_CERT_FILE = a "
        "copy of the system CA bundle plus the endpoint's CA, so it loads the full system "
        "trust store as it does for public identity providers",
    )
    trust.add_argument(
        "--ca-ref",
        dest="ca_ref",
        action="store_true",
        help="every credential trusts only the endpoint's CA through tls.caRef (the setup "
        "of the measurements before issue 10)",
    )
    parser.add_argument(
        "--no-keep-alive",
        action="store_true",
        help="the token endpoint closes every connection after one response (HTTP/1.0); "
        "by default it keeps connections open like an identity provider (HTTP/1.1, closed "
        f"after {ENDPOINT_IDLE_TIMEOUT:.0f} s idle)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the operator with py-spy (bench/requirements.txt) during the steady "
        "state (and the window after --restart), summarised in the report",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (100)")
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=2.0,
        help="--restart: seconds between scrapes of the new operator's /metrics (default 2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where report.txt, results.json and profiles go "
        "(default bench/results/<UTC time>-<N>x<lifetime>s)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the control plane state and operator log"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.set_defaults(ca_ref=False)
    args = parser.parse_args(argv)
    if args.credentials < 1 or args.lifetime < 1 or args.lifetimes < 1 or args.namespaces < 1:
        parser.error("--credentials, --lifetime, --lifetimes and --namespaces must be >= 1")
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = (
            f"{stamp}-{args.credentials}x{args.lifetime}s-{'ca-ref' if args.ca_ref else 'system'}"
        )
        name += "-restart" if args.restart else ""
        name += "-profile" if args.profile else ""
        args.out = REPO / "bench" / "results" / name
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.py_spy = find_py_spy()

    # Also SIGINT: a shell starts background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    if args.keep:
        os.environ["TOKENSYNC_KEEP_CONTROLPLANE"] = "1"

    cleanup = contextlib.ExitStack()
    try:
        with cleanup:
            cleanup.callback(stop_leftover_children)
            return run(args, cleanup)
    except KeyboardInterrupt as interrupt:
        log(f"interrupted ({interrupt or 'Ctrl-C'}); everything started was stopped")
        return 130


def run(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    n, lifetime, k = args.credentials, float(args.lifetime), args.lifetimes
    load_before = os.getloadavg()
    procs = Processes()
    procs.pids["bench (endpoint+watch)"] = os.getpid()

    log("control plane binaries: tests/envtest/build.sh")
    bin_dir = build_binaries()
    log("starting the control plane")
    cp = start_control_plane(bin_dir)
    cleanup.callback(_remove_state, cp)
    cleanup.callback(cp.stop)
    for component in cp._components:
        if component.process is not None:
            procs.pids[component.name] = component.process.pid
    log(f"Kubernetes {cp.version} at {cp.server}, started in {cp.startup_seconds:.1f}s")

    ca = trustme.CA()
    endpoint = TokenEndpoint(ca)
    cleanup.callback(endpoint.close)
    # socketserver listens with a backlog of 5: with dozens of first requests at once the
    # kernel drops SYNs and clients retry after 1 s, 3 s, ..., which would be measured as
    # operator latency. Re-listening on Linux only raises the backlog.
    endpoint._server.socket.listen(ENDPOINT_BACKLOG)
    accepted = count_connections(endpoint, not args.no_keep_alive, ENDPOINT_IDLE_TIMEOUT)
    allowed = endpoint.url.split("/oauth2")[0] + "/"
    log_dir = Path(tempfile.mkdtemp(prefix="tokensync-bench-"))
    cleanup.callback(_keep_or_remove_log, log_dir, args.keep)
    trust = prepare_trust(not args.ca_ref, ca, log_dir, endpoint.url)
    log(trust_line(trust))

    cp.kubectl("apply", "-k", str(REPO / "deploy"))
    cp.wait_established("oauth2credentials.tokensync.dev")
    operator_kubeconfig = cp.service_account_kubeconfig(*OPERATOR_SA)

    api = admin_client(cp, pool=max(args.create_concurrency, 4) + 2)
    cleanup.callback(api.close)
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    namespaces = [cp.create_namespace("bench") for _ in range(args.namespaces)]
    credentials = [
        Credential(
            namespaces[i % len(namespaces)], f"cred-{i:05d}", endpoint.add_client(int(lifetime))
        )
        for i in range(n)
    ]
    log(
        (f"creating {len(namespaces)} CA ConfigMap(s) and " if args.ca_ref else "creating ")
        + f"{n} labelled client Secrets"
    )
    create_sources(core, namespaces, credentials, ca, allowed, args.create_concurrency, args.ca_ref)

    operator_log = log_dir / "operator.log"
    extra = ["--no-deny-private-networks", "--metrics-port=0"]  # metrics would bind 0.0.0.0
    if args.workers:
        extra.append(f"--workers={args.workers}")
    log("starting the operator")
    started = time.monotonic()
    with environment(trust.operator_env()):
        operator = start_operator(operator_kubeconfig, operator_log, *extra)
    operator_ready_s = time.monotonic() - started
    cleanup.callback(operator.stop)
    procs.pids["operator"] = operator.process.pid
    # /readyz can answer before kopf's first list of credentials succeeded (e.g. a 429
    # while the new CRD's storage initializes); creates before its watch would measure
    # that retry, not the operator. Wait for the watch request in the audit log.
    ready_at = time.time()
    cp.wait_for_audit_event(
        lambda e: e.get("verb") == "watch" and (e.get("objectRef") or {}).get("resource") == PLURAL,
        user=OPERATOR_USER,
        since=ready_at - 30,
        timeout=60,
    )
    watch_gap_s = time.time() - ready_at
    settle = (0.0, 0.0)
    if not args.no_settle:
        log("waiting for the operator to go idle after its start")
        settle = wait_idle(operator.process.pid, since=ready_at)

    watch_api = admin_client(cp, pool=2)
    cleanup.callback(watch_api.close)
    watch = SecretWatch(watch_api)
    watch.start()
    cleanup.callback(watch.stop)
    watch.started_ok.wait(30)
    if watch.error:
        raise RuntimeError(f"the Secret watch failed to start: {watch.error}")

    tl = Timeline()
    tl.snapshots["before creates"] = procs.snapshot()
    log(f"creating {n} credentials ({args.create_concurrency} at a time)")

    def create(cred: Credential) -> None:
        cred.create_sent = time.time()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, cred.namespace, PLURAL, credential_body(cred, endpoint.url, args.ca_ref)
        )
        cred.created = time.time()

    tl.first_create = time.time()
    run_all(create, credentials, args.create_concurrency)
    tl.last_created = time.time()
    log(f"created in {tl.last_created - tl.first_create:.1f}s; waiting for the Secrets")

    timeout = args.ready_timeout or 120 + 0.5 * n
    deadline = time.time() + timeout
    while watch.count_seen() < n and time.time() < deadline:
        if operator.process.poll() is not None:
            raise RuntimeError("the operator exited:\n" + operator.log()[-3000:])
        time.sleep(0.05)
    with watch.lock:
        tl.all_exist = max(watch.first_seen.values()) if len(watch.first_seen) >= n else None
    observe_from = tl.all_exist or time.time()
    tl.snapshots["all Secrets exist"] = procs.snapshot()
    if tl.all_exist is None:
        log(f"only {watch.count_seen()}/{n} Secrets after {timeout:.0f}s; observing anyway")
    else:
        log(f"all {n} Secrets exist after {tl.all_exist - tl.first_create:.1f}s")
    profiler = Profiler(args.py_spy, args.profile_rate, args.out) if args.profile else None
    if profiler:
        profiler.start(operator.process.pid, "steady")
        cleanup.callback(profiler.stop)

    for lap in range(1, k + 1):
        boundary = observe_from + lap * lifetime
        while time.time() < boundary:
            if operator.process.poll() is not None:
                raise RuntimeError("the operator exited:\n" + operator.log()[-3000:])
            time.sleep(min(0.5, max(boundary - time.time(), 0.01)))
        tl.snapshots[f"lifetime {lap}"] = procs.snapshot()
        issued = sum(len(c.client.issued) for c in credentials)
        log(f"lifetime {lap}/{k} observed; {issued} tokens issued so far")
    tl.end = observe_from + k * lifetime
    if profiler:
        profiler.stop(renewals_between(credentials, observe_from, tl.end))

    restart: dict[str, Any] | None = None
    if args.restart:
        log("restarting the operator; observing one more lifetime")
        # This one serves /metrics on 127.0.0.1: its per-credential series tell when each
        # worker ran its first pass (FirstPassScraper).
        restart_extra = [a for a in extra if not a.startswith("--metrics-port")]
        restart_extra += metrics_flags()
        stop_at = time.time()
        killed = operator.stop(grace=TERMINATION_GRACE_S)
        stopped_at = time.time()
        with environment(trust.operator_env()):
            # Reported, not asserted: at 10,000 a restarted operator lists for a minute.
            operator = start_operator(
                operator_kubeconfig, operator_log, *restart_extra, ready_timeout=RESTART_READY_S
            )
        cleanup.callback(operator.stop)
        ready2_at = time.time()
        scraper = FirstPassScraper(
            f"http://127.0.0.1:{operator.metrics_port}/metrics",
            {(c.namespace, c.name) for c in credentials},
            args.scrape_interval,
        )
        scraper.start()
        cleanup.callback(scraper.stop)
        if profiler:
            profiler.start(operator.process.pid, "restart")
        restart_end = stop_at + lifetime
        while time.time() < restart_end:
            if operator.process.poll() is not None:
                raise RuntimeError("the restarted operator exited:\n" + operator.log()[-3000:])
            time.sleep(0.5)
        if profiler:
            profiler.stop(renewals_between(credentials, ready2_at, restart_end))
        scraper.stop()
        restart = {
            "stop_at": stop_at,
            "stop_s": stopped_at - stop_at,
            "killed": killed,
            "ready_at": ready2_at,
            "ready_s": ready2_at - stopped_at,
            "end": restart_end,
            "proc": proc_sample(operator.process.pid),
            "scraper": scraper,
        }

    # Read everything that needs the live processes before they are stopped.
    ready = count_ready(custom, namespaces)
    events = count_events(core, namespaces)
    watch.stop()
    operator_lines = operator.log().splitlines()
    windows = {"ramp": (tl.first_create, observe_from), "steady": (observe_from, tl.end)}
    if restart is not None:
        windows["restart"] = (restart["ready_at"], restart["end"])
    audit = audit_counts(cp.audit_log, windows)
    results = analyse(args, credentials, watch, tl, audit, endpoint)
    results["connections"] = connection_counts(accepted, credentials, windows)
    if restart is not None:
        results["restart"] = analyse_restart(args, credentials, watch, restart, endpoint)
    results.update(
        trust=dataclasses.asdict(trust),
        profiles=profiler.results if profiler else {},
        out=str(args.out),
        kubernetes=cp.version,
        operator_ready_s=operator_ready_s,
        operator_watch_gap_s=watch_gap_s,
        operator_settle=settle,
        settled=not args.no_settle,
        ready_at_end=ready,
        k8s_events=events,
        load_before=load_before,
        load_after=os.getloadavg(),
        operator_log_problems=[
            ln for ln in operator_lines if any(w in ln.lower() for w in LOG_PROBLEM_WORDS)
        ],
        operator_log_lines=len(operator_lines),
    )
    report = print_report(args, results, tl)
    (args.out / "report.txt").write_text(report + "\n")
    raw = json.dumps(results, indent=2, default=str)
    (args.out / "results.json").write_text(raw)
    if args.json:
        args.json.write_text(raw)
    log(f"report, results and profiles in {args.out}")
    return 0


def wait_idle(pid: int, since: float, timeout: float = 180.0) -> tuple[float, float]:
    """Wait until the process used under 5% of a core for a whole second. Returns the
    seconds since `since` and the CPU seconds the process used while being waited for."""
    first = proc_sample(pid)
    start_cpu = first.cpu if first else 0.0
    previous = start_cpu
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1.0)
        sample = proc_sample(pid)
        if sample is None:
            break
        if sample.cpu - previous < 0.05:
            return time.time() - since, sample.cpu - start_cpu
        previous = sample.cpu
    return time.time() - since, (proc_sample(pid) or ProcSample(start_cpu, 0, 0, 0)).cpu - start_cpu


def _keep_or_remove_log(log_dir: Path, keep: bool) -> None:
    if keep:
        log(f"operator log kept in {log_dir}")
        return
    for path in log_dir.iterdir():
        path.unlink()
    log_dir.rmdir()


def count_ready(custom: kubernetes.client.CustomObjectsApi, namespaces: list[str]) -> dict:
    reasons: Counter[str] = Counter()
    for ns in namespaces:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        for item in items:
            ready = [
                c
                for c in (item.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ]
            reasons[f"{ready[0]['status']}/{ready[0]['reason']}" if ready else "none"] += 1
    return dict(reasons)


def count_events(core: kubernetes.client.CoreV1Api, namespaces: list[str]) -> dict:
    kinds: Counter[str] = Counter()
    for ns in namespaces:
        for event in core.list_namespaced_event(ns).items:
            kinds[f"{event.type}/{event.reason}"] += event.count or 1
    return dict(kinds)


def analyse(
    args: argparse.Namespace,
    credentials: list[Credential],
    watch: SecretWatch,
    tl: Timeline,
    audit: dict[str, Any],
    endpoint: TokenEndpoint,
) -> dict[str, Any]:
    lifetime, end = float(args.lifetime), tl.end
    observe_from = tl.all_exist or end - args.lifetimes * lifetime
    issues: dict[str, Issue] = {}
    with endpoint.lock:
        for c in credentials:
            for issue in c.client.issued:
                issues[issue.token] = issue
    by_secret: dict[tuple[str, str], list[SecretEvent]] = defaultdict(list)
    with watch.lock:
        for event in watch.events:
            by_secret[(event.namespace, event.name)].append(event)

    latencies, histories = [], []
    to_request: list[float] = []  # create -> first token request at the endpoint
    request_to_secret: list[float] = []  # first token request -> first Secret event
    tokens = requests = failed = 0
    ideal = {"none": 0, "mean": 0, "full": 0}
    steady_issues = ramp_renewals = 0
    over, under, missing = 0, 0, 0
    ages, late = [], []
    age_lo, age_hi = refresh_age(lifetime, 1.0), refresh_age(lifetime, 0.0)
    for c in credentials:
        issued = [i for i in c.client.issued if i.issued_at <= end]
        sent = [t for t in c.client.requests if t <= end]
        tokens += len(issued)
        requests += len(sent)
        failed += len(sent) - len(issued)
        steady_issues += sum(observe_from <= i.issued_at for i in issued)
        ramp_renewals += sum(i.issued_at < observe_from for i in issued[1:])
        seen = watch.first_seen.get((c.namespace, c.name))
        if seen is None:
            missing += 1
        else:
            latencies.append(seen - c.created)
            if sent:
                to_request.append(sent[0] - c.created)
                request_to_secret.append(seen - sent[0])
        if issued:
            window = end - issued[0].issued_at
            per = {
                "none": ideal_tokens(window, lifetime, 0.0),
                "mean": ideal_tokens(window, lifetime, 0.5),
                "full": ideal_tokens(window, lifetime, 1.0),
            }
            for key, value in per.items():
                ideal[key] += value
            over += len(issued) > per["full"]
            under += len(issued) < per["none"]
            for previous, current in itertools.pairwise(issued):
                age = current.issued_at - previous.issued_at
                ages.append(age)
                late.append(age - age_hi)
        histories.append(secret_history(by_secret.get((c.namespace, c.name), []), issues, end))

    expired_intervals = [iv for h in histories for iv in h.expired_intervals]
    snaps = tl.snapshots
    costs = {}
    for name in snaps["before creates"].procs:
        costs[name] = cost_of(name, snaps)
    machine = {
        phase: machine_share(snaps[a], snaps[b])
        for phase, (a, b) in {
            "ramp": ("before creates", "all Secrets exist"),
            "steady": ("all Secrets exist", f"lifetime {args.lifetimes}"),
        }.items()
    }
    return {
        "credentials": args.credentials,
        "lifetime_s": lifetime,
        "lifetimes": args.lifetimes,
        "namespaces": args.namespaces,
        "create_s": tl.last_created - tl.first_create,
        "all_exist_s": None if tl.all_exist is None else tl.all_exist - tl.first_create,
        "missing_secrets": missing,
        "latency": latencies,
        "latency_to_request": to_request,
        "latency_request_to_secret": request_to_secret,
        "window_s": end - tl.first_create,
        "steady_s": end - observe_from,
        "tokens": tokens,
        "requests": requests,
        "failed_requests": failed,
        "steady_issues": steady_issues,
        "ramp_renewals": ramp_renewals,
        "ideal": ideal,
        "credentials_over": over,
        "credentials_under": under,
        "refresh_ages": ages,
        "refresh_age_band": (age_lo, age_hi),
        "late": [x for x in late if x > 0.5],
        "early": sum(age < age_lo - EARLY_TOLERANCE for age in ages),
        "early_operator_view": early_by_operator_view(
            credentials, watch, lifetime, tl.first_create, end
        ),
        "expired_seconds": sum(h.expired_seconds for h in histories),
        "expired_wall_seconds": merged_length(expired_intervals),
        "secrets_expired": sum(h.expired_seconds > 0 for h in histories),
        "max_expired": max((h.expired_seconds for h in histories), default=0.0),
        "unknown_tokens": sum(h.unknown_tokens for h in histories),
        "headroom": [x for h in histories for x in h.headroom],
        "issue_to_secret": [x for h in histories for x in h.issue_to_secret],
        "secret_changes": sum(h.changes for h in histories),
        "watch_events": len(watch.events),
        "watch_relists": watch.relists,
        "watch_reconnects": watch.reconnects,
        "watch_error": watch.error,
        "costs": costs,
        "machine": machine,
        "audit": audit,
    }


def early_by_operator_view(
    credentials: list[Credential], watch: SecretWatch, lifetime: float, start: float, end: float
) -> list[float]:
    """Token ages (from the held token's issued-at annotation to the next request's arrival
    at the endpoint) of refreshes in (start, end] that came before the earliest refresh
    point by the operator's own clock and annotations."""
    annotated: dict[str, float] = {}
    with watch.lock:
        for event in watch.events:
            if event.token and event.issued_at is not None:
                annotated.setdefault(event.token, event.issued_at)
    lo = refresh_age(lifetime, 1.0)
    early = []
    for c in credentials:
        for previous, current in itertools.pairwise(c.client.issued):
            if not start < current.issued_at <= end:
                continue
            issued = annotated.get(previous.token)
            if issued is None:
                continue
            age = current.issued_at - issued
            if age < lo - OPERATOR_VIEW_TOLERANCE:
                early.append(age)
    return early


def renewals_between(credentials: list[Credential], start: float, end: float) -> int:
    return sum(start <= i.issued_at < end for c in credentials for i in c.client.issued[1:])


def connection_counts(
    accepted: list[float], credentials: list[Credential], windows: dict[str, tuple[float, float]]
) -> dict[str, dict[str, int]]:
    """TLS connections the endpoint accepted and token requests it received, per window:
    their ratio shows whether the operator reuses connections."""
    out = {}
    for window, (start, stop) in windows.items():
        out[window] = {
            "connections": sum(start <= t < stop for t in accepted),
            "requests": sum(start <= t < stop for c in credentials for t in c.client.requests),
        }
    return out


def analyse_restart(
    args: argparse.Namespace,
    credentials: list[Credential],
    watch: SecretWatch,
    restart: dict[str, Any],
    endpoint: TokenEndpoint,
) -> dict[str, Any]:
    """The lifetime after an operator restart with every token in place."""
    lifetime = float(args.lifetime)
    lo, hi = refresh_age(lifetime, 1.0), refresh_age(lifetime, 0.0)
    start, end = restart["stop_at"], restart["end"]
    scraper: FirstPassScraper = restart["scraper"]
    first_pass = [
        scraper.first_seen[(c.namespace, c.name)] - restart["ready_at"]
        for c in credentials
        if (c.namespace, c.name) in scraper.first_seen
    ]
    issues: dict[str, Issue] = {}
    ages, late, early = [], [], []
    requests = failed = 0
    with endpoint.lock:
        for c in credentials:
            for issue in c.client.issued:
                issues[issue.token] = issue
            sent = sum(start < t <= end for t in c.client.requests)
            requests += sent
            failed += sent - sum(start < i.issued_at <= end for i in c.client.issued)
            for previous, current in itertools.pairwise(c.client.issued):
                if not start < current.issued_at <= end:
                    continue
                age = current.issued_at - previous.issued_at
                ages.append(age)
                if age > hi + 0.5:
                    late.append(age - hi)
                if age < lo - EARLY_TOLERANCE:
                    early.append(age)
    by_secret: dict[tuple[str, str], list[SecretEvent]] = defaultdict(list)
    for event in watch.events:
        by_secret[(event.namespace, event.name)].append(event)
    expired = 0.0
    affected = 0
    for c in credentials:
        history = secret_history(by_secret.get((c.namespace, c.name), []), issues, end)
        in_window = sum(
            max(0.0, stop - max(begin, start)) for begin, stop in history.expired_intervals
        )
        expired += in_window
        affected += in_window > 0
    proc: ProcSample | None = restart["proc"]
    return {
        "stop_s": restart["stop_s"],
        "killed": restart["killed"],
        "ready_s": restart["ready_s"],
        "window_s": end - start,
        "first_pass": first_pass,
        "first_pass_all_s": max(first_pass) if len(first_pass) == len(credentials) else None,
        "present_at_first_scrape": scraper.present_at_first_scrape,
        "scrapes": scraper.scrape_seconds,
        "scrape_error": scraper.error,
        "requests": requests,
        "failed_requests": failed,
        "refreshes": len(ages),
        "late": late,
        "early": early,
        "early_operator_view": early_by_operator_view(credentials, watch, lifetime, start, end),
        "expired_seconds": expired,
        "secrets_expired": affected,
        "cpu": proc.cpu if proc else None,
        "peak_rss_mb": proc.hwm_mb if proc else None,
    }


def cost_of(name: str, snaps: dict[str, Snapshot]) -> dict[str, Any]:
    def cpu(label: str) -> float | None:
        sample = snaps[label].procs.get(name)
        return sample.cpu if sample else None

    labels = list(snaps)
    last = snaps[labels[-1]].procs.get(name)
    laps = [label for label in labels if label.startswith("lifetime")]
    per_lap = []
    previous = "all Secrets exist"
    for label in laps:
        a, b = cpu(previous), cpu(label)
        per_lap.append(None if a is None or b is None else b - a)
        previous = label
    start, exist, end = cpu("before creates"), cpu("all Secrets exist"), cpu(labels[-1])
    a, b = snaps["all Secrets exist"].procs.get(name), last
    return {
        "steady_wait_s": b.wait_s - a.wait_s if a and b else None,
        "steady_slices": b.slices - a.slices if a and b else None,
        "startup_cpu": start,
        "ramp_cpu": None if start is None or exist is None else exist - start,
        "steady_cpu": None if exist is None or end is None else end - exist,
        "per_lifetime_cpu": per_lap,
        "total_cpu": end,
        "rss_mb": {
            label: (s.rss_mb if (s := snaps[label].procs.get(name)) else None) for label in labels
        },
        "peak_rss_mb": last.hwm_mb if last else None,
        "threads": last.threads if last else None,
    }


def machine_share(a: Snapshot, b: Snapshot) -> dict[str, float]:
    busy = b.machine[0] - a.machine[0]
    total = b.machine[1] - a.machine[1]
    ours = sum(
        (sb.cpu - sa.cpu)
        for name, sb in b.procs.items()
        if sb is not None and (sa := a.procs.get(name)) is not None
    )
    wall = b.at - a.at
    return {
        "wall_s": wall,
        "cores": os.cpu_count() or 1,
        "busy_cpu_s": busy,
        "capacity_cpu_s": total,
        "ours_cpu_s": ours,
        "others_cpu_s": max(busy - ours, 0.0),
    }


# --- the report ------------------------------------------------------------------------------


def print_report(args: argparse.Namespace, r: dict[str, Any], tl: Timeline) -> str:
    n, lifetime, k = r["credentials"], r["lifetime_s"], r["lifetimes"]
    out: list[str] = []
    w = out.append
    rb = renew_before(lifetime)
    lo, hi = r["refresh_age_band"]
    w("")
    w("=" * 78)
    w(
        f"tokensync refresh at scale: {n} credentials, {lifetime:.0f} s tokens, "
        f"{k} lifetimes observed, {r['namespaces']} namespace(s)"
    )
    w("=" * 78)
    w(
        f"Kubernetes {r['kubernetes']} (tests/envtest), Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {r['load_before'][0]:.2f} before / "
        f"{r['load_after'][0]:.2f} after"
    )
    w(f"command: bench/refresh_at_scale.py {' '.join(sys.argv[1:])}".rstrip())
    w(trust_line_of(r["trust"]))
    for line in trust_details(r["trust"]):
        w(f"  {line}")
    w(
        "token endpoint: "
        + (
            "HTTP/1.0, one connection per request (--no-keep-alive)"
            if args.no_keep_alive
            else f"HTTP/1.1 keep-alive (idle connections closed after "
            f"{ENDPOINT_IDLE_TIMEOUT:.0f} s)"
        )
        + "; TLS connections accepted / token requests: "
        + ", ".join(
            f"{window} {c['connections']}/{c['requests']}" for window, c in r["connections"].items()
        )
    )
    w("")
    w("Creation")
    w(f"  operator ready (from process start)     {r['operator_ready_s']:.1f} s")
    w(f"  /readyz -> operator's credential watch  {r['operator_watch_gap_s']:.1f} s")
    if r["settled"]:
        idle_s, idle_cpu = r["operator_settle"]
        w(
            f"  /readyz -> operator idle                {idle_s:.1f} s, "
            f"{idle_cpu:.1f} CPU-s after the watch started (creates start after it)"
        )
    else:
        w("  creates started right after /readyz (--no-settle: cold operator)")
    w(f"  {n} creates ({args.create_concurrency} in parallel) took {r['create_s']:.1f} s")
    if r["all_exist_s"] is None:
        w(f"  all managed Secrets exist                NOT REACHED: {r['missing_secrets']} missing")
    else:
        w(
            f"  all managed Secrets exist                {r['all_exist_s']:.1f} s after the "
            f"first create ({n / r['all_exist_s']:.1f} credentials/s), "
            f"{r['all_exist_s'] - r['create_s']:.1f} s after the last create returned"
        )
    w(f"  create -> first Secret event            {dist(r['latency'])}")
    w(f"    create -> first token request         {dist(r['latency_to_request'])}")
    w(f"    first token request -> Secret event   {dist(r['latency_request_to_secret'])}")
    when = "end (after the restart)" if "restart" in r else "end"
    w(f"  Ready at the {when:<27}{fmt_counts(r['ready_at_end'])}")
    w("")
    ideal = r["ideal"]
    w(
        f"Token requests (window: first create + {r['window_s']:.0f} s; "
        f"steady state {r['steady_s']:.0f} s = {k} x {lifetime:.0f} s)"
    )
    w(
        f"  API.md schedule: renew {rb:.1f} s before expiry, minus jitter up to "
        f"{JITTER_SHARE * lifetime:.1f} s -> refresh at token age {lo:.1f}..{hi:.1f} s"
    )
    w(
        f"  requests sent            {r['requests']}  (tokens issued {r['tokens']}, "
        f"failed {r['failed_requests']})"
    )
    w("  ideal (per credential, 1 + refresh points from its first token to the end)")
    w(f"    no jitter {ideal['none']}   mean jitter {ideal['mean']}   full jitter {ideal['full']}")
    if ideal["mean"]:
        w(
            f"  requests / ideal(mean)   {r['requests'] / ideal['mean']:.3f}   "
            f"(band {ideal['none'] / ideal['mean']:.3f}..{ideal['full'] / ideal['mean']:.3f})"
        )
    w(f"  credentials above the band {r['credentials_over']}, below it {r['credentials_under']}")
    w(f"  token age at refresh     {dist(r['refresh_ages'])}")
    lateness = [max(age - hi, 0.0) for age in r["refresh_ages"]]
    w(
        f"  refresh lateness (age beyond {hi:.1f} s, 0 if in time)  {dist(lateness)}; "
        f"> 0.5 s late: {len(r['late'])}"
    )
    w(
        f"  refreshes later than age {hi:.1f} s + 0.5 s: {len(r['late'])} of "
        f"{len(r['refresh_ages'])}" + (f"  ({dist(r['late'])} late)" if r["late"] else "")
    )
    w(
        f"  refreshes earlier than age {lo:.1f} s - 1 s (not due yet): {r['early']} by the "
        f"endpoint's issue times; {len(r['early_operator_view'])} by the operator's own "
        f"issued-at annotation (age < {lo:.1f} s - {OPERATOR_VIEW_TOLERANCE} s)"
    )
    w("")
    w("Expired tokens in Secrets (issuance log x Secret watch events)")
    w(
        f"  credential-seconds with an expired token   {r['expired_seconds']:.1f} s  "
        f"({r['secrets_expired']} Secrets affected, worst {r['max_expired']:.1f} s)"
    )
    w(f"  wall-clock seconds any Secret was expired  {r['expired_wall_seconds']:.1f} s")
    w(f"  life left when a token was replaced        {dist(r['headroom'])}")
    issue_ms = [x * 1000 for x in r["issue_to_secret"]]
    w(f"  token issued -> Secret updated             {dist(issue_ms, ' ms', 0)}")
    w(
        f"  Secret changes {r['secret_changes']}, watch events {r['watch_events']}, "
        f"unknown tokens {r['unknown_tokens']}, watch relists {r['watch_relists']}, "
        f"reconnects {r['watch_reconnects']}"
        + (f", watch error: {r['watch_error']}" if r["watch_error"] else "")
    )
    w("")
    w("CPU seconds and memory (from /proc; ramp = first create until all Secrets exist)")
    w(
        f"  {'process':<24}{'startup':>9}{'ramp':>8}{'steady':>8}{'per lifetime':>22}"
        f"{'peak RSS':>10}{'RSS end':>9}"
    )
    steady_total = 0.0
    for name, c in r["costs"].items():
        laps = " ".join(f"{x:.1f}" if x is not None else "?" for x in c["per_lifetime_cpu"])
        rss_end = list(c["rss_mb"].values())[-1]
        steady_total += c["steady_cpu"] or 0.0
        w(
            f"  {name:<24}{num(c['startup_cpu']):>9}{num(c['ramp_cpu']):>8}"
            f"{num(c['steady_cpu']):>8}{laps:>22}{num(c['peak_rss_mb'], 0):>7} MB"
            f"{num(rss_end, 0):>6} MB"
        )
    op = r["costs"].get("operator", {})
    steady = op.get("steady_cpu") or 0.0
    ramp = op.get("ramp_cpu") or 0.0
    if steady_total:
        w(
            f"  operator share of the listed processes' steady CPU: "
            f"{100 * steady / steady_total:.0f}%"
        )
    w(f"  operator steady CPU per 1000 credentials per lifetime  {steady / (n / 1000) / k:.2f} s")
    if r["steady_issues"]:
        w(
            f"  operator steady CPU per refresh                        "
            f"{1000 * steady / r['steady_issues']:.1f} ms  ({r['steady_issues']} refreshes)"
        )
    w(f"  operator ramp CPU per created credential               {1000 * ramp / n:.1f} ms")
    steady_s = r["steady_s"] or 1e-9
    w(
        f"  operator steady CPU per second                         {steady / steady_s:.3f} cores"
        f"  ({steady:.1f} CPU-s over {steady_s:.0f} s)"
    )
    wait = op.get("steady_wait_s")
    if wait is not None:
        # Runnable but not running: the machine's cores were busy (contention), as
        # opposed to CPU the operator used.
        w(
            f"  operator threads runnable but waiting for a core (schedstat, steady) "
            f"{wait:.1f} s = {wait / steady_s:.2f} threads waiting on average, "
            f"{wait / max(steady, 1e-9):.1f} s per CPU-s used; scheduled "
            f"{op.get('steady_slices')} times"
        )
    rss = op.get("rss_mb", {})
    rss_end = list(rss.values())[-1] if rss else None
    rss_before = rss.get("before creates")
    if rss_end is not None:
        per = rss_end * 2**20 / n
        line = f"  operator RSS at the end {rss_end:.0f} MB = {per:,.0f} bytes per credential"
        if rss_before is not None:
            marginal = (rss_end - rss_before) * 2**20 / n
            line += (
                f"; above the idle operator ({rss_before:.0f} MB before the creates): "
                f"{marginal:,.0f} bytes per credential"
            )
        w(line)
    control = [c for name, c in r["costs"].items() if name in CONTROL_PLANE]
    cp_steady = sum(c["steady_cpu"] or 0.0 for c in control)
    cores = os.cpu_count() or 1
    if control:
        w(
            f"  control plane ({', '.join(CONTROL_PLANE)}) in steady state: "
            f"{cp_steady:.1f} CPU-s = {cp_steady / steady_s:.3f} cores, "
            f"{100 * cp_steady / (steady_s * cores):.0f}% of the machine's {cores} cores"
            + (f", {cp_steady / steady:.2f}x the operator's CPU" if steady else "")
            + (
                f"; {1000 * cp_steady / r['steady_issues']:.1f} ms per refresh"
                if r["steady_issues"]
                else ""
            )
        )
    w(
        "  operator RSS over time: "
        + ", ".join(f"{label} {num(v, 0)} MB" for label, v in op.get("rss_mb", {}).items())
        + f"; {op.get('threads')} threads at the end"
    )
    for phase, m in r["machine"].items():
        w(
            f"  machine during {phase}: {m['busy_cpu_s']:.0f} of {m['capacity_cpu_s']:.0f} "
            f"CPU-s busy ({100 * m['busy_cpu_s'] / max(m['capacity_cpu_s'], 1e-9):.0f}%), "
            f"{m['others_cpu_s']:.0f} CPU-s by processes outside this benchmark"
        )
    w("")
    w("Kubernetes API requests (audit log, by request time)")
    for phase in ("ramp", "steady"):
        users = r["audit"]["by_user"].get(phase, Counter())
        w(f"  {phase}: " + ", ".join(f"{short_user(u)} {c}" for u, c in users.most_common(6)))
    op_steady = r["audit"]["operator"].get("steady", Counter())
    total = sum(op_steady.values())
    classes = api_classes(op_steady)
    calls = total - classes.get("watch", 0) - classes.get("creation", 0)
    renewals = r["steady_issues"]
    if renewals:
        w(
            f"  operator in steady state, per renewal ({renewals} renewals): "
            f"{calls / renewals:.2f} API calls (not counted: watches {classes.get('watch', 0)}, "
            f"late status writes of creations {classes.get('creation', 0)}); "
            + ", ".join(
                f"{name} {count / renewals:.2f}"
                for name, count in sorted(classes.items())
                if name not in ("watch", "creation")
            )
        )
        w("    by verb and resource: " + ", ".join(f"{x} {c}" for x, c in op_steady.most_common(8)))
        run = writes_per_renewal_over_run(
            r["audit"]["operator"],
            r["steady_issues"] + r["ramp_renewals"],
            max(r["tokens"] - r["secret_changes"], 0),
        )
        w(
            f"  operator from the first create to the end, per renewal ({run['renewals']} "
            f"renewals, no window edge at the start): {run['writes']:.3f} writes (Secret "
            f"{run['secret']:.3f}, status {run['status']:.3f}); {run['unwritten']} tokens not "
            f"yet in their Secret at the end, {run['bound']:.3f} if each takes two more; "
            f"events {run['events']} (first tokens' TokenIssued: a routine renewal posts none)"
        )
    op_ramp = r["audit"]["operator"].get("ramp", Counter())
    ramp_classes = api_classes(op_ramp)
    ramp_calls = sum(op_ramp.values()) - ramp_classes.get("watch", 0)
    w(
        f"  operator during creation (ramp): {ramp_calls} API calls = {ramp_calls / n:.2f} per "
        f"created credential (the ramp also held {r['ramp_renewals']} renewals); "
        + ", ".join(f"{x} {c}" for x, c in op_ramp.most_common(8))
    )
    w(f"  Events in the bench namespaces: {fmt_counts(r['k8s_events'])}")
    problems = r["operator_log_problems"]
    w(
        f"  operator log: {r['operator_log_lines']} lines, {len(problems)} mention an error, "
        "failure or retry"
    )
    for line in sorted(set(problems))[:5]:
        w(f"    {line[:160]}")
    if "restart" in r:
        rs = r["restart"]
        w("")
        w(f"Operator restart (tokens in place), observed {rs['window_s']:.0f} s from SIGTERM")
        how = f"killed after {TERMINATION_GRACE_S:.0f} s" if rs["killed"] else "exited by itself"
        w(
            f"  old operator stopped in {rs['stop_s']:.1f} s ({how}); "
            f"new one ready in {rs['ready_s']:.1f} s"
        )
        looked = rs["first_pass"]
        all_s = rs["first_pass_all_s"]
        w(
            "  /readyz -> every Secret looked at (worker's first pass)  "
            + (f"{all_s:.1f} s" if all_s is not None else f"NOT REACHED ({len(looked)} of {n})")
            + f"  (+- {args.scrape_interval:.0f} s: /metrics scraped every "
            f"{args.scrape_interval:.0f} s)"
        )
        w(f"    per Secret  {dist(looked)}")
        scrapes = rs["scrapes"]
        w(
            f"    {len(scrapes)} scrapes, {dist(scrapes)} each"
            + (
                f"; {rs['present_at_first_scrape']} series already in the first scrape"
                if rs["present_at_first_scrape"]
                else ""
            )
            + (f"; last scrape error: {rs['scrape_error']}" if rs["scrape_error"] else "")
        )
        early_op = rs["early_operator_view"]
        outside = len(rs["late"]) + len(early_op)
        w(
            f"  token requests outside the renew window after restart: {outside} "
            f"(of {rs['requests']} requests, {rs['failed_requests']} failed): "
            f"{len(early_op)} early, {len(rs['late'])} late"
        )
        w(
            f"    early = before the window by the operator's own view (request arrival - "
            f"issued-at annotation < {lo:.1f} s - {OPERATOR_VIEW_TOLERANCE} s)"
            + (f": ages {dist(early_op)}" if early_op else "")
        )
        w(
            f"    by the endpoint's issue times (age < {lo:.1f} s - 1 s): {len(rs['early'])}"
            + (f" (ages {dist(rs['early'])})" if rs["early"] else "")
            + "; the difference is the previous request's latency (the operator's issued-at "
            "is taken before it sends) plus the annotation's truncation to the second"
        )
        w(
            f"    late (age > {hi:.1f} s + 0.5 s by the endpoint's times) {len(rs['late'])}"
            + (f" ({dist(rs['late'])} late)" if rs["late"] else "")
        )
        restart_api = r["audit"]["operator"].get("restart", Counter())
        w(
            f"  operator API calls from /readyz to the window's end: {sum(restart_api.values())}; "
            + ", ".join(f"{x} {c}" for x, c in restart_api.most_common(8))
        )
        w(
            f"  credential-seconds with an expired token {rs['expired_seconds']:.1f} s "
            f"({rs['secrets_expired']} Secrets)"
        )
        w(
            f"  new operator: {num(rs['cpu'])} CPU-s, peak RSS {num(rs['peak_rss_mb'], 0)} MB "
            f"over the window"
        )
    for phase, profile in r["profiles"].items():
        w("")
        w(
            f"py-spy ({phase}): {profile['samples']} samples, {profile['errors']} errors, "
            f"py-spy itself used {num(profile['py_spy_cpu_s'])} CPU-s; raw stacks: {profile['raw']}"
        )
        if profile["summary"]:
            out.extend(profile["summary"].splitlines()[1:])
    w("")
    w("Machines differ: compare the ratios and counts, not absolute seconds. The benchmark")
    w("process itself (token endpoint, watch) and the control plane share the same cores.")
    w(f"Saved in {r['out']}")
    text = "\n".join(out)
    print(text, flush=True)
    return text


def num(value: float | None, digits: int = 1) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
