"""tokensync without a cluster: see hack/demo.sh, which sets up and runs this.

Starts the test control plane (etcd, kube-apiserver, kube-controller-manager from
tests/envtest), a local HTTPS token endpoint issuing short tokens, installs the CRD,
creates a labelled client Secret and an OAuth2Credential, runs `tokensync run` against
it, and prints each token the managed Secret receives (a fingerprint, never the token)
with its expiry. Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "operator")]

NAMESPACE = "demo"
CREDENTIAL = "demo-api"


def _stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM both end the demo through KeyboardInterrupt, even if
    SIGINT was ignored when we started (as for background jobs of a script)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _ignore_signals() -> None:
    """While stopping: a second Ctrl-C must not cut the clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _say(text: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S}  {text}", flush=True)


def _fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _manifests(token_url: str, client_id: str, client_secret: str, ca_pem: str) -> str:
    import yaml

    base = token_url.split("/oauth2")[0] + "/"
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "demo-client",
                "namespace": NAMESPACE,
                "labels": {"tokensync.dev/credential-source": "true"},
                "annotations": {"tokensync.dev/allowed-token-urls": base},
            },
            "stringData": {"client_secret": client_secret},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "demo-ca",
                "namespace": NAMESPACE,
                "labels": {"tokensync.dev/credential-source": "true"},
            },
            "data": {"ca.crt": ca_pem},
        },
        {
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "OAuth2Credential",
            "metadata": {"name": CREDENTIAL, "namespace": NAMESPACE},
            "spec": {
                "tokenURL": token_url,
                "clientID": client_id,
                "clientSecretRef": {"name": "demo-client", "key": "client_secret"},
                "tls": {"caRef": {"kind": "ConfigMap", "name": "demo-ca", "key": "ca.crt"}},
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def _watch_secret(core: Any, operator: subprocess.Popen[bytes], log: Path) -> None:
    """Print the managed Secret's token fingerprint and expiry whenever it changes."""
    import base64

    from kubernetes.client.exceptions import ApiException

    seen: str | None = None
    rotations = 0
    while True:
        if operator.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"the operator exited ({operator.returncode})")
        try:
            secret = core.read_namespaced_secret(CREDENTIAL, NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise
            secret = None
        data = (secret.data or {}) if secret else {}
        if "access_token" in data:
            token = base64.b64decode(data["access_token"]).decode()
            if token != seen:
                expires = base64.b64decode(data["expires_at"]).decode()
                left = (
                    datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(UTC)
                ).total_seconds()
                what = "first token" if seen is None else f"rotated (#{rotations + 1})"
                rotations += seen is not None
                _say(
                    f"{what}: Secret {NAMESPACE}/{CREDENTIAL} access_token "
                    f"{_fingerprint(token)}  expires {expires} (in {left:.0f}s)"
                )
                seen = token
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin-dir", required=True, help="directory with the control plane")
    parser.add_argument(
        "--lifetime",
        type=int,
        default=int(os.environ.get("TOKENSYNC_DEMO_LIFETIME", "60")),
        help="token lifetime in seconds (default 60, or $TOKENSYNC_DEMO_LIFETIME)",
    )
    args = parser.parse_args(argv)
    _stop_on_signals()

    import kubernetes
    import trustme
    from token_endpoint import TokenEndpoint

    from fixtures.controlplane import start_control_plane

    work = Path(tempfile.mkdtemp(prefix="tokensync-demo-"))
    cp = endpoint = operator = None
    try:
        _say("starting a local Kubernetes control plane (etcd, kube-apiserver, ...)")
        cp = start_control_plane(Path(args.bin_dir))
        _say(f"control plane {cp.version} at {cp.server}")
        ca = trustme.CA()
        endpoint = TokenEndpoint(ca)
        client = endpoint.add_client(lifetime=args.lifetime)
        _say(f"token endpoint at {endpoint.url} issuing {args.lifetime}s tokens")

        cp.kubectl("apply", "-k", str(REPO / "crds"))
        cp.wait_established("oauth2credentials.tokensync.dev")
        manifests = _manifests(
            endpoint.url, client.client_id, client.secret, ca.cert_pem.bytes().decode()
        )
        (work / "demo.yaml").write_text(manifests)
        cp.kubectl("apply", "-f", "-", input=manifests)
        _say(f"applied {work / 'demo.yaml'}: client Secret, CA ConfigMap, OAuth2Credential")

        log = work / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [
                    sys.executable, "-m", "tokensync", "run", "--namespace", NAMESPACE,
                    # The token endpoint is on 127.0.0.1, which the guard refuses by default.
                    "--no-deny-private-networks", "--health-port=0", "--metrics-port=0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        _say(f"operator running (pid {operator.pid}, log {log})")
        _say(f"try: export KUBECONFIG={cp.kubeconfig} PATH={cp.bin_dir}:$PATH")
        _say(f"     kubectl -n {NAMESPACE} get o2c; tokensync status -n {NAMESPACE}")
        _say("Ctrl-C stops everything")
        core = kubernetes.client.CoreV1Api(cp.api_client())
        _watch_secret(core, operator, log)
    except KeyboardInterrupt:
        _say("stopping")
    finally:
        _ignore_signals()
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
        if endpoint is not None:
            endpoint.close()
        if cp is not None:
            cp.stop()
            shutil.rmtree(cp.state_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
