#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kubectl, etcd)
# from the Kubernetes release pinned in go.mod, into a cache directory keyed by that
# version: ${TOKENSYNC_ENVTEST_CACHE:-~/.cache/tokensync/envtest}/<version>/.
#
# If KUBEBUILDER_ASSETS names a directory (the envtest convention, e.g. from
# setup-envtest), binaries found there are used and only the missing ones are built;
# the result is then a directory of symlinks next to the version directory.
#
# Prints the directory holding all four binaries on the last line of stdout; progress
# goes to stderr. Exits 3 when something must be built and `go` is not installed.
# Cold build (empty Go build cache): about 5-6 minutes on 2 cores; relinking after a
# flag change: seconds; a cached run: well under a second (see README.md here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
names=(kube-apiserver kube-controller-manager kubectl etcd)
package_of() {  # (no associative arrays: macOS still ships bash 3.2)
  case $1 in
    etcd) echo ./cmd/etcd ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}

# The pinned release: `k8s.io/kubernetes vX.Y.Z` in go.mod's require block.
version=$(awk '($1 == "require" && $2 == "k8s.io/kubernetes") { print $3; exit }
               ($1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/) { print $2; exit }' "$here/go.mod")
if [[ ! $version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+ ]]; then
  echo "envtest: cannot read the k8s.io/kubernetes version from $here/go.mod" >&2
  exit 1
fi
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}

# Stamp the version into the binaries as the release build does (link-time only, so it
# costs no recompilation): /version and `kubectl version` then report the real release.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done
# -mod=readonly: go.mod/go.sum are never rewritten; -trimpath: reproducible paths;
# CGO off as in upstream releases.
goflags=(-mod=readonly -trimpath "-ldflags=$ldflags")

cache_root=${TOKENSYNC_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/envtest}
out="$cache_root/$version"
mkdir -p "$out"

# One build at a time per cache (parallel test runs wait for each other); flock is
# util-linux, so elsewhere this is skipped.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "envtest: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

# A binary in $out is current when its stamp matches the sources and flags used.
want_stamp=$( { cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go"
                printf '%s\n' "${goflags[@]}"; } | sha)

assets=${KUBEBUILDER_ASSETS:-}
if [ -n "$assets" ]; then
  if [ ! -d "$assets" ]; then
    echo "envtest: KUBEBUILDER_ASSETS=$assets is not a directory" >&2
    exit 1
  fi
  assets=$(cd "$assets" && pwd)
fi
missing=()
for name in "${names[@]}"; do
  if [ -n "$assets" ] && [ -x "$assets/$name" ]; then
    echo "envtest: $name from KUBEBUILDER_ASSETS ($assets)" >&2
  elif [ -x "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$want_stamp" ]; then
    echo "envtest: $name ($version) cached in $out" >&2
  else
    missing+=("$name")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "envtest: need to build ${missing[*]} but 'go' is not installed;" \
      "install Go >= 1.24 or set KUBEBUILDER_ASSETS to a directory holding them" >&2
    exit 3
  fi
  pkgs=()
  for name in "${missing[@]}"; do pkgs+=("$(package_of "$name")"); done
  echo "envtest: building ${missing[*]} ($version) with $(go env GOVERSION) ..." >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # One `go build` for all of them: shared packages compile once and both cores stay busy.
  (cd "$here" && CGO_ENABLED=0 go build "${goflags[@]}" -o "$tmp/" "${pkgs[@]}")
  for name in "${missing[@]}"; do
    mv -f "$tmp/$name" "$out/$name"
    echo "$want_stamp" > "$out/$name.stamp"
  done
  echo "envtest: built ${missing[*]} in $(( $(date +%s) - start ))s" >&2
fi

if [ -z "$assets" ]; then
  echo "$out"
  exit 0
fi
# KUBEBUILDER_ASSETS in use: a directory of symlinks, keyed by that path, so the
# version directory only ever holds binaries built here.
mixed="$cache_root/$version+assets-$(printf '%s' "$assets" | sha)"
mkdir -p "$mixed"
for name in "${names[@]}"; do
  if [ -x "$assets/$name" ]; then src="$assets/$name"; else src="$out/$name"; fi
  ln -sfn "$src" "$mixed/$name"
done
echo "$mixed"
