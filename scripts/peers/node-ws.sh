#!/usr/bin/env bash
# Node `ws` 8.x broadcast server (every frame to every client, sender
# included; no compression): `pulsegate bench … --proto broadcast`.
# Usage: scripts/peers/node-ws.sh [PORT=18082]
source "$(dirname "$0")/lib.sh"
port=${1:-18082}
command -v node >/dev/null && command -v npm >/dev/null || install_deb nodejs npm
mod="$PEER_CACHE/node"
if [ ! -f "$mod/node_modules/ws/package.json" ]; then
    mkdir -p "$mod"
    (cd "$mod" && npm install --silent --no-audit --no-fund ws@8) || die "npm install ws failed"
fi
cat > "$mod/broadcast.js" <<'JS'
// Broadcast peer: every message to every open client, sender included.
const { WebSocketServer, WebSocket } = require('ws');
const port = Number(process.argv[2]);
const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const c of wss.clients) {
      if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
    }
  });
});
JS
run_peer node-ws "ws://127.0.0.1:$port" "$port" node "$mod/broadcast.js" "$port"
