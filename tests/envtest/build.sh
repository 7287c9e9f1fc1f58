#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kubectl, etcd)
# from the Kubernetes release pinned in go.mod, into a cache directory keyed by that
# version. Binaries already present in KUBEBUILDER_ASSETS are used instead of building.
# Prints the directory holding all four binaries on its last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")
cache_root=${TOKENSYNC_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/envtest}
out="$cache_root/$version"
mkdir -p "$out"

declare -A packages=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [etcd]=./cmd/etcd
)

stamp() { sha256sum "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go" | sha256sum | cut -c1-16; }
want_stamp=$(stamp)

for name in kube-apiserver kube-controller-manager kubectl etcd; do
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then
    ln -sf "$KUBEBUILDER_ASSETS/$name" "$out/$name"
    echo "envtest: $name from KUBEBUILDER_ASSETS" >&2
    continue
  fi
  if [ -x "$out/$name" ] && [ ! -L "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$want_stamp" ]; then
    echo "envtest: $name cached in $out" >&2
    continue
  fi
  rm -f "$out/$name"
  echo "envtest: building $name ($version) ..." >&2
  start=$(date +%s)
  # -trimpath and no debug info keep the binaries small; CGO off as upstream releases.
  (cd "$here" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags='-s -w' \
      -o "$out/$name.tmp" "${packages[$name]}")
  mv "$out/$name.tmp" "$out/$name"
  echo "$want_stamp" > "$out/$name.stamp"
  echo "envtest: built $name in $(( $(date +%s) - start ))s" >&2
done
echo "$out"
