"""Interop: the Python `websockets` client subscribes, publishes and recovers.

Usage: interop_websockets.py HOST:PORT  (a running pulsegate server)
Exits non-zero with a message on the first mismatch.
"""
import asyncio
import json
import sys
import urllib.request

import websockets

ADDR = sys.argv[1]
WS = f"ws://{ADDR}/ws"
TOPIC = "interop/py/power"


def http_publish(topic: str, data) -> dict:
    req = urllib.request.Request(
        f"http://{ADDR}/api/publish/{topic}",
        data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"interop failure: {what}")


async def main() -> None:
    async with websockets.connect(WS, subprotocols=["pulsegate.v1.json"]) as sub, websockets.connect(WS) as pub:
        expect(sub.subprotocol == "pulsegate.v1.json", f"subprotocol {sub.subprotocol!r}")
        welcome = await recv(sub)
        expect(welcome["op"] == "welcome" and welcome["ping_interval_ms"] > 0, f"welcome {welcome}")
        await recv(pub)
        await sub.send(json.dumps({"op": "sub", "id": 1, "topic": "interop/+/power"}))
        ok = await recv(sub)
        expect(ok == {"op": "ok", "id": 1}, f"sub reply {ok}")
        for i in range(1, 4):
            await pub.send(json.dumps({"op": "pub", "id": i, "topic": TOPIC, "data": {"w": i}}))
            reply = await recv(pub)
            expect(reply["op"] == "ok" and reply["id"] == i, f"pub reply {reply}")
        got = [await recv(sub) for _ in range(3)]
        expect([m["data"]["w"] for m in got] == [1, 2, 3], f"messages {got}")
        seqs = [m["seq"] for m in got]
        expect(seqs == list(range(seqs[0], seqs[0] + 3)), f"contiguous seq {seqs}")
        last = got[-1]
        await sub.send(json.dumps({"op": "ping", "id": "p"}))
        pong = await recv(sub)
        expect(pong["op"] == "pong" and pong["id"] == "p", f"pong {pong}")

    # Away: two messages published over HTTP, then recover exactly those.
    missed = [http_publish(TOPIC, {"w": 10 + i}) for i in range(2)]
    async with websockets.connect(WS) as sub:
        await recv(sub)
        since = {TOPIC: {"epoch": last["epoch"], "seq": last["seq"]}}
        await sub.send(json.dumps({"op": "sub", "id": 2, "topic": "interop/+/power", "since": since}))
        ok = await recv(sub)
        expect(ok.get("recovered") == [TOPIC] and ok.get("not_recovered") == [], f"recovery reply {ok}")
        replay = [await recv(sub) for _ in range(2)]
        expect([m["seq"] for m in replay] == [m["seq"] for m in missed], f"replay {replay} vs {missed}")
        live = http_publish(TOPIC, {"w": 99})
        m = await recv(sub)
        expect(m["seq"] == live["seq"] == missed[-1]["seq"] + 1, f"live after replay {m}")
        # A wrong epoch is refused, with nothing replayed.
        await sub.send(json.dumps({"op": "sub", "id": 3, "topic": TOPIC, "since": {TOPIC: {"epoch": "gone", "seq": 1}}}))
        ok = await recv(sub)
        expect(ok.get("not_recovered") == [TOPIC], f"epoch change reply {ok}")
    print("interop ok: subscribe, publish, ping, recovery, epoch refusal")


asyncio.run(main())
