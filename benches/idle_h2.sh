#!/usr/bin/env bash
# Memory per idle HTTP/2 connection: Strait and nginx (grpc_pass, one worker), same run, each
# pinned to PROXY_CORE, over h2c and over TLS (ALPN h2, a test CA from `strait-tcpbench pki`).
# N clients connect, exchange SETTINGS and stay idle; the script reads each proxy's RSS before
# and with them open.
#
#   bash benches/idle_h2.sh            # N=10000
#   N=2000 bash benches/idle_h2.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BIN=target/release
WORK=$(mktemp -d)
STRAIT=127.0.0.1:50271
NGINX=127.0.0.1:50281
STRAIT_TLS=127.0.0.1:50272
NGINX_TLS=127.0.0.1:50282

command -v nginx >/dev/null || { echo "nginx is needed: bash .ci/install-deps bench" >&2; exit 1; }
[ -x $BIN/strait ] && [ -x $BIN/strait-tcpbench ] || cargo build --release -p strait -p strait-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
$BIN/strait-tcpbench pki --dir "$WORK" >/dev/null

cat >"$WORK/strait.toml" <<TOML
[gateway]
threads = 1

[[listener]]
name = "public"
listen = "$STRAIT"

[listener.limits]
max_connections = $((N + 100))

[[listener]]
name = "public-tls"
listen = "$STRAIT_TLS"
tls = { cert = "$WORK/server.crt", key = "$WORK/server.key" }

[listener.limits]
max_connections = $((N + 100))

[[route]]
listener = "public"
service = "*"
upstream = "none"

[[route]]
listener = "public-tls"
service = "*"
upstream = "none"

[[upstream]]
name = "none"
endpoints = [{ addr = "127.0.0.1:9" }]
TOML
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
STRAIT_PID=$!
pids+=($STRAIT_PID)

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile $((N * 2 + 100));
events { worker_connections $((N * 2 + 100)); }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  server {
    listen $NGINX http2;
    location / { grpc_pass grpc://127.0.0.1:9; }
  }
  server {
    listen $NGINX_TLS ssl http2;
    ssl_certificate $WORK/server.crt;
    ssl_certificate_key $WORK/server.key;
    location / { grpc_pass grpc://127.0.0.1:9; }
  }
}
NGINX
taskset -c "$PROXY_CORE" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
pids+=($NGINX_PID)
for addr in $STRAIT $NGINX $STRAIT_TLS $NGINX_TLS; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done
sleep 6

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| proxy | RSS idle | RSS with $N idle HTTP/2 connections | KiB per connection |"
echo "|---|---|---|---|"
for target in strait:$STRAIT:$STRAIT_PID nginx:$NGINX:$NGINX_PID \
  "strait (TLS)":$STRAIT_TLS:$STRAIT_PID "nginx (TLS)":$NGINX_TLS:$NGINX_PID; do
  IFS=: read -r name host port pid <<<"$target"
  tls=()
  case $name in *TLS*) tls=(--tls-ca "$WORK/ca.crt") ;; esac
  before=$(rss_kib "$pid")
  taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench h2idle --target "$host:$port" --connections "$N" "${tls[@]}" >"$WORK/idle.out" &
  idle_pid=$!
  for _ in $(seq 1200); do grep -q open= "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
  grep -q open= "$WORK/idle.out" || { echo "$name: the connections did not all open" >&2; exit 1; }
  sleep 1
  after=$(rss_kib "$pid")
  kill "$idle_pid"; wait "$idle_pid" 2>/dev/null || true
  echo "| $name | $((before / 1024)) MiB | $((after / 1024)) MiB | $(awk "BEGIN {printf \"%.1f\", ($after-$before)/$N}") |"
  # Strait hands freed memory back every 5 s (gateway/src/memory.rs): wait for it, so the next
  # row starts from a settled RSS instead of one that still holds these connections' pages.
  sleep 6
done
