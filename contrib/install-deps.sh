#!/usr/bin/env bash
# Install what Stoa needs on Debian 12, only what is missing.
#   contrib/install-deps.sh          build and run
#   contrib/install-deps.sh --test   also what the test suite needs
set -euo pipefail

want=(gcc make cmake pkg-config ca-certificates
      libmicrohttpd-dev libwebsockets-dev libwebsockets-evlib-ev libev-dev libjson-c-dev libjwt-dev libinih-dev uthash-dev zlib1g-dev libssl-dev
      libpq-dev)
if [ "${1:-}" = "--test" ]; then
  want+=(clang check openssl procps curl)
  # tests/integration/lib/pg.mjs starts a throw-away PostgreSQL server.
  want+=(postgresql)
  # tests/integration/lib/nginx.mjs puts a strict proxy in front of Stoa.
  want+=(nginx)
  # tests/browser/ drive the demo page in headless Chromium (playwright-core).
  want+=(chromium)
  # Node.js runs the black-box tests; keep one that is already installed.
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The tests start their own PostgreSQL and nginx: keep the packages from
# starting system services (policy-rc.d answering 101 = "not allowed").
added_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
status=0
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null || status=$?
[ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
exit $status
