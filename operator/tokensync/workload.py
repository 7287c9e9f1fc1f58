"""`workload_identity`: a ServiceAccount token, minted for the credential's IdP, is the
client assertion. Because this mints tokens for a ServiceAccount, it is opt-in three times
(docs/guides/workload-identity.md), and every opt-in is checked before anything is minted:

1. the operator runs with `--enable-workload-identity` (and the deploy/workload-identity
   overlay): a cluster admin decision;
2. the namespace grants the operator `create` on `serviceaccounts/token` for this one
   ServiceAccount (a Role with resourceNames, bound to the operator's ServiceAccount),
   and the ServiceAccount carries the label `tokensync.dev/credential-source: "true"`, the
   annotation `tokensync.dev/allowed-token-urls` (required here) and the annotation
   `tokensync.dev/allowed-audiences` naming the audience: the owner of the ServiceAccount
   decides which endpoint may receive its tokens, for which audience;
3. the audience is never one the cluster's API server accepts, so the minted token can
   never be used against the cluster itself.

The checks are pure functions; `mint_assertion` sequences them around the two API calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from tokensync.kube import KubeError
from tokensync.oauth2 import jwt_claims
from tokensync.secret import ANNOTATION_ALLOWED_URLS, LABEL_SOURCE, url_allowed
from tokensync.sources import ReferenceProblem
from tokensync.spec import WorkloadIdentitySpec

ANNOTATION_ALLOWED_AUDIENCES = "tokensync.dev/allowed-audiences"
API_AUDIENCES_CACHE_SECONDS = 600.0


class KubeLike(Protocol):
    """The calls workload identity needs (tokensync.kube.Kube has them)."""

    def object_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def request_service_account_token(
        self, namespace: str, name: str, audience: str, expiration_seconds: int
    ) -> str: ...

    def own_bearer_token(self) -> str | None: ...

    def service_account_issuer(self) -> str | None: ...


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def flag_problem(enabled: bool) -> ReferenceProblem | None:
    """Opt-in 1: the cluster admin enabled workload identity for this operator."""
    if enabled:
        return None
    return ReferenceProblem(
        "InvalidSpec",
        "clientAuthentication: workload_identity needs the operator to run with "
        "--enable-workload-identity (and the deploy/workload-identity RBAC overlay)",
    )


def audience_problem(
    audience: str, api_audiences: Collection[str] | None
) -> ReferenceProblem | None:
    """Opt-in 3: a token for this audience must be useless against the cluster's API."""
    if api_audiences is None:
        return ReferenceProblem(
            "InvalidSpec",
            "workload identity is refused: the operator cannot tell which audiences the "
            "cluster's API server accepts (its own credentials are not a ServiceAccount token)",
        )
    if audience in api_audiences:
        return ReferenceProblem(
            "InvalidSpec",
            f"spec.workloadIdentity.audience {audience!r} is an audience the cluster's API "
            "server accepts; a token for it would be a credential for the cluster itself",
        )
    return None


def service_account_problem(
    name: str,
    metadata: Mapping[str, Any] | None,
    audience: str,
    token_url: str,
) -> ReferenceProblem | None:
    """Opt-in 2: the ServiceAccount's own label and annotations allow this endpoint and
    this audience."""
    what = f"ServiceAccount {name!r}"
    if metadata is None:
        return ReferenceProblem("ReferenceNotFound", f"{what} does not exist")
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(LABEL_SOURCE) != "true":
        return ReferenceProblem(
            "ReferenceNotLabeled",
            f"{what} lacks the label {LABEL_SOURCE}=true, so the operator mints no token for it",
        )
    allowed_urls = annotations.get(ANNOTATION_ALLOWED_URLS)
    if not _split(allowed_urls):
        return ReferenceProblem(
            "TokenURLNotAllowed",
            f"{what} lacks the annotation {ANNOTATION_ALLOWED_URLS}, which workload identity "
            "requires: it names the token endpoints that may receive its tokens",
        )
    if not url_allowed(token_url, allowed_urls):
        return ReferenceProblem(
            "TokenURLNotAllowed",
            f"{what} may only be sent to the token URLs in its annotation "
            f"{ANNOTATION_ALLOWED_URLS}, and the token URL is not one",
        )
    if audience not in _split(annotations.get(ANNOTATION_ALLOWED_AUDIENCES)):
        return ReferenceProblem(
            "ReferenceNotLabeled",
            f"{what} does not list {audience!r} in its annotation {ANNOTATION_ALLOWED_AUDIENCES}",
        )
    return None


def token_audiences(token: str | None) -> list[str] | None:
    """The `aud` of a ServiceAccount token (a JWT; decoded only, the API server already
    verified it), or None when it is not a JWT with an audience."""
    claims = jwt_claims(token) if token else None
    aud = claims.get("aud") if claims else None
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return list(aud)
    return None


class ApiAudiences:
    """The audiences the API server accepts: those of the operator's own ServiceAccount
    token (a pod's projected token, or a ServiceAccount kubeconfig), which the API server
    minted with its default audiences, plus its ServiceAccount issuer (the default
    `--api-audiences`). None when the operator authenticates otherwise: then workload
    identity is refused rather than guessed. Cached for a few minutes."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, issuer_only_fallback: bool = False
    ) -> None:
        self.clock = clock
        # `tokensync check` acts with the user's own permissions, often a certificate or
        # an OIDC login: there the issuer (the API server's default audience) is used alone.
        self.issuer_only_fallback = issuer_only_fallback
        self._lock = threading.Lock()
        self._value: tuple[float, frozenset[str] | None] | None = None

    def get(self, kube: KubeLike) -> frozenset[str] | None:
        with self._lock:
            cached = self._value
        if cached is not None and self.clock() - cached[0] < API_AUDIENCES_CACHE_SECONDS:
            return cached[1]
        own = token_audiences(kube.own_bearer_token())
        value = None
        if own is not None or self.issuer_only_fallback:
            issuer = kube.service_account_issuer()
            value = frozenset((own or []) + ([issuer] if issuer else []))
            if not value:
                value = None
        with self._lock:
            self._value = (self.clock(), value)
        return value


API_AUDIENCES = ApiAudiences()


def mint_assertion(
    kube: KubeLike,
    namespace: str,
    settings: WorkloadIdentitySpec,
    token_url: str,
    *,
    enabled: bool,
    api_audiences: ApiAudiences = API_AUDIENCES,
) -> str | ReferenceProblem:
    """The ServiceAccount token to send as client assertion, or why none is minted.
    Blocking (two or three API calls); every opt-in is checked before the TokenRequest;
    the namespace's RBAC grant and the admission policy are the API server's to check."""
    problem = flag_problem(enabled) or audience_problem(settings.audience, api_audiences.get(kube))
    if problem:
        return problem
    name = settings.service_account_name
    try:
        found = kube.object_metadata("ServiceAccount", namespace, name)
    except KubeError as error:
        if error.status == 403:  # the flag is on but the cluster-wide RBAC is missing
            return ReferenceProblem(
                "InvalidSpec",
                f"the operator may not read ServiceAccount {name!r} "
                f"(apply the RBAC of deploy/workload-identity/): {error}",
            )
        raise
    metadata = (found or {}).get("metadata") if found is not None else None
    problem = service_account_problem(name, metadata, settings.audience, token_url)
    if problem:
        return problem
    try:
        return kube.request_service_account_token(
            namespace, name, settings.audience, settings.expiration_seconds
        )
    except KubeError as error:
        if error.status == 403:
            return token_request_forbidden(namespace, name, str(error))
        if error.status == 404:
            return ReferenceProblem("ReferenceNotFound", f"ServiceAccount {name!r} does not exist")
        raise


MINT_ROLE_HINT = (
    "kubectl -n {ns} create role tokensync-mint-{sa} --verb=create "
    "--resource=serviceaccounts/token --resource-name={sa}; "
    "kubectl -n {ns} create rolebinding tokensync-mint-{sa} --role=tokensync-mint-{sa} "
    "--serviceaccount=<operator namespace>:<operator ServiceAccount>"
)


def token_request_forbidden(namespace: str, name: str, error: str) -> ReferenceProblem:
    """A 403 from the TokenRequest API (pure): the namespace has not granted minting for
    this ServiceAccount (RBAC), or the admission policy refused the request."""
    if "ValidatingAdmissionPolicy" in error:
        return ReferenceProblem(
            "InvalidSpec",
            f"the API server's admission policy refused a token of ServiceAccount {name!r}: "
            f"{error}",
        )
    return ReferenceProblem(
        "ReferenceNotLabeled",
        f"the namespace has not allowed the operator to mint tokens of ServiceAccount "
        f"{name!r}: a namespace admin grants it with a Role and RoleBinding "
        f"(docs/guides/workload-identity.md): {MINT_ROLE_HINT.format(ns=namespace, sa=name)}",
    )
