"""examples/: one OAuth2Credential per endpoint style, secure by default when copied.

Every referenced Secret or ConfigMap is in the same file and carries the
credential-source label; every source Secret carries an allowed-token-urls annotation whose
prefixes bind it to its credential's tokenURL; and the operator's own spec parser accepts
every credential. (The API server's view of the same files: test_manifests_server.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from manifestlib import (
    ALLOWED_URLS_ANNOTATION,
    EXAMPLES,
    SOURCE_LABEL,
    example_files,
    load_docs,
)

EXPECTED_EXAMPLES = {
    "sap-successfactors-learning.yaml",
    "sap-iot.yaml",
    "aws-cognito.yaml",
    "entra-id.yaml",
    "keycloak.yaml",
    "okta.yaml",
    "private-ca.yaml",
    "consumer-deployment.yaml",
    "okta-private-key-jwt.yaml",
    "entra-id-certificate.yaml",
    "entra-id-workload-identity.yaml",
    "keycloak-signed-jwt.yaml",
    "keycloak-workload-identity.yaml",
    "keycloak-jwt-bearer.yaml",
    "keycloak-token-exchange.yaml",
    "token-exchange-from-credential.yaml",
    "sap-btp-service-binding.yaml",
    "registry-pull-secret.yaml",
    "sap-successfactors-saml2-bearer.yaml",
    "rollout-restart.yaml",
}


def credentials(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "OAuth2Credential"]


def referenced(credential: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every object the credential reads."""
    spec = credential["spec"]
    refs = [("Secret", spec["clientSecretRef"]["name"])] if "clientSecretRef" in spec else []
    if "keyRef" in spec.get("clientAssertion", {}):
        refs.append(("Secret", spec["clientAssertion"]["keyRef"]["name"]))
    if "keyRef" in spec.get("jwtBearer", {}):
        refs.append(("Secret", spec["jwtBearer"]["keyRef"]["name"]))
    if "subjectTokenRef" in spec.get("tokenExchange", {}):
        refs.append(("Secret", spec["tokenExchange"]["subjectTokenRef"]["name"]))
    for key in ("keyRef", "certificateRef"):
        if key in spec.get("saml2Bearer", {}):
            refs.append(("Secret", spec["saml2Bearer"][key]["name"]))
    if "clientIDRef" in spec:
        refs.append(("Secret", spec["clientIDRef"]["name"]))
    tls = spec.get("tls", {})
    if "caRef" in tls:
        refs.append((tls["caRef"]["kind"], tls["caRef"]["name"]))
    if "clientCertificateRef" in tls:
        refs.append(("Secret", tls["clientCertificateRef"]["name"]))
    return refs


def test_the_expected_examples_exist() -> None:
    assert {p.name for p in example_files()} == EXPECTED_EXAMPLES


def test_examples_are_namespace_less() -> None:
    """So that `kubectl apply -n <namespace> -f examples/x.yaml` works."""
    for path in example_files():
        for doc in load_docs(path):
            assert "namespace" not in doc["metadata"], (path.name, doc["metadata"]["name"])


def test_names_are_unique_across_examples() -> None:
    """All examples can be applied into one namespace together."""
    seen: dict[tuple[str, str], str] = {}
    for path in example_files():
        for doc in load_docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{key} in {path.name} and {seen[key]}"
            seen[key] = path.name


@pytest.mark.parametrize(
    "path", [p for p in example_files() if credentials(load_docs(p))], ids=lambda p: p.name
)
def test_sources_are_labelled_and_bound_to_the_token_url(path: Path) -> None:
    docs = load_docs(path)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    offered = {  # managed Secrets whose credential offers its token (secret.asSource)
        (c["spec"]["secret"].get("name") or c["metadata"]["name"]): c["spec"]["secret"]["asSource"][
            "allowedTokenURLs"
        ]
        for c in credentials(docs)
        if (c["spec"].get("secret") or {}).get("asSource")
    }
    for credential in credentials(docs):
        token_url = credential["spec"]["tokenURL"]
        for kind, name in referenced(credential):
            if kind == "Secret" and name in offered:
                assert any(token_url.startswith(p) for p in offered[name]), (token_url, name)
                continue
            source = objects.get((kind, name))
            assert source is not None, f"{kind} {name} is not in {path.name}"
            metadata = source["metadata"]
            assert metadata.get("labels", {}).get(SOURCE_LABEL) == "true", name
            if kind != "Secret":
                continue
            allowed = metadata.get("annotations", {}).get(ALLOWED_URLS_ANNOTATION)
            assert allowed, f"Secret {name} lacks {ALLOWED_URLS_ANNOTATION}"
            prefixes = [p.strip() for p in allowed.split(",") if p.strip()]
            assert any(token_url.startswith(p) for p in prefixes), (token_url, prefixes)
            for prefix in prefixes:
                # A prefix that stops inside the host name (https://idp.example) would also
                # allow https://idp.example.attacker.test; end it with a path.
                scheme_and_host, _, rest = prefix.partition("://")
                assert scheme_and_host == "https" and "/" in rest and prefix.endswith("/"), prefix


def test_every_source_secret_in_examples_is_labelled_and_annotated() -> None:
    for path in example_files():
        for doc in load_docs(path):
            if doc["kind"] != "Secret":
                continue
            metadata = doc["metadata"]
            assert metadata.get("labels", {}).get(SOURCE_LABEL) == "true", path.name
            assert metadata.get("annotations", {}).get(ALLOWED_URLS_ANNOTATION), path.name


@pytest.mark.parametrize(
    "path", [p for p in example_files() if credentials(load_docs(p))], ids=lambda p: p.name
)
def test_the_operator_accepts_every_example(path: Path) -> None:
    spec_module = pytest.importorskip("tokensync.spec")
    for credential in credentials(load_docs(path)):
        parsed = spec_module.parse_spec(credential["spec"], name=credential["metadata"]["name"])
        assert parsed.token_url == credential["spec"]["tokenURL"]


def test_endpoint_styles() -> None:
    """Each example shows the style its endpoint needs (the reason it exists)."""

    def spec_of(name: str) -> dict[str, Any]:
        (credential,) = credentials(load_docs(EXAMPLES / name))
        return credential["spec"]

    learning = spec_of("sap-successfactors-learning.yaml")
    assert learning["contentType"] == "application/json"
    assert learning["clientAuthentication"] == "header"
    assert set(learning["scopeObject"]) == {"userId", "companyId", "userType", "resourceType"}
    iot = spec_of("sap-iot.yaml")
    assert iot["contentType"] == "application/x-www-form-urlencoded"
    assert iot["clientAuthentication"] == "header"
    assert iot["includeScope"] is False
    cognito = spec_of("aws-cognito.yaml")
    assert cognito.get("contentType", "application/x-www-form-urlencoded") != "application/json"
    assert cognito["clientAuthentication"] == "header"
    assert "/" in cognito["scope"]  # resource-server scope: identifier/scope
    entra = spec_of("entra-id.yaml")
    assert entra["clientAuthentication"] == "body"
    assert entra["scope"].endswith("/.default")
    assert entra["tokenURL"].startswith("https://login.microsoftonline.com/")
    assert entra["tokenURL"].endswith("/oauth2/v2.0/token")
    assert "401" in (EXAMPLES / "aws-cognito.yaml").read_text()
    private = spec_of("private-ca.yaml")
    assert private["tls"]["caRef"]["kind"] == "ConfigMap"
    restart = spec_of("rollout-restart.yaml")["rolloutRestart"]
    docs = load_docs(EXAMPLES / "rollout-restart.yaml")
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {(w["kind"], w["name"]) for w in restart} <= workloads  # restarts what it ships
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["rules"] == [  # patch on that one workload, nothing else
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [restart[0]["name"]],
            "verbs": ["patch"],
        }
    ]
    registry = spec_of("registry-pull-secret.yaml")["secret"]
    assert registry["type"] == "kubernetes.io/dockerconfigjson"
    assert registry["dockerConfig"]["registries"]


def test_consumer_mounts_the_whole_secret_and_reads_it_per_request() -> None:
    (deployment,) = load_docs(EXAMPLES / "consumer-deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = container["volumeMounts"]
    assert all("subPath" not in m for m in mounts)
    assert any(m["mountPath"] == "/var/run/secrets/token" for m in mounts)
    assert "$(cat /var/run/secrets/token/authorization)" in " ".join(container["args"])
    assert "env" not in container and "envFrom" not in container
    text = (EXAMPLES / "consumer-deployment.yaml").read_text()
    assert "subPath" in text and "Environment variables" in text  # the note on both
