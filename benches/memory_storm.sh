#!/usr/bin/env bash
# Memory given back: the gateway's RSS before, during and after a storm of idle HTTP/2
# connections. N clients connect, exchange SETTINGS and stay idle for HOLD seconds; then they
# close, and the script keeps a light stream of calls going for AFTER seconds while it samples
# the RSS once a second. The issue's bound: 30 s after the storm the RSS is within +25% (or
# +10 MiB, whichever is larger) of where it was before.
#
#   bash benches/memory_storm.sh            # N=5000 HOLD=5 AFTER=30
#   N=2000 bash benches/memory_storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-5000}
HOLD=${HOLD:-5}
AFTER=${AFTER:-30}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BIN=target/release
WORK=$(mktemp -d)
LISTEN=127.0.0.1:50291
BACKEND=127.0.0.1:50292

[ -x $BIN/strait ] && [ -x $BIN/strait-tcpbench ] && [ -x $BIN/strait-loadgen ] && [ -x $BIN/strait-echo ] \
  || cargo build --release --workspace --bins
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/strait.toml" <<TOML
[gateway]
threads = 1

[[listener]]
name = "public"
listen = "$LISTEN"

[listener.limits]
max_connections = $((N + 100))

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "$BACKEND" }]
TOML
taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen "$BACKEND" --name storm >"$WORK/echo.log" 2>&1 &
pids+=($!)
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
PID=$!
pids+=($PID)
for _ in $(seq 100); do (echo >/dev/tcp/${LISTEN%:*}/${LISTEN#*:}) 2>/dev/null && break; sleep 0.05; done

rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }
calls() { taskset -c "$CLIENT_CORE" $BIN/strait-loadgen --target "$LISTEN" --calls "$1" >/dev/null 2>&1; }

calls 2000   # warm: connections to the backend, pools, first allocations
before=$(rss_mib)
echo "t=before rss_mib=$before"
taskset -c "$CLIENT_CORE" $BIN/strait-tcpbench h2idle --target "$LISTEN" --connections "$N" >"$WORK/idle.out" &
idle_pid=$!
for _ in $(seq 1200); do grep -q open= "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
grep -q open= "$WORK/idle.out" || { echo "the connections did not all open" >&2; exit 1; }
for t in $(seq "$HOLD"); do sleep 1; echo "t=storm+${t}s rss_mib=$(rss_mib)"; done
peak=$(rss_mib)
kill "$idle_pid"; wait "$idle_pid" 2>/dev/null || true
for t in $(seq "$AFTER"); do
  calls 200
  sleep 1
  echo "t=after+${t}s rss_mib=$(rss_mib)"
done
after=$(rss_mib)
bound=$(awk -v b="$before" 'BEGIN { x = b * 1.25; y = b + 10; printf "%.1f", (x > y ? x : y) }')
verdict=$(awk -v a="$after" -v l="$bound" 'BEGIN { print (a <= l ? "within" : "ABOVE") }')
echo
echo "| N | RSS before | RSS with the storm | RSS ${AFTER} s after | bound | |"
echo "|---|---|---|---|---|---|"
echo "| $N | $before MiB | $peak MiB | $after MiB | $bound MiB | $verdict |"
