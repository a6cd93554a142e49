#!/usr/bin/env bash
# Runs the whole rtgate test suite on a fresh Debian machine with a Rust toolchain:
# installs and starts whatever the tests need, then runs formatting and lint checks and
# every test (unit, integration over real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -q
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

log "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

log "redis"
# The multi-node tests use a Redis on 127.0.0.1:6379 (keys under a prefix per test), and
# start private redis-server processes on free ports for restart and outage tests.
command -v redis-server >/dev/null || apt_install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

log "python tools"
# The independent WebTransport client (server/tests/wt_dialects.py) runs on aioquic, in a
# Python environment of the project's own.
command -v python3 >/dev/null || apt_install python3 python3-venv
if ! .tools/python/bin/python3 -c 'import aioquic' >/dev/null 2>&1; then
  rm -rf .tools/python
  python3 -m venv .tools/python >/dev/null 2>&1 || {
    apt_install python3-venv
    rm -rf .tools/python
    python3 -m venv .tools/python
  }
  .tools/python/bin/pip install -q aioquic
fi
.tools/python/bin/python3 -c 'import aioquic; print("aioquic", aioquic.__version__)'

log "proxies and systemd"
# The deployment files (deploy/) are tested as written: nginx (with its stream module, for
# QUIC over UDP) and HAProxy in front of two nodes, the systemd unit by systemd-analyze.
command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
  || apt_install nginx libnginx-mod-stream
command -v haproxy >/dev/null || apt_install haproxy
command -v systemd-analyze >/dev/null || apt_install systemd
nginx -v
# Only the first line; sed reads all of it (head would end the pipe early: SIGPIPE under pipefail).
haproxy -v | sed -n 1p

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- browser tests (begin)
# The browser package (client-wasm/pkg, built with scripts/build-wasm.sh) and the demo page,
# in headless Chromium driven by playwright-core, and the real @rails/actioncable client on
# /cable in Node and Chromium, against gateways the tests start themselves (e2e/). Needs the
# Redis above (restarts, Rails' broadcasts published with redis-cli).
log "browser tests"
command -v chromium >/dev/null || apt_install chromium
command -v node >/dev/null || apt_install nodejs npm
command -v npm >/dev/null || apt_install npm
rustup target add wasm32-unknown-unknown
cargo clippy -p rtgate-client --target wasm32-unknown-unknown --locked -- -D warnings
scripts/build-wasm.sh
cargo build -p rtgate-server --bin rtgate --locked
(
  cd e2e
  npm ci --no-audit --no-fund
  # The package's TypeScript types, against a typed usage file.
  npx tsc -p types/tsconfig.json
  node_test=(node --test)
  node --help | grep -q -- --test-concurrency && node_test+=(--test-concurrency=1)
  "${node_test[@]}" 2>&1 | tee "$results/browser.log"
  exit "${PIPESTATUS[0]}"
)
# --- browser tests (end)

log "tests"
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$results/cargo.log"
status=${PIPESTATUS[0]}
set -e

# Decoders of outside bytes (client frames, API bodies, bus messages, events) under a
# bounded coverage-guided fuzz run (scripts/fuzz.sh; RTGATE_FUZZ_SECONDS per target).
log "fuzzing"
fuzz_status=0
scripts/fuzz.sh "${RTGATE_FUZZ_SECONDS:-10}" || fuzz_status=$?
fuzz_targets=$(ls fuzz/fuzz_targets/*.rs | wc -l)
if [ "$fuzz_status" = 0 ]; then fuzz_passed=$fuzz_targets fuzz_failed=0; else fuzz_passed=0 fuzz_failed=$fuzz_targets; fi

# One closing line for the whole suite: Rust tests, browser tests and fuzz targets.
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i - 1) } END { print s + 0 }' "$results/cargo.log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i - 1) } END { print s + 0 }' "$results/cargo.log")
browser_passed=$(awk '/^# pass / { s += $3 } END { print s + 0 }' "$results/browser.log")
browser_failed=$(awk '/^# fail / { s += $3 } END { print s + 0 }' "$results/browser.log")
echo
echo "$((passed + browser_passed + fuzz_passed)) passed, $((failed + browser_failed + fuzz_failed)) failed"
# The failing tests by name, last, where a truncated log still shows them.
grep -E '^test .* FAILED$' "$results/cargo.log" | sed 's/^/failed: /' || true
# And why: each failing test's panic message (the first lines after it).
grep -E -A4 "^thread '.*' panicked at " "$results/cargo.log" | head -n 60 || true
grep -E '^not ok ' "$results/browser.log" | sed 's/^/failed (browser): /' || true
[ "$status" = 0 ] || exit "$status"
exit "$fuzz_status"
