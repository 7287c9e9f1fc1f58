#!/usr/bin/env bash
# Generate the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs from its API
# types (github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring, pinned
# in go.mod here) with controller-gen (sigs.k8s.io/controller-tools, pinned too), into
# ${TOKENSYNC_MONITORING_CRDS_CACHE:-~/.cache/tokensync/monitoring-crds}/<version>/,
# so the tests can install them on the test control plane and dry-run deploy/monitoring/
# and the chart's ServiceMonitor against the real schema.
#
# Same contract as tests/envtest/build.sh: a no-op when the stamp (go.mod, go.sum, flags)
# is current; prints the directory on the last line of stdout; progress goes to stderr;
# exits 3 when something must be built and `go` is not installed. Cold: about a minute.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
api=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}

version=$(awk -v m="$api" '($1 == "require" && $2 == m) { print $3; exit }
                           ($1 == m && $2 ~ /^v[0-9]/) { print $2; exit }' "$here/go.mod")
if [[ ! $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
  echo "monitoring-crds: cannot read the $api version from $here/go.mod" >&2
  exit 1
fi

cache_root=${TOKENSYNC_MONITORING_CRDS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/monitoring-crds}
out="$cache_root/$version"
mkdir -p "$out"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "monitoring-crds: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

# maxDescLen=0: descriptions dropped, as they are not needed to validate.
generate=(crd:crdVersions=v1,maxDescLen=0 "paths=$api/v1")
want_stamp=$( { cat "$here/go.mod" "$here/go.sum"; printf '%s\n' "${generate[@]}"; } | sha)
crds=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
current=yes
for crd in "${crds[@]}"; do [ -s "$out/$crd" ] || current=no; done
if [ $current = yes ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$want_stamp" ]; then
  echo "monitoring-crds: $version cached in $out" >&2
else
  if ! command -v go >/dev/null 2>&1; then
    echo "monitoring-crds: need to generate the CRDs ($version) but 'go' is not installed" >&2
    exit 3
  fi
  echo "monitoring-crds: generating the CRDs of $api $version ..." >&2
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$tmp/" \
    sigs.k8s.io/controller-tools/cmd/controller-gen)
  (cd "$here" && GOFLAGS=-mod=readonly "$tmp/controller-gen" "${generate[@]}" "output:crd:dir=$tmp/crds")
  for crd in "${crds[@]}"; do mv -f "$tmp/crds/$crd" "$out/$crd"; done
  echo "$want_stamp" > "$out/stamp"
  echo "monitoring-crds: generated in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
