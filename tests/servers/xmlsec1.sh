#!/usr/bin/env bash
# xmlsec1, the independent XML-signature verifier of the SuccessFactors-like endpoint
# (tests/servers/successfactors.py), from Debian when missing (needs root, as the node does).
set -euo pipefail
command -v xmlsec1 >/dev/null 2>&1 && { xmlsec1 --version; exit 0; }
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "xmlsec1 is missing; install the Debian package xmlsec1 as root" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
# One apt-get at a time on this machine: .ci/run builds the node and the image side by side.
flock /tmp/tokensync-apt.lock sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends xmlsec1' >&2
xmlsec1 --version
