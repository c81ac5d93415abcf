#!/usr/bin/env bash
# Hedging against a slow tail: two backends each answer 5% of calls after 200 ms (the rest at
# once). The same release build runs twice, pinned to one core: "strait" routes the service
# plainly, "strait_hedged" with `idempotent = true` and `hedge = { delay = "20ms", max_attempts
# = 2 }`. An open-loop load (RATE calls per second, every call timed from its scheduled start)
# goes to each in turn, interleaved REPEATS times; the table shows the medians of p50, p99 and
# p99.9, and the share of extra attempts the hedges cost.
#
#   bash benches/hedge.sh
#   RATE=500 DURATION=10 REPEATS=3 bash benches/hedge.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RATE=${RATE:-500}
REPEATS=${REPEATS:-3}
SLOW_PERCENT=${SLOW_PERCENT:-5}
SLOW_MS=${SLOW_MS:-200}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BIN=target/release
WORK=$(mktemp -d)
BACKEND_A=127.0.0.1:50461
BACKEND_B=127.0.0.1:50462
PLAIN=127.0.0.1:50471
HEDGED=127.0.0.1:50472
HEDGED_ADMIN=127.0.0.1:50479

[ -x $BIN/strait ] && [ -x $BIN/strait-echo ] && [ -x $BIN/strait-loadgen ] || cargo build --release --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

for backend in $BACKEND_A $BACKEND_B; do
  ECHO_THREADS=1 taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen "$backend" --name "$backend" \
    --slow-percent "$SLOW_PERCENT" --slow-ms "$SLOW_MS" >"$WORK/echo-${backend#*:}.log" 2>&1 &
  pids+=($!)
done

config() { # listen extra-route-lines
  cat <<TOML
[gateway]
threads = 1
shutdown_grace = "1s"

[[listener]]
name = "bench"
listen = "$1"

[[route]]
listener = "bench"
service = "bench.Echo"
upstream = "echo"
$2

[[upstream]]
name = "echo"
endpoints = [{ addr = "$BACKEND_A" }, { addr = "$BACKEND_B" }]
# The slow tail is slowness, not failure: the breakers stay out of it.
breaker = { failure_codes = ["DATA_LOSS"] }
TOML
}
config "$PLAIN" "" >"$WORK/plain.toml"
config "$HEDGED" $'idempotent = true\nhedge = { delay = "20ms", max_attempts = 2 }' >"$WORK/hedged.toml"
printf '\n[admin]\nlisten = "%s"\n' "$HEDGED_ADMIN" >>"$WORK/hedged.toml"
for name in plain hedged; do
  STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
done
for addr in $BACKEND_A $BACKEND_B $PLAIN $HEDGED; do
  for _ in $(seq 100); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done

load() { # label target
  taskset -c "$CLIENT_CORE" $BIN/strait-loadgen --target "$2" --connections 4 --payload 64 \
    --label "$1" --rate "$RATE" --duration "$DURATION"
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A P50 P99 P999 ERR
for r in $(seq "$REPEATS"); do
  for target in plain:$PLAIN hedged:$HEDGED; do
    name=${target%%:*}; addr=${target#*:}
    out=$(load "$name" "$addr")
    echo "#$r $out" >&2
    P50[$name]+="$(echo "$out" | field p50_us) "; P99[$name]+="$(echo "$out" | field p99_us) "
    P999[$name]+="$(echo "$out" | field p999_us) "; ERR[$name]+="$(echo "$out" | field errors) "
  done
done
metrics() { # the admin listener's /metrics, without needing curl
  exec 3<>"/dev/tcp/${HEDGED_ADMIN%:*}/${HEDGED_ADMIN#*:}"
  printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
  cat <&3
  exec 3>&-
}
hedges=$(metrics | sed -n 's/^strait_retries_total{.*reason="hedge".*} \([0-9]*\)\r*$/\1/p')
calls=$(metrics | awk '/^strait_calls_total\{/ {s += $2} END {print s}')

echo
echo "| $RATE calls/s, ${SLOW_PERCENT}% of calls ${SLOW_MS} ms late | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---|---|---|---|"
for name in plain hedged; do
  echo "| $name | $(echo "${P50[$name]}" | median) | $(echo "${P99[$name]}" | median) | $(echo "${P999[$name]}" | median) | $(echo "${ERR[$name]}" | median) |"
done
echo
echo "hedged attempts: $hedges for $calls calls"
