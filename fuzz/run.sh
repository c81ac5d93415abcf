#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 5), starting from the committed seeds in
# fuzz/seeds/<target>. New inputs go to a scratch corpus; a crash is saved under
# fuzz/artifacts/<target>/ and fails the run.
#
#   bash fuzz/run.sh            # the short run `make test` does
#   bash fuzz/run.sh 600        # ten minutes per target
#   bash fuzz/run.sh 60 config  # one target
#
# cargo-fuzz builds the targets with libFuzzer; `-s none` (no sanitizer) works on a stable
# toolchain (Rust code has no undefined behaviour to catch without `unsafe`).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-5}
shift || true
TARGETS=${*:-config etcd_value grpc_timeout grpc_path grpc_frames transcode}
# From crates.io; where the index cannot be reached but cargo's cache already holds the crates
# (a machine behind a TLS-intercepting proxy whose CA cargo does not trust), from the cache.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked \
  || cargo install cargo-fuzz --locked --offline
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo fuzz build -s none  # every target; `run` below reuses the build
for target in $TARGETS; do
  mkdir -p "$WORK/$target"
  echo "fuzz $target for ${SECONDS_EACH}s"
  status=0
  cargo fuzz run -s none "$target" "$WORK/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$WORK/$target.log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY|thread)" "$WORK/$target.log" || true
  # A crash, an out-of-memory, a timeout or a leak leaves an input behind; any non-zero exit
  # (a build or run failure) counts too.
  if [ "$status" -ne 0 ] || ls "artifacts/$target"/{crash,oom,timeout,leak}-* >/dev/null 2>&1; then
    tail -30 "$WORK/$target.log" >&2
    echo "fuzz target $target failed (exit $status); inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
