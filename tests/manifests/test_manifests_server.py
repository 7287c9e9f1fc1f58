"""The manifests against a real kube-apiserver (the control plane of tests/fixtures):
kustomize renders every deploy/ variant, the API server accepts every object of crds/,
deploy/ and examples/ (server-side dry run: schema, CEL and admission run for real), rejects
invalid OAuth2Credentials with messages naming the field, serves the descriptions to
`kubectl explain`, and aggregates the user roles into view/edit/admin.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifestlib import CRD_PATH, DEPLOY, EXAMPLES, REPO, example_files

from fixtures.controlplane import ControlPlane
from fixtures.polling import wait_for

pytestmark = pytest.mark.envtest

CRD_NAME = "oauth2credentials.tokensync.dev"
OPERATOR_USER = "system:serviceaccount:tokensync-system:tokensync"
NAMESPACED_OVERLAY_NAMESPACES = ("team-a", "team-b")


def exists(cp: ControlPlane, *args: str) -> bool:
    return cp.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout.strip() != ""


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> ControlPlane:
    """deploy/ applied for real (idempotent): the CRD, namespace, RBAC, Deployment, Service.
    No kubelet runs, so the Deployment's pod never starts; every object is stored."""
    control_plane.kubectl("apply", "-k", str(DEPLOY))
    control_plane.wait_established(CRD_NAME)
    return control_plane


@pytest.fixture(scope="module")
def cel_namespace(installed: ControlPlane) -> Iterator[str]:
    name = installed.create_namespace("manifests-cel")
    yield name
    installed.delete_namespace(name)


# -- kustomize and the API server accepting everything -----------------------------------


@pytest.mark.parametrize("overlay", ["", "namespaced", "peering", "rollout-restart", "sharding"])
def test_kustomize_renders(control_plane: ControlPlane, overlay: str) -> None:
    rendered = control_plane.kubectl("kustomize", str(DEPLOY / overlay)).stdout
    objects = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d}
    assert ("CustomResourceDefinition", CRD_NAME) in objects
    assert ("Deployment", "tokensync") in objects
    assert ("Namespace", "tokensync-system") in objects
    cluster_role = ("ClusterRole", "tokensync-operator") in objects
    assert cluster_role is (overlay != "namespaced")
    # The rollout-restart overlay adds the flag and its admission policy, and no
    # permission at all.
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--enable-rollout-restart" in args) is (overlay == "rollout-restart")
    if overlay == "rollout-restart":
        base = [
            d
            for d in yaml.safe_load_all(control_plane.kubectl("kustomize", str(DEPLOY)).stdout)
            if d
        ]
        added = [
            d
            for d in yaml.safe_load_all(rendered)
            if d and d["kind"] != "Deployment" and d not in base
        ]
        assert [(d["kind"], d["metadata"]["name"]) for d in added] == [
            ("ValidatingAdmissionPolicy", "tokensync-operator-workloads"),
            ("ValidatingAdmissionPolicyBinding", "tokensync-operator-workloads"),
        ]


def test_base_is_accepted_and_installs(installed: ControlPlane) -> None:
    result = installed.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server")
    assert "tokensync" in result.stdout
    for kind_name in (
        "namespace/tokensync-system",
        "clusterrole/tokensync-operator",
        "clusterrolebinding/tokensync-operator",
        "clusterrole/tokensync-view",
        "clusterrole/tokensync-edit",
    ):
        assert exists(installed, kind_name), kind_name
    for kind_name in (
        "serviceaccount/tokensync",
        "deployment/tokensync",
        "service/tokensync-metrics",
    ):
        assert exists(installed, kind_name, "-n", "tokensync-system"), kind_name
    # The CRD in the cluster is the file in crds/ (deploy/ includes it, not a copy).
    stored = json.loads(installed.kubectl("get", f"crd/{CRD_NAME}", "-o", "json").stdout)
    (version,) = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"]
    assert stored["spec"]["versions"][0]["schema"] == version["schema"]


def test_namespaced_overlay_is_accepted(installed: ControlPlane) -> None:
    created = []
    for namespace in NAMESPACED_OVERLAY_NAMESPACES:
        if not exists(installed, f"namespace/{namespace}"):
            installed.kubectl("create", "namespace", namespace)
            created.append(namespace)
    try:
        result = installed.kubectl("apply", "-k", str(DEPLOY / "namespaced"), "--dry-run=server")
        lines = result.stdout.splitlines()
        # One Role and one RoleBinding per watched namespace (kubectl prints no namespace).
        for kind in ("role", "rolebinding"):
            prefix = f"{kind}.rbac.authorization.k8s.io/tokensync-operator "
            assert sum(line.startswith(prefix) for line in lines) == len(
                NAMESPACED_OVERLAY_NAMESPACES
            ), result.stdout
        assert "clusterrole.rbac.authorization.k8s.io/tokensync-operator" not in result.stdout
    finally:
        for namespace in created:
            installed.delete_namespace(namespace)


def test_namespaced_overlay_applies_where_its_namespaces_do_not_exist_yet(
    installed: ControlPlane,
) -> None:
    """`kubectl apply -k deploy/namespaced/` as it is, on a cluster without team-a and
    team-b: the overlay brings its namespaces, so the Roles and RoleBindings find them
    (it failed with `namespaces "team-a" not found`). Applied for real, but only the
    namespaces and their RBAC: the rest is deploy/'s, which other tests share."""
    for namespace in NAMESPACED_OVERLAY_NAMESPACES:
        # test_namespaced_overlay_is_accepted deletes the ones it made: wait until gone.
        assert wait_for(
            lambda ns=namespace: not exists(installed, f"namespace/{ns}"),
            120,
            f"namespace {namespace} to be gone",
        )
    rendered = installed.kubectl("kustomize", str(DEPLOY / "namespaced")).stdout
    objects = [
        d
        for d in yaml.safe_load_all(rendered)
        if d
        and (
            (d["kind"] == "Namespace" and d["metadata"]["name"] in NAMESPACED_OVERLAY_NAMESPACES)
            or d["metadata"].get("namespace") in NAMESPACED_OVERLAY_NAMESPACES
        )
    ]
    assert {d["kind"] for d in objects} == {"Namespace", "Role", "RoleBinding"}
    try:
        listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        installed.kubectl("apply", "-f", "-", input=listed)
        for namespace in NAMESPACED_OVERLAY_NAMESPACES:
            assert can_i(installed, "patch", "secrets", "-n", namespace)
    finally:
        for namespace in NAMESPACED_OVERLAY_NAMESPACES:
            if exists(installed, f"namespace/{namespace}"):
                installed.delete_namespace(namespace)


def test_peering_overlay_is_accepted(installed: ControlPlane) -> None:
    result = installed.kubectl("apply", "-k", str(DEPLOY / "peering"), "--dry-run=server")
    assert "role.rbac.authorization.k8s.io/tokensync-leader-election" in result.stdout
    assert "rolebinding.rbac.authorization.k8s.io/tokensync-leader-election" in result.stdout
    assert "poddisruptionbudget.policy/tokensync" in result.stdout
    assert "kopf" not in result.stdout


def test_sharding_overlay_is_accepted(installed: ControlPlane) -> None:
    result = installed.kubectl("apply", "-k", str(DEPLOY / "sharding"), "--dry-run=server")
    assert "role.rbac.authorization.k8s.io/tokensync-sharding" in result.stdout
    assert "validatingadmissionpolicy.admissionregistration.k8s.io/tokensync-operator-leases" in (
        result.stdout
    )
    assert "poddisruptionbudget.policy/tokensync" in result.stdout


def can_i(cp: ControlPlane, *args: str) -> bool:
    result = cp.kubectl("auth", "can-i", *args, f"--as={OPERATOR_USER}", check=False)
    return result.stdout.strip() == "yes"


def test_peering_overlay_grants_the_operator_its_lease_and_nothing_more(
    installed: ControlPlane,
) -> None:
    """The Role and RoleBinding as rendered, applied for real (removed afterwards if this
    test created them), then asked through the API server's own authorizer."""
    rendered = installed.kubectl("kustomize", str(DEPLOY / "peering")).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("Role", "RoleBinding")]
    assert len(rbac) == 2
    created = [
        d
        for d in rbac
        if not exists(
            installed,
            f"{d['kind'].lower()}/{d['metadata']['name']}",
            "-n",
            d["metadata"]["namespace"],
        )
    ]
    installed.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": rbac})
    )
    try:
        ns = ("-n", "tokensync-system")
        assert wait_for(lambda: can_i(installed, "get", "leases/tokensync", *ns), 10, "RBAC")
        assert can_i(installed, "update", "leases/tokensync", *ns)
        assert can_i(installed, "create", "leases", *ns)
        for verb, what in [
            ("get", "leases/other"),
            ("update", "leases/other"),
            ("patch", "leases/tokensync"),
            ("delete", "leases/tokensync"),
            ("list", "leases"),
            ("watch", "leases"),
        ]:
            assert not can_i(installed, verb, what, *ns), (verb, what)
        assert not can_i(installed, "get", "leases/tokensync", "-n", "default")
        assert not can_i(installed, "create", "leases", "-n", "default")
    finally:
        for d in created:
            installed.kubectl(
                "delete",
                f"{d['kind'].lower()}/{d['metadata']['name']}",
                "-n",
                d["metadata"]["namespace"],
                "--ignore-not-found",
            )


@pytest.mark.parametrize(
    "path",
    # The ServiceMonitor (deploy/monitoring/) needs the Prometheus Operator's CRDs:
    # tests/monitoring checks it.
    [CRD_PATH, *sorted((DEPLOY / "examples").glob("*.yaml"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_standalone_manifest_is_accepted(installed: ControlPlane, path: Path) -> None:
    installed.kubectl("apply", "--dry-run=server", "-f", str(path))


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_is_accepted(installed: ControlPlane, namespace: str, path: Path) -> None:
    result = installed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert "created (server dry run)" in result.stdout


def test_all_examples_together_in_one_namespace(installed: ControlPlane, namespace: str) -> None:
    """All examples in one apply (names don't collide), with the contract's defaults filled in
    by the server. Dry run only: a tokensync operator running elsewhere in the test session
    must never see these credentials and call the real token endpoints they name."""
    result = installed.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", str(EXAMPLES)
    )
    items = json.loads(result.stdout)["items"]
    credentials = [i for i in items if i["kind"] == "OAuth2Credential"]
    assert len(credentials) == 21
    by_name = {c["metadata"]["name"]: c["spec"] for c in credentials}
    assert by_name["portal"]["secret"]["asSource"] == {
        "allowedTokenURLs": ["https://sts.example.com/v1/"]
    }
    cognito = by_name["cognito-my-api"]
    assert cognito["grantType"] == "client_credentials"
    assert cognito["timeoutSeconds"] == 30
    assert cognito["includeScope"] is True
    assert cognito["suspend"] is False
    assert cognito["allowInsecureHTTP"] is False
    assert cognito["secret"]["deletionPolicy"] == "Delete"
    assert cognito["refresh"] == {"defaultLifetime": "1h"}
    assert by_name["entra-orders-api"]["clientAuthentication"] == "body"
    assert by_name["keycloak-reporting-jwt-bearer"]["grantType"] == "jwt_bearer"
    assert by_name["keycloak-reports-workload-identity"]["clientIDInRequest"] is False
    assert by_name["billing-export"]["rolloutRestart"] == [
        {"kind": "Deployment", "name": "billing-export"}
    ]
    x509 = by_name["sap-btp-orders-x509"]["tls"]["clientCertificateRef"]
    assert (x509["certificateKey"], x509["privateKeyKey"]) == ("certificate", "key")
    pull = by_name["registry-pull"]["secret"]
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert pull["dockerConfig"]["username"] == "oauth2"
    assert cognito["secret"]["type"] == "Opaque"
    exchange = by_name["keycloak-orders-token-exchange"]
    assert (exchange["grantType"], exchange["audience"]) == ("token_exchange", "orders-api")
    successfactors = by_name["successfactors-odata"]
    assert (successfactors["grantType"], successfactors["clientAuthentication"]) == (
        "saml2_bearer",
        "none",
    )


def test_short_names_and_category(installed: ControlPlane) -> None:
    resources = installed.kubectl("api-resources", "--api-group=tokensync.dev", "-o", "wide").stdout
    _header, row = resources.splitlines()
    assert "o2c,oauth2cred" in row
    assert "tokensync" in row.split()[-1]  # CATEGORIES, the last column
    for resource in ("o2c", "oauth2cred", "tokensync"):
        installed.kubectl("get", resource, "-A")


# -- invalid OAuth2Credentials ------------------------------------------------------------

VALID_SPEC: dict[str, Any] = {
    "tokenURL": "https://idp.example.com/oauth2/token",
    "clientID": "client",
    "clientSecretRef": {"name": "client", "key": "client_secret"},
}


def with_changes(**changes: Any) -> dict[str, Any]:
    """VALID_SPEC with top-level fields replaced; a value of None removes the field."""
    spec = copy.deepcopy(VALID_SPEC)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


# (id, spec, the field the error must be reported on, words the message must contain)
INVALID = [
    (
        "unknown-enum-value",
        with_changes(clientAuthentication="basic"),
        "spec.clientAuthentication",
        ["Unsupported value", "header", "body"],
    ),
    (
        "unknown-content-type",
        with_changes(contentType="text/plain"),
        "spec.contentType",
        ["Unsupported value"],
    ),
    (
        "clientID-and-clientIDRef",
        with_changes(clientIDRef={"name": "client", "key": "client_id"}),
        "spec.clientID",
        ["spec.clientID and spec.clientIDRef", "exactly one"],
    ),
    (
        "neither-clientID-nor-clientIDRef",
        with_changes(clientID=None),
        "spec.clientID",
        ["spec.clientID or spec.clientIDRef", "exactly one"],
    ),
    (
        "http-without-allowInsecureHTTP",
        with_changes(tokenURL="http://idp.example.com/oauth2/token"),
        "spec.tokenURL",
        ["allowInsecureHTTP"],
    ),
    (
        "userinfo-in-tokenURL",
        with_changes(tokenURL="https://user:pass@idp.example.com/oauth2/token"),
        "spec.tokenURL",
        ["userinfo"],
    ),
    (
        "fragment-in-tokenURL",
        with_changes(tokenURL="https://idp.example.com/oauth2/token#frag"),
        "spec.tokenURL",
        ["fragment"],
    ),
    (
        "backslash-in-tokenURL",
        with_changes(tokenURL="https://localhost\\.okta.com/evil"),
        "spec.tokenURL",
        ["backslash"],
    ),
    (
        "dot-segment-in-tokenURL",
        with_changes(tokenURL="https://idp.example.com/legit/../evil/a3"),
        "spec.tokenURL",
        ["dot segment"],
    ),
    (
        "encoded-dot-in-tokenURL",
        with_changes(tokenURL="https://idp.example.com/legit/%2e%2e/evil/a3"),
        "spec.tokenURL",
        ["percent-encoded"],
    ),
    (
        "not-an-http-url",
        with_changes(tokenURL="ftp://idp.example.com/token"),
        "spec.tokenURL",
        ["https://"],
    ),
    (
        "scopeObject-with-form-content-type",
        with_changes(scopeObject={"userId": "admin1"}),
        "spec.scopeObject",
        ["application/json"],
    ),
    (
        "scope-and-scopeObject",
        with_changes(contentType="application/json", scope="read", scopeObject={"a": "b"}),
        "spec.scopeObject",
        ["spec.scope and spec.scopeObject"],
    ),
    (
        "renewBefore-and-renewBeforePercentage",
        with_changes(refresh={"renewBefore": "5m", "renewBeforePercentage": 20}),
        "spec.refresh.renewBefore",
        ["renewBeforePercentage", "mutually exclusive"],
    ),
    (
        "reserved-extraParameters-name",
        with_changes(extraParameters={"client_secret": "x"}),
        "spec.extraParameters",
        ["reserved", "client_secret"],
    ),
    (
        "reserved-extraParameters-client_assertion",
        with_changes(extraParameters={"client_assertion_type": "x"}),
        "spec.extraParameters",
        ["client_assertion"],
    ),
    (
        "reserved-label-prefix",
        with_changes(secret={"labels": {"tokensync.dev/credential": "other"}}),
        "spec.secret.labels",
        ["reserved", "tokensync.dev/"],
    ),
    (
        "reserved-label-subdomain",
        with_changes(secret={"labels": {"node.kubernetes.io/x": "v"}}),
        "spec.secret.labels",
        ["reserved", "kubernetes.io/"],
    ),
    (
        "reserved-annotation-prefix",
        with_changes(secret={"annotations": {"k8s.io/x": "v"}}),
        "spec.secret.annotations",
        ["reserved", "k8s.io/"],
    ),
    (
        "template-key-overrides-access_token",
        with_changes(secret={"template": {"access_token": "${scope}"}}),
        "spec.secret.template",
        ["fixed keys", "access_token"],
    ),
    (
        "template-key-not-a-secret-key",
        with_changes(secret={"template": {"a/b": "x"}}),
        "spec.secret.template",
        ["valid Secret keys"],
    ),
    (
        "template-unknown-placeholder",
        with_changes(secret={"template": {"x": "${client_secret}"}}),
        "spec.secret.template",
        ["placeholders"],
    ),
    (
        "bad-duration",
        with_changes(refresh={"renewBefore": "5 minutes"}),
        "spec.refresh.renewBefore",
        ["should match"],
    ),
    (
        "zero-duration",
        with_changes(refresh={"defaultLifetime": "0s"}),
        "spec.refresh.defaultLifetime",
        ["positive duration"],
    ),
    (
        "timeout-out-of-range",
        with_changes(timeoutSeconds=121),
        "spec.timeoutSeconds",
        ["less than or equal to 120"],
    ),
    (
        "percentage-out-of-range",
        with_changes(refresh={"renewBeforePercentage": 100}),
        "spec.refresh.renewBeforePercentage",
        ["less than or equal to 99"],
    ),
    (
        "caRef-without-kind",
        with_changes(tls={"caRef": {"name": "ca", "key": "ca.crt"}}),
        "spec.tls.caRef.kind",
        ["Required value"],
    ),
    (
        "secret-name-not-a-dns-name",
        with_changes(secret={"name": "Not_A_Name"}),
        "spec.secret.name",
        ["should match"],
    ),
    (
        "missing-clientSecretRef",
        with_changes(clientSecretRef=None),
        "spec.clientSecretRef",
        ["Required value"],
    ),
]


def credential(spec: dict[str, Any], name: str = "probe") -> str:
    return json.dumps(
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def test_the_valid_baseline_is_accepted(installed: ControlPlane, cel_namespace: str) -> None:
    result = installed.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        cel_namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=credential(VALID_SPEC),
    )
    spec = json.loads(result.stdout)["spec"]
    # No schema default (with issuerURL discovery chooses); the operator defaults to header.
    assert "clientAuthentication" not in spec
    assert spec["contentType"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_credential_is_rejected_naming_the_field(
    installed: ControlPlane, cel_namespace: str, spec: dict, field: str, words: list[str]
) -> None:
    result = installed.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        cel_namespace,
        "-f",
        "-",
        input=credential(spec),
        check=False,
    )
    assert result.returncode != 0, f"accepted: {spec}"
    error = result.stderr
    assert f"{field}:" in error, error
    for word in words:
        assert word in error, error


@pytest.mark.parametrize(
    "spec",
    [
        with_changes(tokenURL="http://idp.example.com/token", allowInsecureHTTP=True),
        with_changes(tokenURL="https://[2001:db8::1]:8443/token"),
        with_changes(tokenURL="https://idp.example.com:8443/token?tenant=a"),
        with_changes(
            contentType="application/json",
            scopeObject={"s": "x", "n": 1.5, "i": 7, "b": True, "l": ["a", "b"], "e": []},
        ),
        with_changes(includeScope=False, scope="read write"),
        with_changes(secret={"labels": {"example.com/team": "a", "team": ""}}),
        with_changes(secret={"annotations": {"notkubernetes.io/x": "y"}}),
        with_changes(secret={"template": {"header.txt": "${authorization}", "cost": "$5"}}),
        with_changes(refresh={"renewBefore": "1h30m", "defaultLifetime": "1.5h"}),
        with_changes(extraParameters={"tenant": "a", "client_id_hint": "b"}),
        with_changes(tls={"caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"}}),
    ],
    ids=lambda s: ",".join(k for k in s if k not in VALID_SPEC or s[k] != VALID_SPEC[k]),
)
def test_valid_variants_are_accepted(
    installed: ControlPlane, cel_namespace: str, spec: dict
) -> None:
    installed.kubectl(
        "create", "--dry-run=server", "-n", cel_namespace, "-f", "-", input=credential(spec)
    )


# -- status subresource, printer columns, kubectl explain --------------------------------


def test_status_subresource_and_printer_columns(installed: ControlPlane, namespace: str) -> None:
    installed.kubectl("apply", "-n", namespace, "-f", "-", input=credential(VALID_SPEC, "cols"))
    status = {
        "observedGeneration": 1,
        "secretName": "cols",
        "expiresAt": "2031-01-01T01:00:00Z",
        "lastRefreshTime": "2031-01-01T00:00:00Z",
        "nextRefreshTime": "2031-01-01T00:40:00Z",
        "consecutiveFailures": 0,
        "lastHandledRefreshRequest": "2031-01-01",
        "warnings": ["refresh point clamped to 10% of the lifetime"],
        "lastFailure": {
            "httpStatus": 401,
            "error": "invalid_client",
            "errorDescription": "bad client",
            "reason": "TokenRequestFailed",
            "message": "check the client secret",
            "time": "2030-12-31T23:00:00Z",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "TokenIssued",
                "message": "token issued",
                "lastTransitionTime": "2031-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    installed.kubectl(
        "patch",
        "oauth2credential",
        "cols",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    table = installed.kubectl("get", "o2c", "cols", "-n", namespace, "-o", "wide").stdout
    header, row = table.splitlines()
    for column in ("NAME", "READY", "REASON", "SECRET", "EXPIRES", "NEXT REFRESH", "AGE"):
        assert column in header
    for value in ("True", "TokenIssued", "2031-01-01T01:00:00Z", "2031-01-01T00:40:00Z"):
        assert value in row
    assert header.split()[-1] == "MESSAGE" and row.endswith("token issued")
    # The reason in the default columns, the message only with -o wide (priority 1).
    default = installed.kubectl("get", "o2c", "cols", "-n", namespace).stdout
    assert "REASON" in default and "TokenIssued" in default
    assert "MESSAGE" not in default and "token issued" not in default
    # A status that breaks the condition schema is refused.
    bad = copy.deepcopy(status)
    bad["conditions"][0]["status"] = "Maybe"
    result = installed.kubectl(
        "patch",
        "oauth2credential",
        "cols",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": bad}),
        check=False,
    )
    assert result.returncode != 0 and "status.conditions[0].status" in result.stderr


def test_kubectl_explain_shows_descriptions(installed: ControlPlane) -> None:
    """kubectl explain matches field names exactly (case-sensitive): `spec.tokenURL`."""

    def explain() -> str:
        result = installed.kubectl("explain", "oauth2credential.spec.tokenURL", check=False)
        return result.stdout if result.returncode == 0 else ""

    text = wait_for(explain, 60, "the CRD's OpenAPI to be published")
    assert "Token endpoint URL" in text
    assert "allowInsecureHTTP" in text
    spec = installed.kubectl("explain", "o2c.spec").stdout
    # tokenURL/issuerURL and clientSecretRef are required by CEL rules, per method.
    assert "clientSecretRef" in spec and "issuerURL" in spec


# -- aggregated user roles -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed", "denied"),
    [
        (
            "view",
            ["get", "list", "watch"],
            ["create", "update", "patch", "delete", "deletecollection"],
        ),
        ("edit", ["get", "list", "create", "update", "patch", "delete", "deletecollection"], []),
        ("admin", ["get", "list", "create", "update", "patch", "delete", "deletecollection"], []),
    ],
)
def test_builtin_roles_cover_credentials(
    installed: ControlPlane, namespace: str, role: str, allowed: list[str], denied: list[str]
) -> None:
    user = f"user-{role}"
    installed.kubectl(
        "create",
        "rolebinding",
        f"{role}-binding",
        f"--clusterrole={role}",
        f"--user={user}",
        "-n",
        namespace,
    )

    def can(verb: str, resource: str = "oauth2credentials.tokensync.dev") -> bool:
        result = installed.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False
        )
        return result.stdout.strip() == "yes"

    # The clusterrole-aggregation controller (kube-controller-manager) fills the rules in.
    wait_for(lambda: all(can(v) for v in allowed), 60, f"{role} to cover credentials")
    for verb in denied:
        assert not can(verb), f"{role} may {verb} credentials"
    if role == "view":
        assert not can("get", "secrets"), "view must never read Secrets"


def test_credential_names_fit_a_label_value(installed: ControlPlane, cel_namespace: str) -> None:
    """The name becomes the managed Secret's tokensync.dev/credential label value."""
    create = ("create", "--dry-run=server", "-n", cel_namespace, "-f", "-")
    ok = installed.kubectl(*create, input=credential(VALID_SPEC, "a" * 63), check=False)
    assert ok.returncode == 0, ok.stderr
    long = installed.kubectl(*create, input=credential(VALID_SPEC, "a" * 64), check=False)
    assert long.returncode != 0
    assert "metadata.name: must be at most 63 characters" in long.stderr, long.stderr


# -- scopeObject is flat (issue 8 item 1) ----------------------------------------------------


def deep_json(depth: int) -> str:
    """`{"a": {"a": ... {"leaf": "x"} ...}}`, written out (json.dumps itself would hit
    Python's recursion limit)."""
    return '{"a": ' * (depth - 1) + '{"leaf": "x"}' + "}" * (depth - 1)


def create_dry_run(cp: ControlPlane, namespace: str, spec: dict[str, Any]) -> Any:
    return cp.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=credential(spec),
        check=False,
    )


def test_scope_object_nested_1500_levels_is_refused(
    installed: ControlPlane, cel_namespace: str
) -> None:
    """Such an object once passed the schema and stopped the operator for the whole
    cluster: kopf could not decode the list response (RecursionError)."""
    spec = with_changes(contentType="application/json", scopeObject={"marker": "x"})
    document = credential(spec).replace('{"marker": "x"}', deep_json(1500))
    result = installed.kubectl(
        "create", "--dry-run=server", "-n", cel_namespace, "-f", "-", input=document, check=False
    )
    assert result.returncode != 0, "a 1,500-level scopeObject was accepted"
    assert "spec.scopeObject.a" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    "scope_object",
    [
        {"a": {"b": "c"}},
        {"a": {}},
        {"a": ["x", {"b": 1}]},
        {"a": ["x", ["y"]]},
        {"a": [1, 2]},
        {"a": ["x"] * 33},
        {"a": "x" * 1025},
        {f"k{i}": "x" for i in range(33)},
    ],
    ids=[
        "object-value",
        "empty-object-value",
        "object-in-list",
        "list-in-list",
        "numbers-in-list",
        "33-items",
        "long-string",
        "33-keys",
    ],
)
def test_scope_object_that_is_not_flat_is_refused(
    installed: ControlPlane, cel_namespace: str, scope_object: dict[str, Any]
) -> None:
    spec = with_changes(contentType="application/json", scopeObject=scope_object)
    result = create_dry_run(installed, cel_namespace, spec)
    assert result.returncode != 0, f"accepted: {scope_object}"
    assert "spec.scopeObject" in result.stderr, result.stderr


def test_flat_scope_object_is_stored_as_sent(installed: ControlPlane, cel_namespace: str) -> None:
    scope_object = {
        "userId": "admin1",
        "companyId": "acme",
        "userType": "admin",
        "resourceType": "learning_public_api",
        "ttl": 3600,
        "ratio": 0.5,
        "strict": False,
        "roles": ["a"] * 32,
        **{f"k{i}": "v" * 1024 for i in range(24)},
    }
    spec = with_changes(contentType="application/json", scopeObject=scope_object)
    result = installed.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        cel_namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=credential(spec),
    )
    assert json.loads(result.stdout)["spec"]["scopeObject"] == scope_object
