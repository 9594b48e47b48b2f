#!/usr/bin/env bash
# uWebSockets via PyPI `socketify` (needs Debian libuv1) as a broadcast
# peer: every frame to every client through uWS pub/sub, sender included.
# `pulsegate bench … --proto broadcast --url ws://127.0.0.1:PORT/`.
# Usage: scripts/peers/socketify.sh [PORT=18083]
source "$(dirname "$0")/lib.sh"
port=${1:-18083}
# (grep without -q: with pipefail, -q's early exit would fail ldconfig)
if ! ldconfig -p | grep 'libuv\.so\.1' > /dev/null; then
    install_deb libuv1
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || install_deb python3-venv
venv="$PEER_CACHE/socketify-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import socketify' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q socketify || die "pip install socketify failed"
fi
cat > "$PEER_CACHE/socketify_broadcast.py" <<'PY'
"""Broadcast peer on uWebSockets: every message to every client."""
import sys
from socketify import App, AppListenOptions, CompressOptions

port = int(sys.argv[1])
app = App()

def on_open(ws):
    ws.subscribe("all")

def on_message(ws, message, opcode):
    app.publish("all", message, opcode)

app.ws("/*", {
    "compression": CompressOptions.DISABLED,
    "max_payload_length": 16 * 1024 * 1024,
    "max_backpressure": 16 * 1024 * 1024,
    "idle_timeout": 960,
    "open": on_open,
    "message": on_message,
})
app.listen(AppListenOptions(port=port, host="127.0.0.1"), lambda cfg: None)
app.run()
PY
run_peer socketify "ws://127.0.0.1:$port/" "$port" "$venv/bin/python" "$PEER_CACHE/socketify_broadcast.py" "$port"
