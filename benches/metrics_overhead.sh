#!/usr/bin/env bash
# The cost of metrics, measured deterministically: CPU instructions per call under
# `valgrind --tool=callgrind`, for Strait with `[admin]` (metrics recorded) and without.
# Wall-clock throughput on a small shared machine varies by ±7% between identical runs; instruction
# counts do not, so this is what proves the "within 3%" promise.
#
#   cargo build --release --workspace --bins && bash benches/metrics_overhead.sh
#
# Per-call instructions = (Ir after N2 calls - Ir after N1 calls) / (N2 - N1), which cancels
# start-up and shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
BIN=target/release
N1=${N1:-500}
N2=${N2:-2500}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

ECHO_THREADS=1 $BIN/strait-echo --listen 127.0.0.1:50061 --name bench >/dev/null 2>&1 &
cat >"$WORK/off.toml" <<TOML
[gateway]
threads = 1

[[listener]]
name = "bench"
listen = "127.0.0.1:50071"

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "127.0.0.1:50061" }]
TOML
cp "$WORK/off.toml" "$WORK/on.toml"
printf '\n[admin]\nlisten = "127.0.0.1:50079"\n' >>"$WORK/on.toml"

instructions() { # config calls -> total instructions
  STRAIT_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    $BIN/strait run --config "$1" >"$WORK/vg.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/50071) 2>/dev/null && break; sleep 0.2; done
  $BIN/strait-loadgen --target 127.0.0.1:50071 --connections 1 --calls "$2" >/dev/null
  kill -INT "$pid"; wait "$pid" || true
  grep -o "Collected : [0-9]*" "$WORK/vg.log" | awk '{print $3}'
}

declare -A PER_CALL
for mode in off on; do
  a=$(instructions "$WORK/$mode.toml" "$N1")
  b=$(instructions "$WORK/$mode.toml" "$N2")
  PER_CALL[$mode]=$(( (b - a) / (N2 - N1) ))
  echo "metrics $mode: $a instructions after $N1 calls, $b after $N2: ${PER_CALL[$mode]} per call"
done
awk "BEGIN {printf \"metrics overhead: %.2f%% more instructions per call\n\", 100*(${PER_CALL[on]}-${PER_CALL[off]})/${PER_CALL[off]}}"
