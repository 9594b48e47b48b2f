#!/usr/bin/env bash
# Measures what metrics cost on the hot path: the fanout benchmark (1000
# subscribers, 1 topic, 100 msg/s, 64-byte payloads) against the release
# server with `metrics.enabled = true` and `false`, interleaved, REPEAT
# rounds; prints p50/p99 per run and the medians. Server on CPU 1, bench on
# CPU 0. Run from the workspace root on a quiet machine.
#   REPEAT=3 scripts/bench-metrics-overhead.sh
set -euo pipefail
REPEAT=${REPEAT:-3}
SUBS=${SUBS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10s}
port=${PORT:-18290}
cargo build --release -q -p pulsegate
bin=target/release/pulsegate
work=$(mktemp -d)
pid=""
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$work"' EXIT
for round in $(seq 1 "$REPEAT"); do
  for mode in true false; do
    # taskset execs the server, so $! is the server's PID (for --server-pid).
    RUST_LOG=warn taskset -c 1 "$bin" serve --listen "127.0.0.1:$port" \
      --set limits.max_connections=19000 --set limits.max_connections_per_ip=19000 \
      --set limits.handshake_rate_per_ip=0 --set limits.publish_rate=0 --set limits.publish_bytes_rate=0 \
      --set metrics.enabled=$mode >"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    taskset -c 0 timeout 120 "$bin" bench fanout --url "ws://127.0.0.1:$port/ws" \
      --subscribers "$SUBS" --publishers 1 --rate "$RATE" --payload 64 --warmup 2s \
      --duration "$DURATION" --server-pid "$pid" --json --quiet > "$work/r.json"
    python3 - "$work/r.json" "$mode" "$round" >> "$work/all.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lag = d["lag_ms"]
bad = d.get("lost", 0) + d.get("duplicated", 0) + d.get("out_of_order", 0) + d.get("undelivered", 0)
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{lag['p50']}\t{lag['p90']}\t{lag['p99']}\t{lag['p999']}\t{bad}\t{d.get('deliveries_per_server_cpu_second')}")
PY
    stop
    port=$((port + 1))
  done
done
python3 - "$work/all.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
print("| metrics.enabled | round | p50 ms | p90 ms | p99 ms | p99.9 ms | lost+dup+reorder+undelivered | deliveries / server CPU-s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(x.strip() for x in r) + " |")
def med(mode, col):
    vals = [float(r[col]) for r in rows if r[0] == mode and r[col] not in ("None", "")]
    return statistics.median(vals) if vals else float("nan")
for mode in ("true", "false"):
    print(f"median metrics.enabled={mode}: p50 {med(mode, 2):.2f} ms, p90 {med(mode, 3):.2f} ms, "
          f"p99 {med(mode, 4):.2f} ms, deliveries/server CPU-s {med(mode, 7):,.0f}")
for name, col in (("p50", 2), ("p90", 3), ("p99", 4), ("deliveries/server CPU-s", 7)):
    on, off = med("true", col), med("false", col)
    print(f"{name} on/off: {on / off:.3f} ({(on / off - 1) * 100:+.1f} %)")
PY
