"""The Argo CD health check in Lua, on hand-written statuses (the cases an operator may
not produce on demand: no status yet, an unobserved generation, an older operator
without Reconciling/Stalled). tests/operator/test_gitops_health.py runs it on statuses
the real operator wrote."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml
from gitops.health import argocd_health


def credential(status: dict[str, Any] | None, generation: int = 1, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "OAuth2Credential",
        "metadata": {"name": "c", "namespace": "n", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def cond(type_: str, status: str, reason: str, message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("obj", "health"),
    [
        (credential(None), "Progressing"),
        (credential({"observedGeneration": 1, "conditions": []}, generation=2), "Progressing"),
        (
            credential({"observedGeneration": 2, "conditions": [cond("Ready", "True", "T")]}, 3),
            "Progressing",
        ),
        (
            credential({"observedGeneration": 1, "conditions": [cond("Ready", "True", "T")]}),
            "Healthy",
        ),
        (
            credential(
                {
                    "observedGeneration": 1,
                    "conditions": [
                        cond("Ready", "False", "InvalidSpec"),
                        cond("Stalled", "True", "InvalidSpec", "spec.x: bad"),
                    ],
                }
            ),
            "Degraded",
        ),
        (
            credential(
                {
                    "observedGeneration": 1,
                    "conditions": [
                        cond("Ready", "False", "Pending"),
                        cond("Reconciling", "True", "Pending"),
                    ],
                }
            ),
            "Progressing",
        ),
        (
            credential(
                {"observedGeneration": 1, "conditions": [cond("Ready", "False", "Suspended")]},
                suspend=True,
            ),
            "Suspended",
        ),
        # A status from before Reconciling/Stalled existed: not Ready is not healthy.
        (
            credential({"observedGeneration": 1, "conditions": [cond("Ready", "False", "X")]}),
            "Progressing",
        ),
    ],
)
def test_health(obj: dict, health: str) -> None:
    assert argocd_health(obj)["status"] == health


def test_degraded_says_why() -> None:
    obj = credential(
        {
            "observedGeneration": 1,
            "conditions": [
                cond("Ready", "False", "ReferenceNotLabeled", "Secret 'x' lacks the label"),
                cond("Stalled", "True", "ReferenceNotLabeled", "Secret 'x' lacks the label"),
            ],
        }
    )
    assert argocd_health(obj) == {
        "status": "Degraded",
        "message": "ReferenceNotLabeled: Secret 'x' lacks the label",
    }


@pytest.mark.envtest
def test_the_component_and_the_patch_keep_argocd_cms_other_keys(control_plane, tmp_path):
    """Both documented ways to install it: the kustomize Component (rendered by kubectl's
    kustomize) and `kubectl patch --patch-file` on a live argocd-cm."""
    from gitops.health import ARGOCD_CM, ARGOCD_KEY, REPO

    existing = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"url": "https://argocd.example.com"},
    }
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(existing))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["argocd-cm.yaml"],
                "components": [os.path.relpath(REPO / "deploy" / "argocd", tmp_path)],
            }
        )
    )
    rendered = control_plane.kubectl(
        "kustomize", str(tmp_path), "--load-restrictor=LoadRestrictionsNone"
    ).stdout
    (cm,) = [d for d in yaml.safe_load_all(rendered) if d]
    assert cm["data"]["url"] == "https://argocd.example.com"
    assert ARGOCD_KEY in cm["data"]

    control_plane.kubectl("create", "namespace", "argocd", check=False)
    control_plane.kubectl("apply", "-f", str(tmp_path / "argocd-cm.yaml"))
    control_plane.kubectl(
        "-n", "argocd", "patch", "configmap", "argocd-cm", "--patch-file", str(ARGOCD_CM)
    )
    live = yaml.safe_load(
        control_plane.kubectl("-n", "argocd", "get", "configmap", "argocd-cm", "-o", "yaml").stdout
    )
    assert live["data"]["url"] == "https://argocd.example.com"
    assert live["data"][ARGOCD_KEY] == cm["data"][ARGOCD_KEY]
