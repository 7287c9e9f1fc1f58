#!/usr/bin/env bash
# tokensync without a cluster and without Docker: a local Kubernetes control plane (built
# once from tests/envtest, like the tests; needs Go >= 1.24 or KUBEBUILDER_ASSETS), a
# local token endpoint issuing 60 s tokens, an example credential and the operator. It
# prints the managed Secret's token (a fingerprint) and expiry each time it rotates.
# Ctrl-C stops everything it started.
#
#   hack/demo.sh                              # 60 s tokens: a new one about every 30 s
#   TOKENSYNC_DEMO_LIFETIME=20 hack/demo.sh   # shorter
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "demo: creating .venv" >&2
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c 'import tokensync, trustme' 2>/dev/null; then
  echo "demo: installing tokensync with its test extras into .venv" >&2
  pip install -q -e '.[test]'
fi
echo "demo: control plane binaries (first run: a build of several minutes)" >&2
bin_dir=$(bash tests/envtest/build.sh | tail -1)

# Python owns everything from here (exec: the same process, so Ctrl-C reaches it): on
# SIGINT or SIGTERM it stops the operator, the token endpoint and the control plane.
exec python hack/demo.py --bin-dir "$bin_dir" "$@"
