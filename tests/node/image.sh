#!/usr/bin/env bash
# Build the operator image from the project's own Dockerfile on this machine, with no
# container registry, and write it as an OCI archive for `ctr images import`.
#
#   bash tests/node/image.sh [IMAGE_NAME]     (default tokensync.test/operator:local)
#
# No base image can be pulled here, so the Dockerfile's two bases (its BUILD_IMAGE and
# RUNTIME_IMAGE build arguments) are made locally and handed to BuildKit as named contexts:
#
#   - one `debootstrap --variant=minbase` Debian 12 root filesystem (plus python3 and
#     ca-certificates), from the Debian mirror this machine's apt sources name (read at run
#     time), with this machine's CA bundle and apt Acquire settings, so the build stage's
#     apt-get and pip fetch the way this machine does;
#   - the build base is that tree; the runtime base, a stand-in for distroless python3, is
#     the same tree with no shell, no apt/dpkg, no perl, and the distroless `nonroot` user
#     (65532). So the test image, like the distroless one, only works in exec form.
#
# BuildKit (buildkitd + buildctl from tests/node/buildkit/go.mod) runs the Dockerfile as
# users' `docker build` does: same stages, same steps; only the two bases come from local
# OCI layouts. Its built-in Dockerfile frontend is used (`cmdline`), since the `# syntax=`
# line would otherwise fetch the frontend image from a registry.
#
# Cached under ${TOKENSYNC_IMAGE_CACHE:-~/.cache/tokensync/image}: the BuildKit binaries
# (keyed by go.mod/go.sum), the base layouts (keyed by suite, mirror, CA bundle and this
# recipe), and BuildKit's own layer cache. The image itself is rebuilt from the current
# code on every run (BuildKit reuses the steps whose inputs did not change).
#
# Prints the archive's path on the last line of stdout; progress goes to stderr.
# Exits 3 when it cannot run here (not root, or tools missing and no root to install).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
name=${1:-tokensync.test/operator:local}
sha() { sha256sum | cut -c1-16; }
log() { echo "image: $*" >&2; }
total_start=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap, and BuildKit's runc worker)"
  exit 3
fi
missing_packages=()
for p in debootstrap runc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing_packages+=("$p")
done
if [ ${#missing_packages[@]} -gt 0 ]; then
  log "apt-get install ${missing_packages[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  # One apt-get at a time on this machine: .ci/run builds the node and the image side by side.
  flock /tmp/tokensync-apt.lock sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' apt \
    "${missing_packages[@]}" >&2
fi

cache=${TOKENSYNC_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensync/image}
mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "waiting for another build in $cache ..."
  flock 9
fi
work=$(mktemp -d "$cache/.work.XXXXXX")
buildkitd_pid=""
cleanup() {
  if [ -n "$buildkitd_pid" ]; then
    kill "$buildkitd_pid" 2>/dev/null || true
    wait "$buildkitd_pid" 2>/dev/null || true
  fi
  # BuildKit unmounts its snapshots itself; this catches a daemon that died mid-step.
  awk -v p="$cache/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# -- BuildKit ------------------------------------------------------------------------
goflags=(-mod=readonly -trimpath "-ldflags=-s -w")
bk_stamp=$( { cat "$here/buildkit/go.mod" "$here/buildkit/go.sum"; printf '%s\n' "${goflags[@]}"; } | sha)
bk="$cache/buildkit/$bk_stamp"
if ! [ -x "$bk/buildkitd" ] || ! [ -x "$bk/buildctl" ]; then
  command -v go >/dev/null 2>&1 || { log "need go to build BuildKit"; exit 3; }
  start=$(date +%s)
  log "building buildkitd and buildctl with $(go env GOVERSION) ..."
  mkdir -p "$work/bin"
  # CGO off: no seccomp/AppArmor helpers needed for a root runc worker.
  (cd "$here/buildkit" && CGO_ENABLED=0 go build "${goflags[@]}" -o "$work/bin/" \
    github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl)
  mkdir -p "$bk"
  mv -f "$work/bin/buildkitd" "$work/bin/buildctl" "$bk/"
  log "BuildKit built in $(( $(date +%s) - start ))s"
fi

# -- the two bases -------------------------------------------------------------------
suite=bookworm   # the Dockerfile's bases are Debian 12
mirror=$(flock /tmp/tokensync-apt.lock apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
  | awk -v s="$suite" '$2 == s && $3 == "main" { print $1; exit }')
if [ -z "$mirror" ]; then
  log "no apt source for Debian $suite main on this machine (see /etc/apt/sources.list*)"
  exit 3
fi
ca_bundle=/etc/ssl/certs/ca-certificates.crt
acquire=$(apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' || true)
packages=python3,ca-certificates
base_key=$( { echo "$suite $mirror $packages"; echo "$acquire"; cat "$ca_bundle" \
  "$here/baseimage.py"; sed -n '/^# -- the two bases/,/^# -- build/p' "$0"; } | sha)
base="$cache/base/$base_key"
if ! [ -f "$base/ready" ]; then
  start=$(date +%s)
  rootfs="$work/rootfs"
  log "debootstrap --variant=minbase $suite from $mirror ..."
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
  # Fetch as this machine does: its trust store, its apt Acquire settings.
  cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  if [ -n "$acquire" ]; then
    echo "$acquire" | sed 's/$/;/' > "$rootfs/etc/apt/apt.conf.d/99tokensync-host-acquire"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # The build stage's pip trusts the same bundle (the host's, copied in above).
  env_base=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  rm -rf "$base.tmp" && mkdir -p "$base.tmp"
  python3 "$here/baseimage.py" "$rootfs" "$base.tmp/build" "${env_base[@]}" \
    --env "PIP_CERT=$ca_bundle" > "$base.tmp/build.digest"
  # The runtime base: distroless-like. No shell, package manager or perl; user nonroot.
  rm -rf "$rootfs"/usr/bin/{sh,dash,bash,rbash,apt,apt-get,apt-cache,apt-config,apt-mark} \
    "$rootfs"/usr/bin/dpkg* "$rootfs"/usr/bin/perl* "$rootfs"/var/lib/dpkg \
    "$rootfs"/usr/share/{doc,man,info,locale} "$rootfs"/etc/apt
  echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >> "$rootfs/etc/passwd"
  echo "nonroot:x:65532:" >> "$rootfs/etc/group"
  install -d -o 65532 -g 65532 "$rootfs/home/nonroot"
  python3 "$here/baseimage.py" "$rootfs" "$base.tmp/runtime" "${env_base[@]}" \
    --user 65532 --workdir /home/nonroot \
    > "$base.tmp/runtime.digest"
  rm -rf "$rootfs" "$base"
  mkdir -p "$(dirname "$base")"
  touch "$base.tmp/ready"
  mv "$base.tmp" "$base"
  log "bases built in $(( $(date +%s) - start ))s"
fi

# -- build ---------------------------------------------------------------------------
start=$(date +%s)
state="$cache/buildkitd"   # BuildKit's layer cache, kept between runs
mkdir -p "$state"
echo "" > "$work/buildkitd.toml"   # not the machine's /etc/buildkit config, if any
sock="unix://$work/buildkitd.sock"
# Host networking: the build stage's apt-get and pip reach the network as this machine does.
"$bk/buildkitd" --config "$work/buildkitd.toml" --root "$state" --addr "$sock" \
  --oci-worker=true --containerd-worker=false --oci-worker-net=host \
  --otel-socket-path "$work/otel-grpc.sock" \
  > "$work/buildkitd.log" 2>&1 &
buildkitd_pid=$!
for _ in $(seq 100); do
  "$bk/buildctl" --addr "$sock" debug workers >/dev/null 2>&1 && break
  if ! kill -0 "$buildkitd_pid" 2>/dev/null; then
    tail -30 "$work/buildkitd.log" >&2
    exit 1
  fi
  sleep 0.2
done
build_ref=tokensync.test/base-build:$suite
runtime_ref=tokensync.test/base-runtime:$suite
out="$cache/out/$(echo "$name" | tr '/:' '__').tar"
mkdir -p "$cache/out"
if ! "$bk/buildctl" --addr "$sock" build --progress=plain \
    --frontend dockerfile.v0 --opt cmdline=dockerfile.v0 \
    --local context="$repo" --local dockerfile="$repo" \
    --opt build-arg:BUILD_IMAGE="$build_ref" --opt build-arg:RUNTIME_IMAGE="$runtime_ref" \
    --oci-layout "base-build=$base/build" --oci-layout "base-runtime=$base/runtime" \
    --opt "context:$build_ref=oci-layout://base-build@$(cat "$base/build.digest")" \
    --opt "context:$runtime_ref=oci-layout://base-runtime@$(cat "$base/runtime.digest")" \
    --output "type=oci,dest=$work/image.tar,name=$name" \
    > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  exit 1
fi
mv -f "$work/image.tar" "$out"
mv -f "$work/build.log" "${out%.tar}.log"   # what each Dockerfile step printed
log "image $name built from the Dockerfile in $(( $(date +%s) - start ))s" \
  "(total $(( $(date +%s) - total_start ))s)"
echo "$out"
