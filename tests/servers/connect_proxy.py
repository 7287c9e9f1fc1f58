"""A real HTTP CONNECT proxy on 127.0.0.1 (stdlib only), recording every CONNECT it gets.

`with ConnectProxy() as proxy:` listens on a free port; `proxy.url` is what HTTPS_PROXY
takes; `proxy.connects` lists the `host:port` of every CONNECT received, in order, even
those it could not serve, and `proxy.requests` every request line (other methods are
answered 405). Tunnels relay bytes both ways until either side closes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from socketserver import StreamRequestHandler, ThreadingTCPServer
from typing import Any


class _Handler(StreamRequestHandler):
    server: _Server
    rbufsize = 0  # unbuffered: nothing of the tunnel's first bytes is kept back in rfile

    def handle(self) -> None:
        request_line = self.rfile.readline(8192).decode("latin-1").strip()
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass  # headers (Proxy-Authorization, Host): not needed
        self.server.owner._record_line(request_line)
        method, _, rest = request_line.partition(" ")
        target = rest.split(" ")[0]
        if method != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.owner._record(target)
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except (OSError, ValueError):
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            self._relay(self.connection, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        while not self.server.owner.stopping.is_set():
            # TLS may hold decrypted bytes that select() cannot see.
            readable = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not readable:
                readable, _, _ = select.select(sockets, [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)


class _Server(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: ConnectProxy, tls: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # An https:// proxy: TLS first, in the connection's own thread.
        if self.tls is not None:
            request.settimeout(10)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-tunnel is expected


class ConnectProxy:
    """`tls`: a server SSLContext makes it an https:// proxy (TLS to the proxy, and the
    client's TLS to the target inside it)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connects: list[str] = []
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(self, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        scheme = "https" if self._server.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def _record_line(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    def _record(self, target: str) -> None:
        with self._lock:
            self.connects.append(target)

    def start(self) -> ConnectProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ConnectProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
