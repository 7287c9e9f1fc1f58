#!/usr/bin/env bash
# Build tests/kstatus (a wrapper around sigs.k8s.io/cli-utils' kstatus library, the status
# rules Flux and kpt apply) into a cache keyed by the cli-utils version pinned in go.mod:
# ${TOKENSYNC_KSTATUS_CACHE:-~/.cache/tokensync/kstatus}/<version>/kstatus.
#
# Prints that directory on the last line of stdout; progress goes to stderr. A no-op when
# the cached binary matches go.mod, go.sum and main.go. Exits 3 when a build is needed and
# `go` is not installed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}
version=$(awk '($1 == "require" && $2 == "sigs.k8s.io/cli-utils") { print $3; exit }
               ($1 == "sigs.k8s.io/cli-utils" && $2 ~ /^v[0-9]/) { print $2; exit }' "$here/go.mod")
if [[ ! $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
  echo "kstatus: cannot read the sigs.k8s.io/cli-utils version from $here/go.mod" >&2
  exit 1
fi
cache_root=${TOKENSYNC_KSTATUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/kstatus}
out="$cache_root/$version"
mkdir -p "$out"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  flock 9
fi
want_stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha)
if [ -x "$out/kstatus" ] && [ "$(cat "$out/kstatus.stamp" 2>/dev/null)" = "$want_stamp" ]; then
  echo "kstatus: cached in $out" >&2
else
  if ! command -v go >/dev/null 2>&1; then
    echo "kstatus: need to build it but 'go' is not installed (Go >= 1.24)" >&2
    exit 3
  fi
  echo "kstatus: building ($version) with $(go env GOVERSION) ..." >&2
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags="-s -w" -o "$tmp/kstatus" .)
  mv -f "$tmp/kstatus" "$out/kstatus"
  echo "$want_stamp" > "$out/kstatus.stamp"
fi
echo "$out"
