#!/usr/bin/env bash
# The seed load through a Redis Cluster: starts three redis-server masters on free
# loopback ports (cluster mode, no persistence, in a scratch directory), joins them with
# redis-cli --cluster create, runs `rtgate-bench seed` with two gateway nodes on the
# cluster, then stops the cluster. Writes the bench's report into OUT.
#
# Usage: bench/cluster.sh [OUT] [TRANSPORT ws|wt] [extra rtgate-bench flags…]
# Needs: target/release/rtgate and target/release/rtgate-bench (cargo build --release
# -p rtgate-server -p rtgate-bench), redis-server and redis-cli (Redis 7).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

out=${1:-/tmp/rtgate-cluster-bench}
transport=${2:-ws}
shift $(( $# >= 2 ? 2 : $# ))
mkdir -p "$out"
dir=$(mktemp -d)

ports=()
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in 1 2 3; do
  port=$(free_port)
  bus=$(free_port)
  ports+=("$port")
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-port "$bus" \
    --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
    --save "" --appendonly no --dir "$dir" >"$dir/redis-$port.log" 2>&1 &
  pids+=("$!")
done
for port in "${ports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 0 --cluster-yes >"$dir/create.log"
for port in "${ports[@]}"; do
  for _ in $(seq 200); do
    redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break
    sleep 0.05
  done
done
seeds=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
seeds=${seeds%,}

target/release/rtgate-bench seed --rtgate-bin target/release/rtgate --nodes 2 \
  --redis "$seeds" --gateway-arg=--redis-cluster --transport "$transport" \
  --label "seed-2-nodes-cluster" --out "$out" "$@"
# What each master did: commands processed and CPU seconds (user + system) since it started.
for port in "${ports[@]}"; do
  commands=$(redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p')
  cpu=$(redis-cli -p "$port" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.1f", s }')
  echo "master 127.0.0.1:$port: $commands commands, $cpu CPU s"
done
# Calls by command, all masters together (what a delivery costs Redis).
for port in "${ports[@]}"; do redis-cli -p "$port" info commandstats | tr -d '\r'; done |
  sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' |
  awk '{ calls[$1] += $2 } END { for (c in calls) print calls[c], c }' | sort -rn | head -n 12
