"""Operator-level gates: what the cluster admin allows, on top of what a spec asks (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tokensync.oauth2 import TokenRequest
from tokensync.sources import ReferenceProblem
from tokensync.spec import CredentialSpec
from tokensync.transport import Network
from tokensync.urls import URLProblem, host_allowed, parse_url


@dataclass(frozen=True)
class OperatorConfig:
    allow_insecure: bool = False  # honour allowInsecureHTTP and tls.insecureSkipVerify
    deny_private_networks: bool = True
    allowed_token_hosts: tuple[str, ...] = ()  # fnmatch patterns; empty: any host
    deny_cidrs: tuple[Network, ...] = ()  # refused in addition to the private-network guard
    enable_workload_identity: bool = False  # mint ServiceAccount tokens (workload_identity)
    enable_rollout_restart: bool = False  # patch workloads of spec.rolloutRestart


def gate_problem(spec: CredentialSpec, config: OperatorConfig) -> ReferenceProblem | None:
    """Why the operator refuses this credential's token URL (before discovery: its issuer
    URL, which discovery connects to), or None."""
    field = "spec.tokenURL" if spec.token_url else "spec.issuerURL"
    try:
        parsed = parse_url(spec.token_url or spec.issuer_url or "")
    except URLProblem as problem:
        return ReferenceProblem("InvalidSpec", f"{field} {problem}")
    if parsed.scheme == "http" and not config.allow_insecure:
        return ReferenceProblem(
            "InvalidSpec",
            "spec.allowInsecureHTTP is honoured only when the operator runs with "
            "--allow-insecure; use an https:// token URL",
        )
    if not host_allowed(parsed, config.allowed_token_hosts):
        return ReferenceProblem(
            "TokenURLNotAllowed",
            f"token host {parsed.host!r} is not in the operator's --allowed-token-hosts",
        )
    return None


def insecure_warnings(spec: CredentialSpec, config: OperatorConfig) -> list[str]:
    """Insecure settings in effect (or ignored), for status.warnings and a Warning event."""
    warnings = []
    if (spec.token_url or spec.issuer_url or "").startswith("http://") and config.allow_insecure:
        warnings.append("allowInsecureHTTP: the client secret and token travel unencrypted")
    if spec.tls.insecure_skip_verify:
        warnings.append(
            "tls.insecureSkipVerify: the token endpoint's certificate is not verified"
            if config.allow_insecure
            else "tls.insecureSkipVerify is ignored: the operator runs without --allow-insecure"
        )
    return warnings


def effective_request(request: TokenRequest, config: OperatorConfig) -> TokenRequest:
    """The request as the operator sends it: skip-verify only where the admin allows it."""
    if request.tls.insecure_skip_verify and not config.allow_insecure:
        tls = dataclasses.replace(request.tls, insecure_skip_verify=False)
        return dataclasses.replace(request, tls=tls)
    return request
