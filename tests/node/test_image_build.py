"""The operator image built from the project's Dockerfile (tests/node/image.sh: BuildKit,
locally debootstrapped Debian 12 bases, no registry): what the Dockerfile promises is in
the image it builds. tests/operator/test_deploy_on_node.py runs it on the node."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fixtures.controlplane import in_ci
from fixtures.node import OPERATOR_IMAGE

REPO = Path(__file__).resolve().parents[2]
NAME = OPERATOR_IMAGE  # the same archive the node tests import


@pytest.fixture(scope="module")
def archive() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (debootstrap, BuildKit's runc worker)")
    result = subprocess.run(
        ["bash", str(REPO / "tests/node/image.sh"), NAME],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        why = f"tests/node/image.sh exited {result.returncode}:\n{result.stderr[-3000:]}"
        if result.returncode == 3 and not in_ci():
            pytest.skip(why)
        pytest.fail(why, pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


def _json(tar: tarfile.TarFile, digest: str) -> Any:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
    assert member is not None
    return json.load(member)


def _layer_paths(tar: tarfile.TarFile, digest: str) -> set[str]:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
    assert member is not None
    with tarfile.open(fileobj=member, mode="r|*") as layer:
        return {m.name.removeprefix("./") for m in layer}


@pytest.mark.timeout(900)  # cold: BuildKit, the bases and the image, about 8 minutes
def test_image_from_the_dockerfile_is_what_it_promises(archive: Path):
    with tarfile.open(archive) as tar:
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        [entry] = index["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == NAME
        manifest = _json(tar, entry["digest"])
        config = _json(tar, manifest["config"]["digest"])
        *base_layers, app_layer = manifest["layers"]
        app = _layer_paths(tar, app_layer["digest"])
        base = set().union(*(_layer_paths(tar, layer["digest"]) for layer in base_layers))
    settings = config["config"]
    assert settings["User"] == "65532:65532"
    assert settings["Entrypoint"] == ["/opt/tokensync/bin/tokensync"]
    assert settings["Cmd"] == ["run", "--all-namespaces"]
    # The final stage adds exactly the virtualenv, with compiled bytecode, and no installer.
    assert {p.split("/")[0] for p in app} == {"opt"}
    assert "opt/tokensync/bin/tokensync" in app
    assert any(p.startswith("opt/tokensync/lib/python3.11/site-packages/kopf/") for p in app)
    assert any(p.endswith(".pyc") and "/tokensync/" in p for p in app)
    assert not any("/site-packages/pip/" in p or p.endswith("/bin/pip") for p in app)
    assert not any("/site-packages/pytest/" in p for p in app)  # no test extras
    # The runtime base (here the distroless stand-in) has python3 and no shell.
    assert "usr/bin/python3" in base
    assert not {"usr/bin/sh", "bin/sh", "usr/bin/bash"} & base
