"""A tiny stand-in for the Kubernetes API, enough for `tokensync check --from-cluster`:
GET of Secrets and ConfigMaps, with 403 for objects the user may not read. The real
control plane (tests/envtest) is for operator tests; this one starts in milliseconds.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/(secrets|configmaps)/([^/?]+)")
_KINDS = {"secrets": "Secret", "configmaps": "ConfigMap"}


class FakeKubeAPI:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.forbidden: set[tuple[str, str, str]] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                status, body = owner._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, namespace: str, body: dict[str, Any]) -> None:
        """Store a Secret or ConfigMap (a manifest-style dict with `data` base64-encoded
        for Secrets)."""
        key = (body["kind"], namespace, body["metadata"]["name"])
        self.objects[key] = {
            "apiVersion": "v1",
            **body,
            "metadata": {**body["metadata"], "namespace": namespace},
        }

    def kubeconfig(self, path: Path, namespace: str | None = "default") -> Path:
        context: dict[str, Any] = {"cluster": "fake", "user": "tester"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-kube-token"}}],
            "contexts": [{"name": "fake", "context": context}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path)
        if not match:
            return 404, _status(404, "NotFound", "unknown path")
        namespace, plural, name = match.groups()
        key = (_KINDS[plural], namespace, name)
        if key in self.forbidden:
            return 403, _status(403, "Forbidden", f"cannot get {plural} {name}")
        if key not in self.objects:
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        return 200, self.objects[key]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
