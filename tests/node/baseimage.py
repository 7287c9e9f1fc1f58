"""Pack a root filesystem directory into a one-layer OCI image layout, so BuildKit can use
it as a base image through a named context (`oci-layout://`) with no registry.

    python3 baseimage.py ROOTFS LAYOUT_DIR [--env K=V ...] [--user U] [--workdir D]

Prints the manifest digest (sha256:...). The layer is an uncompressed tar written by GNU
tar (numeric owners, sorted names, fixed mtimes), so the same tree gives the same digest.
Standard library only: image.sh runs it before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _put_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def pack(rootfs: Path, layout: Path, env: list[str], user: str, workdir: str) -> str:
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with tempfile.NamedTemporaryFile(dir=layout, suffix=".tar", delete=False) as tmp:
        layer = Path(tmp.name)
    subprocess.run(
        [
            "tar", "--create", f"--file={layer}", f"--directory={rootfs}",
            "--numeric-owner", "--sort=name", "--mtime=@0", "--xattrs", ".",
        ],
        check=True,
    )  # fmt: skip
    layer_digest = _sha256_file(layer)
    layer_size = layer.stat().st_size
    layer.rename(blobs / layer_digest)
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "User": user, "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    }
    config_ref = _put_blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, **config_ref},
        "layers": [
            {"mediaType": LAYER_TYPE, "digest": f"sha256:{layer_digest}", "size": layer_size}
        ],
    }
    manifest_ref = _put_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                **manifest_ref,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_ref["digest"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("layout", type=Path)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--user", default="0:0")
    parser.add_argument("--workdir", default="/")
    args = parser.parse_args(argv)
    print(pack(args.rootfs, args.layout, args.env, args.user, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
