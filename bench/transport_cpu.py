"""CPU per token request with the system trust store (issue 10, "Token transport").

Starts an HTTPS token server on 127.0.0.1 whose CA is added to a copy of the system
bundle given through SSL_CERT_FILE, so requests without tls.caRef pay what they pay in
production, then makes N requests and prints the client thread's CPU per request.
`--layer transport` times only Transport.post (the connection layer: pools, TLS, the
requests Session and adapter), without building the request or parsing the token;
`--scheme http` leaves TLS out as well.

    python bench/transport_cpu.py [--requests 200] [--layer fetch|transport] [--scheme https|http]
    PYTHONPATH=/path/to/old/operator python bench/transport_cpu.py   # another version

Prints one line of numbers; never fails.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import trustme

from servers.quirky import ServerTLS, TokenServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--layer", choices=("fetch", "transport"), default="fetch")
    parser.add_argument("--scheme", choices=("https", "http"), default="https")
    args = parser.parse_args()
    ca = trustme.CA()
    system = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    bundle = Path(tempfile.mkdtemp()) / "bundle.pem"
    bundle.write_bytes(Path(system).read_bytes() + b"\n" + ca.cert_pem.bytes())
    os.environ["SSL_CERT_FILE"] = str(bundle)

    from tokensync import transport
    from tokensync.oauth2 import TokenRequest, build_request_parts, fetch_token

    tls = ServerTLS.for_ca(ca) if args.scheme == "https" else None
    with TokenServer({"bench": "secret"}, tls=tls) as server:
        request = TokenRequest(
            token_url=server.token_url, client_id="bench", client_secret="secret"
        )
        sender = transport.transport_for(transport.NetworkGuard(False, ()))
        headers, body = build_request_parts(request)

        def once() -> None:
            if args.layer == "fetch":
                fetch_token(request)
            else:
                raw = sender.post(
                    request.token_url,
                    headers,
                    body,
                    tls=request.tls if args.scheme == "https" else None,
                    timeout=10,
                    max_body_bytes=1024 * 1024,
                )
                assert raw.status == 200

        once()  # warm-up (imports, first context, first connection)
        cpu, wall = time.thread_time(), time.monotonic()
        for _ in range(args.requests):
            once()
        cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    started = time.thread_time()
    for _ in range(20):
        ssl.create_default_context()
    context_ms = (time.thread_time() - started) / 20 * 1000
    import tokensync.oauth2 as module

    print(
        f"{module.__file__}: {args.requests} requests ({args.layer}, {args.scheme}), "
        "system trust store "
        f"({len(Path(bundle).read_bytes()) // 1024} KiB bundle): "
        f"client CPU {cpu / args.requests * 1000:.2f} ms/request, "
        f"wall {wall / args.requests * 1000:.2f} ms/request; "
        f"one ssl.create_default_context(): {context_ms:.1f} ms CPU"
    )


if __name__ == "__main__":
    main()
