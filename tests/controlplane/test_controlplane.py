"""Proof that the test control plane is a real Kubernetes API: CRDs with structural schemas
and CEL, RBAC, admission, garbage collection, watches and the audit log all behave as in a
cluster. Nothing here is tokensync-specific.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from fixtures.controlplane import ControlPlane
from fixtures.polling import wait_for

pytestmark = pytest.mark.envtest

CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def status_of(call: Callable[[], Any]) -> int:
    """HTTP status of an API call: 200 when it succeeds, else the ApiException's status."""
    try:
        call()
    except ApiException as e:
        return e.status
    return 200


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    """A namespaced CRD ``Widget`` in a group unique to this run, with a CEL rule."""
    group = f"g{uuid.uuid4().hex[:8]}.envtest.tokensync.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minReplicas", "maxReplicas"],
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer"},
                                        "color": {"type": "string", "default": "blue"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    name = crd["metadata"]["name"]
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(crd))
    control_plane.wait_established(name)
    yield {"group": group, "version": "v1", "plural": "widgets", "name": name}
    control_plane.kubectl("delete", "crd", name, "--wait=false", "--ignore-not-found")


def widget(group: str, name: str, min_replicas: int, max_replicas: int) -> dict:
    return {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
    }


def test_crd_object_is_created_and_defaulted(control_plane, namespace, widget_crd):
    api = client.CustomObjectsApi(control_plane.api_client())
    group, version, plural = widget_crd["group"], widget_crd["version"], widget_crd["plural"]

    api.create_namespaced_custom_object(
        group, version, namespace, plural, widget(group, "good", 1, 3)
    )

    got = api.get_namespaced_custom_object(group, version, namespace, plural, "good")
    assert got["spec"] == {"minReplicas": 1, "maxReplicas": 3, "color": "blue"}  # defaulted
    listed = control_plane.kubectl("get", f"widgets.{group}", "-n", namespace, "-o", "name")
    assert listed.stdout.split() == [f"widget.{group}/good"]


def test_cel_rule_rejects_bad_object_with_its_message(control_plane, namespace, widget_crd):
    api = client.CustomObjectsApi(control_plane.api_client())
    group, version, plural = widget_crd["group"], widget_crd["version"], widget_crd["plural"]

    with pytest.raises(ApiException) as rejected:
        api.create_namespaced_custom_object(
            group, version, namespace, plural, widget(group, "bad", 5, 2)
        )

    assert rejected.value.status == 422
    assert CEL_MESSAGE in json.loads(rejected.value.body)["message"]
    # The same through kubectl, as a user would see it.
    result = control_plane.kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(widget(group, "bad", 5, 2)),
        check=False,
    )
    assert result.returncode != 0
    assert CEL_MESSAGE in result.stderr


def test_service_account_denied_by_rbac_until_role_binding(control_plane, namespace):
    sa_kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    as_sa = client.CoreV1Api(control_plane.api_client(sa_kubeconfig))

    assert status_of(lambda: as_sa.list_namespaced_config_map(namespace)) == 403

    control_plane.kubectl(
        "create", "role", "configmap-reader", "-n", namespace,
        "--verb=get,list,watch", "--resource=configmaps",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=configmap-reader", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip

    # The RBAC authorizer reads bindings from an informer: allowed within moments.
    wait_for(
        lambda: status_of(lambda: as_sa.list_namespaced_config_map(namespace)) == 200,
        timeout=30,
        what="the RoleBinding to take effect",
    )
    # ...and only what the Role grants.
    assert status_of(lambda: as_sa.list_namespaced_secret(namespace)) == 403
    other = control_plane.create_namespace("other")
    try:
        assert status_of(lambda: as_sa.list_namespaced_config_map(other)) == 403
    finally:
        control_plane.delete_namespace(other)


def test_owner_references_permission_enforcement(control_plane, namespace):
    """Setting blockOwnerDeletion needs `update` on the owner's `finalizers` subresource."""
    core = client.CoreV1Api(control_plane.api_client())
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    control_plane.kubectl(
        "create", "role", "secret-writer", "-n", namespace,
        "--verb=create,get,delete", "--resource=secrets",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "writer", "-n", namespace,
        "--role=secret-writer", f"--serviceaccount={namespace}:writer",
    )  # fmt: skip
    as_sa = client.CoreV1Api(
        control_plane.api_client(control_plane.service_account_kubeconfig(namespace, "writer"))
    )

    def create_owned_secret(name: str) -> tuple[int, str]:
        ref = client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid,
            block_owner_deletion=True,
        )  # fmt: skip
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name, owner_references=[ref]))
        try:
            as_sa.create_namespaced_secret(namespace, body)
        except ApiException as e:
            return e.status, json.loads(e.body)["message"]
        return 200, ""

    # RBAC allows the create once `get` on a missing Secret answers 404, not 403.
    wait_for(
        lambda: status_of(lambda: as_sa.read_namespaced_secret("absent", namespace)) == 404,
        timeout=30,
        what="the secret-writer RoleBinding to take effect",
    )
    status, message = create_owned_secret("first")
    assert status == 403
    assert "cannot set blockOwnerDeletion" in message

    control_plane.kubectl(
        "create", "role", "owner-finalizers", "-n", namespace,
        "--verb=update", "--resource=configmaps/finalizers",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "finalizers", "-n", namespace,
        "--role=owner-finalizers", f"--serviceaccount={namespace}:writer",
    )  # fmt: skip
    wait_for(
        lambda: create_owned_secret("second")[0] == 200,
        timeout=30,
        what="creating the owned Secret once configmaps/finalizers is granted",
    )


def test_deleting_owner_garbage_collects_owned_secret(control_plane, namespace):
    core = client.CoreV1Api(control_plane.api_client())
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="owned", owner_references=[ref]),
            string_data={"token": uuid.uuid4().hex},
        ),
    )

    core.delete_namespaced_config_map("owner", namespace)

    wait_for(
        lambda: status_of(lambda: core.read_namespaced_secret("owned", namespace)) == 404,
        timeout=60,
        what="the garbage collector to delete the owned Secret",
    )


def test_watch_receives_events(control_plane, namespace):
    core = client.CoreV1Api(control_plane.api_client())
    start_rv = core.list_namespaced_config_map(namespace).metadata.resource_version
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    watcher = watch.Watch()

    def consume() -> None:
        for event in watcher.stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=start_rv,
            allow_watch_bookmarks=True,
            timeout_seconds=60,
        ):
            # The controller-manager may publish kube-root-ca.crt into the new
            # namespace after the list above: only this test's ConfigMap counts.
            if event["type"] == "BOOKMARK" or event["object"].metadata.name != "watched":
                continue
            events.put((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                watcher.stop()  # ends the stream and closes the connection

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched"), data={"n": "1"}),
    )
    core.patch_namespaced_config_map("watched", namespace, {"data": {"n": "2"}})
    core.delete_namespaced_config_map("watched", namespace)

    seen = [events.get(timeout=30) for _ in range(3)]
    thread.join(timeout=10)
    assert seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]


def test_audit_log_records_requests_by_user(control_plane, namespace):
    since = time.time()
    sa_kubeconfig = control_plane.service_account_kubeconfig(namespace, "audited")
    user = f"system:serviceaccount:{namespace}:audited"

    control_plane.kubectl("get", "secrets", "-n", namespace, kubeconfig=sa_kubeconfig, check=False)

    def is_secret_list(event: dict) -> bool:
        ref = event.get("objectRef", {})
        return event["verb"] == "list" and ref.get("resource") == "secrets"

    event = control_plane.wait_for_audit_event(is_secret_list, user=user, since=since)
    assert event["objectRef"]["namespace"] == namespace
    assert event["responseStatus"]["code"] == 403
    assert event["stage"] == "ResponseComplete"
    # The token came from the TokenRequest API, recorded as the admin's create.
    admin_events = control_plane.audit_events(user=control_plane.admin_user, since=since)
    assert any(
        e["verb"] == "create"
        and e.get("objectRef", {}).get("subresource") == "token"
        and e["objectRef"].get("name") == "audited"
        for e in admin_events
    )
    assert all(e["user"]["username"] == user for e in control_plane.audit_events(user=user))
