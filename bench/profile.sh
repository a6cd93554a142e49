#!/usr/bin/env bash
# Where a delivery's CPU goes: a release gateway pinned to CPU 0 under a WebSocket load
# from rtgate-bench pinned to CPU 1 (rooms of 10), sampled by perf with the cpu-clock
# software event (no hardware counters needed) during the publishing window. Writes
# perf.data, the bench's report, and top.txt (self time by symbol) into OUT.
#
# Usage: bench/profile.sh [OUT] [CONNECTIONS] [ROOM_EVENTS_PER_S] [SECONDS]
# Needs: target/release/rtgate and target/release/rtgate-bench (cargo build --release
# -p rtgate-server -p rtgate-bench), perf (Debian's linux-perf), taskset, two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

out=${1:-/tmp/rtgate-profile}
conns=${2:-2000}
rate=${3:-2000}
secs=${4:-20}
mkdir -p "$out"

http_port=$(free_port SOCK_STREAM)
wt_port=$(free_port SOCK_DGRAM)
secret=$(random_hex)
key=$(random_hex)

RTGATE_LOG=warn taskset -c 0 target/release/rtgate \
  --http-listen "127.0.0.1:$http_port" --wt-listen "127.0.0.1:$wt_port" \
  --jwt-secret "$secret" --api-key "$key" --cert-dir "$out/certs" \
  --max-connections-per-ip 0 --accept-rate 0 >"$out/gateway.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null && break
  sleep 0.1
done

taskset -c 1 target/release/rtgate-bench run \
  --ws-url "ws://127.0.0.1:$http_port/ws" --wt-url "https://127.0.0.1:$wt_port/wt" \
  --api-url "http://127.0.0.1:$http_port" \
  --jwt-secret "$secret" --api-key "$key" --server-pid "$gateway" \
  --transport ws --connections "$conns" --room-size 10 --rate "$rate" --duration "$secs" \
  --label profile --out "$out" >"$out/bench.log" 2>&1 &
bench=$!

# Sample once the connections are up (the bench logs it) and publishing has begun.
for _ in $(seq 1200); do
  grep -q " connected, " "$out/bench.log" 2>/dev/null && break
  kill -0 "$bench" 2>/dev/null || { cat "$out/bench.log"; exit 1; }
  sleep 0.1
done
sleep 1
perf record -e cpu-clock -F 997 -p "$gateway" -o "$out/perf.data" -- sleep $((secs - 2)) 2>"$out/perf.log"
wait "$bench"
perf report -i "$out/perf.data" --stdio --no-children --sort symbol --percent-limit 0.7 2>/dev/null \
  | grep -v '^$' >"$out/top.txt"
cat "$out/run-websocket.md" 2>/dev/null || tail -20 "$out/bench.log"
head -60 "$out/top.txt"
