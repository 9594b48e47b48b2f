#!/usr/bin/env bash
# Cross-node delivery through each backplane versus one in-memory node:
# 1000 subscribers spread round-robin over 3 nodes (for `memory`, all on one
# node), 1 publisher on node A at RATE msg/s, 64-byte payloads, one topic.
# Starts its own redis-server and nats-server (JetStream) on free ports with
# temporary data dirs, and stops everything at exit. Reports lag p50/p99
# from the bench, deliveries per CPU-second of the pulsegate nodes (sum of
# the three), and the CPU seconds the Redis/NATS server used in the run.
# Then, per backplane, publish throughput: 4 WebSocket publishers on node A
# as fast as acknowledgements come back (256 unconfirmed each), 4 topics, 3
# subscribers per topic (on node A), TPUT_DURATION long.
#   REPEAT=2 scripts/bench-cluster.sh
set -euo pipefail
REPEAT=${REPEAT:-1}
SUBS=${SUBS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10s}
base=${PORT:-18400}
cargo build --release -q -p pulsegate
bin=target/release/pulsegate
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
cpu_of() { awk '{print ($14+$15)/100}' "/proc/$1/stat" 2>/dev/null || echo 0; }

redis_port=$((base + 90)); nats_port=$((base + 91))
mkdir -p "$work/redis" "$work/nats"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work/redis" >"$work/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
wait_port "$redis_port"; wait_port "$nats_port"; sleep 0.5

echo -e "backplane\tround\tp50\tp90\tp99\tp999\tbad\tdeliveries_per_s\tnode_cpu_s\tdeliveries_per_node_cpu_s\tbackplane_cpu_s" > "$work/all.tsv"
for round in $(seq 1 "$REPEAT"); do
  for bp in memory redis nats; do
    prefix="bench${round}${bp}"
    nodes=()
    n=$([ "$bp" = memory ] && echo 1 || echo 3)
    for i in $(seq 1 "$n"); do
      port=$((base + i))
      RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" \
        --set limits.max_connections=19000 --set limits.max_connections_per_ip=19000 \
        --set limits.handshake_rate_per_ip=0 --set limits.publish_rate=0 --set limits.publish_bytes_rate=0 \
        --set cluster.backplane="$bp" --set cluster.prefix="$prefix" --set cluster.node_name="n$i" \
        --set cluster.redis_url="redis://127.0.0.1:$redis_port" --set cluster.nats_url="nats://127.0.0.1:$nats_port" \
        >"$work/node$i.log" 2>&1 &
      nodes+=("$!"); pids+=("$!")
      wait_port "$port"
    done
    sub_args=()
    for i in $(seq 1 "$n"); do sub_args+=(--sub-url "ws://127.0.0.1:$((base + i))/ws"); done
    cpu0=0; for p in "${nodes[@]}"; do cpu0=$(python3 -c "print($cpu0 + $(cpu_of "$p"))"); done
    bp_pid=$([ "$bp" = redis ] && echo "$redis_pid" || echo "$nats_pid")
    bcpu0=$(cpu_of "$bp_pid")
    timeout 180 "$bin" bench fanout --url "ws://127.0.0.1:$((base + 1))/ws" "${sub_args[@]}" \
      --subscribers "$SUBS" --publishers 1 --rate "$RATE" --payload 64 --warmup 2s \
      --duration "$DURATION" --json --quiet --metrics-url "http://127.0.0.1:1/none" > "$work/r.json"
    cpu1=0; for p in "${nodes[@]}"; do cpu1=$(python3 -c "print($cpu1 + $(cpu_of "$p"))"); done
    bcpu1=$(cpu_of "$bp_pid")
    [ "$bp" = memory ] && bcpu1=$bcpu0
    python3 - "$work/r.json" "$bp" "$round" "$cpu0" "$cpu1" "$bcpu0" "$bcpu1" >> "$work/all.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lag = d["lag_ms"]; dl = d
bad = dl["lost"] + dl["duplicated"] + dl["out_of_order"] + dl["undelivered"]
node_cpu = float(sys.argv[5]) - float(sys.argv[4])
bp_cpu = float(sys.argv[7]) - float(sys.argv[6])
# Node CPU covers connect, warm-up and drain too; deliveries of the whole
# run are not counted by the bench, so scale received by run/measured time.
received = dl["deliveries_received"]
run_s = d["warmup_seconds"] + d["duration_seconds"]
per_cpu = received * run_s / d["duration_seconds"] / node_cpu if node_cpu > 0 else float("nan")
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{lag['p50']}\t{lag['p90']}\t{lag['p99']}\t{lag['p999']}\t{bad}\t{d['deliveries_per_sec']:.0f}\t{node_cpu:.2f}\t{per_cpu:,.0f}\t{bp_cpu:.2f}")
PY
    for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  done
done
echo -e "backplane\tpublishes_per_s\tdeliveries_per_s\tbad\tlag_p50\tlag_p99" > "$work/tput.tsv"
for bp in memory redis nats; do
  prefix="tput${bp}"
  nodes=()
  n=$([ "$bp" = memory ] && echo 1 || echo 3)
  for i in $(seq 1 "$n"); do
    port=$((base + 10 + i))
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" \
      --set limits.handshake_rate_per_ip=0 --set limits.publish_rate=0 --set limits.publish_bytes_rate=0 \
      --set cluster.backplane="$bp" --set cluster.prefix="$prefix" --set cluster.node_name="n$i" \
      --set cluster.redis_url="redis://127.0.0.1:$redis_port" --set cluster.nats_url="nats://127.0.0.1:$nats_port" \
      >"$work/tnode$i.log" 2>&1 &
    nodes+=("$!"); pids+=("$!")
    wait_port "$port"
  done
  timeout 120 "$bin" bench throughput --url "ws://127.0.0.1:$((base + 11))/ws" \
    --subscribers 12 --publishers 4 --topics 4 --payload 64 --duration "${TPUT_DURATION:-5s}" \
    --json --quiet --metrics-url "http://127.0.0.1:1/none" > "$work/t.json"
  python3 - "$work/t.json" "$bp" >> "$work/tput.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = d["lost"] + d["duplicated"] + d["out_of_order"] + d["undelivered"]
print(f"{sys.argv[2]}\t{d['publishes_per_sec']:.0f}\t{d['deliveries_per_sec']:.0f}\t{bad}\t{d['lag_ms']['p50']}\t{d['lag_ms']['p99']}")
PY
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
python3 - "$work/tput.tsv" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
print("| " + " | ".join(rows[0]) + " |")
print("|" + "---|" * len(rows[0]))
for r in rows[1:]:
    print("| " + " | ".join(x.strip() for x in r) + " |")
PY
python3 - "$work/all.tsv" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
print("| " + " | ".join(rows[0]) + " |")
print("|" + "---|" * len(rows[0]))
for r in rows[1:]:
    print("| " + " | ".join(x.strip() for x in r) + " |")
PY
