"""The few Kubernetes API calls tokensync makes itself (blocking; run them in an executor).

kopf watches credentials (handlers.py) and watches.py the labelled Secrets and
ConfigMaps; everything written (managed Secrets, credential status, the Leases), the
lists of credentials (once at start, and for the sweep) and the metadata probe go through
here, with the `kubernetes` client returning plain dicts. Errors become `KubeError`
carrying the API's status code and its Status message only, never a request or response
body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from tokensync import __version__
from tokensync.secret import LABEL_SOURCE, readable_as_source

GROUP, VERSION, PLURAL = "tokensync.dev", "v1alpha1", "oauth2credentials"
USER_AGENT = f"tokensync/{__version__}"
# Distinct agent for the metadata-only probe, so an audit log shows that such a read
# never returned an object's data.
METADATA_USER_AGENT = f"tokensync/{__version__} (metadata-only)"
METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST_ACCEPT = METADATA_ACCEPT.replace("PartialObjectMetadata", "PartialObjectMetadataList")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
FIELD_MANAGER = "tokensync"  # = managed.FIELD_MANAGER; kube.py stays free of the token logic
RESTARTED_AT = "tokensync.dev/restarted-at"  # pod template annotation of rolloutRestart
LIST_PAGE_SIZE = 500
CREDENTIAL_PAGE_SIZE = 100
# The API server could not be reached at all (connection refused, reset, timeout).
UNREACHABLE = 0
REQUEST_TIMEOUT = (10, 30)  # connect, read
# Lease calls must answer well within the leader's 10 s renew deadline.
LEASE_REQUEST_TIMEOUT = (3, 5)
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
# Events are best effort: bounded, so an unreachable API server cannot hold the events
# thread (or shutdown) for long.
EVENT_REQUEST_TIMEOUT = (5, 10)


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        what = "unreachable" if status == UNREACHABLE else str(status)
        super().__init__(f"Kubernetes API {what}: {message}")
        self.status = status

    @property
    def unreachable(self) -> bool:
        return self.status == UNREACHABLE


def _api_message(data: bytes | str | None) -> str:
    """The Status message of an error response, never anything else of the body."""
    try:
        return str(json.loads(data or b"{}").get("message", ""))[:300] or "no message"
    except (ValueError, AttributeError):
        return "unreadable response"


def load_configuration(connection_pool_size: int) -> kubernetes.client.Configuration:
    """In-cluster config when running in a pod, else the current kubeconfig."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connection_pool_size
    # No urllib3 retries: callers back off themselves, and urllib3 would log a warning for
    # every retry of every call while the API server is unreachable.
    configuration.retries = False
    return configuration


def _credentials_path(namespace: str | None) -> str:
    if namespace:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/{PLURAL}"


class Kube:
    def __init__(
        self, configuration: kubernetes.client.Configuration, replica: str | None = None
    ) -> None:
        """`replica`: this replica's identity, added to the user agent (with --shards),
        so that the API server's audit log tells which replica wrote what."""
        suffix = f" replica/{replica}" if replica else ""
        self._client = kubernetes.client.ApiClient(configuration)
        self.api = self._client  # for the label-selected watches (watches.py)
        self._client.user_agent = USER_AGENT + suffix
        self._metadata_client = kubernetes.client.ApiClient(configuration)
        self._metadata_client.user_agent = METADATA_USER_AGENT + suffix

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        client: kubernetes.client.ApiClient | None = None,
        missing_ok: bool = False,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any] | None:
        api = client or self._client
        method, url, headers, body, post_params = api.param_serialize(
            method,
            path,
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = api.call_api(
                method, url, headers, body, post_params, _request_timeout=timeout
            )
            data = response.read()
        except ApiException as error:  # raised by some client versions for non-2xx
            status, data = error.status or 0, (error.body or "").encode()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # The API server is down or restarting: a classified error with backoff, not
            # an unexpected one. Only the exception's type: its text names the URL.
            raise KubeError(UNREACHABLE, type(error).__name__) from None
        else:
            status = response.status
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            raise KubeError(status, _api_message(data))
        return json.loads(data or b"{}")

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", missing_ok=True)

    def create_secret(
        self, namespace: str, secret: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """POST only: a 409 means a Secret of that name exists and is never overwritten.
        A dry run passes admission and validation, and stores nothing."""
        path = f"/api/v1/namespaces/{namespace}/secrets?fieldManager={FIELD_MANAGER}"
        if dry_run:
            path += "&dryRun=All"
        result = self._call("POST", path, dict(secret))
        assert result is not None
        return result

    def patch_secret(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge patch of the fields tokensync owns; the patch carries the resourceVersion
        read, so a 409 means the Secret changed since (labels, annotations, finalizers and
        ownerReferences that other tools add are untouched)."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}?fieldManager={FIELD_MANAGER}"
        result = self._call("PATCH", path, dict(patch), content_type=MERGE_PATCH)
        assert result is not None
        return result

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """POST a core/v1 Event (events.py builds it). Its answer is read, so the
        connection goes back to the pool, and dropped."""
        path = f"/api/v1/namespaces/{namespace}/events"
        self._call("POST", path, dict(body), timeout=EVENT_REQUEST_TIMEOUT)

    def restart_workload(self, namespace: str, kind: str, name: str, stamp: str) -> None:
        """Set the pod template annotation tokensync.dev/restarted-at (a rolling restart,
        as `kubectl rollout restart` does with its own annotation); nothing else."""
        plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}.get(
            kind, "daemonsets"
        )
        path = f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}?fieldManager={FIELD_MANAGER}"
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        self._call("PATCH", path, patch, content_type=MERGE_PATCH)

    def delete_secret(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete exactly the object that was checked (preconditions), or nothing."""
        body = {"preconditions": {"uid": uid, "resourceVersion": resource_version}}
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        self._call("DELETE", path, body, missing_ok=True)

    def object_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Only the metadata of a Secret or ConfigMap: enough to tell a missing source from
        an unlabelled one without ever receiving its data."""
        plural = {
            "Secret": "secrets",
            "ConfigMap": "configmaps",
            "ServiceAccount": "serviceaccounts",
        }[kind]
        path = f"/api/v1/namespaces/{namespace}/{plural}/{name}"
        return self._call(
            "GET", path, accept=METADATA_ACCEPT, client=self._metadata_client, missing_ok=True
        )

    def read_source(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A labelled Secret or ConfigMap in full, or None. Asked as a list with the source
        label selector, so the API server never sends the data of an object tokensync may
        not read (a managed Secret has that label only when offered as a source)."""
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        query = urlencode(
            {
                "labelSelector": f"{LABEL_SOURCE}=true",
                "fieldSelector": f"metadata.name={name}",
            }
        )
        found = self._call("GET", f"/api/v1/namespaces/{namespace}/{plural}?{query}")
        items = (found or {}).get("items") or []
        body = items[0] if items else None
        if body is None or not readable_as_source(body.get("metadata") or {}):
            return None
        return body

    def patch_credential_status(
        self, namespace: str, name: str, uid: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set .status (the whole of it), only on the credential with this UID: a JSON
        patch whose first operation tests metadata.uid, so a same-named credential
        created since is never written (a merge patch's metadata is ignored by the
        status subresource). A deleted credential answers 404."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        body = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/status", "value": dict(status)},
        ]
        result = self._call("PATCH", path, body, content_type=JSON_PATCH)
        assert result is not None
        return result

    def credential_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        """metadata of the credential of that name now, or None (a list by name, so the
        operator needs no `get` on credentials)."""
        selector = quote(f"metadata.name={name}")
        path = _credentials_path(namespace) + f"?fieldSelector={selector}"
        accept = METADATA_LIST_ACCEPT
        page = self._call("GET", path, accept=accept, client=self._metadata_client)
        items = (page or {}).get("items") or []
        return items[0]["metadata"] if items else None

    def credential_uids(self, namespaces: list[str] | None) -> set[str]:
        """UIDs of every credential that exists now (metadata only, paginated): the
        complete list that worker mark-and-sweep compares against."""
        uids: set[str] = set()
        for namespace in namespaces or [None]:
            for item in self._pages(_credentials_path(namespace)):
                uids.add(item["metadata"]["uid"])
        return uids

    def credentials(self, namespaces: list[str] | None) -> Iterator[dict[str, Any]]:
        """Every credential that exists now, whole (paginated): read once at start, so
        that the source cache knows what is referenced before it lists the sources."""
        for namespace in namespaces or [None]:
            yield from self._pages(_credentials_path(namespace), metadata_only=False)

    def _pages(self, path: str, metadata_only: bool = True) -> Iterator[dict[str, Any]]:
        # Whole credentials are a few KiB by their schema, but annotations and
        # managedFields are anyone's to fill: smaller pages for them.
        accept, client, limit = (
            (METADATA_LIST_ACCEPT, self._metadata_client, LIST_PAGE_SIZE)
            if metadata_only
            else ("application/json", self._client, CREDENTIAL_PAGE_SIZE)
        )
        token = ""
        while True:
            query = f"?limit={limit}" + (f"&continue={quote(token)}" if token else "")
            page = self._call("GET", path + query, accept=accept, client=client)
            assert page is not None
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    # --- workload identity (tokensync.workload) -------------------------------------

    def request_service_account_token(
        self, namespace: str, name: str, audience: str, expiration_seconds: int
    ) -> str:
        """A token of ServiceAccount namespace/name for `audience` (TokenRequest API). The
        token is returned, never logged; errors carry the API's Status message only."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": expiration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        result = self._call("POST", path, body) or {}
        token = (result.get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise KubeError(500, "the TokenRequest answer holds no token")
        return token

    def own_bearer_token(self) -> str | None:
        """The bearer token this client authenticates with (in a pod: the projected
        ServiceAccount token, re-read as it rotates), or None for client certificates."""
        configuration = self._client.configuration
        # The key's name differs between client versions (and in-cluster vs kubeconfig).
        for identifier in ("BearerToken", "authorization"):
            value = configuration.get_api_key_with_prefix(identifier)
            if value and value.lower().startswith("bearer "):
                return value[len("bearer ") :].strip() or None
        return None

    def service_account_issuer(self) -> str | None:
        """The `issuer` of the API server's ServiceAccount issuer discovery document."""
        result = self._call("GET", "/.well-known/openid-configuration", missing_ok=True)
        issuer = (result or {}).get("issuer")
        return issuer if isinstance(issuer, str) else None

    # --- leader election (tokensync.leader) -------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = LEASES.format(namespace=namespace) + f"/{name}"
        return self._call("GET", path, missing_ok=True, timeout=LEASE_REQUEST_TIMEOUT)

    def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """POST: a 409 means another candidate created it first."""
        path = LEASES.format(namespace=namespace)
        result = self._call("POST", path, dict(lease), timeout=LEASE_REQUEST_TIMEOUT)
        assert result is not None
        return result

    def replace_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the resourceVersion read: a 409 means someone wrote it since."""
        path = LEASES.format(namespace=namespace) + f"/{lease['metadata']['name']}"
        result = self._call("PUT", path, dict(lease), timeout=LEASE_REQUEST_TIMEOUT)
        assert result is not None
        return result

    def list_leases(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Leases of one shard set (tokensync.shardkeeper): one call per cycle."""
        query = urlencode({"labelSelector": selector})
        result = self._call(
            "GET", LEASES.format(namespace=namespace) + f"?{query}", timeout=LEASE_REQUEST_TIMEOUT
        )
        return list((result or {}).get("items") or [])

    def delete_lease(self, namespace: str, name: str, resource_version: str) -> None:
        """DELETE only that version (a 409 if it was renewed since); gone already: fine."""
        body = {"preconditions": {"resourceVersion": resource_version}}
        path = LEASES.format(namespace=namespace) + f"/{name}"
        self._call("DELETE", path, body, missing_ok=True, timeout=LEASE_REQUEST_TIMEOUT)
