"""OAuth2Credential spec -> typed, validated, immutable settings (pure).

The CRD enforces most of these rules on the server, but the operator must not trust
that: a manifest read by `tokensync check` was never seen by a server, and an older CRD
may be installed. So every rule of docs/reference/api.md is checked here, and all violations are
reported at once, each naming its field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tokensync import assertion, grants, saml
from tokensync.oauth2 import (
    ASSERTION_METHODS,
    JWT_BEARER_GRANT,
    SAML2_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    TLSSettings,
    TokenRequest,
)
from tokensync.urls import URLProblem, parse_prefix, parse_url

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
CONTENT_TYPES = (FORM, JSON)
SECRET_METHODS = ("header", "body", "client_secret_jwt")  # need clientSecretRef
# none: a public client (RFC 8414's "none"), client_id in the body; only with a grant
# that carries its own proof (an assertion or a subject token), never client_credentials.
NO_SECRET_METHODS = ("private_key_jwt", "tls_client_auth", "workload_identity", "none")
CLIENT_AUTHENTICATIONS = SECRET_METHODS + NO_SECRET_METHODS
WORKLOAD_EXPIRATION_DEFAULT = 600
GRANT_TYPES = ("client_credentials", "jwt_bearer", "token_exchange", "saml2_bearer")
JWT_BEARER_LIFETIME_DEFAULT = 300
SAML2_BEARER_LIFETIME_DEFAULT = 300
MAX_SAML_ATTRIBUTES = 16
# The `assertion` parameter is the grant itself with these grant types.
ASSERTION_GRANTS = ("jwt_bearer", "saml2_bearer")
# RFC 8693 3: token type identifiers. A ServiceAccount token is a JWT; a token from a
# Secret is most often an access token (the only type Keycloak's standard exchange takes).
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
# The grant's own parameters (RFC 8693 2.1): extraParameters may not set them. The
# actor token is refused as well: a token must come from a Secret, never from the spec.
TOKEN_EXCHANGE_PARAMETERS = (
    "subject_token",
    "subject_token_type",
    "requested_token_type",
    "actor_token",
    "actor_token_type",
)
# An absolute URI (RFC 3986 scheme ":" ...), as token type identifiers are.
_TOKEN_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[!-~]+\Z")
DELETION_POLICIES = ("Delete", "Retain")
SECRET_TYPE_OPAQUE = "Opaque"
SECRET_TYPE_DOCKER_CONFIG = "kubernetes.io/dockerconfigjson"
SECRET_TYPES = (SECRET_TYPE_OPAQUE, SECRET_TYPE_DOCKER_CONFIG)
DOCKER_CONFIG_KEY = ".dockerconfigjson"  # the key Kubernetes requires for that type
# Google Artifact Registry / Container Registry take an OAuth2 access token as the
# password of this user name; other registries name their own.
DEFAULT_REGISTRY_USERNAME = "oauth2accesstoken"
MAX_REGISTRIES = 16
# A registry as image references and the kubelet's credential matching name it: a host
# (optionally `*.` for one label, as the kubelet matches), an optional port and path.
_REGISTRY_RE = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[-A-Za-z0-9._/]*)?\Z"
)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")  # rolloutRestart
MAX_ROLLOUT_RESTART = 16
CA_REF_KINDS = ("Secret", "ConfigMap")

FIXED_SECRET_KEYS = ("access_token", "token_type", "authorization", "expires_at")
TEMPLATE_PLACEHOLDERS = ("access_token", "token_type", "authorization", "expires_at", "scope")
RESERVED_PARAMETERS = ("grant_type", "client_id", "client_secret", "scope", "audience", "resource")
RESERVED_PARAMETER_PREFIX = "client_assertion"
RESERVED_KEY_DOMAINS = ("tokensync.dev", "kubernetes.io", "k8s.io")

DEFAULT_TIMEOUT_SECONDS = 30

# scopeObject is flat: the CRD refuses anything else, and so does the operator.
SCOPE_OBJECT_MAX_KEYS = 32
SCOPE_OBJECT_MAX_ITEMS = 32
SCOPE_OBJECT_MAX_KEY_LENGTH = 128
SCOPE_OBJECT_MAX_STRING_LENGTH = 1024
# Map keys: a qualified label/annotation name is at most 253 + 1 + 63 characters.
MAX_MAP_KEY_LENGTH = 317
DEFAULT_LIFETIME = "1h"

_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+\Z")
_DNS_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
_PLACEHOLDER_RE = re.compile(r"\$\{([^}]*)\}")


class SpecError(ValueError):
    """The spec breaks one or more rules; `problems` names each field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Ref:
    """A key of a Secret (or ConfigMap, for CA bundles) in the credential's namespace."""

    name: str
    key: str
    kind: str = "Secret"


@dataclass(frozen=True)
class TLSSpec:
    ca_ref: Ref | None = None
    insecure_skip_verify: bool = False
    client_certificate_secret: str | None = None  # a kubernetes.io/tls Secret, unless:
    # certificateKey / privateKeyKey: the keys of any Secret holding them (an SAP BTP x509
    # service binding has `certificate` and `key` in an Opaque Secret).
    client_certificate_key: str = "tls.crt"
    client_private_key_key: str = "tls.key"

    @property
    def client_certificate_keys_named(self) -> bool:
        return (self.client_certificate_key, self.client_private_key_key) != (
            "tls.crt",
            "tls.key",
        )


@dataclass(frozen=True)
class AssertionSpec:
    """clientAssertion: how private_key_jwt / client_secret_jwt assertions are signed."""

    key_ref: Ref | None = None  # private_key_jwt: the PEM key
    certificate_ref: Ref | None = None  # tls.crt of a kubernetes.io/tls key Secret
    algorithm: str | None = None  # None: from the key (RS256/ES256/ES384), HS256
    key_id: str | None = None
    audience: str | None = None  # None: the token URL


@dataclass(frozen=True)
class WorkloadIdentitySpec:
    service_account_name: str
    audience: str
    expiration_seconds: int = WORKLOAD_EXPIRATION_DEFAULT


@dataclass(frozen=True)
class JWTBearerSpec:
    """jwtBearer: the RFC 7523 2.1 authorization grant's assertion, either signed here with
    `key_ref` (iss, sub, aud, lifetime) or a token of a ServiceAccount."""

    key_ref: Ref | None = None
    algorithm: str | None = None  # None: from the key
    key_id: str | None = None
    issuer: str | None = None
    subject: str | None = None
    audience: str | None = None  # None: the token URL
    lifetime_seconds: int = JWT_BEARER_LIFETIME_DEFAULT
    workload_identity: WorkloadIdentitySpec | None = None


@dataclass(frozen=True)
class SAML2BearerSpec:
    """saml2Bearer: the RFC 7522 grant's SAML 2.0 assertion, signed here with `key_ref`
    (SAP SuccessFactors: issuer and api_key the client ID, NameID the API user)."""

    key_ref: Ref
    subject: str
    certificate_ref: Ref | None = None  # its certificate, sent in KeyInfo
    issuer: str | None = None  # None: the client ID
    audience: str = saml.SUCCESSFACTORS_AUDIENCE
    name_id_format: str = saml.NAMEID_UNSPECIFIED
    lifetime_seconds: int = SAML2_BEARER_LIFETIME_DEFAULT
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    company_id: str | None = None  # sent as company_id (SuccessFactors)
    encoding: str = "base64url"  # or "base64": how the assertion parameter is encoded


@dataclass(frozen=True)
class WorkloadRef:
    """rolloutRestart: a Deployment, StatefulSet or DaemonSet in the credential's namespace."""

    kind: str
    name: str


@dataclass(frozen=True)
class TokenExchangeSpec:
    """tokenExchange: the RFC 8693 subject token, either read from a Secret key or a token
    of a ServiceAccount minted for each request, and the token types."""

    subject_token_ref: Ref | None = None
    workload_identity: WorkloadIdentitySpec | None = None
    subject_token_type: str = TOKEN_TYPE_ACCESS_TOKEN
    requested_token_type: str | None = None


@dataclass(frozen=True)
class DockerConfigSpec:
    """secret.dockerConfig: the registries a `kubernetes.io/dockerconfigjson` Secret
    holds the token for, as the password of `username`."""

    registries: tuple[str, ...]
    username: str = DEFAULT_REGISTRY_USERNAME


@dataclass(frozen=True)
class AsSourceSpec:
    """secret.asSource: this credential's token may be another credential's subject token
    (tokenExchange.subjectTokenRef in the same namespace), sent only to these URLs."""

    allowed_token_urls: tuple[str, ...]


@dataclass(frozen=True)
class SecretSpec:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    template: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    deletion_policy: str = "Delete"
    type: str = SECRET_TYPE_OPAQUE
    docker_config: DockerConfigSpec | None = None
    as_source: AsSourceSpec | None = None


@dataclass(frozen=True)
class RefreshSpec:
    renew_before_seconds: float | None = None
    renew_before_percentage: int | None = None
    default_lifetime_seconds: float = 3600.0


@dataclass(frozen=True)
class CredentialSpec:
    token_url: str | None  # None with issuerURL until discovery sets it
    client_secret_ref: Ref | None
    secret: SecretSpec
    issuer_url: str | None = None
    client_id: str | None = None
    client_id_ref: Ref | None = None
    allow_insecure_http: bool = False
    grant_type: str = "client_credentials"
    client_authentication: str = "header"
    content_type: str = FORM
    scope: str | None = None
    scope_object: Any = None
    include_scope: bool = True
    audience: str | None = None
    resource: str | None = None
    extra_parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tls: TLSSpec = TLSSpec()
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    suspend: bool = False
    refresh: RefreshSpec = RefreshSpec()
    client_assertion: AssertionSpec = AssertionSpec()
    workload_identity: WorkloadIdentitySpec | None = None
    # False: clientAuthentication was not set and issuerURL discovery chooses it.
    client_authentication_set: bool = True
    # Assertion methods: whether `client_id` goes into the body next to the assertion.
    client_id_in_request: bool = True
    jwt_bearer: JWTBearerSpec | None = None  # grantType: jwt_bearer
    token_exchange: TokenExchangeSpec | None = None  # grantType: token_exchange
    saml2_bearer: SAML2BearerSpec | None = None  # grantType: saml2_bearer
    rollout_restart: tuple[WorkloadRef, ...] = ()  # restarted after each new token

    @property
    def references(self) -> tuple[Ref, ...]:
        """Every object key this credential reads, client secret first."""
        refs = [self.client_secret_ref] if self.client_secret_ref else []
        if self.client_id_ref:
            refs.append(self.client_id_ref)
        if self.tls.ca_ref:
            refs.append(self.tls.ca_ref)
        if self.tls.client_certificate_secret:
            name = self.tls.client_certificate_secret
            refs += [
                Ref(name, self.tls.client_certificate_key),
                Ref(name, self.tls.client_private_key_key),
            ]
        if self.client_assertion.key_ref:
            refs.append(self.client_assertion.key_ref)
        if self.client_assertion.certificate_ref:
            refs.append(self.client_assertion.certificate_ref)
        if self.jwt_bearer is not None and self.jwt_bearer.key_ref:
            refs.append(self.jwt_bearer.key_ref)
        if self.token_exchange is not None and self.token_exchange.subject_token_ref:
            refs.append(self.token_exchange.subject_token_ref)
        if self.saml2_bearer is not None:
            refs.append(self.saml2_bearer.key_ref)
            if self.saml2_bearer.certificate_ref:
                refs.append(self.saml2_bearer.certificate_ref)
        return tuple(refs)


@dataclass(frozen=True)
class ResolvedValues:
    """The referenced data a token request needs, read from the cluster or from files."""

    client_id: str
    client_secret: str = field(default="", repr=False)  # "" for methods without one
    ca_pem: bytes | None = None
    ca_description: str = "system trust store"
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = field(default=None, repr=False)
    assertion_key_pem: bytes | None = field(default=None, repr=False)  # private_key_jwt
    assertion_cert_pem: bytes | None = None  # its certificate: x5t#S256 / x5t headers
    # jwtBearer.keyRef or saml2Bearer.keyRef, and saml2Bearer.certificateRef
    grant_key_pem: bytes | None = field(default=None, repr=False)
    grant_cert_pem: bytes | None = None
    subject_token: str | None = field(default=None, repr=False)  # tokenExchange.subjectTokenRef


def _is_secret_key(key: str) -> bool:
    """A valid Secret/ConfigMap data key (Kubernetes' IsConfigMapKey)."""
    return (
        len(key) <= 253
        and bool(_SECRET_KEY_RE.match(key))
        and key not in (".", "..")
        and not key.startswith("..")
    )


def parse_duration(text: str) -> float:
    """Go-style duration (`90s`, `5m`, `1h30m`, `1.5h`) -> seconds; ValueError if malformed."""
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration like 90s, 5m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text))


def reserved_key_domain(key: str) -> str | None:
    """The reserved domain a label/annotation key sits under, if any."""
    if "/" not in key:
        return None
    prefix = key.split("/", 1)[0].lower()
    for domain in RESERVED_KEY_DOMAINS:
        if prefix == domain or prefix.endswith("." + domain):
            return domain
    return None


def token_url_problem(url: str, allow_insecure_http: bool) -> str | None:
    """Why a token URL is unacceptable, or None (the parser that connects decides)."""
    try:
        parsed = parse_url(url)
    except URLProblem as problem:
        return str(problem)
    if parsed.scheme == "http" and not allow_insecure_http:
        return "must use https:// (http:// needs spec.allowInsecureHTTP: true)"
    return None


class _Reader:
    """Reads typed fields out of an untrusted mapping, collecting problems by field path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "must be an object")
            return {}
        return value

    def string(
        self, data: Mapping[str, Any], key: str, path: str, *, max_length: int = 1024
    ) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(path, "must be a string")
            return None
        if len(value) > max_length:
            self.fail(path, f"must be at most {max_length} characters")
            return None
        return value

    def boolean(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.fail(path, "must be true or false")
            return default
        return value

    def integer(
        self, data: Mapping[str, Any], key: str, path: str, low: int, high: int
    ) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(path, f"must be an integer from {low} to {high}")
            return None
        return value

    def enum(
        self, data: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...], default: str
    ) -> str:
        value = data.get(key, default)
        if value not in allowed:
            self.fail(path, "must be one of " + ", ".join(allowed))
            return default
        return value

    def duration(self, data: Mapping[str, Any], key: str, path: str) -> float | None:
        text = self.string(data, key, path, max_length=32)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as error:
            self.fail(path, str(error))
            return None
        if seconds <= 0:
            self.fail(path, "must be longer than zero")
            return None
        return seconds

    def distinct_list(
        self, data: Mapping[str, Any], key: str, path: str, *, max_items: int, item: str, items: str
    ) -> list[Any] | None:
        """A list of 1 to `max_items` entries, no string listed twice (None after a
        problem). The caller checks each entry: any of them may be of any JSON type.
        `item`, `items`: what an entry is called, singular and plural."""
        value = data.get(key)
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            self.fail(path, f"must list 1 to {max_items} {items}")
            return None
        strings = [entry for entry in value if isinstance(entry, str)]  # dicts: unhashable
        if len(set(strings)) != len(strings):
            self.fail(path, f"lists a {item} twice")
            return None
        return value

    def string_map(
        self, data: Mapping[str, Any], key: str, path: str, *, max_items: int = 64
    ) -> dict[str, str]:
        value = self.mapping(data, key, path)
        if len(value) > max_items:
            self.fail(path, f"must have at most {max_items} entries")
            return {}
        result = {}
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > MAX_MAP_KEY_LENGTH:
                self.fail(path, f"every key must be at most {MAX_MAP_KEY_LENGTH} characters")
            elif not isinstance(v, str):
                self.fail(f"{path}.{k}", "must be a string")
            elif len(v) > 4096:
                self.fail(f"{path}.{k}", "must be at most 4096 characters")
            else:
                result[str(k)] = v
        return result

    def scope_object(self, value: Any, path: str) -> dict[str, Any] | None:
        """A flat JSON object: string, finite number, boolean or list of strings values."""
        if not isinstance(value, Mapping):
            self.fail(path, "must be a JSON object")
            return None
        if len(value) > SCOPE_OBJECT_MAX_KEYS:
            self.fail(path, f"must have at most {SCOPE_OBJECT_MAX_KEYS} keys")
            return None
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= SCOPE_OBJECT_MAX_KEY_LENGTH:
                self.fail(path, f"every key must be 1 to {SCOPE_OBJECT_MAX_KEY_LENGTH} characters")
                continue
            problem = _scope_value_problem(item)
            if problem:
                self.fail(f"{path}.{key}", problem)
            else:
                result[key] = list(item) if isinstance(item, list) else item
        return result

    def object_name(self, data: Mapping[str, Any], key: str, path: str) -> str | None:
        name = self.string(data, key, path, max_length=253)
        if name is not None and not _DNS_SUBDOMAIN_RE.match(name):
            self.fail(path, "must be a lowercase DNS subdomain name")
            return None
        return name

    def ref(
        self, data: Mapping[str, Any], key: str, path: str, *, kinds: tuple[str, ...] = ()
    ) -> Ref | None:
        if data.get(key) is None:
            return None
        value = self.mapping(data, key, path)
        name = self.object_name(value, "name", f"{path}.name")
        ref_key = self.string(value, "key", f"{path}.key", max_length=253)
        if value.get("name") is None:
            self.fail(f"{path}.name", "is required")
        if value.get("key") is None:
            self.fail(f"{path}.key", "is required")
        elif ref_key is not None and not _is_secret_key(ref_key):
            self.fail(f"{path}.key", "must consist of alphanumerics, '-', '_' or '.'")
            ref_key = None
        kind = "Secret"
        if kinds:
            if "kind" not in value:
                self.fail(f"{path}.kind", "is required: one of " + ", ".join(kinds))
            kind = self.enum(value, "kind", f"{path}.kind", kinds, kinds[0])
        if name is None or ref_key is None:
            return None
        return Ref(name=name, key=ref_key, kind=kind)


def _scope_value_problem(value: Any) -> str | None:
    """Why a scopeObject value is not a string, finite number, boolean or list of strings."""
    limit = SCOPE_OBJECT_MAX_STRING_LENGTH
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if math.isfinite(value) else "must be a finite number"
    if isinstance(value, str):
        return None if len(value) <= limit else f"must be at most {limit} characters"
    if isinstance(value, Mapping):
        return "must be a string, number, boolean or list of strings: no nested objects"
    if isinstance(value, list):
        if len(value) > SCOPE_OBJECT_MAX_ITEMS:
            return f"must be a list of at most {SCOPE_OBJECT_MAX_ITEMS} strings"
        if not all(isinstance(item, str) for item in value):
            return "must be a list of strings (no numbers, lists or objects inside)"
        if any(len(item) > limit for item in value):
            return f"list items must be at most {limit} characters"
        return None
    return "must be a string, number, boolean or list of strings"


def parse_spec(spec: Mapping[str, Any], *, name: str) -> CredentialSpec:
    """Validate an OAuth2Credential spec and apply every default; raise SpecError."""
    r = _Reader()
    if not isinstance(spec, Mapping):
        raise SpecError(["spec: must be an object"])

    allow_http = r.boolean(spec, "allowInsecureHTTP", "spec.allowInsecureHTTP", False)
    token_url = r.string(spec, "tokenURL", "spec.tokenURL", max_length=2048)
    issuer_url = r.string(spec, "issuerURL", "spec.issuerURL", max_length=2048)
    if (spec.get("tokenURL") is None) == (spec.get("issuerURL") is None):
        r.fail("spec.tokenURL", "exactly one of tokenURL and issuerURL is required")
    for path, url in (("spec.tokenURL", token_url), ("spec.issuerURL", issuer_url)):
        if url is not None and (problem := token_url_problem(url, allow_http)):
            r.fail(path, problem)
    if issuer_url is not None and "?" in issuer_url:
        r.fail("spec.issuerURL", "must not contain a query")

    grant_type = r.enum(spec, "grantType", "spec.grantType", GRANT_TYPES, GRANT_TYPES[0])
    client_id = r.string(spec, "clientID", "spec.clientID", max_length=1024)
    client_id_ref = r.ref(spec, "clientIDRef", "spec.clientIDRef")
    if (spec.get("clientID") is None) == (spec.get("clientIDRef") is None):
        r.fail("spec.clientID", "exactly one of clientID and clientIDRef is required")
    client_secret_ref = r.ref(spec, "clientSecretRef", "spec.clientSecretRef")
    auth = r.enum(
        spec, "clientAuthentication", "spec.clientAuthentication", CLIENT_AUTHENTICATIONS, "header"
    )
    auth_set = spec.get("clientAuthentication") is not None
    if auth in NO_SECRET_METHODS and spec.get("clientSecretRef") is not None:
        r.fail("spec.clientSecretRef", f"is not allowed with clientAuthentication: {auth}")
    elif auth not in NO_SECRET_METHODS and spec.get("clientSecretRef") is None:
        r.fail("spec.clientSecretRef", f"is required with clientAuthentication: {auth}")
    client_assertion = _parse_assertion(r, spec, auth)
    client_id_in_request = r.boolean(spec, "clientIDInRequest", "spec.clientIDInRequest", True)
    if not client_id_in_request and auth not in ASSERTION_METHODS:
        r.fail(
            "spec.clientIDInRequest",
            "can be false only with clientAuthentication private_key_jwt, client_secret_jwt "
            f"or workload_identity (with {auth} the client id is always sent)",
        )
    workload = _parse_workload_identity(r, spec, auth)
    jwt_bearer = _parse_jwt_bearer(r, spec, grant_type, auth)
    token_exchange = _parse_token_exchange(r, spec, grant_type, auth)
    saml2_bearer = _parse_saml2_bearer(r, spec, grant_type)
    if auth == "none" and grant_type == "client_credentials":
        r.fail(
            "spec.clientAuthentication",
            "none (a public client) needs a grant that carries its own proof: jwt_bearer, "
            "saml2_bearer or token_exchange",
        )
    content_type = r.enum(spec, "contentType", "spec.contentType", CONTENT_TYPES, FORM)
    scope = r.string(spec, "scope", "spec.scope", max_length=4096)
    scope_object = None
    if spec.get("scopeObject") is not None:
        scope_object = r.scope_object(spec["scopeObject"], "spec.scopeObject")
        if scope is not None:
            r.fail("spec.scopeObject", "scope and scopeObject are mutually exclusive")
        if content_type != JSON:
            r.fail("spec.scopeObject", f"requires spec.contentType: {JSON}")
    include_scope = r.boolean(spec, "includeScope", "spec.includeScope", True)
    audience = r.string(spec, "audience", "spec.audience", max_length=2048)
    resource = r.string(spec, "resource", "spec.resource", max_length=2048)

    extra = r.string_map(spec, "extraParameters", "spec.extraParameters")
    for key in extra:
        if key in RESERVED_PARAMETERS or key.startswith(RESERVED_PARAMETER_PREFIX):
            r.fail(f"spec.extraParameters.{key}", "is reserved; use the dedicated field")
        elif key.lower() == "assertion" and grant_type in ASSERTION_GRANTS:
            r.fail(f"spec.extraParameters.{key}", f"is reserved with grantType: {grant_type}")
        elif key.lower() == "company_id" and saml2_bearer and saml2_bearer.company_id:
            r.fail(f"spec.extraParameters.{key}", "is set by spec.saml2Bearer.companyID")
        elif key.lower() in TOKEN_EXCHANGE_PARAMETERS and grant_type == "token_exchange":
            r.fail(f"spec.extraParameters.{key}", "is reserved with grantType: token_exchange")

    tls_data = r.mapping(spec, "tls", "spec.tls")
    ca_ref = r.ref(tls_data, "caRef", "spec.tls.caRef", kinds=CA_REF_KINDS)
    cert_name = None
    cert_keys: dict[str, str] = {}
    if tls_data.get("clientCertificateRef") is not None:
        cert_data = r.mapping(tls_data, "clientCertificateRef", "spec.tls.clientCertificateRef")
        cert_name = r.object_name(cert_data, "name", "spec.tls.clientCertificateRef.name")
        if cert_data.get("name") is None:
            r.fail("spec.tls.clientCertificateRef.name", "is required")
        cert_keys = _certificate_keys(r, cert_data)
    if auth == "tls_client_auth" and cert_name is None:
        r.fail(
            "spec.tls.clientCertificateRef",
            "is required with clientAuthentication: tls_client_auth",
        )
    tls = TLSSpec(
        ca_ref=ca_ref,
        insecure_skip_verify=r.boolean(
            tls_data, "insecureSkipVerify", "spec.tls.insecureSkipVerify", False
        ),
        client_certificate_secret=cert_name,
        **cert_keys,
    )

    timeout = r.integer(spec, "timeoutSeconds", "spec.timeoutSeconds", 1, 120)
    suspend = r.boolean(spec, "suspend", "spec.suspend", False)
    secret = _parse_secret(r, r.mapping(spec, "secret", "spec.secret"), name)
    rollout_restart = _parse_rollout_restart(r, spec)
    refresh = _parse_refresh(r, r.mapping(spec, "refresh", "spec.refresh"))

    if r.problems:
        raise SpecError(r.problems)
    return CredentialSpec(
        token_url=token_url,
        issuer_url=issuer_url,
        client_authentication_set=auth_set,
        client_assertion=client_assertion,
        client_id_in_request=client_id_in_request,
        jwt_bearer=jwt_bearer,
        token_exchange=token_exchange,
        saml2_bearer=saml2_bearer,
        rollout_restart=rollout_restart,
        workload_identity=workload,
        allow_insecure_http=allow_http,
        grant_type=grant_type,
        client_id=client_id,
        client_id_ref=client_id_ref,
        client_secret_ref=client_secret_ref,
        client_authentication=auth,
        content_type=content_type,
        scope=scope,
        scope_object=scope_object,
        include_scope=include_scope,
        audience=audience,
        resource=resource,
        extra_parameters=MappingProxyType(extra),
        tls=tls,
        timeout_seconds=timeout if timeout is not None else DEFAULT_TIMEOUT_SECONDS,
        suspend=suspend,
        secret=secret,
        refresh=refresh,
    )


def _certificate_keys(r: _Reader, data: Mapping[str, Any]) -> dict[str, str]:
    """clientCertificateRef.certificateKey and .privateKeyKey: both or neither, distinct
    Secret keys (TLSSpec field names -> keys; empty: a kubernetes.io/tls Secret)."""
    path = "spec.tls.clientCertificateRef"
    names = {"certificateKey": "client_certificate_key", "privateKeyKey": "client_private_key_key"}
    keys: dict[str, str] = {}
    for field_name, attribute in names.items():
        value = r.string(data, field_name, f"{path}.{field_name}", max_length=253)
        if value is not None:
            if not _is_secret_key(value):
                r.fail(f"{path}.{field_name}", "must be a valid Secret key")
            keys[attribute] = value
    if len(keys) == 1:
        r.fail(path, "certificateKey and privateKeyKey are set together or not at all")
    elif len(keys) == 2 and len(set(keys.values())) == 1:
        r.fail(path, "certificateKey and privateKeyKey must name different keys")
    return keys if len(keys) == 2 else {}


def _parse_assertion(r: _Reader, spec: Mapping[str, Any], auth: str) -> AssertionSpec:
    """clientAssertion: the key of private_key_jwt, algorithm, kid, audience."""
    path = "spec.clientAssertion"
    data = r.mapping(spec, "clientAssertion", path)
    if data and auth not in ("private_key_jwt", "client_secret_jwt"):
        r.fail(path, "is only used with clientAuthentication: private_key_jwt or client_secret_jwt")
    key_ref = cert_ref = None
    key_data = r.mapping(data, "keyRef", f"{path}.keyRef")
    if data.get("keyRef") is not None:
        if auth != "private_key_jwt":
            r.fail(f"{path}.keyRef", "is only used with clientAuthentication: private_key_jwt")
        name = r.object_name(key_data, "name", f"{path}.keyRef.name")
        if key_data.get("name") is None:
            r.fail(f"{path}.keyRef.name", "is required")
        if key_data.get("key") is not None:
            key_ref = r.ref(data, "keyRef", f"{path}.keyRef")
        elif name is not None:
            # A kubernetes.io/tls Secret: its key, and its certificate for x5t headers.
            key_ref, cert_ref = Ref(name, "tls.key"), Ref(name, "tls.crt")
    elif auth == "private_key_jwt":
        r.fail(f"{path}.keyRef", "is required with clientAuthentication: private_key_jwt")
    algorithm = None
    if data.get("algorithm") is not None:
        algorithm = r.enum(data, "algorithm", f"{path}.algorithm", assertion.ALGORITHMS, "")
        symmetric = algorithm in assertion.SYMMETRIC_ALGORITHMS
        if algorithm and auth == "private_key_jwt" and symmetric:
            r.fail(f"{path}.algorithm", "private_key_jwt signs with RS256, PS256, ES256 or ES384")
        elif algorithm and auth == "client_secret_jwt" and not symmetric:
            r.fail(f"{path}.algorithm", "client_secret_jwt signs with HS256, HS384 or HS512")
    audience = r.string(data, "audience", f"{path}.audience", max_length=2048)
    if audience == "":
        r.fail(f"{path}.audience", "must not be empty")
    return AssertionSpec(
        key_ref=key_ref,
        certificate_ref=cert_ref,
        algorithm=algorithm or None,
        key_id=r.string(data, "keyID", f"{path}.keyID", max_length=256) or None,
        audience=audience or None,
    )


def _parse_workload_identity(
    r: _Reader, spec: Mapping[str, Any], auth: str
) -> WorkloadIdentitySpec | None:
    path = "spec.workloadIdentity"
    data = r.mapping(spec, "workloadIdentity", path)
    if auth != "workload_identity":
        if data:
            r.fail(path, "is only used with clientAuthentication: workload_identity")
        return None
    return _parse_service_account_token(
        r, data, path, "with clientAuthentication: workload_identity"
    )


def _parse_service_account_token(
    r: _Reader, data: Mapping[str, Any], path: str, why: str
) -> WorkloadIdentitySpec | None:
    """{serviceAccountName, audience, expirationSeconds}: a ServiceAccount token to mint."""
    name = r.object_name(data, "serviceAccountName", f"{path}.serviceAccountName")
    audience = r.string(data, "audience", f"{path}.audience", max_length=1024)
    for key, value in (("serviceAccountName", name), ("audience", audience)):
        if data.get(key) is None:
            r.fail(f"{path}.{key}", f"is required {why}")
        elif not value:
            r.fail(f"{path}.{key}", "must not be empty")
    expiration = r.integer(data, "expirationSeconds", f"{path}.expirationSeconds", 600, 3600)
    if not name or not audience:
        return None
    return WorkloadIdentitySpec(
        service_account_name=name,
        audience=audience,
        expiration_seconds=expiration or WORKLOAD_EXPIRATION_DEFAULT,
    )


def _grant_section(
    r: _Reader, spec: Mapping[str, Any], key: str, grant_type: str, wanted: str
) -> Mapping[str, Any] | None:
    """A grant's own section (jwtBearer, tokenExchange, saml2Bearer): required with its
    grant type and refused with any other; None when absent or not used."""
    path = f"spec.{key}"
    data = r.mapping(spec, key, path)
    if grant_type != wanted:
        if data:
            r.fail(path, f"is only used with grantType: {wanted}")
        return None
    if not data:
        r.fail(path, f"is required with grantType: {wanted}")
        return None
    return data


def _parse_jwt_bearer(
    r: _Reader, spec: Mapping[str, Any], grant_type: str, auth: str
) -> JWTBearerSpec | None:
    """jwtBearer (grantType: jwt_bearer): exactly one of keyRef (with issuer and subject)
    and workloadIdentity."""
    path = "spec.jwtBearer"
    data = _grant_section(r, spec, "jwtBearer", grant_type, "jwt_bearer")
    if data is None:
        return None
    has_key, has_sa = data.get("keyRef") is not None, data.get("workloadIdentity") is not None
    if has_key == has_sa:
        r.fail(path, "exactly one of keyRef and workloadIdentity is required")
    workload = None
    if has_sa:
        if auth == "workload_identity":
            r.fail(
                f"{path}.workloadIdentity",
                "cannot be combined with clientAuthentication: workload_identity "
                "(one ServiceAccount token per request)",
            )
        for key in ("issuer", "subject", "audience", "algorithm", "keyID", "lifetimeSeconds"):
            if data.get(key) is not None:
                r.fail(f"{path}.{key}", "is only used with jwtBearer.keyRef")
        sa_data = r.mapping(data, "workloadIdentity", f"{path}.workloadIdentity")
        workload = _parse_service_account_token(
            r, sa_data, f"{path}.workloadIdentity", "in jwtBearer.workloadIdentity"
        )
        return JWTBearerSpec(workload_identity=workload)
    key_ref = r.ref(data, "keyRef", f"{path}.keyRef")
    issuer = r.string(data, "issuer", f"{path}.issuer", max_length=1024)
    subject = r.string(data, "subject", f"{path}.subject", max_length=1024)
    for key, value in (("issuer", issuer), ("subject", subject)):
        if data.get(key) is None:
            r.fail(f"{path}.{key}", "is required with jwtBearer.keyRef")
        elif not value:
            r.fail(f"{path}.{key}", "must not be empty")
    algorithm = None
    if data.get("algorithm") is not None:
        algorithm = r.enum(
            data, "algorithm", f"{path}.algorithm", assertion.ASYMMETRIC_ALGORITHMS, ""
        )
    audience = r.string(data, "audience", f"{path}.audience", max_length=2048)
    if audience == "":
        r.fail(f"{path}.audience", "must not be empty")
    lifetime = r.integer(data, "lifetimeSeconds", f"{path}.lifetimeSeconds", 30, 3600)
    return JWTBearerSpec(
        key_ref=key_ref,
        algorithm=algorithm or None,
        key_id=r.string(data, "keyID", f"{path}.keyID", max_length=256) or None,
        issuer=issuer or None,
        subject=subject or None,
        audience=audience or None,
        lifetime_seconds=lifetime or JWT_BEARER_LIFETIME_DEFAULT,
    )


def _parse_token_exchange(
    r: _Reader, spec: Mapping[str, Any], grant_type: str, auth: str
) -> TokenExchangeSpec | None:
    """tokenExchange (grantType: token_exchange): exactly one of subjectTokenRef and
    workloadIdentity, and the token types (absolute URIs)."""
    path = "spec.tokenExchange"
    data = _grant_section(r, spec, "tokenExchange", grant_type, "token_exchange")
    if data is None:
        return None
    has_ref = data.get("subjectTokenRef") is not None
    has_sa = data.get("workloadIdentity") is not None
    if has_ref == has_sa:
        r.fail(path, "exactly one of subjectTokenRef and workloadIdentity is required")
    subject_ref = r.ref(data, "subjectTokenRef", f"{path}.subjectTokenRef") if has_ref else None
    workload = None
    if has_sa:
        if auth == "workload_identity":
            r.fail(
                f"{path}.workloadIdentity",
                "cannot be combined with clientAuthentication: workload_identity "
                "(one ServiceAccount token per request)",
            )
        sa_data = r.mapping(data, "workloadIdentity", f"{path}.workloadIdentity")
        workload = _parse_service_account_token(
            r, sa_data, f"{path}.workloadIdentity", "in tokenExchange.workloadIdentity"
        )
    types: dict[str, str | None] = {}
    for key in ("subjectTokenType", "requestedTokenType"):
        value = r.string(data, key, f"{path}.{key}", max_length=256)
        if value is not None and not _TOKEN_TYPE_RE.match(value):
            r.fail(f"{path}.{key}", "must be an absolute URI such as " + TOKEN_TYPE_JWT)
        types[key] = value or None
    default_type = TOKEN_TYPE_JWT if has_sa else TOKEN_TYPE_ACCESS_TOKEN
    return TokenExchangeSpec(
        subject_token_ref=subject_ref,
        workload_identity=workload,
        subject_token_type=types["subjectTokenType"] or default_type,
        requested_token_type=types["requestedTokenType"],
    )


def _parse_saml2_bearer(
    r: _Reader, spec: Mapping[str, Any], grant_type: str
) -> SAML2BearerSpec | None:
    """saml2Bearer (grantType: saml2_bearer): keyRef and subject, the rest defaulted for
    SAP SuccessFactors."""
    path = "spec.saml2Bearer"
    data = _grant_section(r, spec, "saml2Bearer", grant_type, "saml2_bearer")
    if data is None:
        return None
    problems_before = len(r.problems)
    key_ref = r.ref(data, "keyRef", f"{path}.keyRef")
    if data.get("keyRef") is None:
        r.fail(f"{path}.keyRef", "is required")
    certificate_ref = r.ref(data, "certificateRef", f"{path}.certificateRef")
    texts: dict[str, str | None] = {}
    for key, limit in (
        ("subject", 1024),
        ("issuer", 1024),
        ("audience", 2048),
        ("nameIDFormat", 256),
        ("companyID", 256),
    ):
        value = r.string(data, key, f"{path}.{key}", max_length=limit)
        if value == "":
            r.fail(f"{path}.{key}", "must not be empty")
        elif value is not None and (problem := saml.text_problem(value)):
            r.fail(f"{path}.{key}", problem)
        texts[key] = value or None
    if data.get("subject") is None:
        r.fail(f"{path}.subject", "is required (the user the token is for)")
    attributes = r.string_map(
        data, "attributes", f"{path}.attributes", max_items=MAX_SAML_ATTRIBUTES
    )
    for name, value in attributes.items():
        bad_text = saml.text_problem(name) or saml.text_problem(value)
        if not name or len(name) > 256 or not value or bad_text:
            r.fail(
                f"{path}.attributes.{name}",
                "names (at most 256 characters) and values must be non-empty text "
                "without control characters",
            )
    lifetime = r.integer(data, "lifetimeSeconds", f"{path}.lifetimeSeconds", 30, 3600)
    encoding = r.enum(data, "encoding", f"{path}.encoding", saml.ENCODINGS, saml.ENCODINGS[0])
    if len(r.problems) > problems_before or key_ref is None or texts["subject"] is None:
        return None
    return SAML2BearerSpec(
        key_ref=key_ref,
        subject=texts["subject"],
        certificate_ref=certificate_ref,
        issuer=texts["issuer"],
        audience=texts["audience"] or saml.SUCCESSFACTORS_AUDIENCE,
        name_id_format=texts["nameIDFormat"] or saml.NAMEID_UNSPECIFIED,
        lifetime_seconds=lifetime or SAML2_BEARER_LIFETIME_DEFAULT,
        attributes=MappingProxyType(attributes),
        company_id=texts["companyID"],
        encoding=encoding,
    )


def _parse_rollout_restart(r: _Reader, spec: Mapping[str, Any]) -> tuple[WorkloadRef, ...]:
    """rolloutRestart: at most 16 distinct {kind, name} workloads of this namespace."""
    path = "spec.rolloutRestart"
    items = spec.get("rolloutRestart")
    if items is None:
        return ()
    if not isinstance(items, list):
        r.fail(path, "must be a list")
        return ()
    if len(items) > MAX_ROLLOUT_RESTART:
        r.fail(path, f"lists at most {MAX_ROLLOUT_RESTART} workloads")
        return ()
    refs: list[WorkloadRef] = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            r.fail(where, "must be an object with kind and name")
            continue
        kind = r.enum(item, "kind", f"{where}.kind", WORKLOAD_KINDS, "")
        name = r.object_name(item, "name", f"{where}.name")
        for key in ("kind", "name"):
            if item.get(key) is None:
                r.fail(f"{where}.{key}", "is required")
        if kind and name:
            ref = WorkloadRef(kind, name)
            if ref in refs:
                r.fail(where, f"{kind} {name!r} is listed twice")
            refs.append(ref)
    return tuple(refs)


def _parse_secret(r: _Reader, data: Mapping[str, Any], credential_name: str) -> SecretSpec:
    name = r.object_name(data, "name", "spec.secret.name") or credential_name
    labels = r.string_map(data, "labels", "spec.secret.labels")
    annotations = r.string_map(data, "annotations", "spec.secret.annotations")
    for kind, values in (("labels", labels), ("annotations", annotations)):
        for key in values:
            if domain := reserved_key_domain(key):
                r.fail(f"spec.secret.{kind}.{key}", f"keys under {domain}/ are reserved")
    template = r.string_map(data, "template", "spec.secret.template", max_items=32)
    for key, text in template.items():
        path = f"spec.secret.template.{key}"
        if not _is_secret_key(key):
            r.fail(path, "key must consist of alphanumerics, '-', '_' or '.'")
        elif key in FIXED_SECRET_KEYS:
            r.fail(path, "may not replace the fixed key " + key)
        unknown = sorted({p for p in _PLACEHOLDER_RE.findall(text)} - set(TEMPLATE_PLACEHOLDERS))
        if unknown:
            allowed = ", ".join("${%s}" % p for p in TEMPLATE_PLACEHOLDERS)  # noqa: UP031
            r.fail(path, f"unknown placeholder ${{{unknown[0]}}}; allowed: {allowed}")
    policy = r.enum(
        data, "deletionPolicy", "spec.secret.deletionPolicy", DELETION_POLICIES, "Delete"
    )
    secret_type = r.enum(data, "type", "spec.secret.type", SECRET_TYPES, SECRET_TYPE_OPAQUE)
    docker_config = None
    if secret_type == SECRET_TYPE_DOCKER_CONFIG:
        if data.get("dockerConfig") is None:
            r.fail("spec.secret.dockerConfig", f"is required with type {SECRET_TYPE_DOCKER_CONFIG}")
        else:
            docker_config = _parse_docker_config(
                r, r.mapping(data, "dockerConfig", "spec.secret.dockerConfig")
            )
        if DOCKER_CONFIG_KEY in template:
            r.fail(
                f"spec.secret.template.{DOCKER_CONFIG_KEY}",
                "is written from spec.secret.dockerConfig with this type",
            )
    elif data.get("dockerConfig") is not None:
        r.fail("spec.secret.dockerConfig", f"is only allowed with type {SECRET_TYPE_DOCKER_CONFIG}")
    as_source = None
    if data.get("asSource") is not None:
        as_source = _parse_as_source(r, r.mapping(data, "asSource", "spec.secret.asSource"))
    return SecretSpec(
        name=name,
        labels=MappingProxyType(labels),
        annotations=MappingProxyType(annotations),
        template=MappingProxyType(template),
        deletion_policy=policy,
        type=secret_type,
        docker_config=docker_config,
        as_source=as_source,
    )


MAX_AS_SOURCE_URLS = 8


def _parse_as_source(r: _Reader, data: Mapping[str, Any]) -> AsSourceSpec | None:
    """The URL prefixes become the managed Secret's allowed-token-urls annotation, read by
    the same parser that binds any source Secret to its endpoints."""
    path = "spec.secret.asSource.allowedTokenURLs"
    problems_before = len(r.problems)
    urls = r.distinct_list(
        data,
        "allowedTokenURLs",
        path,
        max_items=MAX_AS_SOURCE_URLS,
        item="URL",
        items="token URL prefixes",
    )
    if urls is None:
        return None
    for index, url in enumerate(urls):
        where = f"{path}[{index}]"
        if not isinstance(url, str) or not url or len(url) > 2048 or "," in url:
            r.fail(where, "must be a URL prefix of at most 2048 characters, without ','")
            continue
        try:
            prefix = parse_prefix(url)
        except URLProblem as problem:
            r.fail(where, str(problem))
            continue
        if prefix.scheme != "https":
            r.fail(where, "must use https:// (a token is never offered for plain http)")
    if len(r.problems) > problems_before:
        return None
    return AsSourceSpec(tuple(urls))


def _parse_docker_config(r: _Reader, data: Mapping[str, Any]) -> DockerConfigSpec | None:
    path = "spec.secret.dockerConfig"
    problems_before = len(r.problems)
    registries = r.distinct_list(
        data,
        "registries",
        f"{path}.registries",
        max_items=MAX_REGISTRIES,
        item="registry",
        items="registries",
    )
    if registries is None:
        return None
    for index, registry in enumerate(registries):
        if not isinstance(registry, str) or len(registry) > 253 or not _REGISTRY_RE.match(registry):
            r.fail(
                f"{path}.registries[{index}]",
                "must be a registry host with an optional port and path, such as "
                "europe-docker.pkg.dev or registry.example.com:5000 (no scheme)",
            )
    username = r.string(data, "username", f"{path}.username", max_length=256)
    if username is not None and (not username or ":" in username or not username.isprintable()):
        r.fail(f"{path}.username", "must be a non-empty printable user name without ':'")
    if len(r.problems) > problems_before:
        return None
    return DockerConfigSpec(tuple(registries), username or DEFAULT_REGISTRY_USERNAME)


def _parse_refresh(r: _Reader, data: Mapping[str, Any]) -> RefreshSpec:
    before = r.duration(data, "renewBefore", "spec.refresh.renewBefore")
    percentage = r.integer(
        data, "renewBeforePercentage", "spec.refresh.renewBeforePercentage", 1, 99
    )
    if data.get("renewBefore") is not None and data.get("renewBeforePercentage") is not None:
        r.fail("spec.refresh.renewBefore", "renewBefore and renewBeforePercentage are exclusive")
    lifetime = r.duration(data, "defaultLifetime", "spec.refresh.defaultLifetime")
    return RefreshSpec(
        renew_before_seconds=before,
        renew_before_percentage=percentage,
        default_lifetime_seconds=lifetime or parse_duration(DEFAULT_LIFETIME),
    )


def assertion_signer(spec: CredentialSpec, values: ResolvedValues) -> assertion.SigningKey | None:
    """The key that signs this credential's client assertions (None: no signed assertion);
    KeyProblem if the key, certificate and algorithm do not fit."""
    settings = spec.client_assertion
    if spec.client_authentication == "private_key_jwt":
        if values.assertion_key_pem is None:
            raise assertion.KeyProblem("no private key was resolved")
        return assertion.private_key_signer(
            values.assertion_key_pem,
            algorithm=settings.algorithm,
            key_id=settings.key_id,
            cert_pem=values.assertion_cert_pem,
        )
    if spec.client_authentication == "client_secret_jwt":
        return assertion.secret_signer(
            values.client_secret, algorithm=settings.algorithm, key_id=settings.key_id
        )
    return None


def grant_key_ref(spec: CredentialSpec) -> tuple[Ref, str] | None:
    """The Secret key that signs the grant's assertion here, with its field name; None
    when no grant assertion is signed here (a workload identity token is the grant)."""
    if spec.saml2_bearer is not None:
        return spec.saml2_bearer.key_ref, "saml2Bearer.keyRef"
    if spec.jwt_bearer is not None and spec.jwt_bearer.key_ref is not None:
        return spec.jwt_bearer.key_ref, "jwtBearer.keyRef"
    return None


def grant_signer(spec: CredentialSpec, values: ResolvedValues) -> assertion.SigningKey | None:
    """The key that signs a jwtBearer or saml2Bearer grant assertion (None: none is
    signed here); KeyProblem if the key, certificate and algorithm do not fit."""
    if spec.saml2_bearer is not None:
        if values.grant_key_pem is None:
            raise assertion.KeyProblem("no private key was resolved")
        if spec.saml2_bearer.issuer is None and saml.text_problem(values.client_id):
            raise assertion.KeyProblem(
                "cannot sign for this client ID: the assertion's issuer (the client ID) "
                + str(saml.text_problem(values.client_id))
            )
        signer = assertion.private_key_signer(values.grant_key_pem, cert_pem=values.grant_cert_pem)
        saml.signature_method(signer)
        return signer
    if spec.jwt_bearer is None or spec.jwt_bearer.key_ref is None:
        return None
    if values.grant_key_pem is None:
        raise assertion.KeyProblem("no private key was resolved")
    return assertion.private_key_signer(
        values.grant_key_pem, algorithm=spec.jwt_bearer.algorithm, key_id=spec.jwt_bearer.key_id
    )


def saml_claims(spec: CredentialSpec, client_id: str) -> saml.SAMLClaims:
    """What a saml2Bearer assertion says: the defaults are SAP SuccessFactors' (issuer and
    api_key the client ID, audience www.successfactors.com), Recipient the token URL."""
    settings = spec.saml2_bearer
    assert settings is not None and spec.token_url is not None
    return saml.SAMLClaims(
        issuer=settings.issuer or client_id,
        subject=settings.subject,
        audience=settings.audience,
        recipient=spec.token_url,
        lifetime_seconds=settings.lifetime_seconds,
        name_id_format=settings.name_id_format,
        attributes={saml.API_KEY_ATTRIBUTE: client_id, **settings.attributes},
    )


def grant_assertion_factory(
    spec: CredentialSpec, values: ResolvedValues
) -> Callable[[], str] | None:
    """A fresh signed jwtBearer or saml2Bearer assertion per request (a ServiceAccount
    token grant is attached by tokensync.identity, which mints it)."""
    signer = grant_signer(spec, values)
    if signer is None:
        return None
    if spec.saml2_bearer is not None:
        return saml.saml2_bearer_factory(
            signer,
            saml_claims(spec, values.client_id),
            cert_pem=values.grant_cert_pem,
            encoding=spec.saml2_bearer.encoding,
        )
    settings = spec.jwt_bearer
    assert settings is not None and settings.issuer and settings.subject and spec.token_url
    return grants.jwt_bearer_factory(
        signer,
        issuer=settings.issuer,
        subject=settings.subject,
        audience=settings.audience or spec.token_url,
        lifetime_seconds=settings.lifetime_seconds,
    )


GRANT_TYPE_URIS = {
    "jwt_bearer": JWT_BEARER_GRANT,
    "token_exchange": TOKEN_EXCHANGE_GRANT,
    "saml2_bearer": SAML2_BEARER_GRANT,
}


def to_token_request(spec: CredentialSpec, values: ResolvedValues) -> TokenRequest:
    """The exact token request a credential makes, once its references are resolved (and,
    with issuerURL, its token URL discovered). A workload_identity assertion is attached
    by tokensync.identity, which mints it."""
    if spec.token_url is None:
        raise ValueError("the token URL is not known yet: discover it first")
    signer = assertion_signer(spec, values)
    factory = None
    if signer is not None:
        audience = spec.client_assertion.audience or spec.token_url
        factory = assertion.assertion_factory(signer, values.client_id, audience)
    exchange = spec.token_exchange
    subject = values.subject_token
    return TokenRequest(
        token_url=spec.token_url,
        grant_type=GRANT_TYPE_URIS.get(spec.grant_type, spec.grant_type),
        grant_assertion=grant_assertion_factory(spec, values),
        # A ServiceAccount subject token is attached by tokensync.identity, which mints it.
        subject_token=(lambda: subject) if subject is not None else None,
        subject_token_type=exchange and exchange.subject_token_type,
        requested_token_type=exchange and exchange.requested_token_type,
        client_id=values.client_id,
        client_secret=values.client_secret,
        client_assertion=factory,
        client_id_in_request=spec.client_id_in_request,
        client_authentication=spec.client_authentication,
        content_type=spec.content_type,
        scope=spec.scope,
        scope_object=spec.scope_object,
        include_scope=spec.include_scope,
        audience=spec.audience,
        resource=spec.resource,
        extra_parameters=_extra_parameters(spec),
        tls=TLSSettings(
            ca_pem=values.ca_pem,
            insecure_skip_verify=spec.tls.insecure_skip_verify,
            client_cert_pem=values.client_cert_pem,
            client_key_pem=values.client_key_pem,
            ca_description=values.ca_description,
        ),
        timeout_seconds=float(spec.timeout_seconds),
        default_lifetime_seconds=spec.refresh.default_lifetime_seconds,
    )


def _extra_parameters(spec: CredentialSpec) -> dict[str, str]:
    """extraParameters, and SuccessFactors' company_id from saml2Bearer.companyID."""
    extra = dict(spec.extra_parameters)
    if spec.saml2_bearer is not None and spec.saml2_bearer.company_id:
        extra["company_id"] = spec.saml2_bearer.company_id
    return extra
