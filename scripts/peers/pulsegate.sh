#!/usr/bin/env bash
# pulsegate itself, with connection limits raised for benchmarking (the
# defaults allow 1000 connections per IP, and every bench connection comes
# from 127.0.0.1): `pulsegate bench … --url ws://127.0.0.1:PORT/ws`.
# Usage: scripts/peers/pulsegate.sh [PORT=18080]   (run from the workspace root)
source "$(dirname "$0")/lib.sh"
port=${1:-18080}
cargo build --release -q -p pulsegate || die "build failed"
export RUST_LOG=${RUST_LOG:-warn}
run_peer pulsegate "ws://127.0.0.1:$port/ws" "$port" \
    target/release/pulsegate serve --listen "127.0.0.1:$port" \
    --set limits.max_connections=19000 --set limits.max_connections_per_ip=19000 \
    --set limits.handshake_rate_per_ip=0 --set limits.publish_rate=0 --set limits.publish_bytes_rate=0
