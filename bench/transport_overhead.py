"""CPU of the token transport alone (Transport.post: pools, TLS, the requests Session and
adapter, the deadline), per request on a warm keep-alive connection.

The server is a minimal keep-alive responder on 127.0.0.1 that answers each request with
one write (so the client never waits for delayed ACKs and thousands of requests take
seconds); https trusts it through the system store (its CA appended to a copy of the
system bundle, SSL_CERT_FILE), as a credential without tls.caRef does.

    python bench/transport_overhead.py [--requests 3000] [--scheme https|http]
    python bench/transport_overhead.py --compare /path/to/old/operator [--rounds 5]

--compare runs this script alternately against the working tree's operator/ and the
other source tree, --rounds times per scheme, and prints the median of each. Prints
numbers; never fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = b'{"access_token":"bench-token","token_type":"Bearer","expires_in":3600}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def _serve_connection(conn: socket.socket) -> None:
    with contextlib.suppress(OSError), conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += conn.recv(65536)
            data = rest[length:]
            conn.sendall(RESPONSE)


def start_server(context: ssl.SSLContext | None) -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            if context is not None:
                try:
                    conn = context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def measure(requests: int, scheme: str) -> None:
    import trustme

    from servers.quirky import ServerTLS

    context = None
    if scheme == "https":
        ca = trustme.CA()
        paths = ssl.get_default_verify_paths()
        bundle = Path(tempfile.mkdtemp()) / "bundle.pem"
        bundle.write_bytes(
            Path(paths.cafile or paths.openssl_cafile).read_bytes() + b"\n" + ca.cert_pem.bytes()
        )
        os.environ["SSL_CERT_FILE"] = str(bundle)
        context = ServerTLS.for_ca(ca).context()
    port = start_server(context)

    from tokensync import transport
    from tokensync.oauth2 import TLSSettings, TokenRequest, build_request_parts

    url = f"{scheme}://127.0.0.1:{port}/token"
    request = TokenRequest(token_url=url, client_id="bench", client_secret="secret")
    headers, body = build_request_parts(request)
    sender = transport.Transport(transport.NetworkGuard(deny_private=False))
    tls = TLSSettings() if scheme == "https" else None

    def once() -> None:
        raw = sender.post(url, headers, body, tls=tls, timeout=10, max_body_bytes=1024 * 1024)
        assert raw.status == 200 and raw.body == BODY

    for _ in range(50):
        once()  # warm-up: imports, the context, the connection
    cpu, wall = time.thread_time(), time.monotonic()
    for _ in range(requests):
        once()
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    assert sender.connection_count() == 1
    print(f"{cpu / requests * 1e6:.0f} {wall / requests * 1e6:.0f} {transport.__file__}")


def compare(other: str, rounds: int, requests: int) -> None:
    trees = {"this tree": str(HERE.parent / "operator"), "other": other}
    for scheme in ("http", "https"):
        results: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(rounds):
            for name, path in trees.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--requests", str(requests), "--scheme", scheme],
                    env={**os.environ, "PYTHONPATH": path},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                results[name].append(float(out[0]))
        line = ", ".join(
            f"{name} {statistics.median(values):.0f} µs ({min(values):.0f} to {max(values):.0f})"
            for name, values in results.items()
        )
        print(f"{scheme}: client CPU per request, median of {rounds} runs: {line}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--scheme", choices=("https", "http"), default="https")
    parser.add_argument("--compare", metavar="OPERATOR_DIR")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.requests)
    else:
        measure(args.requests, args.scheme)


if __name__ == "__main__":
    main()
