"""The managed Secret: its body, annotations, template rendering, ownership (pure)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tokensync.oauth2 import Token
from tokensync.schedule import HeldToken, parse_time
from tokensync.spec import (
    DOCKER_CONFIG_KEY,
    CredentialSpec,
    DockerConfigSpec,
    ResolvedValues,
    SpecError,
)
from tokensync.urls import prefixes_admit

DOMAIN = "tokensync.dev"
LABEL_CREDENTIAL = f"{DOMAIN}/credential"
LABEL_SOURCE = f"{DOMAIN}/credential-source"
ANNOTATION_ALLOWED_URLS = f"{DOMAIN}/allowed-token-urls"
ANNOTATION_EXPIRES = f"{DOMAIN}/expires-at"
ANNOTATION_ISSUED = f"{DOMAIN}/issued-at"
ANNOTATION_CONFIG_HASH = f"{DOMAIN}/config-hash"
ANNOTATION_OWNER_UID = f"{DOMAIN}/owner-uid"
ANNOTATION_REFRESH_REQUESTED = f"{DOMAIN}/refresh-requested-at"

API_VERSION = f"{DOMAIN}/v1alpha1"
KIND = "OAuth2Credential"
_PLACEHOLDER_RE = re.compile(r"\$\{([a-z_]+)\}")
# The managed Secret's data (keys and values, before base64) at most: a template that
# repeats a 64 KiB token cannot make the operator build hundreds of MB.
MAX_SECRET_DATA_BYTES = 256 * 1024
FIXED_KEYS = ("access_token", "token_type", "authorization", "expires_at")


class SecretTooLarge(SpecError):
    """The rendered managed Secret would exceed MAX_SECRET_DATA_BYTES; found before
    rendering anything. A spec problem (Ready=False, reason InvalidSpec): the template
    must repeat the token less. The message holds sizes only, never data."""


@dataclass(frozen=True)
class Owner:
    """The credential a managed Secret belongs to."""

    name: str
    namespace: str
    uid: str


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def config_hash(spec: CredentialSpec, values: ResolvedValues) -> str:
    """Fingerprint of everything that shapes the token request: the request fields of the
    spec and the referenced data. Only digests of the data enter it, never the data."""
    request_fields = {
        "tokenURL": spec.token_url,
        "grantType": spec.grant_type,
        "clientAuthentication": spec.client_authentication,
        "contentType": spec.content_type,
        "scope": spec.scope,
        "scopeObject": spec.scope_object,
        "includeScope": spec.include_scope,
        "audience": spec.audience,
        "resource": spec.resource,
        "extraParameters": dict(spec.extra_parameters),
        "tls": {
            "caRef": spec.tls.ca_ref and [spec.tls.ca_ref.kind, spec.tls.ca_ref.name],
            "insecureSkipVerify": spec.tls.insecure_skip_verify,
            "clientCertificate": spec.tls.client_certificate_secret,
        },
        "data": [
            _digest(values.client_id.encode()),
            _digest(values.client_secret.encode()),
            _digest(values.ca_pem or b""),
            _digest(values.client_cert_pem or b""),
            _digest(values.client_key_pem or b""),
        ],
    }
    # Fields added after 0.1 enter only when set, so the hashes of existing credentials
    # (and so their tokens) stay valid across the upgrade.
    identity = {
        "issuerURL": spec.issuer_url,
        "clientAssertion": [
            spec.client_assertion.key_ref and spec.client_assertion.key_ref.name,
            spec.client_assertion.algorithm,
            spec.client_assertion.key_id,
            spec.client_assertion.audience,
        ],
        "workloadIdentity": spec.workload_identity
        and [
            spec.workload_identity.service_account_name,
            spec.workload_identity.audience,
            spec.workload_identity.expiration_seconds,
        ],
        "assertionKey": values.assertion_key_pem and _digest(values.assertion_key_pem),
        "assertionCertificate": values.assertion_cert_pem and _digest(values.assertion_cert_pem),
    }
    if spec.issuer_url or spec.client_authentication not in ("header", "body"):
        request_fields["identity"] = identity
    if not spec.client_id_in_request:
        request_fields["clientIDInRequest"] = False
    if spec.tls.client_certificate_keys_named:
        request_fields["clientCertificateKeys"] = [
            spec.tls.client_certificate_key,
            spec.tls.client_private_key_key,
        ]
    if spec.jwt_bearer is not None:
        grant = spec.jwt_bearer
        workload = grant.workload_identity
        request_fields["jwtBearer"] = {
            "key": grant.key_ref and [grant.key_ref.name, grant.key_ref.key],
            "keyData": values.grant_key_pem and _digest(values.grant_key_pem),
            "claims": [grant.algorithm, grant.key_id, grant.issuer, grant.subject],
            "audience": grant.audience,
            "lifetime": grant.lifetime_seconds,
            "workloadIdentity": workload
            and [workload.service_account_name, workload.audience, workload.expiration_seconds],
        }
    if spec.saml2_bearer is not None:
        grant = spec.saml2_bearer
        cert = grant.certificate_ref
        request_fields["saml2Bearer"] = {
            "key": [grant.key_ref.name, grant.key_ref.key],
            "keyData": values.grant_key_pem and _digest(values.grant_key_pem),
            "certificate": cert and [cert.name, cert.key],
            "certificateData": values.grant_cert_pem and _digest(values.grant_cert_pem),
            "claims": [grant.issuer, grant.subject, grant.audience, grant.name_id_format],
            "attributes": sorted(grant.attributes.items()),
            "companyID": grant.company_id,
            "encoding": grant.encoding,
            "lifetime": grant.lifetime_seconds,
        }
    if spec.token_exchange is not None:
        exchange = spec.token_exchange
        workload = exchange.workload_identity
        ref = exchange.subject_token_ref
        request_fields["tokenExchange"] = {
            "subjectTokenRef": ref and [ref.name, ref.key],
            # A new subject token in the Secret is exchanged at once.
            "subjectToken": values.subject_token and _digest(values.subject_token.encode()),
            "types": [exchange.subject_token_type, exchange.requested_token_type],
            "workloadIdentity": workload
            and [workload.service_account_name, workload.audience, workload.expiration_seconds],
        }
    return "sha256:" + _digest(request_fields)[:32]


# RFC 6750 and RFC 9449 spell these schemes so; HTTP compares schemes case-insensitively
# (RFC 9110 11.1), but many resource servers match `Bearer` exactly.
_CANONICAL_SCHEMES = {"bearer": "Bearer", "dpop": "DPoP"}


def authorization_scheme(token_type: str) -> str:
    """The scheme of the `authorization` value: a known token_type in its canonical
    spelling (Hydra answers `bearer`), any other as returned."""
    return _CANONICAL_SCHEMES.get(token_type.lower(), token_type)


def template_values(token: Token) -> dict[str, str]:
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "authorization": f"{authorization_scheme(token.token_type)} {token.access_token}",
        "expires_at": format_time(token.expires_at),
        "scope": token.scope or "",
    }


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute `${name}` placeholders; nothing else is evaluated (spec.py has already
    rejected unknown names; any left over stay as written)."""
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _docker_auth(username: str, token: str) -> str:
    return base64.b64encode(f"{username}:{token}".encode()).decode()


def docker_config_json(docker: DockerConfigSpec, token: str) -> str:
    """The `.dockerconfigjson` value: the token as the password of docker.username for
    each registry, with the `auth` field the kubelet and docker read (base64 user:token)."""
    entry = {
        "username": docker.username,
        "password": token,
        "auth": _docker_auth(docker.username, token),
    }
    return json.dumps({"auths": {registry: entry for registry in docker.registries}})


def docker_config_size(docker: DockerConfigSpec, token: str) -> int:
    """Bytes of docker_config_json's result, without repeating the token per registry."""
    # One entry with empty password and auth, then the two filled in (json.dumps escapes
    # to ASCII, so characters are bytes).
    empty_entry = len(json.dumps({"username": docker.username, "password": "", "auth": ""}))
    password = len(json.dumps(token)) - 2  # without its quotes
    auth = 4 * -(-(_utf8_size(docker.username) + 1 + _utf8_size(token)) // 3)  # base64
    entry = empty_entry + password + auth
    keys = sum(len(json.dumps(registry)) + len(": ") for registry in docker.registries)
    separators = len(", ") * (len(docker.registries) - 1)
    return len(json.dumps({"auths": {}})) + keys + entry * len(docker.registries) + separators


def rendered_size(
    values: Mapping[str, str],
    template: Mapping[str, str],
    docker: DockerConfigSpec | None = None,
) -> int:
    """Bytes of the managed Secret's data (every key and value) once rendered, computed
    from placeholder counts and value sizes without expanding anything."""
    sizes = {name: _utf8_size(value) for name, value in values.items()}
    total = sum(_utf8_size(key) + sizes[key] for key in FIXED_KEYS)
    if docker is not None:
        total += len(DOCKER_CONFIG_KEY) + docker_config_size(docker, values["access_token"])
    for key, text in template.items():
        total += _utf8_size(key) + _utf8_size(text)
        for match in _PLACEHOLDER_RE.finditer(text):
            placeholder = _utf8_size(match.group(0))
            total += sizes.get(match.group(1), placeholder) - placeholder
    return total


def _check_size(
    values: Mapping[str, str], template: Mapping[str, str], docker: DockerConfigSpec | None
) -> None:
    size = rendered_size(values, template, docker)
    if size <= MAX_SECRET_DATA_BYTES:
        return
    uses = sum(
        text.count("${access_token}") + text.count("${authorization}") for text in template.values()
    )
    registries = f" and dockerConfig for {len(docker.registries)} registries" if docker else ""
    raise SecretTooLarge(
        [
            f"spec.secret.template: the managed Secret would hold {size / 1024:.0f} KiB of "
            f"data, more than the limit of {MAX_SECRET_DATA_BYTES // 1024} KiB (the token is "
            f"{_kib(values['access_token'])} KiB and the template uses it {uses} times"
            f"{registries})"
        ]
    )


def _kib(text: str) -> str:
    return f"{_utf8_size(text) / 1024:.1f}"


def secret_data(
    token: Token, template: Mapping[str, str], docker: DockerConfigSpec | None = None
) -> dict[str, str]:
    """The managed Secret's keys, as plain strings: the fixed keys, the template's, and
    `.dockerconfigjson` for docker. Raises SecretTooLarge, before rendering, when they
    would exceed MAX_SECRET_DATA_BYTES."""
    values = template_values(token)
    _check_size(values, template, docker)
    data = {key: values[key] for key in FIXED_KEYS}
    for key, text in template.items():
        data[key] = render_template(text, values)
    if docker is not None:
        data[DOCKER_CONFIG_KEY] = docker_config_json(docker, token.access_token)
    return data


def managed_secret(
    owner: Owner,
    spec: CredentialSpec,
    token: Token,
    fingerprint: str,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The full Secret object to create (no resourceVersion) or update (with the one read)."""
    annotations = dict(spec.secret.annotations)
    annotations.update(
        {
            ANNOTATION_EXPIRES: format_time(token.expires_at),
            ANNOTATION_ISSUED: format_time(token.issued_at),
            ANNOTATION_CONFIG_HASH: fingerprint,
        }
    )
    labels = {**spec.secret.labels, LABEL_CREDENTIAL: owner.name}
    if spec.secret.as_source is not None:  # offered as a subject token: see sources.py
        labels[LABEL_SOURCE] = "true"
        annotations[ANNOTATION_ALLOWED_URLS] = ",".join(spec.secret.as_source.allowed_token_urls)
    metadata: dict[str, Any] = {
        "name": spec.secret.name,
        "namespace": owner.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if spec.secret.deletion_policy == "Delete":
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    else:
        annotations[ANNOTATION_OWNER_UID] = owner.uid
    if resource_version:
        metadata["resourceVersion"] = resource_version
    data = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in secret_data(
            token, spec.secret.template, spec.secret.docker_config
        ).items()
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": spec.secret.type,
        "metadata": metadata,
        "data": data,
    }


def owned_by(secret: Mapping[str, Any], owner: Owner) -> bool:
    """A Secret belongs to a credential by its controller ownerReference, or, for
    `deletionPolicy: Retain`, by its credential label plus owner-uid annotation."""
    metadata = secret.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid") == owner.uid
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return (
        labels.get(LABEL_CREDENTIAL) == owner.name
        and annotations.get(ANNOTATION_OWNER_UID) == owner.uid
    )


def is_managed(metadata: Mapping[str, Any]) -> bool:
    """Any Secret written by tokensync, for any credential: read as a source only when
    its credential offers it (`offered_as_source`)."""
    return LABEL_CREDENTIAL in (metadata.get("labels") or {})


def offered_as_source(metadata: Mapping[str, Any]) -> bool:
    """A managed Secret whose credential offers its token as a subject token
    (spec.secret.asSource): the source label, and the token URLs it may be sent to."""
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return (
        LABEL_CREDENTIAL in labels
        and labels.get(LABEL_SOURCE) == "true"
        and bool(annotations.get(ANNOTATION_ALLOWED_URLS))
    )


def readable_as_source(metadata: Mapping[str, Any]) -> bool:
    """Whether tokensync may read this labelled object's data for a credential."""
    return not is_managed(metadata) or offered_as_source(metadata)


def held_token(secret: Mapping[str, Any] | None) -> HeldToken | None:
    """What an existing managed Secret holds, for the "why fetch now?" decision."""
    if secret is None:
        return None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return HeldToken(
        keys=frozenset(k for k, v in (secret.get("data") or {}).items() if v),
        issued_at=parse_time(annotations.get(ANNOTATION_ISSUED)),
        expires_at=parse_time(annotations.get(ANNOTATION_EXPIRES)),
        config_hash=annotations.get(ANNOTATION_CONFIG_HASH),
    )


def url_allowed(token_url: str, allowed_prefixes: str | None) -> bool:
    """The allowed-token-urls annotation binds a source's data to its real endpoints.

    Each comma-separated prefix is parsed by the parser that connects (tokensync.urls):
    scheme, host and port must be equal (host normalised, default ports filled in) and the
    prefix's path must be a whole-segment prefix of the URL's (`/a/` admits `/a/token`,
    never `/ab`); a prefix without a path names the whole authority. URLs or prefixes the
    parser refuses (dot segments, backslashes, encoded separators) admit nothing.
    """
    if allowed_prefixes is None:
        return True
    return prefixes_admit(token_url, allowed_prefixes)
