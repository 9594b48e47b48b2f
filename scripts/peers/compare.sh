#!/usr/bin/env bash
# Side-by-side comparison on loopback: for each peer, start it pinned to
# CPU 1, run the bench pinned to CPU 0, stop the peer, and print a Markdown
# table. Run from the workspace root on an otherwise quiet machine.
#
#   scripts/peers/compare.sh                       # all peers, defaults below
#   PEERS="nats node-ws" RATES="50" scripts/peers/compare.sh
#
# Settings (env): PEERS, SUBS (1000), RATES ("50 100"), DURATION (10s),
# IDLE (10000 connections), TP_SUBS (100, throughput subscribers),
# TP_DURATION (5s), REPEAT (1; rounds over all peers, the table shows
# medians — tail lag on a 2-core VM varies run to run), BENCH (bench command; default: the pulsegate binary's
# `bench` subcommand if built, else the pulsegate-bench example), OUT (JSONL).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS:-"pulsegate tokio nats node-ws socketify"}
SUBS=${SUBS:-1000}
RATES=${RATES:-"50 100"}
DURATION=${DURATION:-10s}
IDLE=${IDLE:-10000}
TP_SUBS=${TP_SUBS:-100}
TP_DURATION=${TP_DURATION:-5s}
REPEAT=${REPEAT:-1}
work=$(mktemp -d)
OUT=${OUT:-$work/results.jsonl}

if [ -z "${BENCH:-}" ]; then
    if cargo build --release -q -p pulsegate 2>/dev/null; then
        BENCH="target/release/pulsegate bench"
    else
        cargo build --release -q -p pulsegate-bench --example bench
        BENCH="target/release/examples/bench"
    fi
fi

peer_pid=""
stop_peer() {
    if [ -n "$peer_pid" ]; then
        kill "$peer_pid" 2>/dev/null || true
        wait "$peer_pid" 2>/dev/null || true
        peer_pid=""
    fi
}
trap 'stop_peer; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# bench PEER ARGS...: one scenario, its JSON report tagged with the peer.
bench() {
    local peer=$1
    shift
    # shellcheck disable=SC2086 # BENCH may be "binary bench"
    if taskset -c 0 $BENCH "$@" --json --quiet > "$work/one.json" 2> "$work/one.err"; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["peer"]=sys.argv[2]; print(json.dumps(d))' \
            "$work/one.json" "$peer" >> "$OUT"
    else
        echo "  $peer: bench $1 failed: $(tail -n 1 "$work/one.err")" >&2
    fi
}

port=18180
for round in $(seq 1 "$REPEAT"); do
    for peer in $PEERS; do
        port=$((port + 1))
        echo "== round $round: $peer" >&2
        case $peer in
            pulsegate) proto=pulsegate; url="ws://127.0.0.1:$port/ws" ;;
            tokio) proto=broadcast; url="ws://127.0.0.1:$port/ws" ;;
            nats) proto=nats; url="ws://127.0.0.1:$port" ;;
            node-ws) proto=broadcast; url="ws://127.0.0.1:$port" ;;
            socketify) proto=broadcast; url="ws://127.0.0.1:$port/" ;;
            *) echo "unknown peer $peer" >&2; exit 2 ;;
        esac
        rm -f "$work/pid"
        PEER_PIDFILE="$work/pid" PEER_SECONDS=1800 "$here/$peer.sh" "$port" > "$work/$peer.log" 2>&1 &
        peer_pid=$!
        for _ in $(seq 1 600); do [ -s "$work/pid" ] && break; sleep 0.5; done
        [ -s "$work/pid" ] || { echo "$peer did not start: $(tail -n 3 "$work/$peer.log")" >&2; stop_peer; continue; }
        spid=$(cat "$work/pid")
        common=(--url "$url" --proto "$proto" --server-pid "$spid")
        # Idle first, on a fresh server, so RSS growth is the connections' alone.
        bench "$peer" idle "${common[@]}" --connections "$IDLE" --hold 5s
        sleep 2
        for rate in $RATES; do
            bench "$peer" fanout "${common[@]}" --subscribers "$SUBS" --rate "$rate" --duration "$DURATION"
            sleep 2
        done
        bench "$peer" throughput "${common[@]}" --subscribers "$TP_SUBS" --duration "$TP_DURATION"
        stop_peer
        sleep 2
    done
done
python3 "$here/summarize.py" "$OUT"
echo "raw reports: $OUT (removed on exit unless OUT is set)" >&2
