#!/usr/bin/env bash
# L4 (tcp listener) benchmark: direct to an echo backend, through Strait, through nginx's
# stream module (one worker), all in the same run. Each proxy is pinned to the same single core
# (PROXY_CORE); the echo backend and the clients share the other core (CLIENT_CORE).
#
#   bash benches/tcp.sh
#   DURATION=5 HOLD=2000 bash benches/tcp.sh
#
# Measures: bulk echo throughput (MiB/s over BULK_CONNECTIONS streams), new-connection rate
# (connect + 64 B round trip + close, RATE_CONCURRENCY loops), and memory per held connection
# (RSS growth with HOLD idle relayed connections open). Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
HOLD=${HOLD:-2000}
BULK_CONNECTIONS=${BULK_CONNECTIONS:-8}
RATE_CONCURRENCY=${RATE_CONCURRENCY:-16}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
REPEATS=${REPEATS:-3}
BIN=target/release
WORK=$(mktemp -d)
BACKEND=127.0.0.1:50161
STRAIT=127.0.0.1:50171
NGINX=127.0.0.1:50181

command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
  || { echo "nginx with the stream module is needed: bash .ci/install-deps bench" >&2; exit 1; }
[ -x $BIN/strait ] && [ -x $BIN/strait-tcpbench ] || cargo build --release -p strait -p strait-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # HOLD connections need ~2 fds each in every process

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench echo --listen $BACKEND &
pids+=($!)

cat >"$WORK/strait.toml" <<TOML
[gateway]
threads = 1
shutdown_grace = "1s"

[[listener]]
name = "raw"
listen = "$STRAIT"
protocol = "tcp"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "$BACKEND" }]
TOML
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
STRAIT_PID=$!
pids+=($STRAIT_PID)

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; }
stream {
  upstream echo { server $BACKEND; }
  server { listen $NGINX; proxy_pass echo; tcp_nodelay on; }
}
NGINX
taskset -c "$PROXY_CORE" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
pids+=($NGINX_PID)

for addr in $BACKEND $STRAIT $NGINX; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done
sleep 0.5

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Memory per held connection: RSS growth while HOLD relayed connections stay open.
declare -A PER_CONN
for target in strait:$STRAIT:$STRAIT_PID nginx:$NGINX:$NGINX_PID; do
  IFS=: read -r name host port pid <<<"$target"
  before=$(rss_kib "$pid")
  taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench hold --target "$host:$port" --connections "$HOLD" >"$WORK/hold.out" &
  hold_pid=$!
  for _ in $(seq 600); do grep -q open= "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  after=$(rss_kib "$pid")
  kill "$hold_pid"; wait "$hold_pid" 2>/dev/null || true
  PER_CONN[$name]=$(awk "BEGIN {printf \"%.1f\", ($after-$before)/$HOLD}")
  echo "memory $name: $before KiB idle, $after KiB with $HOLD connections" >&2
  sleep 1
done

field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
# CPU time (clock ticks, utime + stime) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A PID=([strait]=$STRAIT_PID [nginx]=$NGINX_PID)
declare -A BULK RATE P99 CPU_PER_GIB
TARGETS="direct:$BACKEND strait:$STRAIT nginx:$NGINX"
for r in $(seq "$REPEATS"); do
  for target in $TARGETS; do
    name=${target%%:*}; addr=${target#*:}
    before=$([ -n "${PID[$name]:-}" ] && cpu_ticks "${PID[$name]}" || echo 0)
    out=$(taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench bulk --target "$addr" --connections "$BULK_CONNECTIONS" --duration "$DURATION" --label "$name")
    after=$([ -n "${PID[$name]:-}" ] && cpu_ticks "${PID[$name]}" || echo 0)
    echo "bulk #$r $out proxy_cpu_ticks=$((after - before))" >&2
    mib=$(echo "$out" | field mib_per_s)
    BULK[$name]+="$mib "
    # Proxy CPU milliseconds per GiB echoed: the proxy's efficiency even when the client core,
    # not the proxy, limits throughput. The bulk run lasts DURATION + 0.3 s of ramp-up.
    if [ -n "${PID[$name]:-}" ]; then
      CPU_PER_GIB[$name]+="$(awk "BEGIN {printf \"%.0f\", ($after-$before)*1000/$(getconf CLK_TCK) / ($mib*($DURATION+0.3)/1024)}") "
    fi
    out=$(taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench rate --target "$addr" --concurrency "$RATE_CONCURRENCY" --duration "$DURATION" --label "$name")
    echo "rate #$r $out" >&2
    RATE[$name]+="$(echo "$out" | field conns_per_s) "; P99[$name]+="$(echo "$out" | field p99_us) "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "| target | echo MiB/s ($BULK_CONNECTIONS streams) | proxy CPU ms per GiB | new connections/s (c=$RATE_CONCURRENCY) | p99 µs per connection | KiB per held connection |"
echo "|---|---|---|---|---|---|"
for name in direct strait nginx; do
  cpu=$([ -n "${CPU_PER_GIB[$name]:-}" ] && echo "${CPU_PER_GIB[$name]}" | median || echo -)
  echo "| $name | $(echo "${BULK[$name]}" | median) | $cpu | $(echo "${RATE[$name]}" | median) | $(echo "${P99[$name]}" | median) | ${PER_CONN[$name]:--} |"
done
sb=$(echo "${BULK[strait]}" | median); nb=$(echo "${BULK[nginx]}" | median)
sr=$(echo "${RATE[strait]}" | median); nr=$(echo "${RATE[nginx]}" | median)
echo
echo "strait/nginx bulk throughput ratio: $(awk "BEGIN {printf \"%.2f\", $sb/$nb}")"
echo "strait/nginx proxy CPU per GiB ratio: $(awk "BEGIN {printf \"%.2f\", $(echo "${CPU_PER_GIB[strait]}" | median)/$(echo "${CPU_PER_GIB[nginx]}" | median)}")"
echo "strait/nginx connection rate ratio: $(awk "BEGIN {printf \"%.2f\", $sr/$nr}")"
echo "strait/nginx memory per connection ratio: $(awk "BEGIN {printf \"%.2f\", ${PER_CONN[strait]}/${PER_CONN[nginx]}}")"
