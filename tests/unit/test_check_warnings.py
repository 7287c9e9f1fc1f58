"""What `check` warns about and what the operator reports when a signing key changes
between its check and the request: each names the right thing for every method."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_saml2_bearer import saml_spec, values

from tokensync.check import plain_http_exposes
from tokensync.gates import OperatorConfig
from tokensync.identity import prepare_request
from tokensync.sources import ReferenceProblem
from tokensync.spec import parse_spec

SECRET_REF = {"name": "client", "key": "client_secret"}
KEY_REF = {"name": "key", "key": "tls.key"}


def spec(**fields: Any) -> Any:
    base = {"tokenURL": "http://127.0.0.1/token", "allowInsecureHTTP": True, "clientID": "c"}
    return parse_spec({**base, **fields}, name="c")


@pytest.mark.parametrize(
    ("fields", "exposed"),
    [
        ({"clientSecretRef": SECRET_REF}, "the client secret and token"),
        (
            {"clientSecretRef": SECRET_REF, "clientAuthentication": "client_secret_jwt"},
            "the client assertion and token",
        ),
        (
            {"clientAuthentication": "private_key_jwt", "clientAssertion": {"keyRef": KEY_REF}},
            "the client assertion and token",
        ),
        (saml_spec(), "the grant assertion and token"),
    ],
    ids=["header", "client_secret_jwt", "private_key_jwt", "saml2_bearer-none"],
)
def test_the_plain_http_warning_names_what_travels(fields: dict[str, Any], exposed: str) -> None:
    fields = {k: v for k, v in fields.items() if k != "tokenURL"}
    assert plain_http_exposes(spec(**fields)) == exposed


def test_a_grant_key_replaced_after_its_check_is_named_by_its_secret() -> None:
    # resolve_references checked the key; an edit replaced it before the request.
    async def never(*_: Any) -> Any:
        raise AssertionError("nothing is minted or looked up")

    problem = asyncio.run(
        prepare_request(
            parse_spec(saml_spec(), name="c"),
            values(grant_key_pem=b"-----BEGIN PRIVATE KEY-----\nnot a key\n"),
            None,
            OperatorConfig(),
            namespace="ns",
            lookup=None,  # type: ignore[arg-type]
            blocking=never,
        )
    )
    assert isinstance(problem, ReferenceProblem) and problem.reason == "ReferenceInvalid"
    assert problem.message.startswith("Secret 'sf-key' (saml2Bearer.keyRef) ")
    assert "client assertion" not in problem.message
