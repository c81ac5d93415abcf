#!/usr/bin/env bash
# CPU per call: Strait against nginx, haproxy and nghttpx, in the same run. Each proxy runs with
# one worker, pinned to PROXY_CORE, and is the only thing loaded while it is measured; two tonic
# echo backends and the load generator share CLIENT_CORE. A proxy's CPU is read from
# /proc/PID/stat (utime + stime of the process and its children) before and after each run, so
# the figure is the proxy's own, whatever the load generator manages.
#
#   bash benches/cpu.sh                          # every workload, 3 interleaved repeats
#   DURATION=5 REPEATS=1 bash benches/cpu.sh     # quicker
#   PROXIES="strait nghttpx" bash benches/cpu.sh
#   SYSCALLS=1 bash benches/cpu.sh               # also syscalls per call (perf stat), per proxy
#   PROFILE=1 bash benches/cpu.sh                # also a perf profile of each Strait (unary);
#                                                # PROFILE_OUT=DIR keeps the perf.data files
#   BEFORE_BIN=/tmp/strait-before bash benches/cpu.sh   # an older strait build beside the
#                                                # current one ("strait_before"), same run
#   PROXIES="strait strait_log" bash benches/cpu.sh     # the cost of the access log: the same
#                                                # build with [access_log] (JSON, to a file) on
#   PROXIES="strait strait_obs" bash benches/cpu.sh     # the access log and tracing (sample
#                                                # 0.01, to strait-otlp-sink on CLIENT_CORE)
#
# Workloads (the figures of issue #14):
#   unary      closed loop, 64 calls in flight over 4 connections, 256 B payload (strait-loadgen)
#   stream     server-streaming, 100 replies x 1 KiB per call, 16 calls in flight (strait-loadgen)
#   rate       unary at RATE calls/s (open loop): CPU per call at low load, and added p50
#   h2load     unary closed loop again, from h2load (-c 4 -m 16), the second load generator
# Prints markdown tables for docs/benchmarks.md: CPU seconds per 100k calls (median of repeats),
# and each proxy's figure as a ratio of nghttpx's.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
RATE=${RATE:-2000}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
PROXIES=${PROXIES:-"strait nginx haproxy nghttpx"}
WORKLOADS=${WORKLOADS:-"unary stream rate h2load"}
SYSCALLS=${SYSCALLS:-0}
PROFILE=${PROFILE:-0}
BEFORE_BIN=${BEFORE_BIN:-}
[ -n "$BEFORE_BIN" ] && PROXIES="strait_before $PROXIES"
BIN=target/release
WORK=$(mktemp -d)
B1=127.0.0.1:50361
B2=127.0.0.1:50362
declare -A ADDR=([strait]=127.0.0.1:50371 [strait_before]=127.0.0.1:50372 [strait_log]=127.0.0.1:50373 [strait_obs]=127.0.0.1:50374 [nginx]=127.0.0.1:50381 [haproxy]=127.0.0.1:50391
  [nghttpx]=127.0.0.1:50401 [direct]=$B1)
declare -A PID

for tool in nginx haproxy nghttpx h2load; do
  command -v $tool >/dev/null || { echo "$tool is needed: bash .ci/install-deps bench" >&2; exit 1; }
done
[ -x $BIN/strait ] && [ -x $BIN/strait-echo ] && [ -x $BIN/strait-loadgen ] && [ -x $BIN/strait-otlp-sink ] || cargo build --release --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

for b in $B1 $B2; do
  ECHO_THREADS=1 taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen "$b" --name "${b##*:}" >"$WORK/echo-${b##*:}.log" 2>&1 &
  pids+=($!)
done

# start_strait_as NAME BINARY ADMIN_PORT [EXTRA_TOML]
start_strait_as() {
  local name=$1 bin=$2 admin=$3 extra=${4:-}
  cat >"$WORK/$name.toml" <<TOML
[gateway]
threads = 1
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$admin"

[[listener]]
name = "bench"
listen = "${ADDR[$name]}"

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "$B1" }, { addr = "$B2" }]

$extra
TOML
  STRAIT_LOG=warn taskset -c "$PROXY_CORE" "$bin" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
}
start_strait() { start_strait_as strait $BIN/strait 50379; }
start_strait_before() { start_strait_as strait_before "$BEFORE_BIN" 50378; }
start_strait_log() {
  start_strait_as strait_log $BIN/strait 50377 "$(printf '[access_log]\npath = "%s"\nformat = "json"' "$WORK/access.log")"
}
OTLP_SINK=127.0.0.1:50375
start_strait_obs() {
  if [ -z "${PID[otlp_sink]:-}" ]; then
    taskset -c "$CLIENT_CORE" $BIN/strait-otlp-sink --listen $OTLP_SINK >"$WORK/otlp-sink.log" 2>&1 &
    PID[otlp_sink]=$!
    pids+=($!)
  fi
  start_strait_as strait_obs $BIN/strait 50376 "$(printf '[access_log]\npath = "%s"\nformat = "json"\n\n[tracing]\notlp_endpoint = "http://%s"\nsample = 0.01' "$WORK/access-obs.log" "$OTLP_SINK")"
}

start_nginx() {
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
  upstream echo { server $B1; server $B2; keepalive 64; }
  server {
    listen ${ADDR[nginx]} http2;
    http2_max_concurrent_streams 1024;
    keepalive_requests 100000000;
    location / { grpc_pass grpc://echo; }
  }
}
NGINX
  taskset -c "$PROXY_CORE" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
  PID[nginx]=$!
}

start_haproxy() {
  cat >"$WORK/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend grpc
  bind ${ADDR[haproxy]} proto h2
  default_backend echo
backend echo
  balance roundrobin
  http-reuse always
  server b1 $B1 proto h2
  server b2 $B2 proto h2
HAPROXY
  taskset -c "$PROXY_CORE" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  PID[haproxy]=$!
}

start_nghttpx() {
  taskset -c "$PROXY_CORE" nghttpx --single-process --workers=1 --log-level=WARN \
    --frontend="${ADDR[nghttpx]%:*},${ADDR[nghttpx]#*:};no-tls" \
    --backend="${B1%:*},${B1#*:};;proto=h2" --backend="${B2%:*},${B2#*:};;proto=h2" \
    --errorlog-file="$WORK/nghttpx.log" >"$WORK/nghttpx.out" 2>&1 &
  PID[nghttpx]=$!
}

for proxy in $PROXIES; do
  "start_$proxy"
  pids+=(${PID[$proxy]})
done
for addr in $B1 $B2 $(for p in $PROXIES; do echo "${ADDR[$p]}"; done); do
  for _ in $(seq 200); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done

# CPU ticks (utime + stime) of a process and its direct children (nginx's worker).
ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $total
}
HZ=$(getconf CLK_TCK)
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }

# A 256-byte EchoRequest in a gRPC frame, for h2load (field 1, length 256).
{ printf '\x00\x00\x00\x01\x03\x0a\x80\x02'; head -c 256 /dev/zero | tr '\0' x; } >"$WORK/unary.bin"

# run WORKLOAD TARGET -> prints "calls p50_us"
run() {
  local workload=$1 addr=$2
  local lg=(taskset -c "$CLIENT_CORE" $BIN/strait-loadgen --target "$addr" --connections 4 --label "$workload")
  case $workload in
    unary) "${lg[@]}" --payload 256 --concurrency 64 --duration "$DURATION" ;;
    stream) "${lg[@]}" --payload 1024 --method ServerStream --replies 100 --concurrency 16 --duration "$DURATION" ;;
    rate) "${lg[@]}" --payload 256 --rate "$RATE" --duration "$DURATION" ;;
    h2load)
      local out
      out=$(taskset -c "$CLIENT_CORE" h2load -c 4 -m 16 -D "$DURATION" -d "$WORK/unary.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://$addr/bench.Echo/Unary" 2>&1)
      echo "label=h2load calls=$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p') p50_us=0"
      ;;
  esac | awk '/calls=/ {print}' | head -1
}

declare -A CPU P50
for workload in $WORKLOADS; do
  # Warm every target (connections, pools, allocator) before measuring.
  for proxy in $PROXIES; do DURATION=1 run "$workload" "${ADDR[$proxy]}" >/dev/null; done
  for r in $(seq "$REPEATS"); do
    targets=$PROXIES
    [ "$workload" = rate ] && targets="direct $PROXIES"
    for proxy in $targets; do
      before=$([ "$proxy" = direct ] && echo 0 || ticks "${PID[$proxy]}")
      out=$(run "$workload" "${ADDR[$proxy]}")
      after=$([ "$proxy" = direct ] && echo 0 || ticks "${PID[$proxy]}")
      calls=$(echo "$out" | field calls)
      errors=$(echo "$out" | field errors)
      [ "${errors:-0}" = 0 ] || echo "warning: $proxy $workload: $errors errors" >&2
      cpu100k=$(awk "BEGIN {printf \"%.2f\", ($after-$before)/$HZ/($calls>0?$calls:1)*100000}")
      echo "$workload #$r $proxy: calls=$calls cpu_ticks=$((after - before)) cpu_s_per_100k=$cpu100k p50_us=$(echo "$out" | field p50_us)" >&2
      CPU[$workload.$proxy]+="$cpu100k "
      P50[$workload.$proxy]+="$(echo "$out" | field p50_us) "
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
printf '| workload |'; for p in $PROXIES; do printf ' %s |' "$p"; done; echo
printf '|---|'; for p in $PROXIES; do printf -- '---|'; done; echo
for workload in $WORKLOADS; do
  printf '| CPU s per 100k calls, %s |' "$workload"
  for p in $PROXIES; do printf ' %s |' "$(echo "${CPU[$workload.$p]}" | median)"; done; echo
done
if [[ " $WORKLOADS " == *" rate "* ]]; then
  base=$(echo "${P50[rate.direct]}" | median)
  printf '| added p50 µs at %s calls/s |' "$RATE"
  for p in $PROXIES; do printf ' %s |' "$(( $(echo "${P50[rate.$p]}" | median) - base ))"; done; echo
fi
if [[ " $PROXIES " == *" nghttpx "* ]]; then
  echo
  echo "Ratio to nghttpx (CPU per call):"
  for workload in $WORKLOADS; do
    n=$(echo "${CPU[$workload.nghttpx]}" | median)
    printf '  %-7s' "$workload"
    for p in $PROXIES; do printf ' %s %s' "$p" "$(awk "BEGIN {printf \"%.2f\", $(echo "${CPU[$workload.$p]}" | median)/$n}")"; done; echo
  done
fi

if [ "$SYSCALLS" = 1 ]; then
  events=writev,write,sendmsg,sendto,recvfrom,read,getpeername,epoll_wait
  echo
  echo "Syscalls per unary call (perf stat, c=64, 256 B):"
  for proxy in $PROXIES; do
    pidlist=$(echo "${PID[$proxy]}" $(pgrep -P "${PID[$proxy]}" || true) | tr ' ' ,)
    perf stat -x, -o "$WORK/perf-$proxy" -e "$(echo $events | sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g')" \
      -p "$pidlist" -- sleep "$DURATION" &
    perf_pid=$!
    out=$(run unary "${ADDR[$proxy]}")
    wait $perf_pid || true
    calls=$(echo "$out" | field calls)
    printf '  %-8s' "$proxy"
    for e in ${events//,/ }; do
      n=$(awk -F, -v e="syscalls:sys_enter_$e" '$3 == e {print $1}' "$WORK/perf-$proxy")
      printf ' %s %s' "$e" "$(awk "BEGIN {printf \"%.2f\", ${n:-0}/$calls}")"
    done
    echo
  done
fi

if [ "$PROFILE" = 1 ]; then
  for proxy in $PROXIES; do
    [[ $proxy == strait* ]] || continue
    perf record -q -F 999 --call-graph dwarf,16384 -o "$WORK/perf-$proxy.data" -p "${PID[$proxy]}" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
    run unary "${ADDR[$proxy]}" >/dev/null
    wait $perf_pid || true
    [ -n "${PROFILE_OUT:-}" ] && cp "$WORK/perf-$proxy.data" "$PROFILE_OUT/"
    echo
    echo "Profile of $proxy, unary (perf record -g, self time):"
    echo "  by object:"
    perf report -i "$WORK/perf-$proxy.data" --no-children --sort dso --stdio -g none 2>/dev/null \
      | grep -E '^ +[0-9]' | head -6 | sed 's/^/  /'
    echo "  by symbol (>= 1%):"
    perf report -i "$WORK/perf-$proxy.data" --no-children --sort sym --percent-limit 1 --stdio -g none 2>/dev/null \
      | grep -E '^ +[0-9]' | head -25 | sed 's/^/  /'
  done
fi
