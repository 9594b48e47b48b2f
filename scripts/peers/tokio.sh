#!/usr/bin/env bash
# The minimal tokio + tokio-websockets broadcast server (one task per
# connection, tokio broadcast channel) from the bench's own test fixtures:
# `pulsegate bench … --proto broadcast --url ws://127.0.0.1:PORT/ws`.
# Usage: scripts/peers/tokio.sh [PORT=18084]   (run from the workspace root)
source "$(dirname "$0")/lib.sh"
port=${1:-18084}
cargo build --release -q -p pulsegate-bench --example mini_server || die "build failed"
run_peer tokio-broadcast "ws://127.0.0.1:$port/ws" "$port" \
    target/release/examples/mini_server broadcast "127.0.0.1:$port" "$PEER_SECONDS"
