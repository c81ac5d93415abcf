#!/usr/bin/env bash
# CPU per unary call through gRPC-Web and gRPC-JSON transcoding against native gRPC, on the same
# Strait (threads = 1, pinned alone to CPU 0) in the same run (issue #17). Two strait-echo
# backends and h2load run on CPU 1. Each figure: the proxy's CPU (utime + stime from
# /proc/PID/stat) over the calls h2load completed, median of REPEATS interleaved runs.
#
#   bash benches/web.sh                       # DURATION=10 REPEATS=3
#   DURATION=3 REPEATS=1 bash benches/web.sh  # a quick look
#   PROFILE=1 MODES="grpc json-h2" REPEATS=1 bash benches/web.sh   # plus where the CPU goes
#
# Modes (each a unary call with a 256-byte payload):
#   grpc       native gRPC over h2c (h2load -c 4 -m 16)
#   web-h2     gRPC-Web binary over h2c (same connections and concurrency)
#   json-h2    POST /v1/echo with a JSON body over h2c
#   web-h1     gRPC-Web over HTTP/1.1 (h2load --h1 -c 64: one call per connection at a time)
#   json-h1    JSON over HTTP/1.1 (same)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
MODES=${MODES:-"grpc web-h2 json-h2 web-h1 json-h1"}
BIN=target/release
WORK=$(mktemp -d)
B1=127.0.0.1:50561
B2=127.0.0.1:50562
ADDR=127.0.0.1:50571

for tool in h2load protoc python3; do
  command -v $tool >/dev/null || { echo "$tool is needed: bash .ci/install-deps bench" >&2; exit 1; }
done
[ -x $BIN/strait ] && [ -x $BIN/strait-echo ] || cargo build --release --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

protoc --include_imports --descriptor_set_out="$WORK/api.pb" -I tests/proto tests/proto/echo.proto
# The request bodies: one gRPC frame of EchoRequest{payload: 256 x 'a'}, and its JSON.
python3 - "$WORK" <<'PY'
import base64, struct, sys
work = sys.argv[1]
payload = b"a" * 256
message = b"\x0a" + bytes([0x80 | (len(payload) & 0x7f), len(payload) >> 7]) + payload
open(f"{work}/grpc.bin", "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
open(f"{work}/json.json", "w").write('{"payload":"%s"}' % base64.b64encode(payload).decode())
PY

for b in $B1 $B2; do
  ECHO_THREADS=1 taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen "$b" --name "${b##*:}" >"$WORK/echo-${b##*:}.log" 2>&1 &
  pids+=($!)
done
cat >"$WORK/strait.toml" <<TOML
[gateway]
threads = 1
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:50579"

[[listener]]
name = "bench"
listen = "$ADDR"
grpc_web = true

[[transcode]]
listener = "bench"
descriptors = "api.pb"
services = ["bench.Echo"]

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "$B1" }, { addr = "$B2" }]
TOML
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
STRAIT=$!
pids+=($STRAIT)
for addr in $B1 $B2 $ADDR; do
  for _ in $(seq 200); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done

ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $total
}
HZ=$(getconf CLK_TCK)

# run MODE SECONDS: prints the calls that succeeded.
run() {
  local mode=$1 seconds=$2 args
  case $mode in
    grpc) args=(-c 4 -m 16 -d "$WORK/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers' "http://$ADDR/bench.Echo/Unary") ;;
    web-h2) args=(-c 4 -m 16 -d "$WORK/grpc.bin" -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' "http://$ADDR/bench.Echo/Unary") ;;
    json-h2) args=(-c 4 -m 16 -d "$WORK/json.json" -H 'content-type: application/json' "http://$ADDR/v1/echo") ;;
    web-h1) args=(--h1 -c 64 -d "$WORK/grpc.bin" -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' "http://$ADDR/bench.Echo/Unary") ;;
    json-h1) args=(--h1 -c 64 -d "$WORK/json.json" -H 'content-type: application/json' "http://$ADDR/v1/echo") ;;
  esac
  taskset -c "$CLIENT_CORE" h2load -D "$seconds" "${args[@]}" 2>/dev/null \
    | awk '/^status codes:/ {print $3}'
}

declare -A CPU
for mode in $MODES; do run "$mode" 1 >/dev/null; done
for r in $(seq "$REPEATS"); do
  for mode in $MODES; do
    before=$(ticks $STRAIT)
    ok=$(run "$mode" "$DURATION")
    after=$(ticks $STRAIT)
    cpu=$(awk "BEGIN {printf \"%.2f\", ($after-$before)/$HZ/(${ok:-0}>0?${ok:-0}:1)*100000}")
    echo "$mode #$r: 2xx=$ok cpu_ticks=$((after - before)) cpu_s_per_100k=$cpu" >&2
    CPU[$mode]+="$cpu "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "${PROFILE:-0}" = 1 ]; then
  # Where each mode's CPU goes: perf record of Strait during one run, self time by symbol.
  for mode in $MODES; do
    perf record -q -F 999 -g -o "$WORK/perf-$mode.data" -p $STRAIT -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
    run "$mode" "$DURATION" >/dev/null
    wait $perf_pid || true
    echo "Profile of $mode (perf record, self time, symbols >= 1.5%):" >&2
    perf report -i "$WORK/perf-$mode.data" --no-children --sort sym --percent-limit 1.5 --stdio -g none 2>/dev/null \
      | grep -E '^ +[0-9]' | head -20 >&2
  done
fi

grpc=$(echo "${CPU[grpc]:-}" | median)
echo
echo "| mode | CPU s per 100k unary calls | / native gRPC |"
echo "|---|---|---|"
for mode in $MODES; do
  m=$(echo "${CPU[$mode]}" | median)
  printf '| %s | %s | %s |\n' "$mode" "$m" "$(awk "BEGIN {printf \"%.2f\", $m/${grpc:-$m}}")"
done
