#!/usr/bin/env bash
# Where an idle connection's heap goes: the release gateway runs under valgrind's massif
# (heap profiler: every allocation attributed to its call stack), `rtgate-bench
# idle-memory` opens N idle connections (each says Hello and is welcomed), then the gateway
# is stopped and the peak snapshot is printed by ms_print. Two runs with different N and
# the difference of their peaks divided by the difference of N give the cost per
# connection without the fixed costs.
#
# Usage: bench/idle_heap.sh [OUT] [CONNECTIONS] [TRANSPORT wt|ws]
# Needs: target/release/rtgate and target/release/rtgate-bench (cargo build --release
# -p rtgate-server -p rtgate-bench; the release profile keeps debug info), valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

out=${1:-/tmp/rtgate-idle-heap}
conns=${2:-400}
transport=${3:-wt}
mkdir -p "$out"

http_port=$(free_port SOCK_STREAM)
wt_port=$(free_port SOCK_DGRAM)
secret=$(random_hex)
key=$(random_hex)

# Slowed down about 30 times: generous handshake and hello timeouts.
RTGATE_LOG=warn valgrind --tool=massif --massif-out-file="$out/massif.out" --threshold=0.5 \
  target/release/rtgate \
  --http-listen "127.0.0.1:$http_port" --wt-listen "127.0.0.1:$wt_port" \
  --jwt-secret "$secret" --api-key "$key" --cert-dir "$out/certs" \
  --max-connections-per-ip 0 --accept-rate 0 --max-handshakes-per-ip 4096 \
  --handshake-timeout 120s --hello-timeout 120s >"$out/gateway.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null && break
  sleep 0.1
done
hash=$(curl -fs "http://127.0.0.1:$http_port/dev/cert-hash" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"hex\"])")

target/release/rtgate-bench idle-memory --transport "$transport" --connections "$conns" \
  --wt-url "https://127.0.0.1:$wt_port/wt" --ws-url "ws://127.0.0.1:$http_port/ws" \
  --api-url "http://127.0.0.1:$http_port" --cert-hash "$hash" \
  --jwt-secret "$secret" --api-key "$key" --server-pid "$gateway" \
  --connect-timeout-ms 120000 --duration 10 --out "$out" --label "$transport-massif" | tail -n 4

kill -TERM "$gateway"
wait "$gateway" || true
ms_print "$out/massif.out" >"$out/ms_print.txt"
echo "peak snapshot: $out/ms_print.txt"
