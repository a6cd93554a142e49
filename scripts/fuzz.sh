#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) and runs each for a bounded
# time, starting from the committed seeds (fuzz/seeds/<target>) and past crashes
# (fuzz/regressions/<target>). Exits non-zero if any target crashes, naming it; the
# crashing input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [seconds-per-target]     (default 20)
#
# Runs never touch tracked files: the corpus each run grows lives in a scratch copy under
# fuzz/target/corpus/<target>, kept between runs. CARGO_BUILD_JOBS limits build jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [seconds-per-target]" >&2
  exit 2
fi

log() { printf '\n== %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# No sanitizer: AddressSanitizer needs a nightly compiler (-Zsanitizer), and the code under
# test is safe Rust, where panics (failed assertions, overflow, out-of-bounds indexing,
# caught by the release-with-debug-assertions build) are what there is to find. Without
# one, every flag cargo-fuzz passes is a stable one, so the stable toolchain builds it.
fuzz_flags=(--sanitizer none)

log "build"
cargo fuzz build "${fuzz_flags[@]}"

mapfile -t targets < <(cargo fuzz list)
failed=()
for t in "${targets[@]}"; do
  log "fuzz $t for ${secs}s"
  corpus="fuzz/target/corpus/$t"
  mkdir -p "$corpus"
  cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  extra=()
  if [ -d "fuzz/regressions/$t" ]; then
    extra+=("fuzz/regressions/$t")
  fi
  # Corpus directories after the first are only read; new inputs go to the first.
  # libFuzzer's progress lines go to a log; its closing statistics, or on a crash the
  # log's end (the panic and the input), are printed.
  log_file="fuzz/target/logs/$t.log"
  mkdir -p "$(dirname "$log_file")"
  if cargo fuzz run "${fuzz_flags[@]}" "$t" "$corpus" "${extra[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 >"$log_file" 2>&1; then
    grep -E '^(Done |stat::)' "$log_file" || true
  else
    tail -n 60 "$log_file"
    echo "fuzz target $t FAILED; crashing input in fuzz/artifacts/$t/" >&2
    failed+=("$t")
  fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}"
  exit 1
fi
echo "fuzzing passed: ${targets[*]} (${secs}s each)"
