"""The workload identity opt-ins as pure checks, and the API audiences they compare with."""

from __future__ import annotations

import pytest

from servers.quirky import make_jwt
from tokensync import workload
from tokensync.discovery import invalidates_discovery
from tokensync.oauth2 import ConfigurationError, TransientError
from tokensync.spec import WorkloadIdentitySpec

URL = "https://login.example/tenant/oauth2/v2.0/token"
AUD = "api://AzureADTokenExchange"


OK = {
    "tokensync.dev/allowed-token-urls": "https://login.example/tenant/",
    "tokensync.dev/allowed-audiences": f"other, {AUD}",
}


def test_all_opt_ins_given():
    metadata = {"labels": {"tokensync.dev/credential-source": "true"}, "annotations": OK}
    assert workload.service_account_problem("app", metadata, AUD, URL) is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (None, "ReferenceNotFound"),
        ({"labels": {}, "annotations": OK}, "ReferenceNotLabeled"),
        (
            {"labels": {"tokensync.dev/credential-source": "yes"}, "annotations": OK},
            "ReferenceNotLabeled",
        ),
        (
            {
                "labels": {"tokensync.dev/credential-source": "true"},
                "annotations": {"tokensync.dev/allowed-audiences": AUD},
            },
            "TokenURLNotAllowed",
        ),
        (
            {
                "labels": {"tokensync.dev/credential-source": "true"},
                "annotations": {
                    **OK,
                    "tokensync.dev/allowed-token-urls": "https://login.example/other/",
                },
            },
            "TokenURLNotAllowed",
        ),
        (
            {
                "labels": {"tokensync.dev/credential-source": "true"},
                "annotations": {**OK, "tokensync.dev/allowed-audiences": "api://Other"},
            },
            "ReferenceNotLabeled",
        ),
    ],
)
def test_service_account_opt_in(metadata, reason):
    assert workload.service_account_problem("app", metadata, AUD, URL).reason == reason


def test_flag_and_audience_checks():
    assert workload.flag_problem(False).reason == "InvalidSpec"
    assert workload.flag_problem(True) is None
    api = {"https://kubernetes.default.svc", "https://issuer.example"}
    assert workload.audience_problem("https://kubernetes.default.svc", api).reason == "InvalidSpec"
    assert workload.audience_problem(AUD, api) is None
    assert workload.audience_problem(AUD, None).reason == "InvalidSpec"  # unknown: refuse


def test_token_audiences():
    assert workload.token_audiences(make_jwt({"aud": ["a", "b"]})) == ["a", "b"]
    assert workload.token_audiences(make_jwt({"aud": "a"})) == ["a"]
    assert workload.token_audiences(make_jwt({"sub": "x"})) is None
    assert workload.token_audiences("opaque") is None
    assert workload.token_audiences(None) is None


class FakeKube:
    """Records calls; a real Kube is used in tests/operator/test_identity.py."""

    def __init__(self, token: str | None, metadata: dict | None) -> None:
        self.token, self.metadata, self.minted = token, metadata, []

    def own_bearer_token(self):
        return self.token

    def service_account_issuer(self):
        return "https://issuer.example"

    def object_metadata(self, kind, namespace, name):
        return None if self.metadata is None else {"metadata": self.metadata}

    def request_service_account_token(self, namespace, name, audience, seconds):
        self.minted.append((namespace, name, audience, seconds))
        return "minted"


SETTINGS = WorkloadIdentitySpec("app", AUD, 900)


def test_mint_after_all_checks():
    metadata = {"labels": {"tokensync.dev/credential-source": "true"}, "annotations": OK}
    kube = FakeKube(make_jwt({"aud": ["https://kubernetes.default.svc"]}), metadata)
    result = workload.mint_assertion(
        kube, "ns", SETTINGS, URL, enabled=True, api_audiences=workload.ApiAudiences()
    )
    assert result == "minted" and kube.minted == [("ns", "app", AUD, 900)]


@pytest.mark.parametrize("case", ["flag", "issuer-audience", "not-a-jwt", "unlabelled"])
def test_nothing_minted_on_any_failure(case):
    metadata = {
        "labels": {} if case == "unlabelled" else {"tokensync.dev/credential-source": "true"},
        "annotations": OK,
    }
    token = (
        "opaque" if case == "not-a-jwt" else make_jwt({"aud": ["https://kubernetes.default.svc"]})
    )
    kube = FakeKube(token, metadata)
    settings = WorkloadIdentitySpec(
        "app", "https://issuer.example" if case == "issuer-audience" else AUD
    )
    result = workload.mint_assertion(
        kube, "ns", settings, URL, enabled=case != "flag", api_audiences=workload.ApiAudiences()
    )
    assert result != "minted" and kube.minted == []


def test_api_audiences_are_cached():
    now = [0.0]
    audiences = workload.ApiAudiences(clock=lambda: now[0])
    kube = FakeKube(make_jwt({"aud": ["a"]}), None)
    assert audiences.get(kube) == {"a", "https://issuer.example"}
    kube.token = make_jwt({"aud": ["b"]})
    assert audiences.get(kube) == {"a", "https://issuer.example"}
    now[0] = workload.API_AUDIENCES_CACHE_SECONDS + 1
    assert audiences.get(kube) == {"b", "https://issuer.example"}


def test_connection_failure_and_404_invalidate_discovery():
    assert invalidates_discovery(TransientError("x", reason="ConnectionFailed"))
    assert invalidates_discovery(ConfigurationError("x", reason="HTTPStatus", http_status=404))
    assert not invalidates_discovery(TransientError("x", reason="Timeout", http_status=503))


def test_forbidden_is_reported_as_the_missing_rbac_opt_in():
    """Issue 18: the overlay reads ServiceAccounts; each namespace grants minting. A 403
    reading the ServiceAccount is the missing overlay, a 403 from the TokenRequest the
    namespace's missing Role (with the commands), or the admission policy's refusal."""
    from tokensync.kube import KubeError

    class CannotRead(FakeKube):
        def object_metadata(self, kind, namespace, name):
            raise KubeError(403, 'serviceaccounts "app" is forbidden')

    class Forbidden(FakeKube):
        def request_service_account_token(self, namespace, name, audience, seconds):
            raise KubeError(403, 'serviceaccounts "app" is forbidden')

    class Refused(FakeKube):
        def request_service_account_token(self, namespace, name, audience, seconds):
            raise KubeError(
                403, "ValidatingAdmissionPolicy 'tokensync-operator-token-requests' denied"
            )

    metadata = {"labels": {"tokensync.dev/credential-source": "true"}, "annotations": OK}
    token = make_jwt({"aud": ["https://kubernetes.default.svc"]})

    def mint(kube):
        return workload.mint_assertion(
            kube, "ns", SETTINGS, URL, enabled=True, api_audiences=workload.ApiAudiences()
        )

    result = mint(CannotRead(token, metadata))
    assert result.reason == "InvalidSpec"
    assert "deploy/workload-identity/" in result.message
    result = mint(Forbidden(token, metadata))
    assert result.reason == "ReferenceNotLabeled"
    assert "kubectl -n ns create role tokensync-mint-app" in result.message
    assert "--resource-name=app" in result.message
    result = mint(Refused(token, metadata))
    assert result.reason == "InvalidSpec"
    assert "admission policy" in result.message
