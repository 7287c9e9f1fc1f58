#!/usr/bin/env bash
# Build ORY Hydra from the release pinned in go.mod (github.com/ory/hydra/v2), with cgo
# SQLite so it runs with DSN=memory, into a cache directory keyed by that version:
# ${TOKENSYNC_HYDRA_CACHE:-~/.cache/tokensync/hydra}/<version>/hydra.
#
# Same contract as tests/envtest/build.sh: a no-op when the cached binary's stamp (go.mod,
# go.sum, build flags) is current; prints the directory holding `hydra` on the last line
# of stdout; progress goes to stderr; exits 3 when a build is needed and `go` (or a C
# compiler, for SQLite) is not installed. Cold build on 2 busy cores: about 4 minutes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}

version=$(awk '($1 == "require" && $2 == "github.com/ory/hydra/v2") { print $3; exit }
               ($1 == "github.com/ory/hydra/v2" && $2 ~ /^v[0-9]/) { print $2; exit }' "$here/go.mod")
if [[ ! $version =~ ^v2\.[0-9]+\.[0-9]+ ]]; then
  echo "hydra: cannot read the github.com/ory/hydra/v2 version from $here/go.mod" >&2
  exit 1
fi

# The release's link-time settings, so `hydra version` reports the release; sqlite tags
# as in Hydra's own Makefile (DSN=memory needs them).
ldflags="-s -w -X github.com/ory/hydra/v2/driver/config.Version=$version"
goflags=(-mod=readonly -trimpath -tags sqlite,sqlite_omit_load_extension "-ldflags=$ldflags")

cache_root=${TOKENSYNC_HYDRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/hydra}
out="$cache_root/$version"
mkdir -p "$out"

# One build at a time per cache (flock is util-linux; skipped elsewhere).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "hydra: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

want_stamp=$( { cat "$here/go.mod" "$here/go.sum"; printf '%s\n' "${goflags[@]}"; } | sha)
if [ -x "$out/hydra" ] && [ "$(cat "$out/hydra.stamp" 2>/dev/null)" = "$want_stamp" ]; then
  echo "hydra: $version cached in $out" >&2
else
  if ! command -v go >/dev/null 2>&1 || ! command -v "${CC:-cc}" >/dev/null 2>&1; then
    echo "hydra: need to build hydra $version but 'go' or a C compiler is not installed" >&2
    exit 3
  fi
  echo "hydra: building hydra $version with $(go env GOVERSION) ..." >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$here" && CGO_ENABLED=1 go build "${goflags[@]}" -o "$tmp/hydra" github.com/ory/hydra/v2)
  mv -f "$tmp/hydra" "$out/hydra"
  echo "$want_stamp" > "$out/hydra.stamp"
  echo "hydra: built hydra $version in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
