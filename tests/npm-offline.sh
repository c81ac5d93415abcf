#!/usr/bin/env bash
# Installs DIR/node_modules from the npm tarballs vendored in DIR/vendor, with no network and no
# npm cache: `npm ci --offline` on DIR's package-lock.json, whose every entry resolves to
# file:vendor/*.tgz. Used by tests/web/install.sh and tests/xds/node/install.sh.
# Does nothing when node_modules is already newer than package-lock.json.
# Safe to call from tests running in parallel (serialised with flock on DIR).
#
#   bash tests/npm-offline.sh DIR MIN_NODE_VERSION WHAT   # e.g. tests/web 18.14.1 @connectrpc/connect-node
set -euo pipefail

: "${3:?usage: npm-offline.sh DIR MIN_NODE_VERSION WHAT}"
dir="$(CDPATH='' cd -- "$1" >/dev/null && pwd)"
min="$2"
what="$3"
root="$(CDPATH='' cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
name="${dir#"$root/"}/install.sh"
cd "$dir"

if ! command -v node >/dev/null 2>&1; then
  echo "$name: 'node' not found. Install Node.js >= $min, e.g. on Debian: apt-get install -y nodejs npm" >&2
  exit 1
fi
if ! node -e '
  const want = process.argv[1].split(".").map(Number);
  const have = process.versions.node.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    if ((have[i] || 0) !== (want[i] || 0)) process.exit((have[i] || 0) > (want[i] || 0) ? 0 : 1);
  }' "$min"; then
  echo "$name: Node.js $(node --version) is too old; the vendored $what needs >= $min" >&2
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
    echo "$name: 'npm' not found and $dir/node_modules must be installed. On Debian: apt-get install -y npm" >&2
    exit 1
  fi
  echo "$name: npm ci --offline in $dir" >&2
  if ! npm ci --offline --no-audit --no-fund --update-notifier=false >&2; then
    echo "$name: npm ci failed (see above); the packages come from $dir/vendor/*.tgz, no network is needed" >&2
    exit 1
  fi
  touch node_modules/.package-lock.json
}

if command -v flock >/dev/null 2>&1; then
  # Lock the folder itself so concurrent callers install once.
  exec 9<"$dir"
  flock 9
  install
  flock -u 9
else
  install
fi
