#!/usr/bin/env bash
# nats-server (Debian package nats-server) with a WebSocket listener, as a
# fan-out peer: `pulsegate bench … --proto nats --url ws://127.0.0.1:PORT`.
# Usage: scripts/peers/nats.sh [WS_PORT=18081]
source "$(dirname "$0")/lib.sh"
port=${1:-18081}
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || install_deb nats-server
PATH=$PATH:/usr/sbin
dir=$(mktemp -d)
# The client port is random (-1): only the WebSocket port is used.
cat > "$dir/nats.conf" <<CONF
listen: 127.0.0.1:-1
websocket {
  host: 127.0.0.1
  port: $port
  no_tls: true
}
CONF
peer_cleanup() { rm -rf "$dir"; }
run_peer nats-server "ws://127.0.0.1:$port" "$port" nats-server -c "$dir/nats.conf"
