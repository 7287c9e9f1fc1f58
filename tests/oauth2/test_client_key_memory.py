"""A mutual-TLS client key never touches a filesystem (issue 18, item 7): it is loaded from
an anonymous memfd by /proc/self/fd/N. Proven against a real TLS server that requires a
client certificate (CAs from trustme), with inotify watching the temporary directory and a
Python audit hook watching every file the requesting thread opens for writing."""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.token_servers import ClientCert, Credentials, request_for
from servers.quirky import TokenServer
from tokensync import transport
from tokensync.oauth2 import TLSSettings, fetch_token
from tokensync.transport import NetworkGuard, SSLContextCache, Transport

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify and memfd are Linux's"
)

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
_EVENT = struct.Struct("iIII")


class Inotify:
    """Names created, written or moved into one directory (and so anything under it: a
    subdirectory or file there is created there first)."""

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        mask = IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE
        wd = self._libc.inotify_add_watch(self.fd, str(directory).encode(), mask)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def names(self) -> list[str]:
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                names.append(data[offset : offset + length].rstrip(b"\0").decode())
                offset += length

    def close(self) -> None:
        os.close(self.fd)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_watched_thread: int | None = None
_written: list[str] = []


def _audit(event: str, args: tuple) -> None:
    # Installed once per process (audit hooks cannot be removed); records only while a
    # test watches a thread.
    if event != "open" or _watched_thread != threading.get_ident():
        return
    path, mode, flags = args
    if isinstance(path, int):
        return  # os.fdopen of a descriptor already open: creates nothing
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & _WRITE_FLAGS
    )
    if writes:
        _written.append(str(path))


_hook_installed = False


@contextlib.contextmanager
def files_written_by_this_thread() -> Iterator[list[str]]:
    global _hook_installed, _watched_thread
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _written.clear()
    _watched_thread = threading.get_ident()
    try:
        yield _written
    finally:
        _watched_thread = None


@pytest.fixture
def tmpdir_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Inotify]]:
    """A fresh, empty TOKENSYNC_TMPDIR (and TMPDIR: every temporary file of the process
    would land there), watched with inotify."""
    directory = tmp_path / "tmpdir"
    directory.mkdir()
    monkeypatch.setenv("TOKENSYNC_TMPDIR", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    watch = Inotify(directory)
    yield directory, watch
    watch.close()


def _mtls(token_ca, client_cert: ClientCert) -> TLSSettings:
    return TLSSettings(
        ca_pem=token_ca.cert_pem.bytes(),
        client_cert_pem=client_cert.cert_pem,
        client_key_pem=client_cert.key_pem,
    )


def _open_memfds() -> list[str]:
    links = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{name}"))
    return [link for link in links if link.startswith("/memfd:tokensync")]


def _fetch_with_a_new_context(
    server: TokenServer, credentials: Credentials, tls: TLSSettings
) -> tuple[str, SSLContextCache]:
    """One tls_client_auth request whose SSL context (and so the key loading) is built
    during the request: a private transport and context cache."""
    contexts = SSLContextCache()
    sender = Transport(NetworkGuard(deny_private=False), ssl_contexts=contexts)
    try:
        token = fetch_token(request_for(server, credentials, tls=tls), sender=sender)
    finally:
        sender.close()
    return token.access_token, contexts


def test_client_key_never_touches_a_filesystem(
    mtls_server, credentials, token_ca, client_cert, tmpdir_watched, monkeypatch
):
    directory, watch = tmpdir_watched
    paths: list[str] = []
    load = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, *args, **kwargs):
        # What the path names, while it exists (a /proc/self/fd entry is a link).
        paths.append(os.readlink(certfile) if os.path.islink(certfile) else str(certfile))
        return load(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    with files_written_by_this_thread() as written:
        token, contexts = _fetch_with_a_new_context(
            mtls_server, credentials, _mtls(token_ca, client_cert)
        )
    assert token
    assert contexts.builds == 1  # the key was loaded during this request
    assert len(paths) == 1 and paths[0].startswith("/memfd:tokensync-client-key")
    assert written == []  # no file opened for writing, anywhere
    assert watch.names() == []  # nothing created or written under the tmpdir
    assert list(directory.iterdir()) == []
    assert _open_memfds() == []  # and the memfd is closed


def test_the_watch_sees_the_fallback_key_file(
    mtls_server, credentials, token_ca, client_cert, tmpdir_watched, monkeypatch
):
    """Without memfd_create the key goes to a mode-0600 file removed at once: the watch
    above sees it, so it would see a key file written by any other path too."""
    directory, watch = tmpdir_watched
    monkeypatch.delattr(os, "memfd_create")
    modes: list[int] = []
    load = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, *args, **kwargs):
        modes.append(stat.S_IMODE(os.stat(certfile).st_mode))
        assert os.path.dirname(certfile) == str(directory)
        return load(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    with files_written_by_this_thread() as written:
        token, _ = _fetch_with_a_new_context(mtls_server, credentials, _mtls(token_ca, client_cert))
    assert token
    assert modes == [0o600]
    (name,) = set(watch.names())
    assert name.startswith(transport.KEY_FILE_PREFIX) and name.endswith(transport.KEY_FILE_SUFFIX)
    assert written == [str(directory / name)]
    assert list(directory.iterdir()) == []  # removed at once


@pytest.mark.parametrize("refusal", ["enosys", "no-proc"])
def test_memfd_refused_falls_back_to_a_private_file(refusal, tmp_path, monkeypatch, client_cert):
    monkeypatch.setenv("TOKENSYNC_TMPDIR", str(tmp_path))
    if refusal == "enosys":

        def refuse(*_args):
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "memfd_create", refuse)
    else:
        monkeypatch.setattr(transport, "_memfd_path", lambda fd: f"/nonexistent/proc/{fd}")
    with transport.pem_path(b"pem bytes") as path:
        assert os.path.dirname(path) == str(tmp_path)
        assert Path(path).read_bytes() == b"pem bytes"
    assert list(tmp_path.iterdir()) == []


def test_memfd_path_holds_the_pem_and_is_closed_after():
    with transport.pem_path(b"-----BEGIN X-----\n") as path:
        assert path.startswith("/proc/self/fd/")
        assert Path(path).read_bytes() == b"-----BEGIN X-----\n"
        assert os.readlink(path).startswith("/memfd:tokensync-client-key")
        assert len(_open_memfds()) == 1
    assert _open_memfds() == []  # closed: the memory is freed


def test_fallback_removes_key_files_left_by_a_killed_process(tmp_path, monkeypatch):
    """Killed between write and unlink, a process of the fallback leaves a key file; the
    next one removes it before its first write (one old enough to be no load in
    progress)."""
    monkeypatch.setenv("TOKENSYNC_TMPDIR", str(tmp_path))
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(transport, "_stale_files_removed", False)
    old = tmp_path / "tokensync-left.pem"
    fresh = tmp_path / "tokensync-loading.pem"
    other = tmp_path / "unrelated.pem"
    for path in (old, fresh, other):
        path.write_bytes(b"key")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    with transport.pem_path(b"pem"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
