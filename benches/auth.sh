#!/usr/bin/env bash
# CPU per call of caller authentication (issue #33): one Strait (threads = 1, pinned alone to
# PROXY_CORE) with a listener per kind of route, each measured in turn from /proc/PID/stat while
# strait-loadgen (unary, 64 calls in flight over 4 connections, 256 B) runs on CLIENT_CORE with
# two echo backends and the ext_authz service:
#   open        no auth (the baseline)
#   open_token  no auth, the caller sending the same token as jwt_reused (what carrying a
#               ~300-byte header costs the transport, HPACK and header maps, before any check)
#   jwt_reused  a JWT route, one token reused by every call (the verified-token cache)
#   jwt_new     a JWT route, a new token per call (100k distinct ES256 tokens: a signature check
#               each)
#   api_key     an api_keys route
#   rego        an api_keys route with a Rego policy
#   ext_authz   an open route asking an ext_authz service (a tonic server on CLIENT_CORE)
#
#   bash benches/auth.sh                        # 3 interleaved repeats of 10 s
#   DURATION=5 REPEATS=1 bash benches/auth.sh
# Prints CPU seconds per 100k calls (median) and each as a ratio of `open`.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
PROXY_CORE=${PROXY_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
KINDS=${KINDS:-"open open_token jwt_reused jwt_new api_key rego ext_authz"}
BIN=target/release
WORK=$(mktemp -d)
B1=127.0.0.1:50461
B2=127.0.0.1:50462
AUTHZ=127.0.0.1:50463
declare -A PORT=([open]=50471 [open_token]=50471 [jwt_reused]=50472 [jwt_new]=50472 [api_key]=50473 [rego]=50474 [ext_authz]=50475)

[ -x $BIN/strait ] && [ -x $BIN/strait-echo ] && [ -x $BIN/strait-loadgen ] && [ -x $BIN/strait-auth-bench ] \
  || cargo build --release --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

for b in $B1 $B2; do
  ECHO_THREADS=1 taskset -c "$CLIENT_CORE" $BIN/strait-echo --listen "$b" --name "${b##*:}" >"$WORK/echo-${b##*:}.log" 2>&1 &
  pids+=($!)
done
taskset -c "$CLIENT_CORE" $BIN/strait-auth-bench authz --listen $AUTHZ 2>"$WORK/authz.log" &
pids+=($!)
$BIN/strait-auth-bench keys --dir "$WORK" --tokens 100000

listener() { printf '[[listener]]\nname = "%s"\nlisten = "127.0.0.1:%s"\n\n[[route]]\nlistener = "%s"\nservice = "bench.Echo"\nupstream = "echo"\n%s\n\n' "$1" "$2" "$1" "$3"; }
{
  printf '[gateway]\nthreads = 1\nshutdown_grace = "1s"\n\n'
  listener open ${PORT[open]} ""
  listener jwt ${PORT[jwt_reused]} 'auth = ["users"]'
  listener api_key ${PORT[api_key]} 'auth = ["keys"]'
  listener rego ${PORT[rego]} $'auth = ["keys"]\npolicy = "policy.rego"'
  listener ext_authz ${PORT[ext_authz]} 'ext_authz = "authz"'
  printf '[[upstream]]\nname = "echo"\nendpoints = [{ addr = "%s" }, { addr = "%s" }]\n\n' $B1 $B2
  printf '[[auth]]\nname = "users"\n[auth.jwt]\nissuer = "https://id.strait.test"\naudiences = ["strait"]\njwks_file = "jwks.json"\n\n'
  printf '[[auth]]\nname = "keys"\n[auth.api_keys]\nkeys_file = "keys.txt"\n\n'
  printf '[[ext_authz]]\nname = "authz"\naddress = "%s"\n' $AUTHZ
} >"$WORK/strait.toml"
STRAIT_LOG=warn taskset -c "$PROXY_CORE" $BIN/strait run --config "$WORK/strait.toml" >"$WORK/strait.log" 2>&1 &
STRAIT=$!
pids+=($STRAIT)
for addr in $B1 $B2 $AUTHZ $(for k in $KINDS; do echo 127.0.0.1:${PORT[$k]}; done); do
  for _ in $(seq 200); do (echo >/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null && break; sleep 0.05; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }

run() {
  local kind=$1 duration=$2
  local lg=(taskset -c "$CLIENT_CORE" $BIN/strait-loadgen --target "127.0.0.1:${PORT[$kind]}" --connections 4
    --payload 256 --concurrency 64 --duration "$duration" --label "$kind")
  case $kind in
    open) "${lg[@]}" ;;
    jwt_reused|open_token) "${lg[@]}" --header "authorization:Bearer $(cat "$WORK/token")" ;;
    jwt_new) "${lg[@]}" --tokens "$WORK/tokens.txt" ;;
    api_key|rego) "${lg[@]}" --header "x-api-key:bench-key" ;;
    ext_authz) "${lg[@]}" --header "x-authz:allow" ;;
  esac | awk '/calls=/ {print}' | head -1
}

declare -A CPU
for kind in $KINDS; do run "$kind" 1 >/dev/null; done
for r in $(seq "$REPEATS"); do
  for kind in $KINDS; do
    before=$(ticks $STRAIT)
    out=$(run "$kind" "$DURATION")
    after=$(ticks $STRAIT)
    calls=$(echo "$out" | field calls)
    errors=$(echo "$out" | field errors)
    [ "${errors:-0}" = 0 ] || echo "warning: $kind: $errors errors" >&2
    cpu100k=$(awk "BEGIN {printf \"%.2f\", ($after-$before)/$HZ/($calls>0?$calls:1)*100000}")
    echo "$kind #$r: calls=$calls cpu_s_per_100k=$cpu100k p50_us=$(echo "$out" | field p50_us)" >&2
    CPU[$kind]+="$cpu100k "
  done
done
if [ "${PROFILE:-0}" = 1 ]; then
  # A perf profile of one kind (PROFILE_KIND, default jwt_reused): where the auth work goes.
  perf record -q -F 999 -g -o "$WORK/perf.data" -p $STRAIT -- sleep "$DURATION" 2>/dev/null &
  perf_pid=$!
  run "${PROFILE_KIND:-jwt_reused}" "$DURATION" >/dev/null
  wait $perf_pid || true
  echo "Profile of ${PROFILE_KIND:-jwt_reused} (self time, >= 0.5%):"
  perf report -i "$WORK/perf.data" --no-children --sort sym --percent-limit 0.5 --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40
fi
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
open=$(echo "${CPU[open]:-${CPU[$(echo $KINDS | cut -d' ' -f1)]}}" | median)
echo
token=$(echo "${CPU[open_token]:-}" | median)
echo "| route | CPU s per 100k calls | ratio to open | ratio to open_token |"
echo "|---|---|---|---|"
for kind in $KINDS; do
  m=$(echo "${CPU[$kind]}" | median)
  echo "| $kind | $m | $(awk "BEGIN {printf \"%.3f\", $m/$open}") | $([ -n "$token" ] && awk "BEGIN {printf \"%.3f\", $m/$token}") |"
done
