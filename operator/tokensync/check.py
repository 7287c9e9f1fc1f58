"""`tokensync check`: request one token exactly as a credential would, and say what happened.

The connectivity test SAP Cloud Integration users know, for an OAuth2Credential manifest.
References are resolved from local files (`--client-secret-file`, `--ref`), from Secrets
and ConfigMaps in the manifest itself, and with `--from-cluster` from the current
kubeconfig, with the user's own permissions. It honours allowInsecureHTTP and
insecureSkipVerify as written and applies none of the operator's gates; where the
operator would behave differently it says so in a note.

Exit codes: 0 token issued; 2 usage error or invalid spec; 3 a reference cannot be
resolved; 4 configuration error; 5 transient error; 6 protocol error.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml

from tokensync import crd, oauth2
from tokensync.gates import OperatorConfig, gate_problem
from tokensync.secret import (
    ANNOTATION_ALLOWED_URLS,
    LABEL_SOURCE,
    is_managed,
    offered_as_source,
    url_allowed,
)
from tokensync.sources import (
    TLS_SECRET_TYPE,
    ReferenceProblem,
    Source,
    Unresolved,
    describe,
    managed_source_problem,
    resolve_references,
)
from tokensync.spec import CredentialSpec, Ref, SpecError, parse_spec, to_token_request
from tokensync.transport import is_denied_address
from tokensync.urls import URLProblem, parse_url

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFERENCE = 3
EXIT_CONFIGURATION = 4
EXIT_TRANSIENT = 5
EXIT_PROTOCOL = 6
EXIT_CODES = {
    "configuration": EXIT_CONFIGURATION,
    "transient": EXIT_TRANSIENT,
    "protocol": EXIT_PROTOCOL,
}
KIND = "OAuth2Credential"
SOURCE_KINDS = ("Secret", "ConfigMap")

EPILOG = """\
exit codes:
  0  a token was issued
  2  usage error or invalid spec
  3  a referenced Secret/ConfigMap key could not be resolved
  4  configuration error (the endpoint refused the request as configured, TLS failure)
  5  transient error (timeout, connection failure, 429, 5xx)
  6  protocol error (the endpoint answered with something that is not a token)
"""


class CheckFailed(Exception):
    """The check stops before any token request."""

    def __init__(self, exit_code: int, stage: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.exit_code = exit_code
        self.stage = stage
        self.problems = problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Request one token as an OAuth2Credential would and print what happened. The token "
        "itself is never printed unless --show-token is given."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "-f", "--file", required=True, help="OAuth2Credential manifest (YAML; '-' for stdin)"
    )
    parser.add_argument(
        "--name", help="which OAuth2Credential of the manifest (when it holds several)"
    )
    parser.add_argument(
        "--client-secret-file",
        metavar="FILE",
        help="file holding the client secret, byte for byte ('-' for stdin)",
    )
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="[KIND/]NAME/KEY=FILE",
        help="file holding key KEY of the referenced Secret or ConfigMap NAME (repeatable)",
    )
    parser.add_argument(
        "--from-cluster",
        action="store_true",
        help="read whatever no file gives from the cluster of the current kubeconfig",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig for --from-cluster (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument(
        UNBOUND_FLAG,
        action="store_true",
        help="with --from-cluster: also send data of objects the operator would not send to "
        "this token URL (no tokensync.dev/credential-source label, or an "
        "allowed-token-urls annotation that does not allow it); says what goes where first",
    )
    parser.add_argument("--context", help="kubeconfig context for --from-cluster")
    parser.add_argument(
        "--namespace",
        "-n",
        help="namespace for --from-cluster (default: the manifest's, else the context's)",
    )
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text")
    parser.add_argument(
        "--show-token", action="store_true", help="also print the access token itself"
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="if the request as written fails, try it with the other content type (form, "
        "JSON; scope as string and as scopeObject), header <-> body for a client secret, "
        "and with and without client_id next to a client assertion, smallest change first, "
        f"against the same token URL, at most {MAX_PROBES} requests, stopping at the first "
        "that works, and print the spec lines that work",
    )


# --------------------------------------------------------------------------------------
# Loading the manifest


@dataclass(frozen=True)
class Manifest:
    name: str
    namespace: str | None
    spec: Mapping[str, Any]
    sources: tuple[Mapping[str, Any], ...]  # Secrets and ConfigMaps in the same file


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CheckFailed(EXIT_USAGE, "usage", [f"{path}: {error.strerror}"]) from None


def load_manifest(text: bytes, name: str | None, origin: str) -> Manifest:
    """The OAuth2Credential of a (multi-document) YAML file, with its sibling sources."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise CheckFailed(EXIT_USAGE, "manifest", [f"{origin}: not valid YAML{where}"]) from None
    objects = [d for d in documents if isinstance(d, Mapping)]
    credentials = [d for d in objects if d.get("kind") == KIND]
    if name is not None:
        credentials = [d for d in credentials if (d.get("metadata") or {}).get("name") == name]
    if len(credentials) != 1:
        found = "no" if not credentials else str(len(credentials))
        which = f" named {name!r}" if name else ""
        hint = "" if credentials == [] else "; choose one with --name"
        raise CheckFailed(EXIT_USAGE, "manifest", [f"{origin}: {found} {KIND}{which} found{hint}"])
    credential = credentials[0]
    # What the API server would refuse first (strict field validation): a misspelt field
    # is named as such, not as the missing field it was meant to be.
    unknown = crd.unknown_fields(credential, crd.schema())
    if unknown:
        raise CheckFailed(EXIT_USAGE, "spec", unknown)
    metadata = credential.get("metadata") or {}
    return Manifest(
        name=str(metadata.get("name") or "credential"),
        namespace=metadata.get("namespace"),
        spec=credential.get("spec") or {},
        sources=tuple(d for d in objects if d.get("kind") in SOURCE_KINDS),
    )


# --------------------------------------------------------------------------------------
# Resolving references: files, then the manifest, then (optionally) the cluster


@dataclass
class FoundObject:
    """A referenced object as check found it: which keys came from where."""

    kind: str
    name: str
    data: dict[str, bytes] = field(default_factory=dict, repr=False)
    origins: dict[str, str] = field(default_factory=dict)
    type: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    metadata_known: bool = False  # labels/annotations are real (manifest or cluster)


@dataclass(frozen=True)
class FileRef:
    kind: str | None  # None: a Secret or ConfigMap of that name
    name: str
    key: str
    content: bytes = field(repr=False)
    origin: str


def parse_ref_argument(value: str) -> tuple[str | None, str, str, str]:
    """`[KIND/]NAME/KEY=FILE` -> (kind or None, name, key, file)."""
    target, sep, path = value.partition("=")
    parts = target.split("/")
    if not sep or not path or len(parts) not in (2, 3) or not all(parts):
        raise CheckFailed(EXIT_USAGE, "usage", [f"--ref {value!r}: expected [KIND/]NAME/KEY=FILE"])
    if len(parts) == 3 and parts[0] not in SOURCE_KINDS:
        raise CheckFailed(EXIT_USAGE, "usage", [f"--ref {value!r}: KIND is Secret or ConfigMap"])
    kind = parts[0] if len(parts) == 3 else None
    return kind, parts[-2], parts[-1], path


def _object_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    """Data of a Secret or ConfigMap manifest/API object, decoded to bytes."""
    data: dict[str, bytes] = {}
    try:
        for key, value in (body.get("data") or {}).items():
            if body.get("kind") == "Secret":
                data[key] = base64.b64decode(str(value), validate=True)
            else:
                data[key] = str(value).encode()
        for key, value in (body.get("binaryData") or {}).items():
            data[key] = base64.b64decode(str(value), validate=True)
    except ValueError:
        raise CheckFailed(
            EXIT_REFERENCE, "reference", [f"{body.get('kind')} data is not valid base64"]
        ) from None
    for key, value in (body.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


class Resolver:
    """Looks up referenced objects for sources.resolve_references: files first, then the
    manifest, then the cluster (only for keys still missing), recording where each key
    came from."""

    def __init__(
        self,
        needed: tuple[Ref, ...],
        files: list[FileRef],
        manifest_sources: tuple[Mapping[str, Any], ...],
        cluster: Callable[[str, str], Mapping[str, Any] | None] | None,
    ) -> None:
        self._needed = needed
        self._files = files
        self._manifest = manifest_sources
        self._cluster = cluster
        self.found: dict[tuple[str, str], FoundObject] = {}

    def lookup(self, kind: str, name: str) -> Source | None:
        if (kind, name) not in self.found:
            self.found[(kind, name)] = self._find(kind, name)
        found = self.found[(kind, name)]
        if not found.data and not found.metadata_known:
            return None
        # No allowed_token_urls: check applies no operator gates (see operator_notes).
        return Source(kind=kind, name=name, data=found.data, type=found.type)

    def _missing(self, found: FoundObject) -> bool:
        keys = {r.key for r in self._needed if (r.kind, r.name) == (found.kind, found.name)}
        return not keys <= found.data.keys()

    def _find(self, kind: str, name: str) -> FoundObject:
        found = FoundObject(kind, name)
        for ref in self._files:
            if ref.name == name and ref.kind in (None, kind):
                found.data[ref.key] = ref.content
                found.origins[ref.key] = ref.origin
        if found.data and kind == "Secret":
            found.type = TLS_SECRET_TYPE  # files cannot say; trust the user
        manifest = next((o for o in self._manifest if _is(o, kind, name)), None)
        self._merge(found, manifest, "the manifest")
        if self._cluster is not None and self._missing(found):
            self._merge(found, self._cluster(kind, name), "the cluster")
        return found

    @staticmethod
    def _merge(found: FoundObject, body: Mapping[str, Any] | None, where: str) -> None:
        if body is None:
            return
        if not found.metadata_known:
            metadata = body.get("metadata") or {}
            found.type = body.get("type") if found.kind == "Secret" else None
            found.labels = metadata.get("labels") or {}
            found.annotations = metadata.get("annotations") or {}
            found.metadata_known = True
        for key, value in _object_data(body).items():
            if key not in found.data:
                found.data[key] = value
                found.origins[key] = f"{found.kind} {found.name!r} in {where}"


def _is(body: Mapping[str, Any], kind: str, name: str) -> bool:
    return body.get("kind") == kind and (body.get("metadata") or {}).get("name") == name


def cluster_reader(
    kubeconfig: str | None, context: str | None, namespace: str | None
) -> tuple[Callable[[str, str], Mapping[str, Any] | None], str]:
    """Reads Secrets and ConfigMaps with the current kubeconfig, and the namespace used."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    # The kubernetes package reads $KUBECONFIG once, at import; read it now.
    config_file = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        client = kubernetes.config.new_client_from_config(config_file=config_file, context=context)
        if namespace is None:
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file)
            if context is not None:
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except (kubernetes.config.ConfigException, OSError, TypeError) as error:
        raise CheckFailed(
            EXIT_REFERENCE, "reference", [f"--from-cluster: no usable kubeconfig ({error})"]
        ) from None
    api = kubernetes.client.CoreV1Api(client)

    def read(kind: str, name: str) -> Mapping[str, Any] | None:
        reader = api.read_namespaced_secret if kind == "Secret" else api.read_namespaced_config_map
        try:
            body = client.sanitize_for_serialization(reader(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise CheckFailed(
                EXIT_REFERENCE,
                "reference",
                [f"cannot read {kind} {namespace}/{name}: HTTP {error.status} {error.reason}"],
            ) from None
        except Exception as error:  # connection problems: the kubernetes client's text
            raise CheckFailed(
                EXIT_REFERENCE,
                "reference",
                [f"cannot read {kind} {namespace}/{name}: {type(error).__name__}"],
            ) from None
        return {**body, "kind": kind}

    return read, namespace


# --------------------------------------------------------------------------------------
# What the operator would do differently (check itself applies no gates)


def _denied_addresses(url: str) -> list[str]:
    try:
        host = parse_url(url).connect_host
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, URLProblem):
        return []
    addresses = {str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos}
    return sorted(a for a in addresses if is_denied_address(a))


UNBOUND_FLAG = "--send-unbound-sources"
CLUSTER_ORIGIN = "in the cluster"


def _from_cluster(obj: FoundObject) -> list[str]:
    return sorted(k for k, origin in obj.origins.items() if origin.endswith(CLUSTER_ORIGIN))


def unbound_sources(token_url: str, found: Iterable[FoundObject]) -> list[str]:
    """What check read from the cluster that the operator would never send to `token_url`
    (pure): objects without the source label, or whose allowed-token-urls annotation does
    not allow it (docs/concepts/security-model.md). Files and the manifest are the
    user's own input and are not held to these rules."""
    problems = []
    for obj in found:
        keys = _from_cluster(obj)
        if not keys:
            continue
        what = f"{obj.kind} {obj.name!r}"
        if obj.labels.get(LABEL_SOURCE) != "true":
            problems.append(
                f'ReferenceNotLabeled: {what} lacks the label {LABEL_SOURCE}: "true", so the '
                f"operator never reads it; check will not send it ({UNBOUND_FLAG} overrides)"
            )
            continue
        allowed = obj.annotations.get(ANNOTATION_ALLOWED_URLS)
        if not url_allowed(token_url, allowed):
            problems.append(
                f"TokenURLNotAllowed: {what} may only be sent to the token URLs in its "
                f"annotation {ANNOTATION_ALLOWED_URLS} ({allowed}), and "
                f"{oauth2.display_url(token_url)} is not one; check will not send it "
                f"({UNBOUND_FLAG} overrides)"
            )
    return problems


def unbound_announcement(token_url: str, found: Iterable[FoundObject]) -> list[str]:
    """With the override: what will be sent where, said before the request (pure)."""
    return [
        f"{UNBOUND_FLAG}: sending {obj.kind} {obj.name!r} (keys {', '.join(_from_cluster(obj))}) "
        f"to {oauth2.display_url(token_url)}"
        for obj in found
        if _from_cluster(obj)
    ]


def operator_notes(spec: CredentialSpec, found: list[FoundObject]) -> list[str]:
    notes = []
    problem = gate_problem(spec, OperatorConfig())
    if problem is not None:
        notes.append(f"the operator without --allow-insecure refuses this: {problem.message}")
    if spec.tls.insecure_skip_verify:
        notes.append("the operator ignores tls.insecureSkipVerify unless run with --allow-insecure")
    if spec.client_authentication == "workload_identity":
        notes.append(
            "the operator mints ServiceAccount tokens only with --enable-workload-identity and "
            "the RBAC of deploy/workload-identity/, and never for an audience of its cluster's "
            "API server (check compared the audience with your credentials' and the issuer)"
        )
    denied = _denied_addresses(spec.token_url)
    if denied:
        notes.append(
            f"the operator's private-network guard (on by default) refuses this endpoint: "
            f"it resolves to {', '.join(denied)}"
        )
    for obj in found:
        if not obj.metadata_known:
            continue
        metadata = {"labels": obj.labels, "annotations": obj.annotations}
        if is_managed(metadata) and not offered_as_source(metadata):
            notes.append(
                f"the operator does not read {obj.kind} {obj.name!r}: tokensync manages it, "
                "and its credential does not offer its token with spec.secret.asSource"
            )
        elif is_managed(metadata):
            ref = next(r for r in spec.references if (r.kind, r.name) == (obj.kind, obj.name))
            if problem := managed_source_problem(spec, ref):
                notes.append(f"the operator refuses this: {problem.message}")
        elif obj.labels.get(LABEL_SOURCE) != "true":
            notes.append(
                f"the operator does not read {obj.kind} {obj.name!r}: it lacks the label "
                f'{LABEL_SOURCE}: "true"'
            )
        allowed = obj.annotations.get(ANNOTATION_ALLOWED_URLS)
        if not url_allowed(spec.token_url, allowed):
            notes.append(
                f"the operator does not send {obj.kind} {obj.name!r} to this tokenURL: "
                f"its annotation {ANNOTATION_ALLOWED_URLS} allows only {allowed}"
            )
    return notes


# --------------------------------------------------------------------------------------
# The report


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_seconds(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "")
    return text + f"{secs}s"


_AUTH_STYLES = {
    "header": "header (HTTP Basic; client id and secret form-urlencoded, client_secret_basic)",
    "body": "body (client_id and client_secret in the request body, client_secret_post)",
    "private_key_jwt": "private_key_jwt (RFC 7523 assertion signed with clientAssertion.keyRef)",
    "client_secret_jwt": "client_secret_jwt (RFC 7523 assertion signed with the client secret)",
    "tls_client_auth": "tls_client_auth (RFC 8705 mutual TLS, client_id in the body)",
    "workload_identity": "workload_identity (a ServiceAccount token as the client assertion)",
    "none": "none (a public client: client_id in the body, no secret)",
}


def _auth_style(auth: str) -> str:
    return _AUTH_STYLES.get(auth, auth)


def _secret_origin(spec: CredentialSpec, resolver: Resolver) -> str | None:
    ref = spec.client_secret_ref
    if ref is None:
        return None
    found = resolver.found.get((ref.kind, ref.name))
    return (found.origins.get(ref.key) if found else None) or describe(ref)


def describe_request(
    spec: CredentialSpec, request: oauth2.TokenRequest, resolver: Resolver
) -> dict[str, Any]:
    client_id_origin = "spec.clientID"
    if spec.client_id_ref is not None:
        found = resolver.found.get((spec.client_id_ref.kind, spec.client_id_ref.name))
        client_id_origin = (found.origins.get(spec.client_id_ref.key) if found else None) or ""
    https = urlsplit(request.token_url).scheme == "https"
    cert = spec.tls.client_certificate_secret
    return {
        "endpoint": oauth2.display_url(request.token_url),
        "grant": _grant_description(spec),
        "clientAuthentication": request.client_authentication,
        "authStyle": _auth_style(request.client_authentication),
        "contentType": request.content_type,
        "scope": request.scope_sent,
        "includeScope": request.include_scope,
        "audience": request.audience,
        "resource": request.resource,
        "extraParameters": dict(request.extra_parameters),
        "clientID": request.client_id,
        "clientIDFrom": client_id_origin,
        "clientSecretFrom": _secret_origin(spec, resolver),
        "clientAssertionKey": _key_description(spec),
        "clientSecretLength": len(request.client_secret),
        "tlsVerification": request.tls.verification if https else "none (plain http)",
        "clientCertificate": f"Secret {cert!r}" if cert and https else None,
        "timeoutSeconds": request.timeout_seconds,
    }


def _grant_description(spec: CredentialSpec) -> str:
    """The grant in one phrase: client_credentials, jwt_bearer or saml2_bearer and its
    assertion, or token_exchange and its subject token."""
    exchange = spec.token_exchange
    if spec.grant_type == "token_exchange" and exchange is not None:
        if exchange.workload_identity is not None:
            subject = (
                f"a token of ServiceAccount {exchange.workload_identity.service_account_name!r}"
            )
        else:
            assert exchange.subject_token_ref is not None
            subject = describe(exchange.subject_token_ref)
        wanted = exchange.requested_token_type
        return (
            f"token_exchange (subject token: {subject}, type {exchange.subject_token_type}"
            + (f"; requested {wanted}" if wanted else "")
            + ")"
        )
    saml2 = spec.saml2_bearer
    if spec.grant_type == "saml2_bearer" and saml2 is not None:
        return (
            f"saml2_bearer (assertion signed with {describe(saml2.key_ref)}, "
            f"NameID {saml2.subject}, audience {saml2.audience})"
        )
    grant = spec.jwt_bearer
    if spec.grant_type != "jwt_bearer" or grant is None:
        return spec.grant_type
    if grant.workload_identity is not None:
        return (
            "jwt_bearer (assertion: a token of ServiceAccount "
            f"{grant.workload_identity.service_account_name!r})"
        )
    assert grant.key_ref is not None
    return f"jwt_bearer (assertion signed with {describe(grant.key_ref)}, sub {grant.subject})"


def _key_description(spec: CredentialSpec) -> str | None:
    settings = spec.client_assertion
    if spec.client_authentication == "private_key_jwt" and settings.key_ref:
        cert = " with its certificate (x5t#S256, x5t)" if settings.certificate_ref else ""
        return f"{describe(settings.key_ref)}{cert}" + (
            f", kid {settings.key_id}" if settings.key_id else ""
        )
    return None


def token_result(token: oauth2.Token, show_token: bool) -> dict[str, Any]:
    result = {
        "ok": True,
        "exitCode": EXIT_OK,
        "httpStatus": token.http_status,
        "tokenType": token.token_type,
        "issuedAt": _format_time(token.issued_at),
        "expiresAt": _format_time(token.expires_at),
        "lifetimeSeconds": round(token.lifetime_seconds, 3),
        "lifetimeSource": token.lifetime_source,
        "grantedScope": token.scope,
    }
    if show_token:
        result["accessToken"] = token.access_token
    return result


def error_result(error: oauth2.TokenError) -> dict[str, Any]:
    return {
        "ok": False,
        "exitCode": EXIT_CODES[error.kind],
        "errorClass": error.kind,
        "reason": error.reason,
        "summary": error.message,
        "httpStatus": error.http_status,
        "error": error.oauth_error,
        "errorDescription": error.oauth_error_description,
        "message": str(error),
        "hint": error.hint,
        "retryAfterSeconds": error.retry_after,
    }


NEWLINE_HINT = (
    "remove the trailing newline from the {what}: it is sent as part of it (create the "
    "Secret with `kubectl create secret generic ... --from-literal=KEY=VALUE`, or "
    "`printf %s VALUE`, not `echo`)"
)


def trailing_newline(values: Any) -> str | None:
    """'client secret' or 'client id' when that value ends in a newline."""
    for what, value in (("client secret", values.client_secret), ("client id", values.client_id)):
        if value != value.rstrip("\r\n"):
            return what
    return None


def newline_hint(result: dict[str, Any], newline_in: str | None) -> dict[str, Any]:
    """A request refused with 400 or 401 while a value ends in a newline: the newline is
    the likely cause, so the hint says that instead of suggesting another clientAuthentication."""
    if newline_in is None or result.get("ok") or result.get("httpStatus") not in (400, 401):
        return result
    return {**result, "hint": NEWLINE_HINT.format(what=newline_in)}


ASSERTION_KEY_METHODS = ("private_key_jwt", "workload_identity")


def plain_http_exposes(spec: CredentialSpec) -> str:
    """What a token request over plain http lets anyone on the path read."""
    sent = []
    if spec.client_authentication in ("header", "body"):
        sent.append("the client secret")
    elif spec.client_authentication in ("client_secret_jwt", *ASSERTION_KEY_METHODS):
        sent.append("the client assertion")
    if spec.grant_type in ("jwt_bearer", "saml2_bearer"):
        sent.append("the grant assertion")
    elif spec.grant_type == "token_exchange":
        sent.append("the subject token")
    return " and ".join([", ".join(sent), "token"] if sent else ["the token"])


def secret_warnings(values: Any) -> list[str]:
    warnings_ = []
    for what, value in (("client secret", values.client_secret), ("client id", values.client_id)):
        if value != value.rstrip("\r\n"):
            warnings_.append(
                f"the {what} ends in a newline, which is sent as part of it; a common "
                "mistake is `echo` without -n when creating the Secret"
            )
        elif value != value.strip():
            warnings_.append(f"the {what} starts or ends with whitespace")
    return warnings_


# --------------------------------------------------------------------------------------
# Rendering


def _scope_text(request: Mapping[str, Any]) -> str:
    scope = request["scope"]
    if scope is None:
        return "(none; includeScope: false)" if not request["includeScope"] else "(none)"
    return scope if isinstance(scope, str) else json.dumps(scope, ensure_ascii=False)


def request_rows(request: Mapping[str, Any]) -> list[tuple[str, Any]]:
    discovered = request.get("discoveredFrom")
    rows = [
        ("endpoint", request["endpoint"]),
        ("discovered from", f"{discovered} (issuerURL)" if discovered else None),
        ("grant", request["grant"] if request["grant"] != "client_credentials" else None),
        ("auth style", request["authStyle"]),
        ("content type", request["contentType"]),
        ("scope sent", _scope_text(request)),
        ("audience", request["audience"]),
        ("resource", request["resource"]),
        ("extra parameters", request["extraParameters"] or None),
        ("client id", f"{request['clientID']} ({request['clientIDFrom']})"),
        (
            "client secret",
            f"{request['clientSecretFrom']} ({request['clientSecretLength']} characters)"
            if request["clientSecretFrom"]
            else None,
        ),
        ("assertion key", request.get("clientAssertionKey")),
        ("TLS verification", request["tlsVerification"]),
        ("client certificate", request["clientCertificate"]),
        ("timeout", f"{request['timeoutSeconds']:g}s"),
    ]
    return [(label, value) for label, value in rows if value is not None]


def result_rows(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if result["ok"]:
        lifetime = f"{_format_seconds(result['lifetimeSeconds'])} (from {result['lifetimeSource']})"
        token = result.get("accessToken") or "(hidden; --show-token prints it)"
        return [
            ("HTTP status", result["httpStatus"]),
            ("token type", result["tokenType"]),
            ("lifetime", lifetime),
            ("expires at", result["expiresAt"]),
            ("granted scope", result["grantedScope"] or "(not returned)"),
            ("access token", token),
        ]
    retry = result["retryAfterSeconds"]
    rows = [
        ("what happened", result["summary"]),
        ("reason", result["reason"]),
        ("HTTP status", result["httpStatus"]),
        ("OAuth2 error", result["error"]),
        ("description", result["errorDescription"]),
        ("retry after", f"{retry:g}s" if retry is not None else None),
        ("hint", result["hint"]),
    ]
    return [(label, value) for label, value in rows if value is not None]


def _result_title(result: Mapping[str, Any]) -> str:
    if result["ok"]:
        return "result: token issued"
    kind = result.get("stage") or result["errorClass"]
    what = "problem" if "stage" in result else "error"
    return f"result: {kind} {what} (exit code {result['exitCode']})"


def render_text(report: Mapping[str, Any], out: TextIO, err: TextIO) -> None:
    for warning in report["warnings"]:
        err.write(f"warning: {warning}\n")
    credential = report["credential"]
    where = f"{credential['namespace']}/" if credential.get("namespace") else ""
    name = credential["name"] or "?"
    out.write(f"{KIND} {where}{name} ({credential['file']})\n")
    sections = []
    if "request" in report:
        sections.append(("request:", request_rows(report["request"])))
    result = report["result"]
    problems = [(None, p) for p in result.get("problems", [])]
    sections.append((_result_title(result), problems or result_rows(result)))
    for title, rows in sections:
        out.write(title + "\n")
        for label, value in rows:
            out.write(f"  {label + ':':<20}{value}\n" if label else f"  {value}\n")
    if "probe" in report:
        render_probe(report["probe"], out)
    for note in report["notes"]:
        out.write(f"note: {note}\n")


# --------------------------------------------------------------------------------------
# Entry point


def _file_refs(args: argparse.Namespace, spec: CredentialSpec) -> list[FileRef]:
    refs = []
    if args.client_secret_file and spec.client_secret_ref is not None:
        ref = spec.client_secret_ref
        path = args.client_secret_file
        refs.append(FileRef(ref.kind, ref.name, ref.key, _read_input(path), f"file {path}"))
    for value in args.ref:
        kind, name, key, path = parse_ref_argument(value)
        refs.append(FileRef(kind, name, key, _read_input(path), f"file {path}"))
    return refs


def _resolve(
    spec: CredentialSpec, manifest: Manifest, args: argparse.Namespace
) -> tuple[Any, Resolver, str | None]:
    files = _file_refs(args, spec)
    cluster, namespace = None, args.namespace or manifest.namespace
    if args.from_cluster:
        cluster, namespace = cluster_reader(args.kubeconfig, args.context, namespace)
    resolver = Resolver(spec.references, files, manifest.sources, cluster)
    resolved = resolve_references(spec, resolver.lookup, lambda _url, _allowed: True)
    if isinstance(resolved, Unresolved):
        ref = resolved.ref
        advice = f"pass --ref {ref.name}/{ref.key}=FILE"
        advice += "" if args.from_cluster else " or use --from-cluster"
        where = f" in namespace {namespace}" if args.from_cluster else ""
        raise CheckFailed(
            EXIT_REFERENCE, "reference", [f"{describe(ref)}{where} is not available: {advice}"]
        )
    if isinstance(resolved, ReferenceProblem):
        raise CheckFailed(EXIT_REFERENCE, "reference", [f"{resolved.reason}: {resolved.message}"])
    return resolved, resolver, namespace


def _discover(spec: CredentialSpec, values: Any) -> CredentialSpec:
    """With issuerURL: the spec with the discovered token endpoint (and method). Like the
    rest of check, TLS settings apply as written and the private-network guard does not."""
    if spec.issuer_url is None:
        return spec
    from tokensync import discovery, identity

    config = OperatorConfig(allow_insecure=True, deny_private_networks=False)
    try:
        return identity.discover(spec, values, config, discovery.DiscoveryCache())
    except discovery.DiscoveryFailed as failed:
        code = EXIT_TRANSIENT if failed.transient else EXIT_CONFIGURATION
        raise CheckFailed(code, "discovery", [str(failed)]) from None


def _workload_assertion(
    spec: CredentialSpec, args: argparse.Namespace, namespace: str | None
) -> str | None:
    """workload_identity: a ServiceAccount token minted with the user's own permissions
    (--from-cluster), after the ServiceAccount's opt-ins and the audience check."""
    if spec.client_authentication != "workload_identity":
        return None
    if not args.from_cluster or namespace is None:
        raise CheckFailed(
            EXIT_USAGE,
            "usage",
            [
                "workload_identity sends a ServiceAccount token: run with --from-cluster "
                "(it is minted with your own permissions: create serviceaccounts/token)"
            ],
        )
    import kubernetes

    from tokensync import workload
    from tokensync.kube import Kube, KubeError

    assert spec.workload_identity is not None and spec.token_url is not None
    configuration = kubernetes.client.Configuration()
    config_file = args.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        kubernetes.config.load_kube_config(
            config_file=config_file, context=args.context, client_configuration=configuration
        )
        minted = workload.mint_assertion(
            Kube(configuration),
            namespace,
            spec.workload_identity,
            spec.token_url,
            enabled=True,  # the operator's flag: check says so in a note
            api_audiences=workload.ApiAudiences(issuer_only_fallback=True),
        )
    except (kubernetes.config.ConfigException, OSError, KubeError) as error:
        raise CheckFailed(EXIT_REFERENCE, "reference", [f"workload identity: {error}"]) from None
    if isinstance(minted, ReferenceProblem):
        raise CheckFailed(EXIT_REFERENCE, "reference", [f"{minted.reason}: {minted.message}"])
    return minted


def _grant_workload_assertion(
    spec: CredentialSpec, args: argparse.Namespace, namespace: str | None
) -> str | None:
    """jwtBearer.workloadIdentity or tokenExchange.workloadIdentity: the ServiceAccount
    token that is the grant or the subject token, minted the way a workload_identity
    client assertion is."""
    settings = None
    if spec.jwt_bearer is not None:
        settings = spec.jwt_bearer.workload_identity
    elif spec.token_exchange is not None:
        settings = spec.token_exchange.workload_identity
    if settings is None:
        return None
    as_client_assertion = replace(
        spec, client_authentication="workload_identity", workload_identity=settings
    )
    return _workload_assertion(as_client_assertion, args, namespace)


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Run the check and return the report (never printing anything)."""
    report: dict[str, Any] = {
        "credential": {"file": args.file, "name": None, "namespace": None},
        "warnings": [],
        "notes": [],
    }
    try:
        manifest = load_manifest(_read_input(args.file), args.name, args.file)
        report["credential"].update(name=manifest.name, namespace=manifest.namespace)
        try:
            spec = parse_spec(manifest.spec, name=manifest.name)
        except SpecError as error:
            raise CheckFailed(EXIT_USAGE, "spec", list(error.problems)) from None
        values, resolver, namespace = _resolve(spec, manifest, args)
        spec = _discover(spec, values)
        assert spec.token_url is not None
        # The operator's two rules, before anything is sent (with issuerURL: against the
        # discovered endpoint, as the operator binds it).
        found = list(resolver.found.values())
        unbound = unbound_sources(spec.token_url, found)
        if unbound and not getattr(args, "send_unbound_sources", False):
            raise CheckFailed(EXIT_REFERENCE, "reference", unbound)
        if unbound:
            for line in unbound_announcement(spec.token_url, found):
                sys.stderr.write(f"warning: {line}\n")  # before the request, on purpose
            report["warnings"].extend(unbound_announcement(spec.token_url, found))
        minted = _workload_assertion(spec, args, namespace)
        grant_minted = _grant_workload_assertion(spec, args, namespace)
    except CheckFailed as failure:
        report["result"] = {
            "ok": False,
            "exitCode": failure.exit_code,
            "stage": failure.stage,
            "problems": failure.problems,
        }
        return report
    if namespace:
        report["credential"]["namespace"] = namespace
    assert spec.token_url is not None
    request = to_token_request(spec, values)
    if minted is not None:
        request = replace(request, client_assertion=lambda: minted)
    if grant_minted is not None:
        attach = "grant_assertion" if spec.jwt_bearer is not None else "subject_token"
        request = replace(request, **{attach: lambda: grant_minted})
    report["request"] = describe_request(spec, request, resolver)
    if spec.issuer_url:
        report["request"]["discoveredFrom"] = spec.issuer_url
    report["warnings"] += secret_warnings(values)
    if spec.tls.insecure_skip_verify:
        report["warnings"].append("tls.insecureSkipVerify: the server certificate is not checked")
    if urlsplit(spec.token_url).scheme == "http":
        report["warnings"].append(f"plain http: {plain_http_exposes(spec)} travel unencrypted")
    report["notes"] = operator_notes(spec, list(resolver.found.values()))
    if getattr(args, "probe", False):
        return _probe_report(report, spec, request, args.show_token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning: warned above
        try:
            token = oauth2.fetch_token(request, deny_private_networks=False)
        except oauth2.TokenError as error:
            report["result"] = newline_hint(error_result(error), trailing_newline(values))
        else:
            report["result"] = token_result(token, args.show_token)
    return report


# --------------------------------------------------------------------------------------
# --probe: which combination of auth style and body format does this endpoint accept?

MAX_PROBES = 6
PROBE_METHODS = ("header", "body")  # the two ways of sending the client secret itself


@dataclass(frozen=True)
class Combination:
    client_authentication: str
    content_type: str
    scope_form: str  # "string" | "object" | "none"
    client_id_in_request: bool = True  # varied only for the assertion methods

    @property
    def label(self) -> str:
        body = "JSON" if self.content_type == oauth2.JSON else "form"
        without = "" if self.client_id_in_request else ", no client_id"
        return f"{self.client_authentication} + {body} (scope {self.scope_form}{without})"

    def changes_from(self, other: Combination) -> int:
        """How many settings differ: the size of the change to the spec."""
        return sum(
            getattr(self, name) != getattr(other, name)
            for name in ("client_authentication", "content_type", "scope_form")
        ) + (self.client_id_in_request != other.client_id_in_request)


def probe_combinations(request: oauth2.TokenRequest) -> list[Combination]:
    """At most MAX_PROBES combinations: the request as written first, then the others by
    the number of settings they change, the standard form (header, form body, client_id
    sent) first among equals (pure). What varies: header <-> body for the two methods
    that send the secret itself; the content type for every method; `client_id` next to
    an assertion; with a scopeObject, JSON bodies send it as an object and as a JSON
    string (a form body can only carry the string)."""
    has_object = request.include_scope and request.scope_object is not None
    has_scope = request.scope_sent is not None
    string_form = "string" if has_scope else "none"
    method = request.client_authentication
    methods = PROBE_METHODS if method in PROBE_METHODS else (method,)
    client_ids = (True, False) if method in oauth2.ASSERTION_METHODS else (True,)
    combos = []
    for content_type in (oauth2.FORM, oauth2.JSON):
        for auth in methods:
            for client_id in client_ids:
                if has_object and content_type == oauth2.JSON:
                    combos.append(Combination(auth, content_type, "object", client_id))
                combos.append(Combination(auth, content_type, string_form, client_id))
    own = Combination(
        method,
        request.content_type,
        "object" if has_object and request.content_type == oauth2.JSON else string_form,
        request.client_id_in_request or method not in oauth2.ASSERTION_METHODS,
    )
    others = sorted((c for c in combos if c != own), key=own.changes_from)  # stable
    return [own, *others][:MAX_PROBES]


def probe_request(request: oauth2.TokenRequest, combo: Combination) -> oauth2.TokenRequest:
    """The request in one combination; only auth style, body format, scope form and
    client_id change."""
    scope, scope_object = request.scope, request.scope_object
    if request.scope_object is not None and combo.scope_form == "string":
        scope = json.dumps(request.scope_object, ensure_ascii=False, separators=(",", ":"))
        scope_object = None
    return replace(
        request,
        client_authentication=combo.client_authentication,
        content_type=combo.content_type,
        scope=scope,
        scope_object=scope_object,
        client_id_in_request=combo.client_id_in_request,
    )


def spec_lines(request: oauth2.TokenRequest, combo: Combination) -> list[str]:
    """The spec fields that make the operator send `combo`, as YAML lines."""
    lines = [
        f"clientAuthentication: {combo.client_authentication}",
        f"contentType: {combo.content_type}",
    ]
    if not combo.client_id_in_request or not request.client_id_in_request:
        lines.append(f"clientIDInRequest: {str(combo.client_id_in_request).lower()}")
    if combo.scope_form == "object":
        lines.append("scopeObject:")
        body = yaml.safe_dump(request.scope_object, sort_keys=False, allow_unicode=True)
        lines += ["  " + line for line in body.splitlines()]
    elif combo.scope_form == "string":
        scope = probe_request(request, combo).scope
        lines.append("scope: " + json.dumps(scope, ensure_ascii=False))
    return lines


def probe_note(method: str) -> str | None:
    """Why --probe keeps a method that it does not switch (None for header and body)."""
    if method in PROBE_METHODS:
        return None
    note = (
        f"clientAuthentication {method} is kept: --probe switches only between header "
        "and body, the two methods that send a client secret itself"
    )
    if method == "client_secret_jwt":
        note += (
            "; client_secret_jwt signs its assertion with the client secret and never "
            "sends the secret, so --probe does not send it either"
        )
    return note


def _probe_report(
    report: dict[str, Any],
    spec: CredentialSpec,
    request: oauth2.TokenRequest,
    show_token: bool,
) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    working = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for combo in probe_combinations(request):
            try:
                token = oauth2.fetch_token(probe_request(request, combo))
            except oauth2.TokenError as error:
                result = error_result(error)
                attempts.append({"combination": combo.label, "outcome": _outcome(result)})
                report["result"] = result
                continue
            report["result"] = token_result(token, show_token)
            attempts.append({"combination": combo.label, "outcome": "token issued"})
            working = combo
            break
    report["probe"] = {
        "attempts": attempts,
        "specLines": spec_lines(request, working) if working else None,
        "note": probe_note(spec.client_authentication),
    }
    return report


def _outcome(result: Mapping[str, Any]) -> str:
    parts = [f"HTTP {result['httpStatus']}" if result["httpStatus"] else result["reason"]]
    if result["error"]:
        parts.append(result["error"])
    if result["errorDescription"]:
        parts.append(f"({result['errorDescription']})")
    return " ".join(parts)


def render_probe(probe: Mapping[str, Any], out: TextIO) -> None:
    attempts = probe["attempts"]
    width = max(len(a["combination"]) for a in attempts)
    out.write(f"probe ({len(attempts)} request{'s' if len(attempts) > 1 else ''}):\n")
    out.write(f"  {'#':<3}{'combination':<{width + 2}}outcome\n")
    for number, attempt in enumerate(attempts, 1):
        out.write(f"  {number:<3}{attempt['combination']:<{width + 2}}{attempt['outcome']}\n")
    if probe["specLines"]:
        out.write("spec lines that work:\n")
        for line in probe["specLines"]:
            out.write(f"  {line}\n")
    else:
        out.write("no combination worked: the cause is not the auth style or body format\n")
    if probe.get("note"):
        out.write(f"note: {probe['note']}\n")


def run(args: argparse.Namespace) -> int:
    report = check(args)
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        render_text(report, sys.stdout, sys.stderr)
    sys.stdout.flush()
    return int(report["result"]["exitCode"])
