#!/usr/bin/env bash
# Build promtool from the Prometheus release pinned in go.mod
# (github.com/prometheus/prometheus v0.3MM.P is Prometheus v3.MM.P), and promql-names
# (cmd/promql-names here: Prometheus's PromQL parser listing the metric names an
# expression selects), into a cache directory keyed by that release:
# ${TOKENSYNC_PROMTOOL_CACHE:-~/.cache/tokensync/promtool}/<version>/.
#
# Same contract as tests/envtest/build.sh: a no-op when the cached binaries' stamps
# (go.mod, go.sum, cmd/promql-names, build flags) are current; prints the directory
# holding both on the last line of stdout; progress goes to stderr; exits 3 when a build is needed and
# `go` is not installed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}

module_version=$(awk '($1 == "require" && $2 == "github.com/prometheus/prometheus") { print $3; exit }
                      ($1 == "github.com/prometheus/prometheus" && $2 ~ /^v[0-9]/) { print $2; exit }' \
                 "$here/go.mod")
if [[ ! $module_version =~ ^v0\.([0-9]+)([0-9][0-9])\.([0-9]+)$ ]]; then
  echo "promtool: cannot read the github.com/prometheus/prometheus version from $here/go.mod" >&2
  exit 1
fi
version="v${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}"

# As the release build (.promu.yml): netgo, version stamped at link time.
ldflags="-s -w -X github.com/prometheus/common/version.Version=${version#v}"
ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"
# remove_all_sd leaves out every service-discovery SDK (AWS, Azure, GCE, ...): the tests
# check and unit-test rules and never discover targets, and those SDKs were most of the
# cold build.
goflags=(-mod=readonly -trimpath -tags=netgo,remove_all_sd "-ldflags=$ldflags")

cache_root=${TOKENSYNC_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/promtool}
out="$cache_root/$version"
mkdir -p "$out"

# One build at a time per cache (flock is util-linux; skipped elsewhere).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "promtool: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

want_stamp=$( { cat "$here/go.mod" "$here/go.sum" "$here/cmd/promql-names/main.go"
                printf '%s\n' "${goflags[@]}"; } | sha)
current() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.stamp" 2>/dev/null)" = "$want_stamp" ]; }
if current promtool && current promql-names; then
  echo "promtool: $version cached in $out" >&2
else
  if ! command -v go >/dev/null 2>&1; then
    echo "promtool: need to build promtool $version but 'go' is not installed (go.mod names the minimum)" >&2
    exit 3
  fi
  echo "promtool: building promtool and promql-names ($version) with $(go env GOVERSION) ..." >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # One `go build` for both: the Prometheus packages compile once.
  (cd "$here" && CGO_ENABLED=0 go build "${goflags[@]}" -o "$tmp/" \
    github.com/prometheus/prometheus/cmd/promtool ./cmd/promql-names)
  for name in promtool promql-names; do
    mv -f "$tmp/$name" "$out/$name"
    echo "$want_stamp" > "$out/$name.stamp"
  done
  echo "promtool: built promtool and promql-names in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
