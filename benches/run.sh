#!/usr/bin/env bash
# Unary gRPC throughput and latency: direct to the backend, through Strait, through nginx
# (grpc_pass, one worker), all in the same run. Each proxy is pinned to the same single core
# (PROXY_CORE); the backend and the load generator share the other core (CLIENT_CORE).
#
#   make bench                      # or: bash benches/run.sh
#   DURATION=10 RATE=2000 CONCURRENCY=64 bash benches/run.sh
#
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RATE=${RATE:-2000}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
PAYLOAD=${PAYLOAD:-64}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
REPEATS=${REPEATS:-3}
BIN=target/release
WORK=$(mktemp -d)
BACKEND=127.0.0.1:50061
STRAIT=127.0.0.1:50071
STRAIT_OFF=127.0.0.1:50072
STRAIT_ADMIN=127.0.0.1:50079
NGINX=127.0.0.1:50081

command -v nginx >/dev/null || { echo "nginx is needed: bash .ci/install-deps bench" >&2; exit 1; }
[ -x $BIN/strait ] && [ -x $BIN/strait-echo ] && [ -x $BIN/strait-loadgen ] || cargo build --release --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ECHO_THREADS=1 taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen $BACKEND --name bench >"$WORK/echo.log" 2>&1 &
pids+=($!)

cat >"$WORK/strait.toml" <<TOML
[gateway]
threads = 1
shutdown_grace = "1s"

[[listener]]
name = "bench"
listen = "$STRAIT"

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "$BACKEND" }]
TOML
# "strait" runs as shipped, with the admin listener and metrics; "strait-nometrics" is the same
# without [admin], so no metric is recorded: the pair measures the cost of metrics.
sed "s/$STRAIT/$STRAIT_OFF/" "$WORK/strait.toml" >"$WORK/strait-nometrics.toml"
printf '\n[admin]\nlisten = "%s"\n' "$STRAIT_ADMIN" >>"$WORK/strait.toml"
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
pids+=($!)
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait-nometrics.toml" >"$WORK/strait-nometrics.log" 2>&1 &
pids+=($!)

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  upstream echo { server $BACKEND; keepalive 64; }
  server {
    listen $NGINX http2;
    http2_max_concurrent_streams 1024;
    keepalive_requests 100000000;
    location / { grpc_pass grpc://echo; }
  }
}
NGINX
taskset -c "$PROXY_CORE" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
pids+=($!)

for addr in $BACKEND $STRAIT $STRAIT_OFF $NGINX; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done

load() { # label target extra-args...
  local label=$1 target=$2; shift 2
  taskset -c "$CLIENT_CORE" $BIN/strait-loadgen --target "$target" --connections "$CONNECTIONS" \
    --payload "$PAYLOAD" --label "$label" "$@"
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }

declare -A RPS P50 P99 LAT50 LAT99
TARGETS="direct:$BACKEND strait:$STRAIT strait-nometrics:$STRAIT_OFF nginx:$NGINX"
for target in $TARGETS; do
  name=${target%%:*}; addr=${target#*:}
  load "$name-warmup" "$addr" --concurrency "$CONCURRENCY" --duration "$WARMUP" >/dev/null
done
# Interleave repeats so drift on the machine affects every target alike; keep the median.
for r in $(seq "$REPEATS"); do
  for target in $TARGETS; do
    name=${target%%:*}; addr=${target#*:}
    out=$(load "$name" "$addr" --concurrency "$CONCURRENCY" --duration "$DURATION")
    echo "throughput #$r $out" >&2
    RPS[$name]+="$(echo "$out" | field rps) "; P50[$name]+="$(echo "$out" | field p50_us) "; P99[$name]+="$(echo "$out" | field p99_us) "
    out=$(load "$name" "$addr" --rate "$RATE" --duration "$DURATION")
    echo "fixed-rate #$r $out" >&2
    LAT50[$name]+="$(echo "$out" | field p50_us) "; LAT99[$name]+="$(echo "$out" | field p99_us) "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "| target | calls/s (c=$CONCURRENCY) | p50 µs | p99 µs | p50 µs @ $RATE/s | p99 µs @ $RATE/s | added p99 µs @ $RATE/s |"
echo "|---|---|---|---|---|---|---|"
base99=$(echo "${LAT99[direct]}" | median)
for name in direct strait strait-nometrics nginx; do
  rps=$(echo "${RPS[$name]}" | median); p50=$(echo "${P50[$name]}" | median); p99=$(echo "${P99[$name]}" | median)
  l50=$(echo "${LAT50[$name]}" | median); l99=$(echo "${LAT99[$name]}" | median)
  added=$([ "$name" = direct ] && echo "-" || echo $((l99 - base99)))
  echo "| $name | $rps | $p50 | $p99 | $l50 | $l99 | $added |"
done
s=$(echo "${RPS[strait]}" | median); n=$(echo "${RPS[nginx]}" | median)
sa=$(( $(echo "${LAT99[strait]}" | median) - base99 )); na=$(( $(echo "${LAT99[nginx]}" | median) - base99 ))
echo
echo "strait/nginx throughput ratio: $(awk "BEGIN {printf \"%.2f\", $s/$n}")"
echo "strait/nginx added-p99 ratio at $RATE/s: $(awk "BEGIN {printf \"%.2f\", ($sa<1?1:$sa)/($na<1?1:$na)}")"
off=$(echo "${RPS[strait-nometrics]}" | median)
echo "metrics overhead (throughput, strait vs strait-nometrics): $(awk "BEGIN {printf \"%.1f%%\", 100*($off-$s)/$off}")"
