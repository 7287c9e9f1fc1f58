"""What GitOps tools conclude from an OAuth2Credential: kstatus (Flux, kpt) through the real
sigs.k8s.io/cli-utils library (tests/kstatus), and Argo CD's health check
(deploy/argocd/argocd-cm-health.yaml) through a real Lua 5.1 interpreter, the language
version of the gopher-lua VM Argo CD runs its checks in."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD_CM = REPO / "deploy" / "argocd" / "argocd-cm-health.yaml"
ARGOCD_KEY = "resource.customizations.health.tokensync.dev_OAuth2Credential"
KSTATUS_BUILD = REPO / "tests" / "kstatus" / "build.sh"


def argocd_script() -> str:
    return yaml.safe_load(ARGOCD_CM.read_text())["data"][ARGOCD_KEY]


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the check as Argo CD does: `obj` a global, the script's return value the
    health ({status, message})."""
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(argocd_script())
    return {"status": result["status"], "message": result["message"]}


@cache
def kstatus_binary() -> Path:
    """tests/kstatus built (or found cached) by its build script; skipped without Go
    outside CI, a failure in CI (like the control plane)."""
    from fixtures.controlplane import in_ci

    result = subprocess.run(
        ["bash", str(KSTATUS_BUILD)], capture_output=True, text=True, check=False
    )
    if result.returncode == 3 and not in_ci():
        pytest.skip("tests/kstatus needs Go >= 1.24 to build once")
    if result.returncode != 0:
        pytest.fail(f"tests/kstatus/build.sh failed: {result.stderr[-2000:]}", pytrace=False)
    binary = Path(result.stdout.strip().splitlines()[-1]) / "kstatus"
    assert binary.exists() and shutil.which(str(binary))
    return binary


def kstatus(obj: dict[str, Any]) -> dict[str, str]:
    """kstatus' verdict on one object: {status: Current|InProgress|Failed|..., message}."""
    result = subprocess.run(
        [str(kstatus_binary())], input=json.dumps(obj), capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)
