#!/usr/bin/env bash
# Installs tests/web/node_modules (the gRPC-Web client) from the vendored tarballs in
# tests/web/vendor, offline: see tests/npm-offline.sh.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$here/../npm-offline.sh" "$here" 18.14.1 @connectrpc/connect-node
