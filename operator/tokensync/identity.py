"""The one hook between the controller and the client authentication methods: turn a
resolved credential into the token request to send, doing what a plain client secret never needed:

- `issuerURL`: discover the token endpoint (and, if unset, the client authentication), then
  hold it to every rule a `tokenURL` is held to: URL rules, the operator's gates, and the
  `allowed-token-urls` binding of every referenced Secret;
- `workload_identity` (and a ServiceAccount token as a grant or subject token): check the
  four opt-ins and mint the ServiceAccount token;
- `private_key_jwt` / `client_secret_jwt`: attach the assertion signer (spec.py builds it).

The controller calls `prepare_request` just before it sends, and `request_failed` after a
failed request (a 404 or connection failure re-reads the discovery document next time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tokensync import discovery, workload
from tokensync.assertion import KeyProblem
from tokensync.gates import OperatorConfig, effective_request, gate_problem
from tokensync.oauth2 import TLSSettings, TokenError, TokenRequest, display_url
from tokensync.secret import url_allowed
from tokensync.sources import (
    ReferenceProblem,
    SourceLookup,
    Unresolved,
    resolve_references,
    signing_problem,
)
from tokensync.spec import (
    CredentialSpec,
    ResolvedValues,
    WorkloadIdentitySpec,
    to_token_request,
    token_url_problem,
)

T = TypeVar("T")
Blocking = Callable[[Callable[[], T]], Awaitable[T]]

DISCOVERY = discovery.DiscoveryCache()
# How soon a credential whose request could not be prepared is looked at again: neither
# an issuer's metadata nor a ServiceAccount is watched, so nothing else wakes it.
RECHECK_SECONDS = 60.0


def discovered_spec(spec: CredentialSpec, metadata: discovery.Metadata) -> CredentialSpec:
    """The spec as if it named the discovered endpoint (and method) itself (pure)."""
    method = spec.client_authentication
    if not spec.client_authentication_set:
        method = discovery.choose_client_authentication(metadata)
    return dataclasses.replace(
        spec, token_url=metadata.token_endpoint, client_authentication=method
    )


def _discovery_tls(
    spec: CredentialSpec, resolved: ResolvedValues, config: OperatorConfig
) -> TLSSettings:
    # The issuer is trusted as the token endpoint is (caRef), with no client certificate.
    return TLSSettings(
        ca_pem=resolved.ca_pem,
        insecure_skip_verify=spec.tls.insecure_skip_verify and config.allow_insecure,
        ca_description=resolved.ca_description,
    )


def discover(
    spec: CredentialSpec,
    resolved: ResolvedValues,
    config: OperatorConfig,
    cache: discovery.DiscoveryCache = DISCOVERY,
) -> CredentialSpec:
    """Blocking: the spec with its discovered token endpoint; raises DiscoveryFailed."""
    assert spec.issuer_url is not None
    tls = _discovery_tls(spec, resolved, config)

    def fetch() -> discovery.Metadata:
        return discovery.fetch_metadata(
            spec.issuer_url or "",
            tls=tls,
            timeout=float(spec.timeout_seconds),
            deny_private_networks=config.deny_private_networks,
            url_problem=lambda url: token_url_problem(url, spec.allow_insecure_http),
        )

    metadata = cache.get(spec.issuer_url, tls, fetch)
    # Whoever filled the cache, the endpoint must pass this credential's own rules (an
    # http:// endpoint found for a credential with allowInsecureHTTP is not for others).
    if problem := token_url_problem(metadata.token_endpoint, spec.allow_insecure_http):
        shown = display_url(metadata.token_endpoint)
        raise discovery.DiscoveryFailed(
            metadata.document_url, f"its token_endpoint {shown} {problem}"
        )
    return discovered_spec(spec, metadata)


def endpoint_problem(
    spec: CredentialSpec, config: OperatorConfig, lookup: SourceLookup
) -> ReferenceProblem | None:
    """A discovered endpoint passes the operator's gates and every source's binding."""
    problem = gate_problem(spec, config)
    if problem is not None:
        return problem
    checked = resolve_references(spec, lookup, url_allowed)
    if isinstance(checked, ReferenceProblem):
        return checked
    if isinstance(checked, Unresolved):  # removed since the caller resolved it
        return ReferenceProblem(
            "ReferenceNotFound", f"{checked.ref.kind} {checked.ref.name!r} is gone"
        )
    return None


async def prepare_request(
    spec: CredentialSpec,
    resolved: ResolvedValues,
    kube: Any,
    config: OperatorConfig,
    *,
    namespace: str,
    lookup: SourceLookup,
    blocking: Blocking[Any],
    cache: discovery.DiscoveryCache = DISCOVERY,
    api_audiences: workload.ApiAudiences = workload.API_AUDIENCES,
) -> TokenRequest | ReferenceProblem:
    """The token request to send now, or the problem (a Ready reason) that prevents it.
    Nothing is minted and nothing is sent to a token endpoint when a problem is returned."""
    if spec.issuer_url is not None:
        try:
            spec = await blocking(lambda: discover(spec, resolved, config, cache))
        except discovery.DiscoveryFailed as failed:
            return ReferenceProblem("DiscoveryFailed", str(failed))
        problem = endpoint_problem(spec, config, lookup)
        if problem is not None:
            return problem
    assert spec.token_url is not None
    try:
        request = to_token_request(spec, resolved)
    except KeyProblem as problem:  # resolve_references checked it; a race with an edit
        found = signing_problem(spec, resolved)  # names the Secret and field at fault
        return found or ReferenceProblem("ReferenceInvalid", f"the signing key {problem}")
    if spec.client_authentication == "workload_identity":
        assert spec.workload_identity is not None
        token_url = spec.token_url
        settings = spec.workload_identity
        minted = await blocking(
            lambda: workload.mint_assertion(
                kube,
                namespace,
                settings,
                token_url,
                enabled=config.enable_workload_identity,
                api_audiences=api_audiences,
            )
        )
        if isinstance(minted, ReferenceProblem):
            return minted
        request = dataclasses.replace(request, client_assertion=lambda: minted)
    grant_sa, field = _grant_service_account(spec)
    if grant_sa is not None:
        # A ServiceAccount token as the grant (jwt_bearer) or as the subject token
        # (token_exchange): the same opt-ins as workload identity, checked by the same
        # code before minting.
        if not config.enable_workload_identity:
            return ReferenceProblem(
                "InvalidSpec",
                f"{field} needs the operator to run with "
                "--enable-workload-identity (and the deploy/workload-identity RBAC overlay)",
            )
        token_url = spec.token_url
        minted_grant = await blocking(
            lambda: workload.mint_assertion(
                kube,
                namespace,
                grant_sa,
                token_url,
                enabled=True,
                api_audiences=api_audiences,
            )
        )
        if isinstance(minted_grant, ReferenceProblem):
            return minted_grant
        attach = "grant_assertion" if spec.jwt_bearer is not None else "subject_token"
        request = dataclasses.replace(request, **{attach: lambda: minted_grant})
    return effective_request(request, config)


def _grant_service_account(
    spec: CredentialSpec,
) -> tuple[WorkloadIdentitySpec | None, str]:
    """The ServiceAccount whose token the grant carries, and the field naming it."""
    if spec.jwt_bearer is not None and spec.jwt_bearer.workload_identity is not None:
        return spec.jwt_bearer.workload_identity, "jwtBearer.workloadIdentity"
    if spec.token_exchange is not None and spec.token_exchange.workload_identity is not None:
        return spec.token_exchange.workload_identity, "tokenExchange.workloadIdentity"
    return None, ""


def token_url_in_use(
    spec: CredentialSpec, cache: discovery.DiscoveryCache = DISCOVERY
) -> str | None:
    """For status.tokenURL: spec.tokenURL, or the endpoint last discovered for issuerURL."""
    if spec.token_url is not None or spec.issuer_url is None:
        return spec.token_url
    return cache.token_endpoint(spec.issuer_url)


def request_failed(
    spec: CredentialSpec, error: TokenError, cache: discovery.DiscoveryCache = DISCOVERY
) -> None:
    """After a failed token request: a discovered endpoint that answered 404 or could not
    be reached is looked up again next time."""
    if spec.issuer_url is not None and discovery.invalidates_discovery(error):
        cache.invalidate(spec.issuer_url)
