"""`tokensync check`: run as a new user would, against the test token servers."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.token_servers import Credentials, run_tokensync
from servers.kubeapi import FakeKubeAPI
from servers.oidc import OIDCProvider
from servers.quirky import CognitoServer, SAPLearningServer, ServerTLS, TokenServer
from tokensync import check, cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(source: Path | list[dict[str, Any]], tmp_path: Path, **spec: Any) -> Path:
    """A copy of a manifest with spec fields replaced (None removes a field)."""
    documents = list(yaml.safe_load_all(source.read_text())) if isinstance(source, Path) else source
    for document in documents:
        if document.get("kind") == "OAuth2Credential":
            for key, value in spec.items():
                if value is None:
                    document["spec"].pop(key, None)
                else:
                    document["spec"][key] = value
    path = tmp_path / "credential.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def minimal(url: str, **spec: Any) -> list[dict[str, Any]]:
    """A credential whose client secret is in Secret `client` key `secret`."""
    return [
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": {
                "tokenURL": url,
                "allowInsecureHTTP": url.startswith("http:"),
                "clientID": spec.pop("clientID", "demo-client"),
                "clientSecretRef": {"name": "client", "key": "secret"},
                **spec,
            },
        }
    ]


# ---- every example against the server it describes


@pytest.fixture
def ca_file(tmp_path, token_ca) -> Path:
    return write(tmp_path, "ca.pem", token_ca.cert_pem.bytes())


ExampleSetup = Callable[..., tuple[TokenServer, list[str]]]


def cognito(start_server, credentials, tls, tmp_path):
    server = start_server(
        CognitoServer,
        clients={credentials.client_id: credentials.client_secret},
        scopes=("my-api/read", "my-api/write"),
        tls=tls,
    )
    id_file = write(tmp_path, "client_id", credentials.client_id)
    return server, ["--ref", f"cognito-client/client_id={id_file}"]


def sap_learning(start_server, credentials, tls, tmp_path):
    server = start_server(SAPLearningServer, clients={"acme": credentials.client_secret}, tls=tls)
    return server, []


def standard(client_id: str | None, id_ref: str | None = None) -> ExampleSetup:
    def setup(start_server, credentials, tls, tmp_path):
        known = client_id or credentials.client_id
        server = start_server(clients={known: credentials.client_secret}, tls=tls)
        if id_ref is None:
            return server, []
        return server, ["--ref", f"{id_ref}={write(tmp_path, 'id', credentials.client_id)}"]

    return setup


EXAMPLE_SETUPS: dict[str, ExampleSetup] = {
    "aws-cognito.yaml": cognito,
    "sap-successfactors-learning.yaml": sap_learning,
    "entra-id.yaml": standard("11111111-1111-1111-1111-111111111111"),
    "keycloak.yaml": standard("inventory-sync"),
    "okta.yaml": standard(None, "okta-client/client_id"),
    "sap-iot.yaml": standard(None, "sap-iot-client/clientid"),
    "private-ca.yaml": standard("billing-sync"),
    "registry-pull-secret.yaml": standard("image-puller"),
    "rollout-restart.yaml": standard("billing-export"),
}


def test_every_credential_example_is_covered():
    with_credentials = {
        p.name for p in EXAMPLES.glob("*.yaml") if "kind: OAuth2Credential" in p.read_text()
    }
    # Checked against oidc-provider in test_check_identity.py; workload identity (which
    # check refuses) through the operator in tests/operator/test_identity.py.
    identity = {
        "okta-private-key-jwt.yaml",
        "entra-id-certificate.yaml",
        "entra-id-workload-identity.yaml",
        "keycloak-signed-jwt.yaml",
        # against Keycloak itself in tests/operator/test_operator_idp.py
        "keycloak-workload-identity.yaml",
        # a jwt_bearer grant, against Keycloak itself in tests/idp/test_idp_grants.py
        "keycloak-jwt-bearer.yaml",
        # a token_exchange grant, against Keycloak itself in tests/idp/test_idp_token_exchange.py
        "keycloak-token-exchange.yaml",
        # binding-shaped Secrets through the operator in test_operator_service_binding.py
        "sap-btp-service-binding.yaml",
        # a saml2_bearer grant, against a SuccessFactors-like endpoint
        # (test_successfactors_saml.py)
        "sap-successfactors-saml2-bearer.yaml",
        # one credential's token exchanged by another, through the operator in
        # tests/operator/test_operator_token_exchange.py (check cannot read the first one's
        # managed Secret before the operator wrote it)
        "token-exchange-from-credential.yaml",
    }
    assert with_credentials == set(EXAMPLE_SETUPS) | identity


@pytest.mark.parametrize("example", sorted(EXAMPLE_SETUPS))
def test_check_example_against_its_server(
    example, start_server, credentials, token_ca, ca_file, tmp_path
):
    server, args = EXAMPLE_SETUPS[example](
        start_server, credentials, ServerTLS.for_ca(token_ca), tmp_path
    )
    path = manifest(EXAMPLES / example, tmp_path, tokenURL=server.token_url)
    secret_file = write(tmp_path, "client_secret", credentials.client_secret)
    env = {}
    if example == "private-ca.yaml":
        args += ["--ref", f"ConfigMap/internal-ca/ca.crt={ca_file}"]
    else:
        env["SSL_CERT_FILE"] = str(ca_file)  # the "system trust store" of this run
    result = run_tokensync(
        "check", "-f", str(path), "--client-secret-file", str(secret_file), *args, env=env
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "result: token issued" in out
    for label in (
        "endpoint:",
        "auth style:",
        "content type:",
        "scope sent:",
        "TLS verification:",
        "HTTP status:",
        "token type:",
        "lifetime:",
        "expires at:",
        "granted scope:",
    ):
        assert label in out
    assert server.token_url in out
    assert f"file {secret_file}" in out
    assert "(hidden; --show-token prints it)" in out
    assert server.tokens[-1] not in out + result.stderr
    assert credentials.client_secret not in out + result.stderr
    if example == "private-ca.yaml":
        assert "verified against ConfigMap 'internal-ca' key 'ca.crt'" in out
    if example == "sap-iot.yaml":
        assert "(none; includeScope: false)" in out


def test_check_against_oidc_provider(oidc_provider: OIDCProvider, tmp_path):
    client = oidc_provider.add_client("client_secret_post", scope="api:read")
    path = manifest(
        minimal(
            oidc_provider.token_url,
            clientID=client.client_id,
            scope="api:read",
            clientAuthentication="body",
        ),
        tmp_path,
    )
    secret = write(tmp_path, "secret", client.client_secret)
    result = run_tokensync(
        "check", "-f", str(path), "--client-secret-file", str(secret), "--show-token", "-o", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    token = report["result"]["accessToken"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert digest in {entry["token_sha256"] for entry in oidc_provider.issued()}
    assert report["result"]["grantedScope"] == "api:read"
    assert report["request"]["clientAuthentication"] == "body"
    assert "plain http: the client secret and token travel unencrypted" in report["warnings"]


# ---- results and exit codes


@pytest.fixture
def secret_file(tmp_path, credentials) -> Path:
    return write(tmp_path, "secret", credentials.client_secret)


def demo(token_server: TokenServer, credentials: Credentials, tmp_path: Path, **spec) -> Path:
    return manifest(
        minimal(token_server.token_url, clientID=credentials.client_id, **spec), tmp_path
    )


def test_success_text(capsys, token_server, credentials, tmp_path, secret_file):
    token_server.lifetime = 300
    path = demo(token_server, credentials, tmp_path, scope="read write")
    code, out, err = in_process(capsys, "-f", str(path), "--client-secret-file", str(secret_file))
    assert code == check.EXIT_OK
    assert "OAuth2Credential team-a/demo" in out
    assert "scope sent:         read write" in out
    assert "lifetime:           5m0s (from expires_in)" in out
    assert "HTTP status:        200" in out
    assert "warning: plain http" in err


def test_show_token(capsys, token_server, credentials, tmp_path, secret_file):
    path = demo(token_server, credentials, tmp_path)
    code, out, _ = in_process(
        capsys, "-f", str(path), "--client-secret-file", str(secret_file), "--show-token"
    )
    assert code == 0
    assert f"access token:       {token_server.tokens[-1]}" in out


@pytest.mark.parametrize(
    ("fault", "params", "code", "expected"),
    [
        ("500", {}, check.EXIT_TRANSIENT, "result: transient error (exit code 5)"),
        ("429", {"retry_after": 9}, check.EXIT_TRANSIENT, "retry after:        9s"),
        ("html", {}, check.EXIT_PROTOCOL, "result: protocol error (exit code 6)"),
        ("expires_in_zero", {}, check.EXIT_PROTOCOL, "InvalidExpiresIn"),
        (
            "redirect",
            {"location": "http://localhost:1/x"},
            check.EXIT_CONFIGURATION,
            "not followed",
        ),
    ],
)
def test_failures_are_classified(
    capsys, token_server, credentials, tmp_path, secret_file, fault, params, code, expected
):
    token_server.fail(fault, **params)
    path = demo(token_server, credentials, tmp_path)
    result = in_process(capsys, "-f", str(path), "--client-secret-file", str(secret_file))
    assert result[0] == code
    assert expected in result[1]


def test_wrong_secret_is_a_configuration_error_with_hint(
    capsys, token_server, credentials, tmp_path
):
    path = demo(token_server, credentials, tmp_path)
    wrong = write(tmp_path, "wrong", "not-the-secret")
    code, out, _ = in_process(capsys, "-f", str(path), "--client-secret-file", str(wrong))
    assert code == check.EXIT_CONFIGURATION
    assert "result: configuration error (exit code 4)" in out
    assert "HTTP status:        401" in out
    assert "hint:" in out


def test_connection_refused_is_transient(capsys, tmp_path, secret_file):
    from servers.quirky import free_port

    path = manifest(minimal(f"http://127.0.0.1:{free_port()}/token"), tmp_path)
    code, out, _ = in_process(capsys, "-f", str(path), "--client-secret-file", str(secret_file))
    assert code == check.EXIT_TRANSIENT
    assert "ConnectionFailed" in out


def test_secret_ending_in_newline_is_warned_about(capsys, token_server, credentials, tmp_path):
    path = demo(token_server, credentials, tmp_path)
    echoed = write(tmp_path, "echoed", credentials.client_secret + "\n")
    code, out, err = in_process(capsys, "-f", str(path), "--client-secret-file", str(echoed))
    assert code == check.EXIT_CONFIGURATION  # sent as is, so the server refuses it
    assert "client secret ends in a newline" in err
    # The hint names the newline, not another clientAuthentication.
    (hint,) = [line for line in out.splitlines() if line.strip().startswith("hint:")]
    assert "remove the trailing newline from the client secret" in hint
    assert "clientAuthentication" not in hint


def test_json_output(capsys, token_server, credentials, tmp_path, secret_file):
    path = demo(token_server, credentials, tmp_path, scope="a")
    code, out, err = in_process(
        capsys, "-f", str(path), "--client-secret-file", str(secret_file), "-o", "json"
    )
    report = json.loads(out)
    assert code == 0 and err == ""
    assert report["result"]["ok"] is True
    assert report["result"]["lifetimeSource"] == "expires_in"
    assert "accessToken" not in report["result"]
    assert report["request"]["scope"] == "a"
    assert report["credential"] == {"file": str(path), "name": "demo", "namespace": "team-a"}


def test_tls_settings_as_written(capsys, tls_server, credentials, tmp_path, secret_file, ca_file):
    insecure = manifest(
        minimal(
            tls_server.token_url, clientID=credentials.client_id, tls={"insecureSkipVerify": True}
        ),
        tmp_path,
    )
    code, out, err = in_process(
        capsys, "-f", str(insecure), "--client-secret-file", str(secret_file)
    )
    assert code == 0
    assert "disabled (insecureSkipVerify)" in out
    assert "insecureSkipVerify" in err
    assert "the operator ignores tls.insecureSkipVerify" in out

    untrusted = manifest(minimal(tls_server.token_url, clientID=credentials.client_id), tmp_path)
    code, out, _ = in_process(
        capsys, "-f", str(untrusted), "--client-secret-file", str(secret_file)
    )
    assert code == check.EXIT_CONFIGURATION
    assert "TLSVerificationFailed" in out
    assert "tls.caRef" in out


def test_mutual_tls_from_files(
    capsys, mtls_server, credentials, tmp_path, secret_file, ca_file, client_cert
):
    path = manifest(
        minimal(
            mtls_server.token_url,
            clientID=credentials.client_id,
            tls={
                "caRef": {"kind": "Secret", "name": "ca", "key": "ca.crt"},
                "clientCertificateRef": {"name": "client-tls"},
            },
        ),
        tmp_path,
    )
    crt = write(tmp_path, "tls.crt", client_cert.cert_pem)
    key = write(tmp_path, "tls.key", client_cert.key_pem)
    code, out, _ = in_process(
        capsys,
        "-f",
        str(path),
        "--client-secret-file",
        str(secret_file),
        "--ref",
        f"ca/ca.crt={ca_file}",
        "--ref",
        f"client-tls/tls.crt={crt}",
        "--ref",
        f"Secret/client-tls/tls.key={key}",
    )
    assert code == 0, out
    assert "client certificate: Secret 'client-tls'" in out


# ---- problems before any request


def test_usage_and_manifest_problems(capsys, tmp_path):
    code, out, _ = in_process(capsys, "-f", str(tmp_path / "missing.yaml"))
    assert code == check.EXIT_USAGE and "missing.yaml" in out
    bad = write(tmp_path, "bad.yaml", "kind: [unclosed")
    assert in_process(capsys, "-f", str(bad))[0] == check.EXIT_USAGE
    two = manifest(minimal("https://a.test/t") + minimal("https://b.test/t"), tmp_path)
    code, out, _ = in_process(capsys, "-f", str(two))
    assert code == check.EXIT_USAGE and "--name" in out
    code, out, _ = in_process(capsys, "-f", str(two), "--name", "nope")
    assert code == check.EXIT_USAGE
    one = manifest(minimal("https://a.test/t"), tmp_path)
    code, out, _ = in_process(capsys, "-f", str(one), "--ref", "no-equals-sign")
    assert code == check.EXIT_USAGE and "[KIND/]NAME/KEY=FILE" in out


def test_invalid_spec_lists_every_problem(capsys, tmp_path):
    path = manifest(
        minimal("http://idp.test/token", allowInsecureHTTP=False, contentType="text/plain"),
        tmp_path,
    )
    code, out, _ = in_process(capsys, "-f", str(path))
    assert code == check.EXIT_USAGE
    assert "spec.tokenURL" in out
    assert "spec.contentType" in out


def test_unresolvable_reference(capsys, tmp_path):
    path = manifest(minimal("https://idp.test/token"), tmp_path)
    code, out, _ = in_process(capsys, "-f", str(path))
    assert code == check.EXIT_REFERENCE
    assert "Secret 'client' key 'secret'" in out
    assert "--ref client/secret=FILE" in out
    assert "--from-cluster" in out


def test_secret_in_the_manifest_is_used(capsys, token_server, credentials, tmp_path):
    documents = minimal(token_server.token_url, clientID=credentials.client_id)
    documents.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "client"},
            "stringData": {"secret": credentials.client_secret},
        }
    )
    code, out, _ = in_process(capsys, "-f", str(manifest(documents, tmp_path)))
    assert code == 0
    assert "Secret 'client' in the manifest" in out
    assert "lacks the label tokensync.dev/credential-source" in out


# ---- --from-cluster


@pytest.fixture
def kube(tmp_path, monkeypatch):
    api = FakeKubeAPI().start()
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", "ctx-ns")))
    yield api
    api.stop()


def secret_body(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"kind": "Secret", "metadata": {"name": name, "labels": labels or {}}, "data": encoded}


def test_from_cluster(capsys, kube, token_server, credentials, tmp_path):
    labels = {"tokensync.dev/credential-source": "true"}
    kube.add("team-a", secret_body("client", {"secret": credentials.client_secret}, labels))
    path = demo(token_server, credentials, tmp_path)
    code, out, _ = in_process(capsys, "-f", str(path), "--from-cluster")
    assert code == 0, out
    assert "Secret 'client' in the cluster" in out
    assert kube.requests == ["/api/v1/namespaces/team-a/secrets/client"]
    assert "lacks the label" not in out


def test_files_win_over_the_cluster(capsys, kube, token_server, credentials, tmp_path, secret_file):
    path = demo(token_server, credentials, tmp_path)
    code, _, _ = in_process(
        capsys, "-f", str(path), "--from-cluster", "--client-secret-file", str(secret_file)
    )
    assert code == 0
    assert kube.requests == []  # nothing left to read


def test_from_cluster_namespace_and_errors(capsys, kube, token_server, credentials, tmp_path):
    documents = minimal(token_server.token_url, clientID=credentials.client_id)
    del documents[0]["metadata"]["namespace"]
    path = manifest(documents, tmp_path)
    code, out, _ = in_process(capsys, "-f", str(path), "--from-cluster")
    assert code == check.EXIT_REFERENCE
    assert "in namespace ctx-ns is not available" in out  # the kubeconfig context's
    kube.add("other", secret_body("client", {"secret": credentials.client_secret}))
    kube.forbidden.add(("Secret", "other", "client"))
    code, out, _ = in_process(capsys, "-f", str(path), "--from-cluster", "-n", "other")
    assert code == check.EXIT_REFERENCE
    assert "HTTP 403" in out
    kube.forbidden.clear()
    kube.add("other", secret_body("client", {"wrong-key": "x"}))
    code, out, _ = in_process(capsys, "-f", str(path), "--from-cluster", "-n", "other")
    assert code == check.EXIT_REFERENCE
    assert "ReferenceKeyMissing" in out


def test_cognito_invalid_client_to_a_json_body_names_the_form_content_type_first(
    capsys, start_server, credentials, tmp_path, secret_file
):
    """Issue 8 item 12: Cognito answers a JSON body with 401 {"error":"invalid_client"}."""
    server = start_server(
        CognitoServer,
        clients={credentials.client_id: credentials.client_secret},
        json_answer="invalid_client",
    )
    path = demo(server, credentials, tmp_path, contentType="application/json")
    code, out, _ = in_process(capsys, "-f", str(path), "--client-secret-file", str(secret_file))
    assert code == check.EXIT_CONFIGURATION
    hint = next(line for line in out.splitlines() if line.strip().startswith("hint:"))
    assert (
        hint.split("hint:", 1)[1]
        .strip()
        .startswith("set contentType: application/x-www-form-urlencoded")
    ), out
