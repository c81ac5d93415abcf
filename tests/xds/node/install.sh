#!/usr/bin/env bash
# Installs tests/xds/node/node_modules from the vendored tarballs in tests/xds/node/vendor,
# with no network and no npm cache: `npm ci --offline`.
# Does nothing when node_modules is already newer than package-lock.json.
# Safe to call from tests running in parallel (serialised with flock).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v node >/dev/null 2>&1; then
  echo "tests/xds/node/install.sh: 'node' not found. Install Node.js >= 18, e.g. on Debian: apt-get install -y nodejs npm" >&2
  exit 1
fi
if ! node -e '
  const [a] = process.versions.node.split(".").map(Number);
  process.exit(a >= 18 ? 0 : 1);'; then
  echo "tests/xds/node/install.sh: Node.js $(node --version) is too old; the vendored @grpc/grpc-js-xds client needs >= 18" >&2
  exit 1
fi

up_to_date() {
  # npm ci writes node_modules/.package-lock.json last; it must be newer than the lockfile.
  [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]
}

install() {
  if up_to_date; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "tests/xds/node/install.sh: 'npm' not found and tests/xds/node/node_modules must be installed. On Debian: apt-get install -y npm" >&2
    exit 1
  fi
  echo "tests/xds/node/install.sh: npm ci --offline in $here" >&2
  if ! npm ci --offline --no-audit --no-fund --update-notifier=false >&2; then
    echo "tests/xds/node/install.sh: npm ci failed (see above); the packages come from tests/xds/node/vendor/*.tgz, no network is needed" >&2
    exit 1
  fi
  touch node_modules/.package-lock.json
}

if command -v flock >/dev/null 2>&1; then
  # Lock the folder itself so concurrent callers install once.
  exec 9<"$here"
  flock 9
  install
  flock -u 9
else
  install
fi
