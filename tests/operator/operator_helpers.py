"""What a test does to the cluster and waits for, in a user's terms."""

from __future__ import annotations

import base64
from typing import Any, TypeVar

import kubernetes
import trustme
from kubernetes.client.exceptions import ApiException
from token_endpoint import Client, TokenEndpoint

from fixtures.polling import wait_for

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
SOURCE_LABEL = {"tokensync.dev/credential-source": "true"}
T = TypeVar("T")


def decode(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


class Cluster:
    """One test namespace, with helpers to create credentials and read what users see."""

    def __init__(
        self,
        control_plane: Any,
        api: kubernetes.client.ApiClient,
        namespace: str,
        ca: trustme.CA,
        endpoint: TokenEndpoint,
    ) -> None:
        self.cp = control_plane
        self.ns = namespace
        self.ca = ca
        self.endpoint = endpoint
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def for_namespace(self, namespace: str) -> Cluster:
        """The same helpers in another namespace."""
        return Cluster(self.cp, self.core.api_client, namespace, self.ca, self.endpoint)

    # --- sources ----------------------------------------------------------------------

    def source_secret(
        self,
        name: str,
        data: dict[str, str],
        *,
        labelled: bool = True,
        allowed_urls: str | None = None,
        secret_type: str = "Opaque",
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "labels": dict(SOURCE_LABEL) if labelled else {}}
        if allowed_urls is not None:
            metadata["annotations"] = {"tokensync.dev/allowed-token-urls": allowed_urls}
        body = {"metadata": metadata, "stringData": data, "type": secret_type}
        try:
            self.core.create_namespaced_secret(self.ns, body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_namespaced_secret(name, self.ns, body)

    def ca_configmap(self, name: str = "token-endpoint-ca") -> dict[str, Any]:
        body = {
            "metadata": {"name": name, "labels": dict(SOURCE_LABEL)},
            "data": {"ca.crt": self.ca.cert_pem.bytes().decode()},
        }
        try:
            self.core.create_namespaced_config_map(self.ns, body)
        except ApiException as error:
            if error.status != 409:
                raise
        return {"kind": "ConfigMap", "name": name, "key": "ca.crt"}

    # --- credentials --------------------------------------------------------------------

    def credential_spec(self, client: Client, secret_name: str = "client", **extra: Any) -> dict:
        spec: dict[str, Any] = {
            "tokenURL": self.endpoint.url,
            "clientID": client.client_id,
            "clientSecretRef": {"name": secret_name, "key": "client_secret"},
            "tls": {"caRef": self.ca_configmap()},
        }
        spec.update(extra)
        return spec

    def create_credential(
        self,
        name: str,
        client: Client,
        *,
        secret_name: str = "client",
        source: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """A client Secret (labelled, bound to the endpoint) plus a credential using it."""
        if source:
            self.source_secret(
                secret_name,
                {"client_secret": client.secret},
                allowed_urls=self.endpoint.url.split("/oauth2")[0] + "/",
            )
        return self.create_credential_object(
            name, self.credential_spec(client, secret_name, **extra)
        )

    def create_credential_object(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """An OAuth2Credential with exactly this spec (its sources are the caller's)."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "OAuth2Credential",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def credential(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch_credential(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, patch
        )

    def delete_credential(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            name,
            body={"propagationPolicy": "Background"},
        )

    def condition(self, name: str, type_: str = "Ready") -> dict[str, Any] | None:
        status = self.credential(name).get("status") or {}
        for condition in status.get("conditions") or []:
            if condition["type"] == type_:
                return condition
        return None

    def wait_ready(
        self, name: str, status: str = "True", reason: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            c = self.condition(name)
            ok = c and c["status"] == status and (reason is None or c["reason"] == reason)
            return c if ok else None

        try:
            return wait_for(probe, timeout, f"{name} Ready={status} {reason or ''}")
        except AssertionError as error:
            status = self.credential(name).get("status")
            raise AssertionError(f"{error}; last status: {status}") from None

    # --- managed Secrets and events -----------------------------------------------------

    def secret(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.core.read_namespaced_secret(name, self.ns)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.core.api_client.sanitize_for_serialization(obj)

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        ).items
        return [self.core.api_client.sanitize_for_serialization(e) for e in items]
