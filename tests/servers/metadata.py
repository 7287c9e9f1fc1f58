"""An RFC 8414-only authorization server: `/.well-known/oauth-authorization-server` (no
OpenID Connect discovery document) in front of the standard token endpoint of quirky.py.

    server = MetadataServer(clients={id: secret}).start()
    server.issuer            # http://127.0.0.1:PORT (or with `issuer_path`)
    server.metadata_overrides["issuer"] = "https://elsewhere"   # a lying document
    server.metadata_fault = "redirect" | "huge" | "html" | None
    server.metadata_reads    # how many times the document was read
"""

from __future__ import annotations

import json
from typing import Any

from servers.quirky import Received, Reply, TokenServer, json_reply

WELL_KNOWN = "/.well-known/oauth-authorization-server"


class MetadataServer(TokenServer):
    name = "rfc8414"

    def __init__(
        self,
        *args: Any,
        issuer_path: str = "",
        auth_methods: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.issuer_path = issuer_path
        self.auth_methods = auth_methods
        self.metadata_overrides: dict[str, Any] = {}
        self.metadata_fault: str | None = None
        self.metadata_reads = 0

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "issuer": self.issuer,
            "token_endpoint": self.token_url,
            "grant_types_supported": ["client_credentials"],
        }
        if self.auth_methods is not None:
            data["token_endpoint_auth_methods_supported"] = self.auth_methods
        data.update(self.metadata_overrides)
        return {k: v for k, v in data.items() if v is not None}

    def _dispatch(self, received: Received) -> Reply:
        path = received.path.split("?")[0]
        if received.method == "GET" and path == self.issuer_path + WELL_KNOWN:
            with self._changed:
                self.received.append(received)
                self.metadata_reads += 1
                self._changed.notify_all()
            return self._metadata_reply()
        return super()._dispatch(received)

    def _metadata_reply(self) -> Reply:
        fault = self.metadata_fault
        if fault == "redirect":
            return Reply(302, b"", {"Location": "https://elsewhere.test/.well-known/x"})
        if fault == "huge":
            body = json.dumps({"issuer": self.issuer, "pad": "x" * (1024 * 1024 + 10)})
            return Reply(200, body.encode(), {"Content-Type": "application/json"})
        if fault == "html":
            return Reply(200, b"<html>login</html>", {"Content-Type": "text/html"})
        return json_reply(200, self.document())
