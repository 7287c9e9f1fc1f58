#!/usr/bin/env bash
# Build everything the test node (tests/node) needs, into a cache keyed by the pinned
# Kubernetes release: ${TOKENSYNC_NODE_CACHE:-~/.cache/tokensync/node}/<version>/.
#
#   - Debian packages containerd, runc, containernetworking-plugins, busybox-static
#     (installed with apt-get when missing; needs root, as running a node does);
#   - kubelet and kube-scheduler from k8s.io/kubernetes at the version tests/envtest pins
#     (this module, tests/node/go.mod, must name the same version; checked below);
#   - a static pause binary from that release's build/pause/linux/pause.c.
#
# Prints the cache directory on the last line of stdout; progress goes to stderr.
# Exits 3 when the node cannot be built here (not root and packages missing, no go/cc).
# Measured on 2 shared cores: packages ~18 s; kubelet, kube-scheduler and pause 62 s when
# tests/envtest/build.sh has filled the Go build cache, up to ~9 min with an empty one;
# cached: well under a second.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() { sha256sum | cut -c1-16; }
modversion() {
  awk '($1 == "require" && $2 == "k8s.io/kubernetes") { print $3; exit }
       ($1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/) { print $2; exit }' "$1"
}
version=$(modversion "$here/go.mod")
envtest_version=$(modversion "$here/../envtest/go.mod")
if [ "$version" != "$envtest_version" ]; then
  echo "node: tests/node/go.mod pins k8s.io/kubernetes $version but tests/envtest" \
    "pins $envtest_version; make them equal (then go mod tidy here)" >&2
  exit 1
fi
[[ $version =~ ^v([0-9]+)\.([0-9]+)\. ]]
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}

packages=(containerd runc containernetworking-plugins busybox-static)
missing_packages=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing_packages+=("$p")
done
if [ ${#missing_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "node: missing Debian packages ${missing_packages[*]}; install them as root" >&2
    exit 3
  fi
  echo "node: apt-get install ${missing_packages[*]} ..." >&2
  start=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  # One apt-get at a time on this machine: .ci/run builds the node and the image side by side.
  flock /tmp/tokensync-apt.lock sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' apt \
    "${missing_packages[@]}" >&2
  echo "node: packages installed in $(( $(date +%s) - start ))s" >&2
fi

cache_root=${TOKENSYNC_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/node}
out="$cache_root/$version"
mkdir -p "$out"
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
  echo "node: waiting for another build in $cache_root ..." >&2
  flock 9
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done
goflags=(-mod=readonly -trimpath "-ldflags=$ldflags")
want_stamp=$( { cat "$here/go.mod" "$here/go.sum"; printf '%s\n' "${goflags[@]}"; } | sha)

missing=()
for name in kubelet kube-scheduler pause; do
  if ! [ -x "$out/$name" ] || [ "$(cat "$out/$name.stamp" 2>/dev/null)" != "$want_stamp" ]; then
    missing+=("$name")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  for tool in go cc; do
    if ! command -v $tool >/dev/null 2>&1; then
      echo "node: need $tool to build ${missing[*]}" >&2
      exit 3
    fi
  done
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "node: building kubelet, kube-scheduler ($version) with $(go env GOVERSION) ..." >&2
  # CGO off as in upstream releases of both.
  (cd "$here" && CGO_ENABLED=0 go build "${goflags[@]}" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler)
  # The pause container's only process, from the same release (as its Makefile does).
  src=$(cd "$here" && go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)
  cc -Os -Wall -Werror -static -DVERSION="$version-tokensync" \
    -o "$tmp/pause" "$src/build/pause/linux/pause.c"
  for name in kubelet kube-scheduler pause; do
    mv -f "$tmp/$name" "$out/$name"
    echo "$want_stamp" > "$out/$name.stamp"
  done
  echo "node: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
