"""The OAuth2Credential CRD, checked without a cluster: the fields of the API contract,
descriptions everywhere (what `kubectl explain` shows), bounds everywhere (so the CEL rules
fit the API server's cost budget), constant defaults only, and the CEL rules' messages.

The server-side behaviour of the same CRD is in test_manifests_server.py.
"""

from __future__ import annotations

import re

import pytest
from manifestlib import CRD_PATH, REPO, crd_schema, load_crd, walk_schema

# The API contract's fields (API.md "spec" and "status"), hard-coded on purpose: a field
# added to or dropped from the CRD must be a deliberate change of this list too.
SPEC_FIELDS = {
    "tokenURL",
    "issuerURL",
    "allowInsecureHTTP",
    "grantType",
    "clientID",
    "clientIDRef",
    "clientSecretRef",
    "clientAuthentication",
    "clientIDInRequest",
    "jwtBearer",
    "tokenExchange",
    "saml2Bearer",
    "rolloutRestart",
    "clientAssertion",
    "workloadIdentity",
    "contentType",
    "scope",
    "scopeObject",
    "includeScope",
    "audience",
    "resource",
    "extraParameters",
    "tls",
    "timeoutSeconds",
    "suspend",
    "secret",
    "refresh",
}
NESTED_FIELDS = {
    "spec.clientIDRef": {"name", "key"},
    "spec.clientSecretRef": {"name", "key"},
    "spec.clientAssertion": {"keyRef", "algorithm", "keyID", "audience"},
    "spec.clientAssertion.keyRef": {"name", "key"},
    "spec.workloadIdentity": {"serviceAccountName", "audience", "expirationSeconds"},
    "spec.jwtBearer": {
        "keyRef",
        "algorithm",
        "keyID",
        "issuer",
        "subject",
        "audience",
        "lifetimeSeconds",
        "workloadIdentity",
    },
    "spec.jwtBearer.keyRef": {"name", "key"},
    "spec.jwtBearer.workloadIdentity": {"serviceAccountName", "audience", "expirationSeconds"},
    "spec.tokenExchange": {
        "subjectTokenRef",
        "workloadIdentity",
        "subjectTokenType",
        "requestedTokenType",
    },
    "spec.tokenExchange.subjectTokenRef": {"name", "key"},
    "spec.saml2Bearer": {
        "keyRef",
        "certificateRef",
        "subject",
        "issuer",
        "audience",
        "nameIDFormat",
        "companyID",
        "attributes",
        "lifetimeSeconds",
        "encoding",
    },
    "spec.saml2Bearer.keyRef": {"name", "key"},
    "spec.saml2Bearer.certificateRef": {"name", "key"},
    "spec.tokenExchange.workloadIdentity": {
        "serviceAccountName",
        "audience",
        "expirationSeconds",
    },
    "spec.tls": {"caRef", "insecureSkipVerify", "clientCertificateRef"},
    "spec.tls.caRef": {"kind", "name", "key"},
    "spec.tls.clientCertificateRef": {"name", "certificateKey", "privateKeyKey"},
    "spec.secret": {
        "name",
        "labels",
        "annotations",
        "template",
        "deletionPolicy",
        "type",
        "dockerConfig",
        "asSource",
    },
    "spec.secret.dockerConfig": {"registries", "username"},
    "spec.secret.asSource": {"allowedTokenURLs"},
    "spec.refresh": {"renewBefore", "renewBeforePercentage", "defaultLifetime"},
    "status.lastFailure": {
        "httpStatus",
        "error",
        "errorDescription",
        "reason",
        "kind",
        "message",
        "time",
    },
}
STATUS_FIELDS = {
    "observedGeneration",
    "tokenGeneration",
    "conditions",
    "secretName",
    "expiresAt",
    "lastRefreshTime",
    "nextRefreshTime",
    "consecutiveFailures",
    "lastFailure",
    "lastHandledRefreshRequest",
    "tokenURL",
    "warnings",
}
CONDITION_FIELDS = {
    "type",
    "status",
    "reason",
    "message",
    "lastTransitionTime",
    "observedGeneration",
}

# Constant defaults only; secret.name and the refresh point are computed by the operator.
DEFAULTS = {
    ".spec.allowInsecureHTTP": False,
    ".spec.grantType": "client_credentials",
    ".spec.workloadIdentity.expirationSeconds": 600,
    ".spec.jwtBearer.workloadIdentity.expirationSeconds": 600,
    ".spec.tokenExchange.workloadIdentity.expirationSeconds": 600,
    ".spec.contentType": "application/x-www-form-urlencoded",
    ".spec.includeScope": True,
    ".spec.tls.insecureSkipVerify": False,
    ".spec.timeoutSeconds": 30,
    ".spec.suspend": False,
    # {} so that the nested defaults below apply when the object is omitted.
    ".spec.secret": {},
    ".spec.secret.deletionPolicy": "Delete",
    ".spec.secret.type": "Opaque",
    ".spec.secret.dockerConfig.username": "oauth2accesstoken",
    ".spec.refresh": {},
    ".spec.refresh.defaultLifetime": "1h",
    # "Not yet observed" for kstatus until the operator writes status (test_gitops_health).
    ".status": {"observedGeneration": 0},
}
ENUMS = {
    ".spec.grantType": ["client_credentials", "jwt_bearer", "token_exchange", "saml2_bearer"],
    ".spec.rolloutRestart[].kind": ["Deployment", "StatefulSet", "DaemonSet"],
    ".spec.jwtBearer.algorithm": ["RS256", "PS256", "ES256", "ES384"],
    ".spec.saml2Bearer.encoding": ["base64url", "base64"],
    # No schema default: with issuerURL the method comes from discovery.
    ".spec.clientAuthentication": [
        "header",
        "body",
        "private_key_jwt",
        "client_secret_jwt",
        "tls_client_auth",
        "workload_identity",
        "none",
    ],
    ".spec.clientAssertion.algorithm": [
        "RS256",
        "PS256",
        "ES256",
        "ES384",
        "HS256",
        "HS384",
        "HS512",
    ],
    ".spec.contentType": ["application/x-www-form-urlencoded", "application/json"],
    ".spec.tls.caRef.kind": ["Secret", "ConfigMap"],
    ".spec.secret.deletionPolicy": ["Delete", "Retain"],
    ".spec.secret.type": ["Opaque", "kubernetes.io/dockerconfigjson"],
    ".status.conditions[].status": ["True", "False", "Unknown"],
    ".status.lastFailure.kind": ["transient", "configuration", "protocol"],
}
DURATION_FIELDS = (".spec.refresh.renewBefore", ".spec.refresh.defaultLifetime")
DNS_NAME_FIELDS = (
    ".spec.clientIDRef.name",
    ".spec.clientSecretRef.name",
    ".spec.tls.caRef.name",
    ".spec.tls.clientCertificateRef.name",
    ".spec.clientAssertion.keyRef.name",
    ".spec.workloadIdentity.serviceAccountName",
    ".spec.secret.name",
)
SECRET_KEY_FIELDS = (".spec.clientIDRef.key", ".spec.clientSecretRef.key", ".spec.tls.caRef.key")


@pytest.fixture(scope="module")
def schema() -> dict:
    return crd_schema()


@pytest.fixture(scope="module")
def fields(schema: dict) -> dict[str, dict]:
    return dict(walk_schema(schema))


def test_names_scope_and_version() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "oauth2credentials.tokensync.dev"
    spec = crd["spec"]
    assert spec["group"] == "tokensync.dev"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == "OAuth2Credential"
    assert names["plural"] == "oauth2credentials"
    assert names["singular"] == "oauth2credential"
    assert names["shortNames"] == ["o2c", "oauth2cred"]
    assert names["categories"] == ["tokensync"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Ready",
        "Reason",
        "Secret",
        "Expires",
        "Next Refresh",
        "Age",
        "Message",
    ]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    # The reason in the default columns (as cert-manager and ESO show it), the message
    # with -o wide.
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert "priority" not in columns["Reason"]
    assert columns["Message"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].message'
    assert columns["Message"]["priority"] == 1
    assert columns["Secret"]["jsonPath"] == ".status.secretName"
    assert columns["Expires"]["jsonPath"] == ".status.expiresAt"
    assert columns["Next Refresh"]["jsonPath"] == ".status.nextRefreshTime"
    # `date` columns show future times as <invalid>; API.md asks for strings.
    assert columns["Expires"]["type"] == columns["Next Refresh"]["type"] == "string"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


def test_spec_and_status_fields_match_the_api_contract(schema: dict) -> None:
    props = schema["properties"]
    assert set(props) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert set(props["spec"]["properties"]) == SPEC_FIELDS
    assert set(props["status"]["properties"]) == STATUS_FIELDS
    for path, expected in NESTED_FIELDS.items():
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        assert set(node["properties"]) == expected, path
    conditions = props["status"]["properties"]["conditions"]
    assert set(conditions["items"]["properties"]) == CONDITION_FIELDS


def test_required_fields(schema: dict) -> None:
    spec = schema["properties"]["spec"]
    assert schema["required"] == ["spec"]
    # tokenURL xor issuerURL, and clientSecretRef per clientAuthentication: CEL rules.
    assert "required" not in spec
    props = spec["properties"]
    assert set(props["clientIDRef"]["required"]) == {"name", "key"}
    assert set(props["clientSecretRef"]["required"]) == {"name", "key"}
    assert set(props["tls"]["properties"]["caRef"]["required"]) == {"kind", "name", "key"}
    assert props["tls"]["properties"]["clientCertificateRef"]["required"] == ["name"]


def test_every_field_has_a_description(fields: dict[str, dict]) -> None:
    # metadata is ObjectMeta: the API server describes it and rejects anything but
    # name/generateName restrictions there.
    missing = [
        path or "(root)"
        for path, sub in fields.items()
        if path != ".metadata" and not sub.get("description", "").strip()
    ]
    assert missing == []


def test_every_string_map_and_list_is_bounded(fields: dict[str, dict]) -> None:
    unbounded = []
    for path, sub in fields.items():
        kind = sub.get("type")
        if kind == "string" and "maxLength" not in sub:
            unbounded.append(f"{path}: string without maxLength")
        is_map = isinstance(sub.get("additionalProperties"), dict) or sub.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        if kind == "object" and is_map and "maxProperties" not in sub:
            unbounded.append(f"{path}: map without maxProperties")
        if kind == "array" and "maxItems" not in sub:
            unbounded.append(f"{path}: list without maxItems")
    assert unbounded == []


def test_scope_object_is_flat(fields: dict[str, dict]) -> None:
    """Issue 8 item 1: at most 32 keys; values string, number, boolean or a list of at
    most 32 strings, never an object (so nothing can nest deeper than one level)."""
    scope_object = fields[".spec.scopeObject"]
    assert scope_object["type"] == "object"
    assert scope_object["maxProperties"] == 32
    assert "x-kubernetes-preserve-unknown-fields" not in scope_object
    value = scope_object["additionalProperties"]
    assert "type" not in value and value["x-kubernetes-preserve-unknown-fields"] is True
    # No object satisfies both, so every object value is refused.
    assert value["minProperties"] > value["maxProperties"]
    assert (value["maxLength"], value["maxItems"]) == (1024, 32)
    assert value["items"] == {**value["items"], "type": "string", "maxLength": 1024}
    # Nothing else in the schema preserves unknown fields: every other field the
    # operator reads is typed, so the API server prunes or refuses anything nested.
    preserving = [p for p, sub in fields.items() if sub.get("x-kubernetes-preserve-unknown-fields")]
    assert preserving == [".spec.scopeObject{}"]


def test_constant_defaults_only(fields: dict[str, dict]) -> None:
    defaults = {path: sub["default"] for path, sub in fields.items() if "default" in sub}
    assert defaults == DEFAULTS
    # Computed by the operator from metadata.name, never a schema default.
    assert "default" not in fields[".spec.secret.name"]


def test_enums(fields: dict[str, dict]) -> None:
    enums = {path: sub["enum"] for path, sub in fields.items() if "enum" in sub}
    assert enums == ENUMS


def test_bounds_of_numbers(fields: dict[str, dict]) -> None:
    assert (
        fields[".spec.timeoutSeconds"]["minimum"],
        fields[".spec.timeoutSeconds"]["maximum"],
    ) == (
        1,
        120,
    )
    percentage = fields[".spec.refresh.renewBeforePercentage"]
    assert (percentage["minimum"], percentage["maximum"]) == (1, 99)


@pytest.mark.parametrize("path", DURATION_FIELDS)
@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("90s", True),
        ("5m", True),
        ("1h30m", True),
        ("1.5h", True),
        ("250ms", True),
        ("0s", True),  # the pattern allows it; a CEL rule demands a non-zero digit
        ("5 minutes", False),
        ("5", False),
        ("-5m", False),
        ("1d", False),
        ("", False),
    ],
)
def test_duration_pattern(fields: dict[str, dict], path: str, text: str, valid: bool) -> None:
    assert bool(re.fullmatch(fields[path]["pattern"], text)) is valid


@pytest.mark.parametrize("path", DNS_NAME_FIELDS)
def test_object_names_are_dns_subdomains(fields: dict[str, dict], path: str) -> None:
    pattern = fields[path]["pattern"]
    assert fields[path]["maxLength"] == 253
    for good in ("lms-client", "a", "a.b-c.d0"):
        assert re.fullmatch(pattern, good), good
    for bad in ("Upper", "-lead", "trail-", "under_score", "a..b", "a/b"):
        assert not re.fullmatch(pattern, bad), bad


@pytest.mark.parametrize("path", SECRET_KEY_FIELDS)
def test_secret_keys_pattern(fields: dict[str, dict], path: str) -> None:
    pattern = fields[path]["pattern"]
    for good in ("client_secret", "ca.crt", "CLIENT-ID"):
        assert re.fullmatch(pattern, good), good
    for bad in ("a/b", "a b", ""):
        assert not re.fullmatch(pattern, bad), bad


def test_conditions_are_a_list_map_of_metav1_conditions(fields: dict[str, dict]) -> None:
    conditions = fields[".status.conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize(
    "path", [".status.expiresAt", ".status.lastRefreshTime", ".status.nextRefreshTime"]
)
def test_status_times_are_date_time_strings(fields: dict[str, dict], path: str) -> None:
    assert fields[path]["type"] == "string"
    assert fields[path]["format"] == "date-time"


def test_cel_rules_name_their_field(fields: dict[str, dict]) -> None:
    """Every rule has a message naming its field (a spec field, or metadata.name), and
    rules on an object that are about one of its fields point there with fieldPath."""
    rules = [
        (path, rule)
        for path, sub in fields.items()
        for rule in sub.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 15
    for path, rule in rules:
        message = rule.get("message") or rule.get("messageExpression") or ""
        assert "spec." in message or "metadata.name" in message, (path, rule["rule"])
        if "fieldPath" in rule:
            target = path + rule["fieldPath"]
            assert target in fields, (path, rule["fieldPath"])
            assert target.removeprefix(".") in message, (path, rule["rule"])


def test_cross_field_rules_are_present(fields: dict[str, dict]) -> None:
    """The rules API.md lists, identified by what they refer to."""
    spec_rules = " ".join(r["rule"] for r in fields[".spec"]["x-kubernetes-validations"])
    assert "has(self.clientID) != has(self.clientIDRef)" in spec_rules
    # scopeObject is reached through dyn(self): CEL has no type for its untyped values.
    assert "has(self.scope) && has(dyn(self).scopeObject)" in spec_rules
    assert "application/json" in spec_rules
    assert "http://" in spec_rules and "allowInsecureHTTP" in spec_rules
    refresh_rules = " ".join(r["rule"] for r in fields[".spec.refresh"]["x-kubernetes-validations"])
    assert "renewBefore" in refresh_rules and "renewBeforePercentage" in refresh_rules
    extra = " ".join(r["rule"] for r in fields[".spec.extraParameters"]["x-kubernetes-validations"])
    for reserved in ("grant_type", "client_id", "client_secret", "scope", "audience", "resource"):
        assert f"'{reserved}'" in extra
    assert "client_assertion" in extra
    for field in (".spec.secret.labels", ".spec.secret.annotations"):
        text = " ".join(r["rule"] for r in fields[field]["x-kubernetes-validations"])
        for domain in ("tokensync", "kubernetes", "k8s"):
            assert domain in text, field
    template = " ".join(
        r["rule"] for r in fields[".spec.secret.template"]["x-kubernetes-validations"]
    )
    for fixed in ("access_token", "token_type", "authorization", "expires_at"):
        assert f"'{fixed}'" in template


def _token_url_refusals(fields: dict[str, dict]) -> list[tuple[str, str]]:
    """The tokenURL rules of the form `!self.matches('re')` / `!self.contains('s')`, with
    the CEL string literal unescaped (`\\\\` is one backslash)."""
    found = []
    for rule in fields[".spec.tokenURL"]["x-kubernetes-validations"]:
        match = re.fullmatch(r"!self\.(matches|contains)\('(.*)'\)", rule["rule"].strip())
        if match:
            found.append((match[1], re.sub(r"\\(.)", r"\1", match[2])))
    return found


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://localhost\\.okta.com/evil", True),
        ("https://idp.example/legit/../evil/a3", True),
        ("https://idp.example/legit/%2e%2e/evil/a3", True),
        ("https://idp.example/legit/%2E%2e/evil", True),
        ("https://idp.example/a%2Fb", True),
        ("https://idp.example/a%5cb", True),
        ("https://idp.example/./token", True),
        ("https://idp.example/legit/..", True),
        ("https://idp.example/legit/..;x/evil", True),
        ("https://idp.example/legit/..?x", True),
        ("https://idp.example/token\t", True),
        ("https://idp.example/legit/token", False),
        ("https://idp.example/a/.../b?x=../y", False),
        ("https://idp.example/realms/a/protocol/openid-connect/token", False),
        ("https://idp.example/v2.0/token?x=%20", False),
    ],
)
def test_token_url_refusals_match_the_url_rules(
    fields: dict[str, dict], url: str, refused: bool
) -> None:
    """What API.md "URLs" refuses and a pattern can express: backslash, encoded separators,
    dot segments, whitespace (checked here with Python's re, which agrees with RE2 on
    these patterns; test_manifests_server.py checks the API server itself)."""
    hits = [
        kind
        for kind, arg in _token_url_refusals(fields)
        if (re.search(arg, url) if kind == "matches" else arg in url)
    ]
    assert bool(hits) is refused, hits


def test_packaged_crd_is_the_crds_file_byte_for_byte() -> None:
    """`check` and `doctor` read the CRD from the installed package (data/)."""
    packaged = REPO / "operator" / "tokensync" / "data" / "oauth2credential.yaml"
    assert packaged.read_bytes() == CRD_PATH.read_bytes(), (
        "operator/tokensync/data/ holds a copy of crds/: "
        "cp crds/oauth2credential.yaml operator/tokensync/data/"
    )


def test_rollout_restart_lists_workloads(schema: dict) -> None:
    node = schema["properties"]["spec"]["properties"]["rolloutRestart"]
    assert (node["maxItems"], node["x-kubernetes-list-map-keys"]) == (16, ["kind", "name"])
    assert set(node["items"]["properties"]) == {"kind", "name"}
    assert node["items"]["properties"]["kind"]["enum"] == ["Deployment", "StatefulSet", "DaemonSet"]
