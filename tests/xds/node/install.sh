#!/usr/bin/env bash
# Installs tests/xds/node/node_modules (grpc-js with grpc-js-xds, the second xDS client) from the
# vendored tarballs in tests/xds/node/vendor, offline: see tests/npm-offline.sh.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$here/../../npm-offline.sh" "$here" 18.0.0 @grpc/grpc-js-xds
