#!/usr/bin/env bash
# The `make run` demo: etcd, two demo backends registered through `strait register` in two
# regions, and the gateway with an etcd upstream. Ctrl-C or SIGTERM stops every process it
# started (each is asked with SIGTERM, then killed if it is still there 5 s later), so nothing
# is left behind holding a port.
#
#   bash scripts/demo.sh                  # binaries from target/release
#   STRAIT_BIN_DIR=target/debug bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${STRAIT_BIN_DIR:-target/release}
DEMO_DIR=${STRAIT_DEMO_DIR:-build/demo}
rm -rf "$DEMO_DIR/etcd" && mkdir -p "$DEMO_DIR"

pids=()
stop() {
  trap - EXIT INT TERM
  echo
  echo "stopping demo"
  # Registrars first, so they deregister while etcd is still up; then the rest.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
}
trap stop EXIT INT TERM

start() { # start LOG COMMAND...: runs COMMAND in the background, remembers its PID
  local log=$1; shift
  "$@" > "$DEMO_DIR/$log" 2>&1 &
  pids+=($!)
}

ETCD=$(command -v etcd || echo /usr/bin/etcd)
start etcd.log "$ETCD" --name demo --data-dir "$DEMO_DIR/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster demo=http://127.0.0.1:2380 \
  --logger zap --log-level error
ETCD_PID=${pids[-1]}
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/2379) 2>/dev/null && break; sleep 0.1; done
start echo-eu-west.log "$BIN/strait-echo" --listen 127.0.0.1:50051 --name echo-eu-west
ECHO_EU=${pids[-1]}
start echo-us-east.log "$BIN/strait-echo" --listen 127.0.0.1:50052 --name echo-us-east
start register-eu-west.log "$BIN/strait" register --etcd http://127.0.0.1:2379 --service echo \
  --addr 127.0.0.1:50051 --id echo-eu-west --version v1.0.0 --weight 100 --label region=eu-west \
  --label env=demo --ttl 5s --health-check --drain 3s
REG_EU=${pids[-1]}
start register-us-east.log "$BIN/strait" register --etcd http://127.0.0.1:2379 --service echo \
  --addr 127.0.0.1:50052 --id echo-us-east --version v1.0.0 --weight 50 --label region=us-east \
  --label env=demo --ttl 5s --health-check --drain 3s
# The gateway logs to the terminal.
"$BIN/strait" run --config config/strait.toml &
pids+=($!)
# Registrars first on the way down (see stop), etcd last.
pids=("${pids[@]:1}" "$ETCD_PID")
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done

# A bootstrap for a proxyless client in us-east (docs/xds.md).
"$BIN/strait" xds-bootstrap --server 127.0.0.1:18000 --region us-east --node-id demo-us-east \
  > "$DEMO_DIR/xds-us-east.json"

cat <<TEXT

Strait is listening on 127.0.0.1:8080 (h2c), routing bench.Echo to the instances registered in etcd:
  echo-eu-west 127.0.0.1:50051 (weight 100, the gateway's own region)
  echo-us-east 127.0.0.1:50052 (weight 50)
Status page: http://127.0.0.1:9901/   metrics: curl 127.0.0.1:9901/metrics

Call it from another terminal:
  $BIN/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show
  $BIN/strait-loadgen --target 127.0.0.1:8080 --calls 10 --show --region us-east

REST/JSON on the same port (bench.Echo's google.api.http routes, docs/web.md):
  curl -s --json '{"payload":"aGVsbG8="}' 127.0.0.1:8080/v1/echo
  curl -s 127.0.0.1:8080/v1/stream/3
  curl -s -i '127.0.0.1:8080/v1/echo/gone?failCode=5'     # NOT_FOUND as HTTP 404 with a JSON error
Browsers: gRPC-Web (application/grpc-web+proto) over HTTP/1.1 or HTTP/2, CORS for any origin.

Proxyless gRPC: clients that call the backends directly, xds:///echo through the xDS server on
127.0.0.1:18000 (grpcio here; any gRPC library with xDS reads the same bootstrap, docs/xds.md):
  echo 'call 10' | GRPC_XDS_BOOTSTRAP=$DEMO_DIR/xds-us-east.json /usr/bin/python3 tests/xds/client.py
  (the 10 calls go straight to echo-us-east, the client's own region)

Drain and kill a backend under load without a failed call:
  $BIN/strait-loadgen --target 127.0.0.1:8080 --rate 200 --duration 15 &
  kill -TERM $REG_EU; sleep 4; kill $ECHO_EU    # the eu-west registrar drains (weight 0, 3 s), then its backend dies
  (the load generator prints errors=0; calls move to us-east)

Press Ctrl-C to stop.
TEXT
# `wait` returns when a signal arrives, so the trap runs at once.
while true; do wait || true; sleep 1; done
