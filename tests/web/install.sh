#!/usr/bin/env bash
# Installs tests/web/node_modules from the vendored tarballs in tests/web/vendor,
# with no network and no npm cache: `npm ci --offline`.
# Does nothing when node_modules is already newer than package-lock.json.
# Safe to call from tests running in parallel (serialised with flock).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v node >/dev/null 2>&1; then
  echo "tests/web/install.sh: 'node' not found. Install Node.js >= 18.14.1, e.g. on Debian: apt-get install -y nodejs npm" >&2
  exit 1
fi
if ! node -e '
  const [a, b, c] = process.versions.node.split(".").map(Number);
  process.exit(a > 18 || (a === 18 && (b > 14 || (b === 14 && c >= 1))) ? 0 : 1);'; then
  echo "tests/web/install.sh: Node.js $(node --version) is too old; the vendored @connectrpc/connect-node needs >= 18.14.1" >&2
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
    echo "tests/web/install.sh: 'npm' not found and tests/web/node_modules must be installed. On Debian: apt-get install -y npm" >&2
    exit 1
  fi
  echo "tests/web/install.sh: npm ci --offline in $here" >&2
  if ! npm ci --offline --no-audit --no-fund --update-notifier=false >&2; then
    echo "tests/web/install.sh: npm ci failed (see above); the packages come from tests/web/vendor/*.tgz, no network is needed" >&2
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
