#!/usr/bin/env bash
# Build the helm CLI from the Helm release pinned in go.mod (helm.sh/helm/v3), into a
# cache directory keyed by that version:
# ${TOKENSYNC_HELM_CACHE:-~/.cache/tokensync/helm}/<version>/helm.
#
# Same contract as tests/envtest/build.sh: a no-op when the cached binary's stamp
# (go.mod, go.sum, build flags) is current; prints the directory holding `helm` on the
# last line of stdout; progress goes to stderr; exits 3 when a build is needed and `go`
# is not installed. Cold build on 2 busy cores: several minutes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}
require_version() {  # the version of module $1 in go.mod's require block(s)
  awk -v m="$1" '($1 == "require" && $2 == m) { print $3; exit }
                 ($1 == m && $2 ~ /^v[0-9]/) { print $2; exit }' "$here/go.mod"
}

version=$(require_version helm.sh/helm/v3)
client_go=$(require_version k8s.io/client-go)
if [[ ! $version =~ ^v3\.[0-9]+\.[0-9]+ ]] || [[ ! $client_go =~ ^v0\.([0-9]+)\. ]]; then
  echo "helm: cannot read the helm.sh/helm/v3 and k8s.io/client-go versions from $here/go.mod" >&2
  exit 1
fi
k8s_minor=${BASH_REMATCH[1]}

# The release Makefile's link-time settings: `helm version` reports the release, and
# lint/template default to the Kubernetes version helm was built against.
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
goflags=(-mod=readonly -trimpath "-ldflags=$ldflags")

cache_root=${TOKENSYNC_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/helm}
out="$cache_root/$version"
mkdir -p "$out"

# One build at a time per cache (flock is util-linux; skipped elsewhere).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "helm: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

want_stamp=$( { cat "$here/go.mod" "$here/go.sum"; printf '%s\n' "${goflags[@]}"; } | sha)
if [ -x "$out/helm" ] && [ "$(cat "$out/helm.stamp" 2>/dev/null)" = "$want_stamp" ]; then
  echo "helm: $version cached in $out" >&2
else
  if ! command -v go >/dev/null 2>&1; then
    echo "helm: need to build helm $version but 'go' is not installed (go.mod names the minimum)" >&2
    exit 3
  fi
  echo "helm: building helm $version with $(go env GOVERSION) ..." >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$here" && CGO_ENABLED=0 go build "${goflags[@]}" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
  mv -f "$tmp/helm" "$out/helm"
  echo "$want_stamp" > "$out/helm.stamp"
  echo "helm: built helm $version in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
